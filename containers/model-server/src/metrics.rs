//! Prometheus text metrics, hand-rolled (a few counters and one histogram do not need a crate).
//!
//! - `mlep_model_server_requests_total{path, code}` counter
//! - `mlep_model_server_request_duration_seconds{path}` histogram (`/invocations` only)
//! - `mlep_model_server_errors_total{reason}` counter (reason = error code of 4xx/5xx replies)
//! - `mlep_model_server_predictions_total` counter (rows predicted)
//! - `mlep_model_server_model_loaded` gauge, with `model` label when loaded

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds, seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    predictions: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    pub fn request(&self, path: &'static str, code: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((path, code)).or_default() += 1;
        }
    }

    pub fn error(&self, reason: &'static str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn predictions(&self, rows: usize) {
        self.predictions.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, loaded_model: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP mlep_model_server_requests_total HTTP requests by path and status code."
        );
        let _ = writeln!(out, "# TYPE mlep_model_server_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((path, code), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "mlep_model_server_requests_total{{path=\"{path}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlep_model_server_errors_total Error replies by reason."
        );
        let _ = writeln!(out, "# TYPE mlep_model_server_errors_total counter");
        if let Ok(m) = self.errors.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "mlep_model_server_errors_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlep_model_server_predictions_total Rows predicted."
        );
        let _ = writeln!(out, "# TYPE mlep_model_server_predictions_total counter");
        let _ = writeln!(
            out,
            "mlep_model_server_predictions_total {}",
            self.predictions.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP mlep_model_server_request_duration_seconds Latency of /invocations."
        );
        let _ = writeln!(
            out,
            "# TYPE mlep_model_server_request_duration_seconds histogram"
        );
        for (i, le) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "mlep_model_server_request_duration_seconds_bucket{{path=\"/invocations\",le=\"{le}\"}} {n}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "mlep_model_server_request_duration_seconds_bucket{{path=\"/invocations\",le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "mlep_model_server_request_duration_seconds_sum{{path=\"/invocations\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "mlep_model_server_request_duration_seconds_count{{path=\"/invocations\"}} {count}"
        );
        let _ = writeln!(
            out,
            "# HELP mlep_model_server_model_loaded 1 once the model is loaded."
        );
        let _ = writeln!(out, "# TYPE mlep_model_server_model_loaded gauge");
        match loaded_model {
            Some(id) => {
                let _ = writeln!(out, "mlep_model_server_model_loaded{{model=\"{id}\"}} 1");
            }
            None => {
                let _ = writeln!(out, "mlep_model_server_model_loaded 0");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counters_render() {
        let m = Metrics::default();
        m.latency(Duration::from_micros(800));
        m.latency(Duration::from_millis(30));
        m.request("/invocations", 200);
        m.request("/invocations", 200);
        m.error("missing_field");
        let text = m.render(Some("titanic:v1"));
        assert!(text.contains("le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2\n"), "{text}");
        assert!(text
            .contains("mlep_model_server_requests_total{path=\"/invocations\",code=\"200\"} 2\n"));
        assert!(text.contains("mlep_model_server_errors_total{reason=\"missing_field\"} 1\n"));
        assert!(text.contains("mlep_model_server_model_loaded{model=\"titanic:v1\"} 1\n"));
    }
}
