//! Rollout analysis in local mode: the [`AnalysisSource`] that reads local Envoy's
//! `/stats/prometheus` (parsed by the table's parser, series matched by label). Envoy's counters
//! are cumulative, so the source keeps a short history of scrapes and answers a query with the
//! difference between the newest scrape and the last one taken at or before the step started
//! (none: the counters started after it, so the baseline is zero).

use crate::table::{parse_prometheus, quantile, Sample as Series};
use mlep_contract::metrics::{
    LABEL_CODE_CLASS, LABEL_ENDPOINT, LABEL_MODEL, LABEL_NAMESPACE, LABEL_OUTCOME, LABEL_RESULT,
    LABEL_VARIANT, REQUESTS_TOTAL, REQUEST_DURATION_MS, SHADOW_AGREEMENT_TOTAL,
    SHADOW_REQUESTS_TOTAL, SHADOW_VARIANT_LABEL,
};
use mlep_core::rollout::{AnalysisSource, Query, Sample, Traffic};
use std::collections::VecDeque;

/// Scrapes older than this are dropped (longer than any step a local rollout should use).
pub const HISTORY_SECONDS: i64 = 3600;

/// Local Envoy's stats over time.
#[derive(Debug, Default)]
pub struct EnvoyStats {
    /// `(unix seconds, series)`, oldest first.
    scrapes: VecDeque<(i64, Vec<Series>)>,
}

/// Counter totals of one query's series in one scrape.
#[derive(Debug, Default, Clone, PartialEq)]
struct Totals {
    requests: f64,
    errors: f64,
    compared: f64,
    agreed: f64,
    /// Cumulative duration buckets `(le, count)`, sorted by `le`.
    buckets: Vec<(f64, f64)>,
}

/// Envoy may prefix stat names (`envoy_`); accept both.
fn named(s: &Series, metric: &str) -> bool {
    s.name == metric || s.name.strip_prefix("envoy_") == Some(metric)
}

fn label<'a>(s: &'a Series, key: &str) -> &'a str {
    s.labels.get(key).map(String::as_str).unwrap_or("")
}

impl EnvoyStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a scrape (`/stats/prometheus` text) taken at `unix` seconds.
    pub fn observe(&mut self, unix: i64, text: &str) {
        // One scrape per second is enough.
        if self.scrapes.back().is_some_and(|(t, _)| *t == unix) {
            self.scrapes.pop_back();
        }
        self.scrapes.push_back((unix, parse_prometheus(text)));
        while self
            .scrapes
            .front()
            .is_some_and(|(t, _)| *t < unix - HISTORY_SECONDS)
        {
            self.scrapes.pop_front();
        }
    }

    fn totals(series: &[Series], q: &Query) -> Totals {
        let (variant, counted) = match q.traffic {
            Traffic::Served => (q.variant.as_str(), REQUESTS_TOTAL),
            Traffic::Mirrored => (SHADOW_VARIANT_LABEL, SHADOW_REQUESTS_TOTAL),
        };
        let ours = |s: &Series| {
            label(s, LABEL_ENDPOINT) == q.endpoint
                && label(s, LABEL_NAMESPACE) == q.namespace
                && label(s, LABEL_VARIANT) == variant
                && label(s, LABEL_MODEL) == q.model
        };
        let sum = |metric: &str, keep: &dyn Fn(&Series) -> bool| -> f64 {
            series
                .iter()
                .filter(|s| named(s, metric) && ours(s) && keep(s))
                .map(|s| s.value)
                .sum()
        };
        let mut t = Totals::default();
        match q.traffic {
            Traffic::Served => {
                t.requests = sum(counted, &|_| true);
                t.errors = sum(counted, &|s| label(s, LABEL_CODE_CLASS) == "5xx");
                let bucket = format!("{REQUEST_DURATION_MS}_bucket");
                let mut b: Vec<(f64, f64)> = series
                    .iter()
                    .filter(|s| named(s, &bucket) && ours(s))
                    .filter_map(|s| {
                        let le = match label(s, "le") {
                            "+Inf" => f64::INFINITY,
                            l => l.parse().ok()?,
                        };
                        Some((le, s.value))
                    })
                    .collect();
                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                t.buckets = b;
            }
            Traffic::Mirrored => {
                t.requests = sum(counted, &|s| {
                    matches!(label(s, LABEL_OUTCOME), "ok" | "error" | "timeout")
                });
                t.errors = sum(counted, &|s| {
                    matches!(label(s, LABEL_OUTCOME), "error" | "timeout")
                });
                t.compared = sum(SHADOW_AGREEMENT_TOTAL, &|_| true);
                t.agreed = sum(SHADOW_AGREEMENT_TOTAL, &|s| {
                    label(s, LABEL_RESULT) == "match"
                });
            }
        }
        t
    }
}

impl AnalysisSource for EnvoyStats {
    fn sample(&mut self, q: &Query) -> Result<Sample, String> {
        let (_, latest) = self
            .scrapes
            .back()
            .ok_or_else(|| "no scrape of Envoy's stats yet".to_owned())?;
        let now = Self::totals(latest, q);
        let before = self
            .scrapes
            .iter()
            .rev()
            .find(|(t, _)| *t <= q.since_unix)
            .map(|(_, s)| Self::totals(s, q))
            .unwrap_or_default();
        let delta = |a: f64, b: f64| (a - b).max(0.0).round() as u64;
        let window: Vec<(f64, f64)> = now
            .buckets
            .iter()
            .map(|&(le, c)| {
                let b = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l.to_bits() == le.to_bits())
                    .map_or(0.0, |x| x.1);
                (le, (c - b).max(0.0))
            })
            .collect();
        Ok(Sample {
            requests: delta(now.requests, before.requests),
            errors: delta(now.errors, before.errors),
            p99_ms: quantile(0.99, &window),
            compared: delta(now.compared, before.compared),
            agreed: delta(now.agreed, before.agreed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"endpoint="titanic",namespace="default",variant="b",model="m3""#;

    fn scrape(ok: u64, errors: u64, le10: u64, le100: u64) -> String {
        format!(
            "# TYPE mlep_requests_total counter\n\
             mlep_requests_total{{{BASE},code_class=\"2xx\"}} {ok}\n\
             mlep_requests_total{{{BASE},code_class=\"5xx\"}} {errors}\n\
             mlep_requests_total{{endpoint=\"titanic\",namespace=\"default\",variant=\"b\",model=\"m2\",code_class=\"5xx\"}} 999\n\
             mlep_requests_total{{endpoint=\"titanic\",namespace=\"default\",variant=\"bb\",model=\"m3\",code_class=\"5xx\"}} 999\n\
             mlep_request_duration_ms_bucket{{{BASE},le=\"10\"}} {le10}\n\
             mlep_request_duration_ms_bucket{{{BASE},le=\"100\"}} {le100}\n\
             mlep_request_duration_ms_bucket{{{BASE},le=\"+Inf\"}} {le100}\n"
        )
    }

    fn query(since: i64, now: i64) -> Query {
        Query {
            endpoint: "titanic".into(),
            namespace: "default".into(),
            variant: "b".into(),
            model: "m3".into(),
            traffic: Traffic::Served,
            since_unix: since,
            now_unix: now,
        }
    }

    #[test]
    fn a_step_counts_only_its_own_requests_of_the_new_model_by_label() {
        let mut s = EnvoyStats::new();
        assert!(s.sample(&query(0, 0)).is_err(), "nothing scraped yet");
        s.observe(100, &scrape(50, 5, 50, 55));
        s.observe(160, &scrape(140, 15, 100, 155));
        let got = s.sample(&query(100, 160)).unwrap();
        // 90 more 2xx and 10 more 5xx; m2's and variant bb's series are not ours.
        assert_eq!((got.requests, got.errors), (100, 10));
        // 50 of the 100 new observations were under 10 ms, all under 100 ms.
        let p99 = got.p99_ms.unwrap();
        assert!((10.0..=100.0).contains(&p99), "{p99}");
        // A step that started before the first scrape counts from zero.
        assert_eq!(s.sample(&query(50, 160)).unwrap().requests, 155);
    }

    #[test]
    fn mirrored_traffic_reads_the_shadow_series() {
        let text = "mlep_shadow_requests_total{endpoint=\"titanic\",namespace=\"default\",variant=\"shadow\",model=\"m3\",outcome=\"ok\"} 40\n\
                    mlep_shadow_requests_total{endpoint=\"titanic\",namespace=\"default\",variant=\"shadow\",model=\"m3\",outcome=\"timeout\"} 2\n\
                    mlep_shadow_requests_total{endpoint=\"titanic\",namespace=\"default\",variant=\"shadow\",model=\"m3\",outcome=\"skipped\"} 7\n\
                    mlep_shadow_agreement_total{endpoint=\"titanic\",namespace=\"default\",variant=\"shadow\",model=\"m3\",result=\"match\"} 30\n\
                    mlep_shadow_agreement_total{endpoint=\"titanic\",namespace=\"default\",variant=\"shadow\",model=\"m3\",result=\"mismatch\"} 10\n";
        let mut s = EnvoyStats::new();
        s.observe(10, text);
        let q = Query {
            traffic: Traffic::Mirrored,
            ..query(0, 10)
        };
        let got = s.sample(&q).unwrap();
        assert_eq!(
            (got.requests, got.errors, got.compared, got.agreed),
            (42, 2, 40, 30)
        );
    }
}
