//! Which hosts an endpoint may claim, and who keeps an external host two endpoints claim.
//!
//! A host in `spec.hosts` goes into the endpoint's VirtualService (every sidecar of the mesh
//! and, through a Gateway, the ingress gateway route it) and into the shared filter config. A
//! host that names a Service of the cluster would take that Service's in-mesh callers, so:
//! - **the endpoint's own Service names** may be claimed: the operator names the Service after
//!   the endpoint, so they are `<name>`, `<name>.<ns>`, `<name>.<ns>.svc` and
//!   `<name>.<ns>.svc.<cluster domain>`;
//! - **every other in-cluster name is refused**: anything under the cluster domain or ending in
//!   `.svc`; a single label (Istio reads it as a Service of the VirtualService's namespace); two
//!   labels `<a>.<b>` (a pod's DNS search path resolves it to Service `a` of namespace `b`, and
//!   Istio's sidecar routes list it among that Service's domains). Two-label names are refused
//!   whether or not namespace `b` exists today: a namespace created later would be captured, and
//!   the operator reads no Namespaces (least-privilege RBAC). An apex name (`example.ai`) is
//!   exposed through a subdomain (`api.example.ai`). Another Service of the endpoint's own
//!   namespace is refused too, without looking it up: the endpoint does not own it (a
//!   teammate's endpoint or application), and only the operator-made Service is the endpoint's;
//! - **external names** (three labels or more, not in-cluster) may be claimed, wildcards
//!   (`*.example.com`) included unless they could match an in-cluster name (`*.teama`,
//!   `*.svc`, `*.cluster.local`, `*.local`); `*` alone is refused: it claims every host of the
//!   mesh, other namespaces' Services included.
//!
//! Two endpoints claiming the same external host: the one created first
//! (`metadata.creationTimestamp`, ties broken by `namespace/name`) keeps it ([`host_owners`]);
//! the others are neither wired nor in the shared filter config, and get a `HostConflict`
//! condition. An endpoint being deleted holds nothing, so its deletion hands the host over.
//! Wildcards conflict only with the same wildcard: Envoy picks the most specific domain.

use crate::crd::ModelEndpoint;
use kube_core::ResourceExt;
use std::collections::BTreeMap;

/// The endpoint asking for hosts: its namespace and name, and the cluster's DNS domain.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub cluster_domain: &'a str,
}

/// What a permitted host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// One of the endpoint's own Service names.
    OwnService,
    /// A name outside the cluster (a gateway host), wildcards included.
    External,
}

/// A host as compared: lowercase, without a trailing dot.
pub fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is `suffix` or ends with `.suffix`.
fn under(name: &str, suffix: &str) -> bool {
    name == suffix
        || name
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Classify a host of `who`'s spec; `Err` says why it may not be claimed.
pub fn classify(host: &str, who: &Claimant) -> Result<HostKind, String> {
    let h = normalize(host);
    let (name, ns, domain) = (who.name, who.namespace, who.cluster_domain);
    let own = [
        name.to_owned(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.{domain}"),
    ];
    if own.contains(&h) {
        return Ok(HostKind::OwnService);
    }
    let only_own = format!(
        "an endpoint may claim only its own Service names ({}) and external hosts",
        own.join(", ")
    );
    if h == "*" {
        return Err(format!(
            "\"*\" claims every host of the mesh, other namespaces' Services included; {only_own}"
        ));
    }
    if let Some(suffix) = h.strip_prefix("*.") {
        if (suffix.rsplit('.').next()).is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!(
                "{h:?} matches IP addresses: a Host header naming an address is no host of \
                 this endpoint (a gateway serves names); {only_own}"
            ));
        }
        let labels = suffix.split('.').count();
        let in_cluster = labels == 1
            || suffix.ends_with(".svc")
            || under(suffix, domain)
            || under(domain, suffix);
        return if in_cluster {
            Err(format!(
                "{h:?} matches Service names of the cluster; {only_own}"
            ))
        } else {
            Ok(HostKind::External)
        };
    }
    // `<a>.<b>.svc[.<domain>]` is what `<a>.<b>` says; other names under the domain are the
    // cluster's too (pods, other records).
    let svc_domain = format!(".svc.{domain}");
    let mesh = h
        .strip_suffix(svc_domain.as_str())
        .or_else(|| h.strip_suffix(".svc"));
    let labels: Vec<&str> = mesh.unwrap_or(&h).split('.').collect();
    let why = match labels.as_slice() {
        [service, other] if mesh.is_some() && *other != ns => {
            format!("{h:?} is Service {service:?} of namespace {other:?}")
        }
        _ if mesh.is_some() || under(&h, domain) => {
            format!("{h:?} is an in-cluster name that is not this endpoint's Service")
        }
        [service] => format!(
            "{h:?} is Service {service:?} of this namespace (Istio reads a single label in the \
             VirtualService's namespace), not this endpoint's Service"
        ),
        [service, other] if *other == ns => {
            format!("{h:?} is Service {service:?} of this namespace, not this endpoint's Service")
        }
        [service, other] => format!(
            "{h:?} is Service {service:?} of namespace {other:?} (two labels are \
             <service>.<namespace> in the mesh)"
        ),
        _ if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) => format!(
            "{h:?} is an IP address: a Host header naming an address is no host of this \
             endpoint (a gateway serves names)"
        ),
        _ => return Ok(HostKind::External),
    };
    Err(format!("{why}; {only_own}"))
}

/// Whether namespace `namespace` may claim external host `host` under the operator's
/// `patterns` (`RenderSettings::allowed_hosts`; empty: any). A pattern is a name, or `*.`
/// and a name for every name below it, with `{namespace}` standing for the namespace: so a
/// platform hands each team its own part of the DNS, and no tenant can take a name another
/// team serves on the shared gateway (`api.bank.example` through `spec.expose`). A wildcard
/// host needs a wildcard pattern covering it. `Err` names the patterns.
pub fn permitted(host: &str, namespace: &str, patterns: &[String]) -> Result<(), String> {
    if patterns.is_empty() {
        return Ok(());
    }
    let h = normalize(host);
    let covers = |pattern: &String| {
        let p = normalize(&pattern.replace("{namespace}", namespace));
        match (p.strip_prefix("*."), h.strip_prefix("*.")) {
            (Some(domain), Some(hd)) => hd == domain || hd.ends_with(&format!(".{domain}")),
            (Some(domain), None) => h.ends_with(&format!(".{domain}")),
            (None, Some(_)) => false,
            (None, None) => h == p,
        }
    };
    if patterns.iter().any(covers) {
        return Ok(());
    }
    Err(format!(
        "{h:?} is not among the external hosts namespace {namespace:?} may claim: {} \
         (the operator's MLEP_ALLOWED_HOSTS)",
        patterns.join(", ")
    ))
}

/// The first of `hosts` that is external and that `patterns` ([`permitted`]) do not let
/// `who`'s namespace claim: its index and why.
pub fn first_not_permitted(
    hosts: &[String],
    who: &Claimant,
    patterns: &[String],
) -> Option<(usize, String)> {
    hosts.iter().enumerate().find_map(|(i, h)| {
        (classify(h, who) == Ok(HostKind::External))
            .then(|| permitted(h, who.namespace, patterns).err())
            .flatten()
            .map(|why| (i, why))
    })
}

/// `namespace/name` of an endpoint (no namespace: `default`).
pub fn endpoint_id(ep: &ModelEndpoint) -> String {
    format!(
        "{}/{}",
        ep.namespace().unwrap_or_else(|| "default".to_owned()),
        ep.name_any()
    )
}

/// Who holds a host: ordered so that the first created comes first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
    /// `None` (never stored by an API server, e.g. `mlep render`) sorts last.
    unstamped: bool,
    created: Option<i64>,
    id: String,
}

impl Holder {
    fn of(ep: &ModelEndpoint) -> Self {
        let created = ep
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        Self {
            unstamped: created.is_none(),
            created,
            id: endpoint_id(ep),
        }
    }
}

/// The external hosts claimed by a set of endpoints, each with the endpoint keeping it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostClaims {
    cluster_domain: String,
    holders: BTreeMap<String, Holder>,
    /// The operator's host patterns ([`permitted`]).
    patterns: Vec<String>,
}

/// A host of an endpoint held by another endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Index in the endpoint's `spec.hosts`.
    pub index: usize,
    pub host: String,
    /// `namespace/name` of the endpoint keeping it.
    pub holder: String,
}

/// Resolve every external host these endpoints claim (any order; endpoints being deleted hold
/// nothing): the endpoint created first keeps it.
pub fn host_owners(endpoints: &[ModelEndpoint], cluster_domain: &str) -> HostClaims {
    host_owners_under(endpoints, cluster_domain, &[])
}

/// [`host_owners`] under the operator's host `patterns` ([`permitted`]): a host an endpoint
/// may not claim holds nothing, and [`HostClaims::not_permitted`] names it.
pub fn host_owners_under(
    endpoints: &[ModelEndpoint],
    cluster_domain: &str,
    patterns: &[String],
) -> HostClaims {
    let mut holders: BTreeMap<String, Holder> = BTreeMap::new();
    for ep in endpoints
        .iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
    {
        let candidate = Holder::of(ep);
        let ns = ep.namespace().unwrap_or_else(|| "default".to_owned());
        for host in external_hosts(ep, cluster_domain)
            .into_iter()
            .filter(|h| permitted(h, &ns, patterns).is_ok())
        {
            match holders.get(&host) {
                Some(current) if *current <= candidate => {}
                _ => {
                    holders.insert(host, candidate.clone());
                }
            }
        }
    }
    HostClaims {
        cluster_domain: cluster_domain.to_owned(),
        holders,
        patterns: patterns.to_vec(),
    }
}

/// The normalized external hosts an endpoint claims: its spec's and its served spec's.
fn external_hosts(ep: &ModelEndpoint, cluster_domain: &str) -> Vec<String> {
    let (ns, name) = (
        ep.namespace().unwrap_or_else(|| "default".to_owned()),
        ep.name_any(),
    );
    let who = Claimant {
        namespace: &ns,
        name: &name,
        cluster_domain,
    };
    // What it serves holds too: a rejected edit that dropped a host does not let it go while
    // the accepted spec still binds it (`status.servedSpec`).
    let served = (ep.status.as_ref())
        .and_then(|s| s.served_spec.as_ref())
        .map_or(&[][..], |s| s.hosts.as_slice());
    let mut out: Vec<String> = (ep.spec.hosts.iter().chain(served))
        .filter(|h| classify(h, &who) == Ok(HostKind::External))
        .map(|h| normalize(h))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl HostClaims {
    /// The first external host of `ep`'s spec the operator's patterns do not let its
    /// namespace claim: its index in `spec.hosts` and why.
    pub fn not_permitted(&self, ep: &ModelEndpoint) -> Option<(usize, String)> {
        let ns = ep.namespace().unwrap_or_else(|| "default".to_owned());
        let name = ep.name_any();
        let who = Claimant {
            namespace: &ns,
            name: &name,
            cluster_domain: &self.cluster_domain,
        };
        first_not_permitted(&ep.spec.hosts, &who, &self.patterns)
    }

    /// The cluster domain the claims were resolved with.
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// `namespace/name` of the endpoint keeping `host`, if any claims it.
    pub fn holder(&self, host: &str) -> Option<&str> {
        self.holders.get(&normalize(host)).map(|h| h.id.as_str())
    }

    /// The hosts of `ep` that another endpoint keeps, in `spec.hosts` order.
    pub fn held_by_others(&self, ep: &ModelEndpoint) -> Vec<Held> {
        let id = endpoint_id(ep);
        let external = external_hosts(ep, &self.cluster_domain);
        ep.spec
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| external.contains(&normalize(h)))
            .filter_map(|(index, h)| {
                let holder = self.holder(h)?;
                (holder != id).then(|| Held {
                    index,
                    host: h.clone(),
                    holder: holder.to_owned(),
                })
            })
            .collect()
    }
}

/// Whether two endpoints list a host in common (what one's change may hand over to the other).
pub fn share_a_host(a: &ModelEndpoint, b: &ModelEndpoint) -> bool {
    a.spec
        .hosts
        .iter()
        .any(|h| b.spec.hosts.iter().any(|o| normalize(o) == normalize(h)))
}

#[cfg(test)]
mod tests;
