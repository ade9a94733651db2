//! Rollout analysis against Prometheus, the pure half: the PromQL of a [`Query`] and the
//! reading of Prometheus' HTTP API answers. The operator sends the requests
//! (`GET <prometheusUrl>/api/v1/query?query=...&time=...`), the way Flagger queries its metric
//! providers.
//!
//! Metric names are matched with and without Envoy's `envoy_` prefix (`/stats/prometheus`
//! exports the filter's stats as `mlep_*` with the contract's stats tags; some setups prefix
//! them), and labels by name.
//!
//! Which Prometheus is the operator's choice, not a tenant's ([`PrometheusPolicy`]): an
//! endpoint may name one of the allowed URLs in `analysis.prometheusUrl`, any other is an
//! invalid spec and is never contacted. What a failed query puts in status is one of the fixed
//! texts of [`QueryFailure`], never the remote's answer.

use crate::crd::ModelEndpointSpec;
use crate::validate::SpecError;
use mlep_contract::metrics::{
    LABEL_CODE_CLASS, LABEL_ENDPOINT, LABEL_MODEL, LABEL_NAMESPACE, LABEL_OUTCOME, LABEL_RESULT,
    LABEL_VARIANT, REQUESTS_TOTAL, REQUEST_DURATION_MS, SHADOW_AGREEMENT_TOTAL,
    SHADOW_REQUESTS_TOTAL, SHADOW_VARIANT_LABEL,
};

/// Where the operator's rollout analysis may send queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusPolicy {
    /// Queried when an endpoint names none (`--prometheus-url`).
    pub default_url: String,
    /// Other URLs an endpoint may name (`--prometheus-allowed-urls`); the default is always
    /// allowed.
    pub allowed: Vec<String>,
}

/// Istio's Prometheus add-on (`samples/addons/prometheus.yaml`): the operator's default.
pub const DEFAULT_PROMETHEUS_URL: &str = "http://prometheus.istio-system.svc:9090";

impl Default for PrometheusPolicy {
    fn default() -> Self {
        Self {
            default_url: DEFAULT_PROMETHEUS_URL.to_owned(),
            allowed: Vec::new(),
        }
    }
}

/// A URL as compared against the allow-list: without trailing slashes.
fn normal(url: &str) -> &str {
    url.trim().trim_end_matches('/')
}

impl PrometheusPolicy {
    /// The Prometheus to query for `spec`: the one it names if the policy allows it, else the
    /// default; naming one the policy does not allow is an error naming the field.
    pub fn url_for(&self, spec: &ModelEndpointSpec) -> Result<String, SpecError> {
        let named = spec
            .rollout
            .as_ref()
            .and_then(|r| r.analysis.as_ref())
            .and_then(|a| a.prometheus_url.as_deref());
        let Some(url) = named else {
            return Ok(self.default_url.clone());
        };
        let allowed = std::iter::once(&self.default_url)
            .chain(&self.allowed)
            .any(|a| normal(a) == normal(url));
        if allowed {
            Ok(url.to_owned())
        } else {
            Err(SpecError::invalid(
                "spec.rollout.analysis.prometheusUrl",
                format!(
                    "{url:?} is not a Prometheus this operator may query (its \
                     --prometheus-allowed-urls); omit the field to use the operator's default"
                ),
            ))
        }
    }
}

/// Why a Prometheus query failed, as written into status: fixed texts only (a remote's answer
/// never reaches a tenant through status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryFailure {
    #[error("prometheus query failed: timeout")]
    Timeout,
    #[error("prometheus query failed: connection failed")]
    Connect,
    #[error("prometheus query failed: HTTP {0}")]
    Status(u16),
    #[error("prometheus query failed: unparseable response")]
    Unparseable,
    #[error("prometheus query failed: error answer")]
    ErrorAnswer,
}

/// Which traffic of the new model a step judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Requests it served (`mlep_requests_total`, `mlep_request_duration_ms`).
    Served,
    /// Mirrored copies (`mlep_shadow_requests_total`, `mlep_shadow_agreement_total`).
    Mirrored,
}

/// What to measure: the new model's traffic on one variant since the step started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub endpoint: String,
    pub namespace: String,
    pub variant: String,
    pub model: String,
    pub traffic: Traffic,
    pub since_unix: i64,
    pub now_unix: i64,
}

/// What was measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    /// 5xx answers (mirrored: errors and timeouts).
    pub errors: u64,
    pub p99_ms: Option<f64>,
    /// Mirrored answers compared with the primary's, and how many agreed.
    pub compared: u64,
    pub agreed: u64,
}

/// Where samples come from: local mode's Envoy stats, the operator's Prometheus, a fake in
/// tests.
pub trait AnalysisSource {
    fn sample(&mut self, query: &Query) -> Result<Sample, String>;
}

/// Which part of a [`Sample`] a PromQL expression measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Requests,
    Errors,
    P99,
    Compared,
    Agreed,
}

/// A label value inside a PromQL string literal.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `{__name__=~"(envoy_)?<metric>", endpoint="...", ...}`.
pub(crate) fn selector(metric: &str, labels: &[(&str, &str)], extra: &str) -> String {
    let mut s = format!("{{__name__=~\"(envoy_)?{metric}\"");
    for (k, v) in labels {
        s.push_str(&format!(",{k}={}", quoted(v)));
    }
    s.push_str(extra);
    s.push('}');
    s
}

/// The PromQL expressions answering `q`, over the window since the step started (at least
/// one second), evaluated at `q.now_unix`.
pub fn promql(q: &Query) -> Vec<(Measure, String)> {
    let window = (q.now_unix - q.since_unix).max(1);
    let increase = |sel: String| format!("sum(increase({sel}[{window}s]))");
    match q.traffic {
        Traffic::Served => {
            let labels = [
                (LABEL_ENDPOINT, q.endpoint.as_str()),
                (LABEL_NAMESPACE, q.namespace.as_str()),
                (LABEL_VARIANT, q.variant.as_str()),
                (LABEL_MODEL, q.model.as_str()),
            ];
            let bucket = format!("{REQUEST_DURATION_MS}_bucket");
            vec![
                (
                    Measure::Requests,
                    increase(selector(REQUESTS_TOTAL, &labels, "")),
                ),
                (
                    Measure::Errors,
                    increase(selector(
                        REQUESTS_TOTAL,
                        &labels,
                        &format!(",{LABEL_CODE_CLASS}=\"5xx\""),
                    )),
                ),
                (
                    Measure::P99,
                    format!(
                        "histogram_quantile(0.99, sum by (le) (increase({}[{window}s])))",
                        selector(&bucket, &labels, "")
                    ),
                ),
            ]
        }
        Traffic::Mirrored => {
            let labels = [
                (LABEL_ENDPOINT, q.endpoint.as_str()),
                (LABEL_NAMESPACE, q.namespace.as_str()),
                (LABEL_VARIANT, SHADOW_VARIANT_LABEL),
                (LABEL_MODEL, q.model.as_str()),
            ];
            vec![
                (
                    Measure::Requests,
                    increase(selector(
                        SHADOW_REQUESTS_TOTAL,
                        &labels,
                        &format!(",{LABEL_OUTCOME}=~\"ok|error|timeout\""),
                    )),
                ),
                (
                    Measure::Errors,
                    increase(selector(
                        SHADOW_REQUESTS_TOTAL,
                        &labels,
                        &format!(",{LABEL_OUTCOME}=~\"error|timeout\""),
                    )),
                ),
                (
                    Measure::Compared,
                    increase(selector(SHADOW_AGREEMENT_TOTAL, &labels, "")),
                ),
                (
                    Measure::Agreed,
                    increase(selector(
                        SHADOW_AGREEMENT_TOTAL,
                        &labels,
                        &format!(",{LABEL_RESULT}=\"match\""),
                    )),
                ),
            ]
        }
    }
}

/// The scalar of an instant-vector answer of `/api/v1/query`: the first sample's value, `None`
/// for an empty vector or NaN (no data in the window). An error answer or malformed JSON is a
/// [`QueryFailure`] (the operator logs the body; status gets the fixed text).
pub fn vector_value(body: &str) -> Result<Option<f64>, QueryFailure> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|_| QueryFailure::Unparseable)?;
    if v["status"] != "success" {
        return Err(QueryFailure::ErrorAnswer);
    }
    let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Ok(None);
    };
    let x: f64 = first["value"][1]
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or(QueryFailure::Unparseable)?;
    Ok(x.is_finite().then_some(x))
}

/// Assemble a sample from measured values (`increase` is fractional; counts round).
pub fn sample_of(values: &[(Measure, Option<f64>)]) -> Sample {
    let mut s = Sample::default();
    let count = |x: Option<f64>| x.map_or(0, |v| v.max(0.0).round() as u64);
    for (m, v) in values {
        match m {
            Measure::Requests => s.requests = count(*v),
            Measure::Errors => s.errors = count(*v),
            Measure::P99 => s.p99_ms = *v,
            Measure::Compared => s.compared = count(*v),
            Measure::Agreed => s.agreed = count(*v),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(traffic: Traffic) -> Query {
        Query {
            endpoint: "titanic".into(),
            namespace: "ml".into(),
            variant: "b".into(),
            model: "m3".into(),
            traffic,
            since_unix: 1000,
            now_unix: 1090,
        }
    }

    #[test]
    fn served_traffic_is_selected_by_label_over_the_steps_window() {
        let q = promql(&query(Traffic::Served));
        assert_eq!(
            q[0].1,
            "sum(increase({__name__=~\"(envoy_)?mlep_requests_total\",endpoint=\"titanic\",namespace=\"ml\",variant=\"b\",model=\"m3\"}[90s]))"
        );
        assert!(q[1].1.contains("code_class=\"5xx\""), "{}", q[1].1);
        assert!(
            q[2].1.starts_with("histogram_quantile(0.99, sum by (le) (increase({__name__=~\"(envoy_)?mlep_request_duration_ms_bucket\""),
            "{}",
            q[2].1
        );
    }

    #[test]
    fn mirrored_traffic_reads_the_shadow_series_of_the_new_model() {
        let q = promql(&query(Traffic::Mirrored));
        let measures: Vec<Measure> = q.iter().map(|(m, _)| *m).collect();
        assert_eq!(
            measures,
            vec![
                Measure::Requests,
                Measure::Errors,
                Measure::Compared,
                Measure::Agreed
            ]
        );
        assert!(q
            .iter()
            .all(|(_, e)| e.contains("variant=\"shadow\",model=\"m3\"")));
        assert!(q[3].1.contains("result=\"match\""));
    }

    #[test]
    fn api_answers_become_values_and_errors_say_why() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1090,"41.99"]}]}}"#;
        assert_eq!(vector_value(ok), Ok(Some(41.99)));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(vector_value(empty), Ok(None));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert_eq!(vector_value(nan), Ok(None));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(vector_value(bad), Err(QueryFailure::ErrorAnswer));
        assert_eq!(vector_value("<html>"), Err(QueryFailure::Unparseable));
        let text = r#"{"status":"success","data":{"result":[{"value":[1,"lots"]}]}}"#;
        assert_eq!(vector_value(text), Err(QueryFailure::Unparseable));
        let s = sample_of(&[
            (Measure::Requests, Some(99.6)),
            (Measure::Errors, None),
            (Measure::P99, Some(12.5)),
        ]);
        assert_eq!((s.requests, s.errors, s.p99_ms), (100, 0, Some(12.5)));
    }

    fn endpoint_naming(url: Option<&str>) -> ModelEndpointSpec {
        let mut spec = ModelEndpointSpec::new(vec!["m.example.com".into()], vec![]);
        spec.rollout = Some(crate::crd::RolloutSpec {
            analysis: Some(crate::crd::AnalysisSpec {
                prometheus_url: url.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        });
        spec
    }

    #[test]
    fn the_prometheus_queried_is_the_default_or_one_the_operator_allows() {
        let policy = PrometheusPolicy {
            default_url: "http://prom.monitoring:9090".into(),
            allowed: vec!["http://thanos.monitoring:9090/".into()],
        };
        assert_eq!(
            policy.url_for(&endpoint_naming(None)),
            Ok("http://prom.monitoring:9090".into())
        );
        let no_rollout = ModelEndpointSpec::new(vec!["m.example.com".into()], vec![]);
        assert_eq!(
            policy.url_for(&no_rollout),
            Ok("http://prom.monitoring:9090".into())
        );
        for ok in [
            "http://prom.monitoring:9090/",
            "http://thanos.monitoring:9090",
        ] {
            assert_eq!(policy.url_for(&endpoint_naming(Some(ok))), Ok(ok.into()));
        }
        for other in [
            "http://169.254.169.254/latest/meta-data",
            "http://prom.monitoring:9091",
            "http://thanos.monitoring:9090/api/v1/query?x=",
        ] {
            let e = policy.url_for(&endpoint_naming(Some(other))).unwrap_err();
            assert_eq!(e.field, "spec.rollout.analysis.prometheusUrl", "{other}");
            assert_eq!(e.reason, crate::crd::conditions::REASON_INVALID_SPEC);
        }
    }

    #[test]
    fn query_failures_read_as_short_fixed_texts() {
        assert_eq!(
            QueryFailure::Timeout.to_string(),
            "prometheus query failed: timeout"
        );
        assert_eq!(
            QueryFailure::Status(500).to_string(),
            "prometheus query failed: HTTP 500"
        );
        assert_eq!(
            QueryFailure::Unparseable.to_string(),
            "prometheus query failed: unparseable response"
        );
    }
}
