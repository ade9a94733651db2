//! Variant assignment for one request: targeting header, sticky key (header, then cookie),
//! else a fresh random key and a cookie so the next request sticks.

use crate::compiled::Endpoint;
use crate::host::Host;
/// Why a request got its variant (the `reason` label of `mlep_assignments_total`).
pub use mlep_contract::metrics::Reason;
use mlep_contract::{bucket_of, BUCKETS};

/// The outcome of assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Route to `variant` (index into the endpoint's variants); `set_cookie` is the full
    /// `Set-Cookie` value when the request carried no key.
    Assign {
        variant: usize,
        reason: Reason,
        set_cookie: Option<String>,
    },
    /// Answer 400 with this JSON body (unknown target variant).
    Reject { body: String },
}

/// Longest sticky key used; longer keys are cut (hashing stays cheap, same key same cut).
pub const MAX_KEY_BYTES: usize = 256;

/// The first value of header `name` among `headers` (names compared case-insensitively;
/// Envoy hands them over lowercase).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where assignment reads the request's headers from: a list already read in one host call
/// (a request whose shadow copy needs them all), or the host one header at a time
/// ([`FromHost`]): the target header (usually absent: a cheap call) and the sticky key cost
/// two calls, half of what reading every header costs (docs/filter.md).
pub trait Headers {
    /// The first value of header `name`.
    fn get(&self, host: &dyn Host, name: &str) -> Option<String>;
    /// Every `cookie` header's value (HTTP/2 clients may send several; the host hands over
    /// the first, and Envoy's HTTP/2 codec joins them into one).
    fn cookies(&self, host: &dyn Host) -> Vec<String> {
        self.get(host, "cookie").into_iter().collect()
    }
}

/// Read each header from the host when it is needed.
pub struct FromHost;

impl Headers for FromHost {
    fn get(&self, host: &dyn Host, name: &str) -> Option<String> {
        host.request_header(name)
    }
}

impl Headers for [(String, String)] {
    fn get(&self, _: &dyn Host, name: &str) -> Option<String> {
        header(self, name).map(str::to_owned)
    }
    fn cookies(&self, _: &dyn Host) -> Vec<String> {
        self.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Headers for Vec<(String, String)> {
    fn get(&self, host: &dyn Host, name: &str) -> Option<String> {
        Headers::get(self.as_slice(), host, name)
    }
    fn cookies(&self, host: &dyn Host) -> Vec<String> {
        Headers::cookies(self.as_slice(), host)
    }
}

/// Decide the variant of a request to `ep` from its `headers`; `host` supplies randomness for
/// keyless requests.
pub fn decide<H: Headers + ?Sized>(ep: &Endpoint, headers: &H, host: &mut dyn Host) -> Decision {
    if let Some(th) = &ep.target_header {
        if let Some(target) = headers.get(&*host, th) {
            let target = target.trim();
            if !target.is_empty() {
                if let Some(i) = ep.variants.iter().position(|v| v.name == target) {
                    return Decision::Assign {
                        variant: targeted(ep, i, headers, host),
                        reason: Reason::Target,
                        set_cookie: None,
                    };
                }
                if ep.reject_unknown_target {
                    return Decision::Reject {
                        body: unknown_target_body(ep, th, target),
                    };
                }
            }
        }
    }
    if let Some(key) = sticky_key(ep, headers, &*host) {
        return sticky(ep, &key, Reason::Sticky, None);
    }
    let key = random_key(host);
    let cookie = format!("{}={}{}", ep.cookie_name, key, ep.cookie_attributes);
    sticky(ep, &key, Reason::Random, Some(cookie))
}

/// The request's sticky key: the sticky header, else the endpoint's cookie.
pub fn sticky_key<H: Headers + ?Sized>(
    ep: &Endpoint,
    headers: &H,
    host: &dyn Host,
) -> Option<String> {
    if let Some(key) = ep
        .sticky_header
        .as_ref()
        .and_then(|sh| headers.get(host, sh))
        .filter(|key| !key.is_empty())
    {
        return Some(key);
    }
    headers.cookies(host).iter().find_map(|v| {
        find_cookie(v, &ep.cookie_name)
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
    })
}

fn key_bucket(ep: &Endpoint, key: &str) -> u32 {
    bucket_of(&ep.salt, cut(key, MAX_KEY_BYTES))
}

/// The entry serving a request that targets variant `i`: during `i`'s rollout, by the
/// request's sticky key (so a keyed user always gets the same model), or for a keyless
/// request by a random bucket, i.e. the new model with probability = the moved share (see
/// [`Endpoint::targeted`]). No key or randomness is looked at otherwise.
fn targeted<H: Headers + ?Sized>(
    ep: &Endpoint,
    i: usize,
    headers: &H,
    host: &mut dyn Host,
) -> usize {
    if ep.variants.get(i).is_none_or(|v| v.rollout.is_none()) {
        return i;
    }
    let bucket = match sticky_key(ep, headers, &*host) {
        Some(key) => key_bucket(ep, &key),
        None => (host.random() % u64::from(BUCKETS)) as u32,
    };
    ep.targeted(i, bucket)
}

fn sticky(ep: &Endpoint, key: &str, reason: Reason, set_cookie: Option<String>) -> Decision {
    let bucket = key_bucket(ep, key) as usize;
    // The table has BUCKETS entries and every entry indexes a variant (to_table on a
    // validated allocation); fall back to variant 0 rather than trusting that blindly.
    let variant = ep.table.get(bucket).map_or(0, |v| *v as usize);
    let variant = if variant < ep.variants.len() {
        variant
    } else {
        0
    };
    Decision::Assign {
        variant,
        reason,
        set_cookie,
    }
}

pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), without surrounding quotes.
pub fn find_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim() == name {
            let v = v.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .unwrap_or(v),
            )
        } else {
            None
        }
    })
}

/// 128 random bits as 32 lowercase hex digits: a cookie value safe without quoting.
pub fn random_key(host: &mut dyn Host) -> String {
    format!("{:016x}{:016x}", host.random(), host.random())
}

fn unknown_target_body(ep: &Endpoint, header: &str, target: &str) -> String {
    let msg = format!("unknown variant {target:?} in header {header}");
    let msg = serde_json::to_string(&msg).unwrap_or_else(|_| "\"unknown variant\"".to_owned());
    format!(
        "{{\"error\":{msg},\"validVariants\":{}}}",
        ep.valid_variants_json
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::Compiled;
    use crate::host::MemHost;

    fn endpoint(patch: impl Fn(&str) -> String) -> Endpoint {
        let cfg = patch(include_str!("../../examples/filter-config.json"));
        Compiled::from_json(cfg.as_bytes(), &mut MemHost::default())
            .unwrap()
            .endpoints
            .remove(0)
    }

    fn ep() -> Endpoint {
        endpoint(|s| s.to_owned())
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn target_header_picks_the_named_variant() {
        let mut h = MemHost::with_request(&[("x-mlep-target-variant", "b"), ("x-user-id", "u1")]);
        assert_eq!(
            decide(&ep(), &h.request.clone(), &mut h),
            Decision::Assign {
                variant: 1,
                reason: Reason::Target,
                set_cookie: None
            }
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn unknown_target_is_rejected_with_the_valid_variants() {
        let mut h = MemHost::with_request(&[("x-mlep-target-variant", "zz\"")]);
        let Decision::Reject { body } = decide(&ep(), &h.request.clone(), &mut h) else {
            panic!("not rejected")
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["validVariants"], serde_json::json!(["a", "b"]));
        assert!(v["error"].as_str().unwrap().contains("zz"), "{body}");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn unknown_target_is_ignored_when_configured() {
        let e = endpoint(|s| s.replace("\"reject\"", "\"ignore\""));
        let mut h = MemHost::with_request(&[("x-mlep-target-variant", "zz"), ("x-user-id", "u1")]);
        assert!(matches!(
            decide(&e, &h.request.clone(), &mut h),
            Decision::Assign {
                reason: Reason::Sticky,
                ..
            }
        ));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn targeting_off_ignores_the_header() {
        let e = endpoint(|s| s.replace("\"allowTargeting\": true", "\"allowTargeting\": false"));
        let mut h = MemHost::with_request(&[("x-mlep-target-variant", "zz"), ("x-user-id", "u1")]);
        assert!(matches!(
            decide(&e, &h.request.clone(), &mut h),
            Decision::Assign {
                reason: Reason::Sticky,
                ..
            }
        ));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_same_key_gets_the_same_variant_from_header_or_cookie() {
        let e = ep();
        for i in 0..200 {
            let key = format!("user-{i}");
            let mut a = MemHost::with_request(&[("x-user-id", key.as_str())]);
            let cookie = format!("other=1; mlep-titanic={key}");
            let mut b = MemHost::with_request(&[("cookie", cookie.as_str())]);
            let (da, db) = (
                decide(&e, &a.request.clone(), &mut a),
                decide(&e, &b.request.clone(), &mut b),
            );
            assert_eq!(da, db);
            let expected = if (bucket_of("default/titanic", &key)) < 8000 {
                0
            } else {
                1
            };
            assert!(
                matches!(da, Decision::Assign { variant, reason: Reason::Sticky, .. } if variant == expected)
            );
        }
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_request_without_key_gets_a_random_key_and_a_cookie_that_sticks() {
        let e = ep();
        let mut h = MemHost::with_request(&[]);
        let Decision::Assign {
            variant,
            reason: Reason::Random,
            set_cookie: Some(c),
        } = decide(&e, &h.request.clone(), &mut h)
        else {
            panic!("no cookie")
        };
        assert!(
            c.ends_with("; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"),
            "{c}"
        );
        let pair = c.split(';').next().unwrap().to_owned();
        let mut again = MemHost::with_request(&[("cookie", pair.as_str())]);
        assert!(
            matches!(decide(&e, &again.request.clone(), &mut again), Decision::Assign { variant: v, reason: Reason::Sticky, set_cookie: None } if v == variant)
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn cookies_are_found_among_others_and_unquoted() {
        assert_eq!(find_cookie("a=1; mlep-x=\"k\"; b=2", "mlep-x"), Some("k"));
        assert_eq!(find_cookie("mlep-xy=1", "mlep-x"), None);
        assert_eq!(find_cookie("junk;;=;", "mlep-x"), None);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_cookie_is_found_in_any_of_several_cookie_headers() {
        let e = ep();
        let mut h = MemHost::with_request(&[("cookie", "a=1"), ("cookie", "mlep-titanic=k1")]);
        let mut one = MemHost::with_request(&[("cookie", "mlep-titanic=k1")]);
        let got = decide(&e, &h.request.clone(), &mut h);
        assert!(matches!(
            got,
            Decision::Assign {
                reason: Reason::Sticky,
                ..
            }
        ));
        assert_eq!(got, decide(&e, &one.request.clone(), &mut one));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn long_keys_are_cut_on_a_char_boundary() {
        let k = "é".repeat(300);
        assert!(cut(&k, MAX_KEY_BYTES).len() <= MAX_KEY_BYTES);
    }
}
