//! Latency broken down, through a real Envoy running the built filter: a model that sleeps a
//! known time shows it in `mlep_model_latency_us`, not in `mlep_overhead_latency_us`, whether
//! it reports its time (`Server-Timing: model;dur=`) or not (the upstream time counts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep_contract::metrics::{LATENCY_BUCKETS_US, MODEL_LATENCY_US, OVERHEAD_LATENCY_US};
use mlep_tests::*;
use std::time::Duration;

const HOST: &str = "titanic.local";
/// How long both upstreams sleep per request.
const SLEEP_US: f64 = 200_000.0;
const REQUESTS: f64 = 3.0;

fn labels(variant: &'static str, model: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("endpoint", "titanic"),
        ("namespace", "default"),
        ("variant", variant),
        ("model", model),
    ]
}

#[test]
fn a_model_that_sleeps_shows_it_in_model_latency_not_in_overhead() {
    let sleeper = |server_timing| Behaviour {
        delay: Duration::from_micros(SLEEP_US as u64),
        server_timing,
        ..Behaviour::default()
    };
    // `a` reports its time as the model server does; `b` is a container that does not.
    let (a, b) = (
        Upstream::with("a", sleeper(true)),
        Upstream::with("b", sleeper(false)),
    );
    let env = Env::titanic_half_and_half(HOST, &a, &b);
    let mut c = env.client();
    for _ in 0..REQUESTS as u32 {
        let r = c.post(HOST, &[("x-mlep-target-variant", "a")], b"{}");
        assert_eq!(served_by(&r), "a");
        // Not stripped: a standard header meant for clients (docs/filter.md).
        assert!(r
            .header("server-timing")
            .is_some_and(|v| v.starts_with("model;dur=")));
        // A client cannot claim a model time: the filter reads only the upstream's answer.
        let r = c.post(
            HOST,
            &[
                ("x-mlep-target-variant", "b"),
                ("server-timing", "model;dur=1"),
            ],
            b"{}",
        );
        assert_eq!(served_by(&r), "b");
    }
    for (variant, model) in [("a", "model-a"), ("b", "model-b")] {
        let base = labels(variant, model);
        let of = |metric: &str, part: &str| env.metric(&format!("{metric}_{part}"), &base);
        // Histograms reach the admin output on Envoy's stats flush (every 5 s by default).
        assert!(
            poll_until(Duration::from_secs(20), || of(MODEL_LATENCY_US, "count")
                >= REQUESTS
                && of(OVERHEAD_LATENCY_US, "count") >= REQUESTS),
            "{variant}: latency histograms flushed:\n{}",
            env.prometheus()
        );
        assert_eq!(of(MODEL_LATENCY_US, "count"), REQUESTS, "{variant}");
        // Envoy's histogram sum is approximate (log-linear bins, 2 significant digits): 1%.
        let model = of(MODEL_LATENCY_US, "sum") / REQUESTS;
        let overhead = of(OVERHEAD_LATENCY_US, "sum") / REQUESTS;
        assert!(
            model >= SLEEP_US * 0.99,
            "{variant}: model latency {model} µs per request, under the {SLEEP_US} µs sleep"
        );
        assert!(
            overhead < SLEEP_US / 4.0,
            "{variant}: overhead {overhead} µs per request is not small beside the {SLEEP_US} µs sleep"
        );
        // The µs buckets (the contract's, written by the bootstrap) are in force: every
        // overhead sample is under 50 ms, no model sample is.
        let bucket = |metric: &str, le: &str| {
            let mut l = base.to_vec();
            l.push(("le", le));
            env.metric(&format!("{metric}_bucket"), &l)
        };
        assert!(LATENCY_BUCKETS_US.contains(&50_000.0));
        assert_eq!(bucket(OVERHEAD_LATENCY_US, "50000"), REQUESTS, "{variant}");
        assert_eq!(bucket(MODEL_LATENCY_US, "50000"), 0.0, "{variant}");
        assert_eq!(bucket(MODEL_LATENCY_US, "25"), 0.0, "{variant}");
    }
}
