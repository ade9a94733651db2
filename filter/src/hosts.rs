//! Which endpoint a request's `:authority` belongs to: one table built per configuration, one
//! lookup per request whose cost depends on the length of the host name, never on the number
//! of endpoints.
//!
//! An endpoint answers to
//! - every exact name in its `hosts` (case-insensitive, port ignored, a trailing `.` ignored);
//! - every wildcard in its `hosts`: `*.example.com` matches `a.example.com` and
//!   `a.b.example.com` but not `example.com` (Envoy's and Istio's virtual-host rule); the
//!   longest matching suffix wins;
//! - `*`: every host no other rule claims;
//! - its mesh names, derived here from `name` and `namespace` (the operator names the
//!   endpoint's Service after the endpoint): `<name>.<ns>`, `<name>.<ns>.svc`,
//!   `<name>.<ns>.svc.cluster.local`, and the short `<name>`. The control plane does not have
//!   to list them (it may, harmlessly); a cluster whose DNS domain is not `cluster.local`
//!   needs its FQDN listed in `hosts`, because the filter does not know the domain.
//!   The short name means "the Service `<name>` in the caller's namespace", which a filter
//!   carrying endpoints of several namespaces cannot resolve: when two endpoints share a
//!   name, neither gets the short name (their qualified names still match).
//!
//! Precedence: an exact `hosts` entry, then a derived mesh name, then the longest wildcard,
//! then `*`. Two endpoints listing the same host is a configuration error (contract
//! validation).

use mlep_contract::EndpointConfig;
use std::collections::HashMap;

/// The default Kubernetes cluster DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Longest host name looked up (DNS allows 253 bytes); longer authorities match only `*`.
const MAX_HOST: usize = 255;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    /// Exact names, lowercase, without a trailing dot.
    exact: HashMap<String, usize>,
    /// Wildcard suffixes with their leading dot (`.example.com` for `*.example.com`).
    suffixes: HashMap<String, usize>,
    /// The endpoint claiming `*`.
    any: Option<usize>,
}

impl Hosts {
    /// The table for `endpoints` (already validated: no host claimed twice).
    pub fn build(endpoints: &[EndpointConfig]) -> Self {
        let mut out = Hosts::default();
        let mut mesh: HashMap<String, Option<usize>> = HashMap::new();
        let mut short: HashMap<&str, Option<usize>> = HashMap::new();
        for (i, ep) in endpoints.iter().enumerate() {
            for h in &ep.hosts {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                if h == "*" {
                    out.any = Some(i);
                } else if let Some(suffix) = h.strip_prefix('*') {
                    out.suffixes.insert(suffix.to_owned(), i);
                } else {
                    out.exact.insert(h, i);
                }
            }
            let (name, ns) = (
                ep.name.to_ascii_lowercase(),
                ep.namespace.to_ascii_lowercase(),
            );
            for m in [
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
            ] {
                // The same name/namespace twice would be ambiguous: neither gets it.
                mesh.entry(m).and_modify(|e| *e = None).or_insert(Some(i));
            }
            short
                .entry(ep.name.as_str())
                .and_modify(|e| *e = None)
                .or_insert(Some(i));
        }
        let short = short.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
        for (name, ep) in mesh.into_iter().chain(short) {
            if let Some(ep) = ep {
                out.exact.entry(name).or_insert(ep);
            }
        }
        out
    }

    /// The endpoint serving `authority` (`Host`/`:authority`), if any.
    pub fn lookup(&self, authority: &str) -> Option<usize> {
        let host = strip_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        let mut buf = [0u8; MAX_HOST];
        let Some(host) = lowercase(host, &mut buf) else {
            return self.any;
        };
        if let Some(i) = self.exact.get(host) {
            return Some(*i);
        }
        if !self.suffixes.is_empty() {
            // Longest suffix first: every `.` after the first byte starts a candidate.
            for (at, _) in host.match_indices('.').filter(|(at, _)| *at > 0) {
                if let Some(i) = self.suffixes.get(&host[at..]) {
                    return Some(*i);
                }
            }
        }
        self.any
    }
}

/// `host` in lowercase, borrowing it when it has no uppercase byte and copying it into `buf`
/// otherwise (no allocation on the request path); `None` when it does not fit.
fn lowercase<'a>(host: &'a str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = buf.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    // ASCII case mapping keeps UTF-8 valid.
    std::str::from_utf8(out).ok()
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`; a bare IPv6 address stays whole.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) if authority[..i].contains(':') => authority,
        Some(i) => &authority[..i],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlep_contract::FilterConfig;

    fn hosts(eps: &[(&str, &str, &[&str])]) -> Hosts {
        let cfg: Vec<EndpointConfig> = eps
            .iter()
            .map(|(name, ns, hosts)| {
                let mut e = FilterConfig::from_json(
                    include_str!("../../examples/filter-config.json").as_bytes(),
                )
                .unwrap()
                .endpoints
                .remove(0);
                e.name = (*name).to_owned();
                e.namespace = (*ns).to_owned();
                e.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
                e
            })
            .collect();
        Hosts::build(&cfg)
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn exact_hosts_match_without_port_case_or_trailing_dot() {
        let t = hosts(&[("titanic", "ml", &["titanic.example.com"])]);
        for a in [
            "titanic.example.com",
            "Titanic.Example.COM:8080",
            "titanic.example.com.",
        ] {
            assert_eq!(t.lookup(a), Some(0), "{a}");
        }
        assert_eq!(t.lookup("other.example.com"), None);
        assert_eq!(t.lookup(""), None);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn every_mesh_name_of_the_service_matches() {
        let t = hosts(&[("titanic", "ml", &["titanic.example.com"])]);
        for a in [
            "titanic",
            "titanic:80",
            "titanic.ml",
            "titanic.ml.svc",
            "titanic.ml.svc.cluster.local",
            "TITANIC.ml.svc.cluster.local:8080",
        ] {
            assert_eq!(t.lookup(a), Some(0), "{a}");
        }
        assert_eq!(t.lookup("titanic.other.svc.cluster.local"), None);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_short_name_shared_by_two_namespaces_is_nobodys() {
        let t = hosts(&[("titanic", "a", &["x.com"]), ("titanic", "b", &["y.com"])]);
        assert_eq!(t.lookup("titanic"), None);
        assert_eq!(t.lookup("titanic.a"), Some(0));
        assert_eq!(t.lookup("titanic.b.svc.cluster.local"), Some(1));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn wildcards_match_subdomains_and_the_longest_suffix_wins() {
        let t = hosts(&[
            ("wide", "ml", &["*.example.com"]),
            ("narrow", "ml", &["*.eu.example.com", "eu.example.com"]),
        ]);
        assert_eq!(t.lookup("a.example.com"), Some(0));
        assert_eq!(t.lookup("a.b.example.com:443"), Some(0));
        assert_eq!(t.lookup("A.EU.example.com"), Some(1));
        assert_eq!(t.lookup("eu.example.com"), Some(1), "exact beats wildcard");
        assert_eq!(t.lookup("example.com"), None, "a wildcard needs a label");
        assert_eq!(t.lookup(".example.com"), None);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn explicit_hosts_beat_derived_names_and_star_catches_the_rest() {
        let t = hosts(&[("titanic", "ml", &["*"]), ("other", "ml", &["titanic.ml"])]);
        assert_eq!(t.lookup("titanic.ml"), Some(1));
        assert_eq!(t.lookup("titanic"), Some(0));
        assert_eq!(t.lookup("anything:1"), Some(0));
        assert_eq!(t.lookup(&"x".repeat(300)), Some(0), "too long: only `*`");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn ports_are_stripped_from_names_and_ipv6_literals() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a:1"), "a");
    }
}
