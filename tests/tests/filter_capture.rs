//! Data capture through a real Envoy running the built filter: every sampled invocation reaches
//! the sink with the request and the response byte for byte, the sampling rate holds over
//! 5,000 requests, and a sink that dies mid-load costs no request while its drops are counted.
//! The sink here is a recording upstream (what the filter sends is the contract,
//! `mlep_contract::capture`); the sink's own tests cover what it writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep::envoy::ClusterUpstream;
use mlep_contract::capture as c;
use mlep_contract::Allocation;
use mlep_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

const HOST: &str = "titanic.local";
const SINK: &str = "mlep|titanic|capture";

/// One variant `a` (100 %), capturing `percent` of its invocations to `sink`.
fn env_with_capture(a: &Upstream, sink: SocketAddr, percent: f64) -> Env {
    let alloc = Allocation::initial(&[("a", 100)]).unwrap();
    let mut cfg = filter_config("titanic", &[("a", 100)], &alloc);
    cfg["endpoints"][0]["capture"] = serde_json::json!({
        "cluster": SINK, "authority": "sink.local", "percent": percent, "timeoutMs": 500,
        "maxPayloadBytes": 65536
    });
    let mut r = route("titanic", &[HOST], &[(a, 100)], None);
    r.capture = Some(ClusterUpstream {
        cluster: SINK.into(),
        upstream: sink,
    });
    Env::start(vec![r], &cfg)
}

fn outcome(env: &Env, outcome: &str) -> f64 {
    env.metric(
        "mlep_capture_records_total",
        &[("endpoint", "titanic"), ("outcome", outcome)],
    )
}

/// `n` POSTs on one kept-alive connection, none retried: each failure is counted (a dropped
/// connection counts as one and the next request opens another).
fn post_all(env: &Env, n: usize, body: impl Fn(usize) -> Vec<u8>) -> (usize, Vec<String>) {
    let mut client = env.client();
    let mut failures = Vec::new();
    for i in 0..n {
        let user = format!("u{i}");
        match client.try_send(
            "POST",
            HOST,
            "/invocations",
            &[
                ("x-user-id", &user),
                ("content-type", "application/octet-stream"),
            ],
            &body(i),
        ) {
            Some(r) if r.status == 200 => {}
            Some(r) => failures.push(format!("request {i}: status {}", r.status)),
            None => {
                failures.push(format!("request {i}: connection failed"));
                client = env.client();
            }
        }
    }
    (n - failures.len(), failures)
}

#[test]
fn every_captured_invocation_reaches_the_sink_byte_for_byte() {
    let answer = "{\"scores\":[0.25,0.75],\"text\":\"ünïcode\"}";
    let a = Upstream::with(
        "a",
        Behaviour {
            body: Some(answer.into()),
            ..Behaviour::default()
        },
    );
    let sink = Upstream::start("sink");
    let env = env_with_capture(&a, sink.addr, 100.0);
    // Binary, non-UTF-8 bodies of several sizes, each one different.
    let body = |i: usize| -> Vec<u8> {
        (0..(i * 37) % 3000 + 1)
            .map(|j| ((i * 7 + j) % 256) as u8)
            .collect()
    };
    let (ok, failures) = post_all(&env, 60, body);
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ok, 60);
    assert!(
        poll_until(Duration::from_secs(20), || sink.count() == 60),
        "the sink got {} of 60 records",
        sink.count()
    );
    let mut seen_users = Vec::new();
    for rec in sink.seen() {
        assert_eq!(
            (rec.method.as_str(), rec.path.as_str()),
            ("POST", c::INGEST_PATH)
        );
        let h = |name: &str| rec.headers.get(name).cloned().unwrap_or_default();
        let input_len: usize = h(c::H_INPUT_LEN).parse().unwrap();
        let (input, output) = rec.body.split_at(input_len);
        // Which request was this? The sticky key's hash names it.
        let i = (0..60)
            .find(|i| {
                format!(
                    "{:016x}",
                    mlep_contract::hash::hash_key("default/titanic", &format!("u{i}"))
                ) == h(c::H_KEY_HASH)
            })
            .unwrap_or_else(|| panic!("no user hashes to {}", h(c::H_KEY_HASH)));
        seen_users.push(i);
        assert_eq!(input, body(i).as_slice(), "request {i} as sent");
        assert_eq!(output, answer.as_bytes(), "response {i} as answered");
        assert_eq!(
            (
                h(c::H_ENDPOINT),
                h(c::H_VARIANT),
                h(c::H_MODEL),
                h(c::H_STATUS)
            ),
            ("titanic".into(), "a".into(), "model-a".into(), "200".into())
        );
        assert_eq!(h(c::H_INPUT_TYPE), "application/octet-stream");
        assert_eq!(h(c::H_OUTPUT_TYPE), "application/json");
        assert_eq!(
            rec.headers.get("host").map(String::as_str),
            Some("sink.local")
        );
        assert!(h(c::H_TIME_MS).parse::<u64>().unwrap() > 1_700_000_000_000);
    }
    seen_users.sort_unstable();
    assert_eq!(
        seen_users,
        (0..60).collect::<Vec<_>>(),
        "each invocation once"
    );
    assert!(poll_until(Duration::from_secs(10), || outcome(
        &env, "sent"
    ) == 60.0));
}

#[test]
fn the_sampling_rate_over_5000_requests_is_within_2_points() {
    let a = Upstream::start("a");
    let sink = Upstream::start("sink");
    let env = env_with_capture(&a, sink.addr, 10.0);
    let (ok, failures) = post_all(&env, 5000, |_| b"{\"x\":1}".to_vec());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ok, 5000);
    // Settled: every request counted (a stream's last count; its `queue_full` is handed over
    // with it) and every record the sink took answered.
    assert!(
        poll_until(Duration::from_secs(20), || env
            .metric("mlep_requests_total", &[])
            == 5000.0
            && outcome(&env, "sent") == sink.count() as f64
            && sink.count() > 0),
        "not settled: {} requests counted, {} sent, the sink took {}",
        env.metric("mlep_requests_total", &[]),
        outcome(&env, "sent"),
        sink.count()
    );
    let rate = sink.count() as f64 / 5000.0;
    assert!(
        (0.08..=0.12).contains(&rate),
        "captured {rate:.4} of 5000, asked 0.10"
    );
    assert_eq!(
        outcome(&env, "sink_error") + outcome(&env, "queue_full"),
        0.0
    );
}

#[test]
fn a_sink_that_dies_mid_load_fails_no_request_and_its_drops_are_counted() {
    let a = Upstream::start("a");
    let sink = Upstream::start("sink");
    let env = env_with_capture(&a, sink.addr, 100.0);
    let (ok, failures) = post_all(&env, 200, |i| format!("{{\"i\":{i}}}").into_bytes());
    assert!(failures.is_empty(), "{failures:?}");
    assert!(poll_until(Duration::from_secs(20), || outcome(
        &env, "sent"
    ) == 200.0));
    drop(sink);
    let (ok_after, failures) = post_all(&env, 300, |i| format!("{{\"i\":{i}}}").into_bytes());
    assert!(failures.is_empty(), "the primary never fails: {failures:?}");
    assert_eq!(ok + ok_after, 500);
    // Each record after the kill is accounted for, as sent (connections Envoy still had) or
    // as a sink error; none is silently lost.
    assert!(
        poll_until(Duration::from_secs(20), || outcome(&env, "sent")
            + outcome(&env, "sink_error")
            + outcome(&env, "queue_full")
            == 500.0),
        "sent {} + sink_error {} + queue_full {}",
        outcome(&env, "sent"),
        outcome(&env, "sink_error"),
        outcome(&env, "queue_full")
    );
    assert!(
        outcome(&env, "sink_error") >= 250.0,
        "{}",
        outcome(&env, "sink_error")
    );
}
