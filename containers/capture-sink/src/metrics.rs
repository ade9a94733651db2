//! The sink's counters (`mlep_contract::capture::sink_metrics`) and their Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use mlep_contract::capture::sink_metrics::{
    BUFFERED_BYTES, DROPPED, FILES, RECEIVED, STORE_ERRORS, WRITTEN,
};
use mlep_contract::metrics::{LABEL_ENDPOINT, LABEL_REASON};

/// Why records were lost (the `reason` label of `DROPPED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// The request was malformed or too large (400, 413).
    BadRequest,
    /// Refused with 503: holding it would have put the buffer over its bound.
    BufferFull,
    /// The destination kept failing and the file was given up.
    StoreError,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadRequest => "bad_request",
            DropReason::BufferFull => "buffer_full",
            DropReason::StoreError => "store_error",
        }
    }
}

#[derive(Default)]
struct Counters {
    received: BTreeMap<String, u64>,
    written: BTreeMap<String, u64>,
    dropped: BTreeMap<(String, DropReason), u64>,
    files: u64,
    store_errors: u64,
}

#[derive(Default)]
pub struct Metrics(Mutex<Counters>);

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Counters) -> R) -> R {
        // Counters stay meaningful after a panic elsewhere: keep counting.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn received(&self, endpoint: &str) {
        self.with(|c| *c.received.entry(endpoint.to_owned()).or_default() += 1);
    }

    /// One file of `records` records of `endpoint` written.
    pub fn written(&self, endpoint: &str, records: u64) {
        self.with(|c| {
            *c.written.entry(endpoint.to_owned()).or_default() += records;
            c.files += 1;
        });
    }

    pub fn dropped(&self, endpoint: &str, reason: DropReason, records: u64) {
        self.with(|c| *c.dropped.entry((endpoint.to_owned(), reason)).or_default() += records);
    }

    pub fn store_error(&self) {
        self.with(|c| c.store_errors += 1);
    }

    /// The text exposition format, with the buffer gauge's current value.
    pub fn render(&self, buffered_bytes: u64) -> String {
        let mut out = String::new();
        self.with(|c| {
            header(
                &mut out,
                RECEIVED,
                "counter",
                "Records accepted for writing.",
            );
            for (endpoint, n) in &c.received {
                sample(&mut out, RECEIVED, &[(LABEL_ENDPOINT, endpoint)], *n);
            }
            header(
                &mut out,
                WRITTEN,
                "counter",
                "Records written to the destination.",
            );
            for (endpoint, n) in &c.written {
                sample(&mut out, WRITTEN, &[(LABEL_ENDPOINT, endpoint)], *n);
            }
            header(&mut out, DROPPED, "counter", "Records lost, by reason.");
            for ((endpoint, reason), n) in &c.dropped {
                let labels = [
                    (LABEL_ENDPOINT, endpoint.as_str()),
                    (LABEL_REASON, reason.as_str()),
                ];
                sample(&mut out, DROPPED, &labels, *n);
            }
            header(
                &mut out,
                FILES,
                "counter",
                "Files written to the destination.",
            );
            sample(&mut out, FILES, &[], c.files);
            header(
                &mut out,
                STORE_ERRORS,
                "counter",
                "Failed writes to the destination.",
            );
            sample(&mut out, STORE_ERRORS, &[], c.store_errors);
        });
        header(
            &mut out,
            BUFFERED_BYTES,
            "gauge",
            "Bytes of records held in memory.",
        );
        sample(&mut out, BUFFERED_BYTES, &[], buffered_bytes);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
}

use mlep_contract::metrics::escape_label_value as escape;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use mlep::table::{parse_prometheus, sum_of};

    #[test]
    fn counters_render_by_label_and_label_values_are_escaped() {
        let m = Metrics::default();
        m.received("titanic");
        m.received("titanic");
        m.received("odd\"name\\\n");
        m.written("titanic", 2);
        m.written("titanic", 1);
        m.dropped("titanic", DropReason::BufferFull, 4);
        m.dropped("", DropReason::BadRequest, 1);
        m.store_error();
        let text = m.render(1234);
        let s = parse_prometheus(&text);
        assert_eq!(sum_of(&s, RECEIVED, &[("endpoint", "titanic")]), 2.0);
        assert_eq!(sum_of(&s, RECEIVED, &[("endpoint", "odd\"name\\\n")]), 1.0);
        assert_eq!(sum_of(&s, WRITTEN, &[("endpoint", "titanic")]), 3.0);
        assert_eq!(sum_of(&s, FILES, &[]), 2.0);
        assert_eq!(
            sum_of(
                &s,
                DROPPED,
                &[("endpoint", "titanic"), ("reason", "buffer_full")]
            ),
            4.0
        );
        assert_eq!(sum_of(&s, DROPPED, &[("reason", "bad_request")]), 1.0);
        assert_eq!(sum_of(&s, STORE_ERRORS, &[]), 1.0);
        assert_eq!(sum_of(&s, BUFFERED_BYTES, &[]), 1234.0);
        // Every sample line belongs to a metric with HELP and TYPE, and the escaped value
        // keeps the sample on one line.
        assert_eq!(s.len(), 8, "{text}");
        for name in [
            RECEIVED,
            WRITTEN,
            DROPPED,
            FILES,
            STORE_ERRORS,
            BUFFERED_BYTES,
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains(r#"endpoint="odd\"name\\\n""#), "{text}");
    }
}
