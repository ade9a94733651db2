//! Operator metrics in the Prometheus text format: reconciles, failures by reason, reconcile
//! duration, API writes, wake calls and waits; and each endpoint's state read from the controller's cache at every
//! scrape (`mlep_core::observe`). Plain atomics and a mutex; no registry crate needed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use kube::runtime::reflector::Store;
use mlep_core::crd::ModelEndpoint;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    writes: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    duration: Mutex<Histogram>,
    /// The controller's cache of endpoints, once it runs.
    endpoints: OnceLock<Store<ModelEndpoint>>,
    /// Wake calls answered, by status code (`crate::wake`).
    wake_calls: Mutex<BTreeMap<u16, u64>>,
    /// Waits for a variant's ready pod started (calls that came during one shared it).
    wake_waits: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; 11],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.duration.lock() {
            let s = took.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += s;
            h.count += 1;
        }
    }

    /// Export the state of the endpoints in `store` (the controller's cache) from now on.
    pub fn observe_endpoints(&self, store: Store<ModelEndpoint>) {
        let _ = self.endpoints.set(store);
    }

    pub fn failure(&self, reason: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(reason.to_owned()).or_default() += 1;
        }
    }

    /// One create/update/patch/delete sent to the API server.
    pub fn write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// One wake call answered with `code`.
    pub fn wake_call(&self, code: u16) {
        if let Ok(mut w) = self.wake_calls.lock() {
            *w.entry(code).or_default() += 1;
        }
    }

    /// One wait for a variant's ready pod started.
    pub fn wake_wait(&self) {
        self.wake_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP mlep_operator_reconciles_total Reconciles run.\n# TYPE mlep_operator_reconciles_total counter");
        let _ = writeln!(out, "mlep_operator_reconciles_total {}", self.reconciles());
        let _ = writeln!(out, "# HELP mlep_operator_api_writes_total Writes sent to the API server (apply, status, delete).\n# TYPE mlep_operator_api_writes_total counter");
        let _ = writeln!(out, "mlep_operator_api_writes_total {}", self.writes());
        let _ = writeln!(out, "# HELP mlep_operator_reconcile_failures_total Failed reconciles by reason.\n# TYPE mlep_operator_reconcile_failures_total counter");
        if let Ok(f) = self.failures.lock() {
            for (reason, n) in f.iter() {
                let _ = writeln!(
                    out,
                    "mlep_operator_reconcile_failures_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP mlep_operator_reconcile_duration_seconds Reconcile duration.\n# TYPE mlep_operator_reconcile_duration_seconds histogram");
        if let Ok(h) = self.duration.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "mlep_operator_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "mlep_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "mlep_operator_reconcile_duration_seconds_sum {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mlep_operator_reconcile_duration_seconds_count {}",
                h.count
            );
        }
        let _ = writeln!(out, "# HELP mlep_operator_wake_calls_total Wake calls from proxies holding a request for a sleeping variant, by answer.\n# TYPE mlep_operator_wake_calls_total counter");
        if let Ok(w) = self.wake_calls.lock() {
            for (code, n) in w.iter() {
                let _ = writeln!(out, "mlep_operator_wake_calls_total{{code=\"{code}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP mlep_operator_wake_waits_total Waits for a variant's ready pod; wake calls that come while one runs share it.\n# TYPE mlep_operator_wake_waits_total counter");
        let waits = self.wake_waits.load(Ordering::Relaxed);
        let _ = writeln!(out, "mlep_operator_wake_waits_total {waits}");
        if let Some(store) = self.endpoints.get() {
            let all = store.state();
            out.push_str(&mlep_core::observe::exposition(all.iter().map(|e| &**e)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_reconciles_failures_by_reason_and_durations() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(20));
        m.reconciled(Duration::from_secs(3));
        m.failure("ApiError");
        m.write();
        m.wake_call(200);
        m.wake_call(200);
        m.wake_call(503);
        m.wake_wait();
        let text = m.render();
        assert!(text.contains("mlep_operator_wake_calls_total{code=\"200\"} 2\n"));
        assert!(text.contains("mlep_operator_wake_calls_total{code=\"503\"} 1\n"));
        assert!(text.contains("mlep_operator_wake_waits_total 1\n"));
        assert!(
            text.contains("mlep_operator_reconciles_total 2\n"),
            "{text}"
        );
        assert!(text.contains("mlep_operator_reconcile_failures_total{reason=\"ApiError\"} 1\n"));
        assert!(text.contains("mlep_operator_reconcile_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("mlep_operator_reconcile_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("mlep_operator_api_writes_total 1\n"));
    }
}
