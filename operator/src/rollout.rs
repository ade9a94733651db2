//! Rollout analysis against Prometheus: the operator asks the sample the reconcile's decision
//! names (`mlep_core::reconcile::query`) over Prometheus' HTTP API, at a URL its own
//! configuration allows (`mlep_core::analysis::PrometheusPolicy`). Every decision is the core's.
//! The request-rate autoscaler (`crate::autoscale`) asks through the same client.
//! A failure reaches status as one of `QueryFailure`'s fixed texts; the details (the remote's
//! answer included) go to the operator's log only.

use mlep_core::analysis::{promql, sample_of, vector_value, Query, QueryFailure, Sample};
use std::time::Duration;
use tracing::warn;

/// How long one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// What a query whose blocking task failed reports.
const INTERNAL_FAILURE: &str = "prometheus query failed: internal error";
/// The most of an answer read (a vector of one sample is a few hundred bytes).
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// The fixed failure an HTTP client error stands for.
fn failure_of(e: &ureq::Error) -> QueryFailure {
    match e {
        ureq::Error::Timeout(_) => QueryFailure::Timeout,
        ureq::Error::StatusCode(code) => QueryFailure::Status(*code),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => QueryFailure::Timeout,
        ureq::Error::Io(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
            QueryFailure::Connect
        }
        _ => QueryFailure::Unparseable,
    }
}

/// One expression, answered.
fn ask(
    agent: &ureq::Agent,
    endpoint: &str,
    expr: &str,
    at: i64,
) -> Result<Option<f64>, QueryFailure> {
    let mut resp = agent
        .get(endpoint)
        .query("query", expr)
        .query("time", at.to_string())
        .call()
        .map_err(|e| {
            warn!(%endpoint, error = %e, "prometheus query failed");
            failure_of(&e)
        })?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| {
            warn!(%endpoint, error = %e, "reading prometheus' answer failed");
            failure_of(&e)
        })?;
    if status != 200 {
        warn!(%endpoint, status, "prometheus answered with an error status");
        return Err(QueryFailure::Status(status));
    }
    vector_value(&body).inspect_err(|f| {
        let head: String = body.chars().take(200).collect();
        warn!(%endpoint, failure = %f, answer = %head, "prometheus' answer is not a sample");
    })
}

/// The HTTP client of one round of queries, and the query endpoint of Prometheus at `url`.
fn client(url: &str) -> (ureq::Agent, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(QUERY_TIMEOUT))
        .max_redirects(0)
        .build()
        .into();
    (agent, format!("{}/api/v1/query", url.trim_end_matches('/')))
}

/// Ask Prometheus at `url` one expression, evaluated at `at` (Unix seconds): its scalar,
/// `None` for an empty answer (blocking HTTP, off the async workers); a failure is one of
/// [`QueryFailure`]'s fixed texts. The autoscaler's query.
pub async fn query_value(url: String, expr: String, at: i64) -> Result<Option<f64>, String> {
    tokio::task::spawn_blocking(move || {
        let (agent, endpoint) = client(&url);
        ask(&agent, &endpoint, &expr, at).map_err(|f| f.to_string())
    })
    .await
    .map_err(|_| INTERNAL_FAILURE.to_owned())?
}

/// Ask Prometheus at `url` every expression of `q` (blocking HTTP, off the async workers).
pub async fn query_prometheus(url: String, q: Query) -> Result<Sample, String> {
    tokio::task::spawn_blocking(move || {
        let (agent, endpoint) = client(&url);
        let mut values = Vec::new();
        for (measure, expr) in promql(&q) {
            let value = ask(&agent, &endpoint, &expr, q.now_unix).map_err(|f| f.to_string())?;
            values.push((measure, value));
        }
        Ok(sample_of(&values))
    })
    .await
    .map_err(|_| INTERNAL_FAILURE.to_owned())?
}
