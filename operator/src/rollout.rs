//! Driving the rollout state machine (`mlep_core::rollout`) from reconcile: build its input
//! from the endpoint, its last status and what is ready, ask Prometheus for the sample it
//! names (HTTP API, `analysis.prometheusUrl`), and advance. Every decision is the core's.

use kube::ResourceExt;
use mlep_contract::carry_allocation;
use mlep_core::analysis::{promql, sample_of, vector_value};
use mlep_core::crd::{ModelEndpoint, ModelEndpointStatus};
use mlep_core::plan::{Observed, Plan};
use mlep_core::rollout::{self, Command, Input, Now, Outcome, Query, Sample, Settings};
use std::time::Duration;

/// How long one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One reconcile's step of the endpoint's rollout. `plan` is planning's result before the
/// rollout is put on it (its weights give the allocation routing now).
pub async fn step(
    ep: &ModelEndpoint,
    namespace: &str,
    last: Option<&ModelEndpointStatus>,
    observed: &Observed,
    plan: &Plan,
    now: &jiff::Timestamp,
) -> Outcome {
    let settings = Settings::of(ep.spec.rollout.as_ref());
    let previous = last.and_then(|s| s.allocation.as_ref());
    let Ok(allocation) = carry_allocation(previous, &plan.weights()) else {
        // Rendering reports the same weights problem with the field named.
        return Outcome::default();
    };
    let name = ep.name_any();
    let command = ep
        .annotations()
        .get(rollout::ANNOTATION)
        .and_then(|v| match Command::parse(v) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(endpoint = %name, error = %e, "ignoring annotation");
                None
            }
        });
    let input = Input {
        endpoint: &name,
        namespace,
        settings: &settings,
        variants: ep
            .spec
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.model.as_str()))
            .collect(),
        serving: last
            .map(|s| {
                s.variants
                    .iter()
                    .map(|v| (v.name.as_str(), v.model.as_str()))
                    .collect()
            })
            .unwrap_or_default(),
        ready: observed
            .deployments
            .iter()
            .filter(|(_, r)| r.ready_replicas > 0)
            .map(|((v, m), _)| (v.as_str(), m.as_str()))
            .collect(),
        allocation: &allocation,
        last: last.and_then(|s| s.rollout.as_ref()),
        command,
        now: Now {
            unix: now.as_second(),
            text: now.to_string(),
        },
    };
    let sample = match rollout::query(&input) {
        Some(q) => Some(query_prometheus(settings.prometheus_url.clone(), q).await),
        None => None,
    };
    rollout::advance(&input, sample)
}

/// Ask Prometheus every expression of `q` (blocking HTTP, off the async workers).
async fn query_prometheus(url: String, q: Query) -> Result<Sample, String> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(QUERY_TIMEOUT))
            .build()
            .into();
        let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
        let mut values = Vec::new();
        for (measure, expr) in promql(&q) {
            let mut resp = agent
                .get(&endpoint)
                .query("query", &expr)
                .query("time", q.now_unix.to_string())
                .call()
                .map_err(|e| format!("GET {endpoint}: {e}"))?;
            let body = resp
                .body_mut()
                .read_to_string()
                .map_err(|e| format!("GET {endpoint}: {e}"))?;
            values.push((measure, vector_value(&body)?));
        }
        Ok(sample_of(&values))
    })
    .await
    .map_err(|e| format!("Prometheus query task failed: {e}"))?
}
