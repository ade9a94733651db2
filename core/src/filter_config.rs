//! From a ModelEndpoint to the filter's configuration (the `mlep-contract` types). The operator
//! and local mode both call this; only the shadow target differs between them
//! ([`CallTarget::istio`] / [`CallTarget::local`]).

use crate::crd::{CaptureMode, DataCaptureSpec, ModelEndpointSpec};
use crate::envoy::{CallTarget, EndpointRoute};
use crate::meta::SERVICE_PORT;
use crate::validate::SpecError;
use mlep_contract::config::{
    DEFAULT_CAPTURE_MAX_PAYLOAD_BYTES, DEFAULT_CAPTURE_TIMEOUT_MS, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SHADOW_TIMEOUT_MS,
};
use mlep_contract::rollout::RolloutSplit;
use mlep_contract::{
    carry_allocation, Allocation, CaptureConfig, CompareConfig, CompareMode, EndpointConfig,
    RoutingConfig, ShadowConfig, VariantConfig,
};

/// Default absolute tolerance of JSON comparison in the API (`spec.shadow.tolerance`).
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// Where the filter calls out for an endpoint: its shadow's Service and its capture sink
/// (`None`: the endpoint has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub shadow: Option<CallTarget>,
    pub capture: Option<CallTarget>,
}

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
    targets: Targets,
    route: EndpointRoute,
) -> Result<EndpointConfig, SpecError> {
    let Targets {
        shadow: shadow_target,
        capture: capture_target,
    } = targets;
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
            asleep: None,
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
            // A spec accepted before the cap (by an older operator) serves on with the cap: a
            // new spec above it is refused (`crate::validate`), an old one must not leave the
            // shared filter over it.
            max_body_bytes: (s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES))
                .min(mlep_contract::config::MAX_SHADOW_BODY_BYTES),
            timeout_ms: s.timeout_ms.unwrap_or(DEFAULT_SHADOW_TIMEOUT_MS),
            forward_credentials: s.forward_credentials.unwrap_or(false),
            compare: CompareConfig {
                // The API compares JSON by default; a config without `compare` does not compare.
                mode: s.compare.unwrap_or(CompareMode::Json),
                tolerance: s.tolerance.unwrap_or(DEFAULT_TOLERANCE),
                percent: s.compare_percent.unwrap_or(100.0),
            },
            // The routes rendered from this spec have mirroring twins for the uncompared copies
            // (`crate::mirror::NativeMirror::take`); the shared filter also asks the status.
            mirror_routes: spec.renders_mirror_twins(),
        }),
        _ => None,
    };
    let capture = capture_config(spec.data_capture.as_ref(), capture_target);
    let cfg = EndpointConfig {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        virtual_hosts: route.virtual_hosts,
        route_key: route.key,
        variants,
        allocation,
        routing,
        shadow,
        capture,
    };
    Ok(cfg)
}

/// The filter's capture settings of an endpoint whose `dataCapture` is on.
fn capture_config(d: Option<&DataCaptureSpec>, t: Option<CallTarget>) -> Option<CaptureConfig> {
    let (d, t) = (d.filter(|d| d.enabled())?, t?);
    let wants = |m| d.capture.is_empty() || d.capture.contains(&m);
    Some(CaptureConfig {
        cluster: t.cluster,
        authority: Some(t.authority),
        percent: d.sampling_percent,
        request: wants(CaptureMode::Input),
        response: wants(CaptureMode::Output),
        max_payload_bytes: d
            .max_payload_bytes
            .unwrap_or(DEFAULT_CAPTURE_MAX_PAYLOAD_BYTES),
        content_types: d.content_types.clone(),
        timeout_ms: DEFAULT_CAPTURE_TIMEOUT_MS,
    })
}

/// The spec's own weights, in variant order.
pub fn spec_weights(spec: &ModelEndpointSpec) -> Vec<(&str, u32)> {
    spec.variants
        .iter()
        .map(|v| (v.name.as_str(), v.weight))
        .collect()
}

/// A mirror of one variant's traffic to its new model (BlueGreen bake).
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub variant: String,
    pub model: String,
    pub percent: f64,
}

impl Mirror {
    /// The filter's shadow entry for this bake: copies of the variant's traffic to `cluster`
    /// (the new model's servers), compared as JSON with the default tolerance. Local mode and
    /// the operator differ only in the cluster and authority.
    pub fn shadow_config(&self, cluster: String, authority: String) -> mlep_contract::ShadowConfig {
        use mlep_contract::config::{DEFAULT_MAX_BODY_BYTES, DEFAULT_SHADOW_TIMEOUT_MS};
        mlep_contract::ShadowConfig {
            cluster,
            authority: Some(authority),
            model: self.model.clone(),
            percent: self.percent,
            variant: Some(self.variant.clone()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            timeout_ms: DEFAULT_SHADOW_TIMEOUT_MS,
            forward_credentials: false,
            compare: mlep_contract::CompareConfig {
                mode: mlep_contract::CompareMode::Json,
                tolerance: DEFAULT_TOLERANCE,
                // A bake compares every copy: minAgreement is judged on how many were.
                percent: 100.0,
            },
            mirror_routes: false,
        }
    }
}

/// What rendering needs of a rollout (carried on `crate::plan::Plan`).
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    pub variant: String,
    /// Models whose Deployments run for the variant (replaces planning's choice).
    pub models: Option<Vec<String>>,
    /// The filter split of the variant.
    pub split: Option<RolloutSplit>,
    /// The BlueGreen bake's mirror.
    pub mirror: Option<Mirror>,
    /// The model with its own subset and route (`x-mlep-variant` + `x-mlep-model`).
    pub route_model: Option<String>,
}

/// Put a rollout on an endpoint's filter entry: the variant's own entry is labelled with the
/// model it serves (`serving`: the old one until the rollout promotes), the split with the new
/// one; a BlueGreen mirror goes to the new model's subset cluster (`outbound|80|<subset>|<fqdn>`,
/// Istio's name for a DestinationRule subset's cluster). One function for the per-endpoint
/// render and the shared filter rebuilt from status ([`crate::aggregate::served_config`]).
pub fn apply_rollout(
    mut endpoint: EndpointConfig,
    r: &RolloutPlan,
    serving: Option<&str>,
    fqdn: &str,
) -> EndpointConfig {
    if let Some(v) = endpoint.variants.iter_mut().find(|v| v.name == r.variant) {
        if let Some(model) = serving {
            v.model = model.to_owned();
        }
        v.rollout = r.split.clone();
    }
    if let Some(m) = &r.mirror {
        let subset = crate::envoy::subset_name(&m.variant, &m.model);
        endpoint.shadow = Some(m.shadow_config(
            format!("outbound|{SERVICE_PORT}|{subset}|{fqdn}"),
            fqdn.to_owned(),
        ));
    }
    endpoint
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

    fn target() -> Option<CallTarget> {
        Some(CallTarget {
            cluster: "shadow".into(),
            authority: "titanic-shadow".into(),
        })
    }

    fn route() -> EndpointRoute {
        EndpointRoute {
            virtual_hosts: vec!["titanic.default.svc.cluster.local:80".into()],
            key: "filter-config-test-key".into(),
        }
    }

    #[test]
    fn rendered_config_passes_the_filters_own_validation() {
        let s = spec();
        let ep = endpoint_config(
            "titanic",
            "default",
            &s,
            &spec_weights(&s),
            None,
            Targets {
                shadow: target(),
                capture: None,
            },
            route(),
        )
        .unwrap();
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
            Targets {
                shadow: None,
                capture: None,
            },
            route(),
        )
        .unwrap();
        let second = endpoint_config(
            "titanic",
            "default",
            &s,
            &[("a", 70), ("b", 30)],
            Some(&first.allocation),
            Targets {
                shadow: None,
                capture: None,
            },
            route(),
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
        let ep = endpoint_config(
            "titanic",
            "default",
            &s,
            &spec_weights(&s),
            None,
            Targets {
                shadow: None,
                capture: None,
            },
            route(),
        )
        .unwrap();
        assert!(ep.shadow.is_none());
    }
}
