//! From a ModelEndpoint to the filter's configuration (the `mlep-contract` types). The operator
//! and local mode both call this; only the shadow target differs between them
//! ([`ShadowTarget::istio`] / [`ShadowTarget::local`]).

use crate::crd::ModelEndpointSpec;
use crate::envoy::ShadowTarget;
use crate::validate::SpecError;
use mlep_contract::config::{DEFAULT_MAX_BODY_BYTES, DEFAULT_SHADOW_TIMEOUT_MS};
use mlep_contract::{
    carry_allocation, Allocation, CompareConfig, CompareMode, EndpointConfig, RoutingConfig,
    ShadowConfig, VariantConfig,
};

/// Default absolute tolerance of JSON comparison in the API (`spec.shadow.tolerance`).
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// Build one endpoint's filter config.
///
/// `weights` are the weights to route with now, in variant order (the spec's weights once
/// every variant is ready; see the operator's planning for how they lag). The allocation is
/// derived from `previous` when there is one, so users move only as the weight change demands.
pub fn endpoint_config(
    name: &str,
    namespace: &str,
    spec: &ModelEndpointSpec,
    weights: &[(&str, u32)],
    previous: Option<&Allocation>,
    shadow_target: Option<ShadowTarget>,
) -> Result<EndpointConfig, SpecError> {
    let allocation = carry_allocation(previous, weights)
        .map_err(|e| SpecError::invalid("spec.variants", e.to_string()))?;
    let variants = spec
        .variants
        .iter()
        .map(|v| VariantConfig {
            name: v.name.clone(),
            model: v.model.clone(),
            weight: weights
                .iter()
                .find(|(n, _)| *n == v.name)
                .map(|(_, w)| *w)
                .unwrap_or(0),
            rollout: None,
        })
        .collect();
    let r = &spec.routing;
    let routing = RoutingConfig {
        target_header: r
            .target_header
            .clone()
            .unwrap_or_else(|| mlep_contract::metrics::DEFAULT_TARGET_HEADER.to_owned()),
        allow_targeting: r.allow_targeting.unwrap_or(true),
        unknown_target: r.unknown_target.unwrap_or_default(),
        sticky: r.sticky.clone(),
    };
    let shadow = match (&spec.shadow, shadow_target) {
        (Some(s), Some(t)) => Some(ShadowConfig {
            cluster: t.cluster,
            authority: Some(t.authority),
            model: s.model.clone(),
            percent: s.percent,
            variant: None,
            max_body_bytes: s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            timeout_ms: s.timeout_ms.unwrap_or(DEFAULT_SHADOW_TIMEOUT_MS),
            forward_credentials: s.forward_credentials.unwrap_or(false),
            compare: CompareConfig {
                // The API compares JSON by default; a config without `compare` does not compare.
                mode: s.compare.unwrap_or(CompareMode::Json),
                tolerance: s.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            },
        }),
        _ => None,
    };
    let cfg = EndpointConfig {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        hosts: spec.hosts.clone(),
        variants,
        allocation,
        routing,
        shadow,
    };
    Ok(cfg)
}

/// The spec's own weights, in variant order.
pub fn spec_weights(spec: &ModelEndpointSpec) -> Vec<(&str, u32)> {
    spec.variants
        .iter()
        .map(|v| (v.name.as_str(), v.weight))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ShadowSpec, VariantSpec};
    use mlep_contract::{FilterConfig, CONFIG_VERSION};

    fn spec() -> ModelEndpointSpec {
        let mut s = ModelEndpointSpec::new(
            vec!["titanic.example.com".into()],
            vec![
                VariantSpec::new("a", "titanic-v1", 80),
                VariantSpec::new("b", "titanic-v2", 20),
            ],
        );
        s.shadow = Some(ShadowSpec::new("titanic-v2", 5.0));
        s
    }

    fn target() -> Option<ShadowTarget> {
        Some(ShadowTarget {
            cluster: "shadow".into(),
            authority: "titanic-shadow".into(),
        })
    }

    #[test]
    fn rendered_config_passes_the_filters_own_validation() {
        let s = spec();
        let ep =
            endpoint_config("titanic", "default", &s, &spec_weights(&s), None, target()).unwrap();
        let cfg = FilterConfig {
            version: CONFIG_VERSION,
            endpoints: vec![ep],
        };
        let parsed = FilterConfig::from_json(&serde_json::to_vec(&cfg).unwrap()).unwrap();
        let ep = &parsed.endpoints[0];
        assert_eq!(ep.cookie_name(), "mlep-titanic");
        assert_eq!(ep.shadow.as_ref().unwrap().compare.mode, CompareMode::Json);
        assert_eq!(ep.allocation.counts()["a"], 8000);
    }

    #[test]
    fn weight_change_carries_the_previous_allocation_forward() {
        let s = spec();
        let first = endpoint_config(
            "titanic",
            "default",
            &s,
            &[("a", 80), ("b", 20)],
            None,
            None,
        )
        .unwrap();
        let second = endpoint_config(
            "titanic",
            "default",
            &s,
            &[("a", 70), ("b", 30)],
            Some(&first.allocation),
            None,
        )
        .unwrap();
        // Every bucket of b stays b; exactly 1,000 of a's move.
        let moved = (0..10_000u32)
            .filter(|&b| first.allocation.lookup(b) != second.allocation.lookup(b))
            .inspect(|&b| {
                assert_eq!(
                    (first.allocation.lookup(b), second.allocation.lookup(b)),
                    (Some("a"), Some("b"))
                )
            })
            .count();
        assert_eq!(moved, 1000);
        assert_eq!(second.variants[1].weight, 30);
    }

    #[test]
    fn shadow_is_omitted_without_a_target_cluster() {
        let s = spec();
        let ep = endpoint_config("titanic", "default", &s, &spec_weights(&s), None, None).unwrap();
        assert!(ep.shadow.is_none());
    }
}
