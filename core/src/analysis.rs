//! Rollout analysis against Prometheus, the pure half: the PromQL of a [`Query`] and the
//! reading of Prometheus' HTTP API answers. The operator sends the requests
//! (`GET <prometheusUrl>/api/v1/query?query=...&time=...`), the way Flagger queries its metric
//! providers.
//!
//! Metric names are matched with and without Envoy's `envoy_` prefix (`/stats/prometheus`
//! exports the filter's stats as `mlep_*` with the contract's stats tags; some setups prefix
//! them), and labels by name.

use mlep_contract::metrics::{
    LABEL_CODE_CLASS, LABEL_ENDPOINT, LABEL_MODEL, LABEL_NAMESPACE, LABEL_OUTCOME, LABEL_RESULT,
    LABEL_VARIANT, REQUESTS_TOTAL, REQUEST_DURATION_MS, SHADOW_AGREEMENT_TOTAL,
    SHADOW_REQUESTS_TOTAL, SHADOW_VARIANT_LABEL,
};

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
fn selector(metric: &str, labels: &[(&str, &str)], extra: &str) -> String {
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
/// for an empty vector or NaN (no data in the window). An error answer or malformed JSON is an
/// error naming what Prometheus said.
pub fn vector_value(body: &str) -> Result<Option<f64>, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not a Prometheus API answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus: {} {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("(no message)")
        ));
    }
    let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Ok(None);
    };
    let text = first["value"][1]
        .as_str()
        .ok_or_else(|| "Prometheus answer without a sample value".to_owned())?;
    let x: f64 = text
        .parse()
        .map_err(|_| format!("Prometheus sample {text:?} is not a number"))?;
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
        assert_eq!(
            vector_value(bad),
            Err("Prometheus: bad_data parse error at char 5".into())
        );
        assert!(vector_value("<html>").is_err());
        let s = sample_of(&[
            (Measure::Requests, Some(99.6)),
            (Measure::Errors, None),
            (Measure::P99, Some(12.5)),
        ]);
        assert_eq!((s.requests, s.errors, s.p99_ms), (100, 0, Some(12.5)));
    }
}
