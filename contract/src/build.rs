//! Which build of the filter can serve a configuration.
//!
//! The filter comes in two builds over the same pure core (`filter/src`): the proxy-wasm
//! module (`mlep_filter.wasm`), which serves everything, and the Envoy dynamic module
//! (`filter/native`, `libmlep_filter_native.so`), native code with no VM boundary, which
//! serves the request path (assignment, targeting and its 400s, cookies, rollouts' moved
//! users, every request metric) and the shadow copies the filter sends and compares. Capture
//! records and requests held while a variant wakes are the Wasm build's alone for now: the
//! dynamic module refuses a configuration that asks for them (Envoy then keeps the last good
//! one), and whoever renders Envoy's config picks the build with [`build_for`].

use crate::config::{EndpointConfig, FilterConfig};

/// A build of the filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterBuild {
    /// The Envoy dynamic module: the request path natively.
    Native,
    /// The proxy-wasm module: everything.
    Wasm,
}

/// What in a configuration only the Wasm build serves, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {endpoint} uses {feature}, which only the Wasm build of the filter serves")]
pub struct NeedsWasm {
    /// `<namespace>/<name>`.
    pub endpoint: String,
    pub feature: &'static str,
}

/// The first thing in `cfg` the native build cannot serve, if any.
pub fn needs_wasm(cfg: &FilterConfig) -> Option<NeedsWasm> {
    cfg.endpoints.iter().find_map(|e| {
        endpoint_needs_wasm(e).map(|feature| NeedsWasm {
            endpoint: format!("{}/{}", e.namespace, e.name),
            feature,
        })
    })
}

/// What in one endpoint's entry only the Wasm build serves, if anything.
pub fn endpoint_needs_wasm(e: &EndpointConfig) -> Option<&'static str> {
    if e.capture.is_some() {
        Some("data capture")
    } else if e.variants.iter().any(|v| v.asleep.is_some()) {
        Some("scale to zero (requests held while a variant wakes)")
    } else {
        None
    }
}

/// The build that serves `cfg` at least cost: native unless something needs Wasm.
pub fn build_for(cfg: &FilterConfig) -> FilterBuild {
    match needs_wasm(cfg) {
        Some(_) => FilterBuild::Wasm,
        None => FilterBuild::Native,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> FilterConfig {
        let cfg = include_str!("../../examples/filter-config.json");
        FilterConfig::from_json(cfg.as_bytes()).unwrap()
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_request_path_and_compared_shadows_are_served_natively_and_what_needs_wasm_is_named() {
        let cfg = example();
        assert!(
            cfg.endpoints[0].shadow.is_some(),
            "the example compares a shadow"
        );
        assert_eq!(build_for(&cfg), FilterBuild::Native);

        let mut asleep = cfg.clone();
        asleep.endpoints[0].variants[1].asleep = Some(crate::WakeConfig {
            cluster: "wake".into(),
            authority: "wake".into(),
            path: "/wake".into(),
            probe_cluster: "b".into(),
            probe_authority: "b".into(),
            timeout_ms: 1000,
        });
        let needs = needs_wasm(&asleep).unwrap();
        assert_eq!(needs.endpoint, "default/titanic");
        assert!(needs.to_string().contains("only the Wasm build"), "{needs}");
        assert_eq!(
            needs.feature,
            "scale to zero (requests held while a variant wakes)"
        );
        assert_eq!(build_for(&asleep), FilterBuild::Wasm);
    }
}
