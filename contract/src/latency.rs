//! Latency broken down (SageMaker's `ModelLatency` / `OverheadLatency`): how a model server
//! tells the proxy its own processing time, and how the proxy splits a request's time into
//! the model's and its own. The model server formats ([`server_timing`]), the filter parses
//! ([`model_duration_us`]) and splits ([`split`]); both sides use this one definition.
//!
//! The report is the W3C Server Timing response header, `Server-Timing: model;dur=<ms>`
//! (<https://www.w3.org/TR/server-timing/>), not a header of our own: it is a standard that
//! servers and frameworks already emit and browsers' developer tools show, so a
//! bring-your-own container that reports its timing this way is counted without knowing
//! this project, and ours is readable by any tool. Only the entry named [`MODEL_METRIC`]
//! counts; a container without it gets the upstream time the proxy measures.

use std::time::Duration;

/// The response header (lowercase, as proxies hand header names over).
pub const SERVER_TIMING_HEADER: &str = "server-timing";
/// The Server-Timing metric name whose `dur` is the model's own time.
pub const MODEL_METRIC: &str = "model";

/// The model's time and the proxy's overhead of one request, in µs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub model_us: u64,
    pub overhead_us: u64,
}

/// The header value a model server sends for `elapsed` of its own work:
/// `model;dur=12.345` (milliseconds, as the standard says, to the microsecond).
pub fn server_timing(elapsed: Duration) -> String {
    let us = elapsed.as_micros();
    format!("{MODEL_METRIC};dur={}.{:03}", us / 1000, us % 1000)
}

/// The `dur` of the first [`MODEL_METRIC`] entry of a Server-Timing value, in µs (rounded).
/// `None` when there is no such entry or its `dur` is missing, not a number, negative or not
/// finite: the caller then uses the upstream time. Entries are comma-separated, parameters
/// `;`-separated, names compared ASCII case-insensitively, a quoted value unquoted; a comma
/// inside a quoted `desc` does not split an entry.
pub fn model_duration_us(value: &str) -> Option<u64> {
    entries(value).find_map(|entry| {
        let mut parts = entry.split(';');
        let name = parts.next()?.trim();
        if !name.eq_ignore_ascii_case(MODEL_METRIC) {
            return None;
        }
        let dur = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case("dur").then(|| v.trim())
        })?;
        let ms: f64 = dur.trim_matches('"').parse().ok()?;
        // `as` saturates: an absurdly large report becomes u64::MAX µs, which `split` clamps.
        (ms.is_finite() && ms >= 0.0).then(|| (ms * 1000.0).round() as u64)
    })
}

/// The comma-separated entries of a header value, commas inside double quotes kept.
fn entries(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = s.get(i + 1..);
                    return s.get(..i);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

/// Split a request's `total_us` in the proxy (request headers to end of stream) into the
/// model's part and the rest. `model_us` is the model server's report, or the upstream time
/// the proxy measured when there is none. Clamped: a report longer than the whole request
/// (a clock skew, a lie, a unit mistake) counts as the whole request, so overhead is never
/// negative and model latency never exceeds what the client waited.
pub fn split(total_us: u64, model_us: u64) -> Split {
    let model_us = model_us.min(total_us);
    Split {
        model_us,
        overhead_us: total_us - model_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_model_entry_is_read_in_microseconds() {
        assert_eq!(model_duration_us("model;dur=12.345"), Some(12_345));
        assert_eq!(model_duration_us("model;dur=200"), Some(200_000));
        assert_eq!(model_duration_us("model;dur=0.0004"), Some(0));
        assert_eq!(
            model_duration_us(r#"db;dur=3, Model ; desc="a, b" ; DUR = "7.5", model;dur=9"#),
            Some(7_500),
            "the first model entry, names and params case-insensitive, quotes removed"
        );
        assert_eq!(
            model_duration_us(r#"cache;desc="model;dur=1,x", model;dur=2"#),
            Some(2_000),
            "a comma inside a quoted desc does not start an entry"
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn missing_or_malformed_reports_are_none() {
        for v in [
            "",
            "model",
            "model;desc=x",
            "model;dur=",
            "model;dur=abc",
            "model;dur=-1",
            "model;dur=NaN",
            "model;dur=inf",
            "total;dur=5",
            "modelx;dur=5",
            "\"model;dur=5\"",
        ] {
            assert_eq!(model_duration_us(v), None, "{v:?}");
        }
        assert_eq!(model_duration_us("model;dur=1e300"), Some(u64::MAX));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn what_a_model_server_sends_reads_back_to_the_microsecond() {
        let d = Duration::from_micros(201_234);
        assert_eq!(server_timing(d), "model;dur=201.234");
        assert_eq!(model_duration_us(&server_timing(d)), Some(201_234));
        assert_eq!(server_timing(Duration::from_micros(7)), "model;dur=0.007");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn overhead_is_the_rest_and_never_negative() {
        assert_eq!(
            split(200_350, 200_000),
            Split {
                model_us: 200_000,
                overhead_us: 350
            }
        );
        // A report longer than the request is clamped to it: no negative overhead.
        assert_eq!(
            split(1_000, u64::MAX),
            Split {
                model_us: 1_000,
                overhead_us: 0
            }
        );
        assert_eq!(
            split(0, 0),
            Split {
                model_us: 0,
                overhead_us: 0
            }
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a container sends, parsing never panics, and the split always adds up
        /// to the total with the model part within it.
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn any_header_value_parses_without_panic_and_splits_to_the_total(
            value in "\\PC{0,80}",
            total in any::<u64>(),
        ) {
            let reported = model_duration_us(&value);
            let s = split(total, reported.unwrap_or(0));
            prop_assert!(s.model_us <= total);
            prop_assert_eq!(s.model_us + s.overhead_us, total);
        }
    }
}
