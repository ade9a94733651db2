//! The operator's gauges of each endpoint's state (`mlep_contract::metrics::operator`), read
//! from the endpoints' statuses: what dashboards and alert rules need beside the filter's
//! traffic metrics (conditions for "rolled back" and "crash-looping" alerts, rollout progress,
//! and the Deployment of each running model to join the kubelet's per-pod CPU and memory).
//! Pure: the operator renders them from its cache at every scrape, so they never go stale.

use crate::crd::ModelEndpoint;
use crate::render::deployment_name;
use kube_core::ResourceExt;
use mlep_contract::metrics::operator::{
    ENDPOINT_CONDITION, LABEL_DEPLOYMENT, LABEL_FROM_MODEL, LABEL_PHASE, LABEL_STATUS,
    LABEL_TO_MODEL, LABEL_TYPE, MODEL_DEPLOYMENT_INFO, ROLLOUT_MOVED_PERCENT, SHADOW_MIRRORED_INFO,
};
use mlep_contract::metrics::{LABEL_ENDPOINT, LABEL_MODEL, LABEL_NAMESPACE, LABEL_VARIANT};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// One sample: metric name, labels (in exposition order), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub metric: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// The series of one endpoint; none before its first status.
pub fn endpoint_series(ep: &ModelEndpoint) -> Vec<Series> {
    let Some(status) = ep.status.as_ref() else {
        return Vec::new();
    };
    let ns = ep.namespace().unwrap_or_default();
    let name = ep.name_any();
    let base = || {
        vec![
            (LABEL_NAMESPACE, ns.clone()),
            (LABEL_ENDPOINT, name.clone()),
        ]
    };
    let mut out = Vec::new();
    for c in &status.conditions {
        let mut labels = base();
        labels.extend([
            (LABEL_TYPE, c.type_.clone()),
            (LABEL_STATUS, c.status.clone()),
            (mlep_contract::metrics::LABEL_REASON, c.reason.clone()),
        ]);
        out.push(Series {
            metric: ENDPOINT_CONDITION,
            labels,
            value: 1.0,
        });
    }
    // Every (variant, model) with a Deployment: the serving ones, and a rollout's other model.
    let mut running: BTreeSet<(String, String)> = status
        .variants
        .iter()
        .map(|v| (v.name.clone(), v.model.clone()))
        .collect();
    if let Some(r) = status.rollout.as_ref().filter(|r| r.active()) {
        running.insert((r.variant.clone(), r.from_model.clone()));
        running.insert((r.variant.clone(), r.to_model.clone()));
        let mut labels = base();
        labels.extend([
            (LABEL_VARIANT, r.variant.clone()),
            (LABEL_FROM_MODEL, r.from_model.clone()),
            (LABEL_TO_MODEL, r.to_model.clone()),
            (LABEL_PHASE, format!("{:?}", r.phase)),
        ]);
        out.push(Series {
            metric: ROLLOUT_MOVED_PERCENT,
            labels,
            value: f64::from(r.moved_percent),
        });
    }
    // The shadow whose copies Envoy's mirror sends, as `crate::aggregate` serves it: compare
    // Off where routes are patched, or a sample compared once the applied routes have twins.
    let twins = ep.status.as_ref().is_some_and(|s| s.mirror_twins);
    let mirrored = (ep.spec.mirrored_shadow()).filter(|s| !s.compares_a_sample() || twins);
    if let Some(s) = mirrored.filter(|_| ep.spec.filter_wiring.patches_routes()) {
        let mut labels = base();
        labels.push((LABEL_MODEL, s.model.clone()));
        out.push(Series {
            metric: SHADOW_MIRRORED_INFO,
            labels,
            value: 1.0,
        });
    }
    for (variant, model) in running {
        let mut labels = base();
        labels.extend([
            (LABEL_DEPLOYMENT, deployment_name(&name, &variant, &model)),
            (LABEL_VARIANT, variant),
            (LABEL_MODEL, model),
        ]);
        out.push(Series {
            metric: MODEL_DEPLOYMENT_INFO,
            labels,
            value: 1.0,
        });
    }
    out
}

/// Prometheus text exposition of every endpoint's series, grouped by metric (one `# TYPE`
/// each, as the format requires).
pub fn exposition<'a>(endpoints: impl IntoIterator<Item = &'a ModelEndpoint>) -> String {
    let mut all: Vec<Series> = endpoints.into_iter().flat_map(endpoint_series).collect();
    all.sort_by(|a, b| a.metric.cmp(b.metric).then_with(|| a.labels.cmp(&b.labels)));
    let mut out = String::new();
    let mut last = "";
    for s in &all {
        if s.metric != last {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} gauge",
                s.metric,
                help(s.metric),
                s.metric
            );
            last = s.metric;
        }
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(out, "{}{{{}}} {}", s.metric, labels.join(","), s.value);
    }
    out
}

fn help(metric: &str) -> &'static str {
    match metric {
        ENDPOINT_CONDITION => "A ModelEndpoint status condition (1 per condition).",
        ROLLOUT_MOVED_PERCENT => "Percent of a rolling-out variant's users on its new model.",
        SHADOW_MIRRORED_INFO => "An endpoint whose shadow Envoy's own mirror copies.",
        _ => "A Deployment of a model an endpoint runs (joins cAdvisor metrics by pod).",
    }
}

use mlep_contract::metrics::escape_label_value as escape;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Condition, ModelEndpointStatus, Phase, RolloutStatus, VariantStatus};

    fn endpoint() -> ModelEndpoint {
        let spec = serde_json::from_value(serde_json::json!({
            "hosts": [], "variants": [{"name": "a", "model": "m1", "weight": 50}, {"name": "b", "model": "m3", "weight": 50}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut ep = ModelEndpoint::new("titanic", spec);
        ep.metadata.namespace = Some("ml".into());
        ep
    }

    #[test]
    fn no_status_no_series() {
        assert_eq!(exposition([&endpoint()]), "");
    }

    #[test]
    fn conditions_rollout_progress_and_every_running_models_deployment_are_gauges() {
        let mut ep = endpoint();
        ep.status = Some(ModelEndpointStatus {
            conditions: vec![Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: "RolledBack".into(),
                message: "m\"3\" failed".into(),
                ..Condition::default()
            }],
            variants: ["a", "b"]
                .iter()
                .zip(["m1", "m2"])
                .map(|(v, m)| VariantStatus {
                    name: (*v).into(),
                    model: m.into(),
                    ..VariantStatus::default()
                })
                .collect(),
            rollout: Some(RolloutStatus {
                phase: Phase::Progressing,
                variant: "b".into(),
                from_model: "m2".into(),
                to_model: "m3".into(),
                moved_percent: 25,
                ..RolloutStatus::default()
            }),
            ..ModelEndpointStatus::default()
        });
        let text = exposition([&ep]);
        for line in [
            "# TYPE mlep_endpoint_condition gauge",
            "mlep_endpoint_condition{namespace=\"ml\",endpoint=\"titanic\",type=\"Degraded\",status=\"True\",reason=\"RolledBack\"} 1",
            "mlep_rollout_moved_percent{namespace=\"ml\",endpoint=\"titanic\",variant=\"b\",from_model=\"m2\",to_model=\"m3\",phase=\"Progressing\"} 25",
            "mlep_model_deployment_info{namespace=\"ml\",endpoint=\"titanic\",deployment=\"titanic-a-m1\",variant=\"a\",model=\"m1\"} 1",
            "mlep_model_deployment_info{namespace=\"ml\",endpoint=\"titanic\",deployment=\"titanic-b-m2\",variant=\"b\",model=\"m2\"} 1",
            "mlep_model_deployment_info{namespace=\"ml\",endpoint=\"titanic\",deployment=\"titanic-b-m3\",variant=\"b\",model=\"m3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE").count(),
            3,
            "one TYPE line per metric:\n{text}"
        );
        // Once the rollout is over, neither its gauge nor the old model's Deployment stays.
        if let Some(s) = ep.status.as_mut() {
            if let Some(r) = s.rollout.as_mut() {
                r.phase = Phase::RolledBack;
            }
        }
        let text = exposition([&ep]);
        assert!(!text.contains("mlep_rollout_moved_percent{"), "{text}");
        assert!(!text.contains("titanic-b-m3"), "{text}");
    }

    #[test]
    fn only_a_shadow_envoy_mirrors_is_marked_for_the_recording_rules() {
        let mut ep = endpoint();
        ep.status = Some(ModelEndpointStatus::default());
        let marked = |ep: &ModelEndpoint| {
            exposition([ep])
                .lines()
                .filter(|l| l.starts_with("mlep_shadow_mirrored_info{"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        ep.spec.shadow =
            serde_json::from_value(serde_json::json!({"model": "m9", "percent": 5.0})).ok();
        assert!(marked(&ep).is_empty(), "a compared shadow is the filter's");
        ep.spec.shadow = serde_json::from_value(
            serde_json::json!({"model": "m9", "percent": 5.0, "compare": "Off"}),
        )
        .ok();
        assert_eq!(
            marked(&ep),
            ["mlep_shadow_mirrored_info{namespace=\"ml\",endpoint=\"titanic\",model=\"m9\"} 1"]
        );
        ep.spec.filter_wiring = crate::crd::FilterWiring::WasmPlugin;
        assert!(marked(&ep).is_empty(), "a WasmPlugin's filter copies");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
