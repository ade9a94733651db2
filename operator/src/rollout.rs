//! Rollout analysis against Prometheus: the operator asks the sample the reconcile's decision
//! names (`mlep_core::reconcile::query`) over Prometheus' HTTP API (`analysis.prometheusUrl`).
//! Every decision is the core's.

use mlep_core::analysis::{promql, sample_of, vector_value, Query, Sample};
use std::time::Duration;

/// How long one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ask Prometheus at `url` every expression of `q` (blocking HTTP, off the async workers).
pub async fn query_prometheus(url: String, q: Query) -> Result<Sample, String> {
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
