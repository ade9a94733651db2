//! Configuration handling and metrics through a real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep_contract::Allocation;
use mlep_tests::*;
use std::time::Duration;

const HOST: &str = "titanic.local";

#[test]
fn a_bad_config_is_rejected_with_a_log_line_naming_the_field_and_traffic_keeps_flowing() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let alloc = Allocation::initial(&[("a", 100), ("b", 0)]).unwrap();
    let good = filter_config("titanic", &[HOST], &[("a", 100), ("b", 0)], &alloc);
    let mut env = Env::start(
        vec![route("titanic", &[HOST], &[(&a, 100), (&b, 0)], None)],
        &good,
    );
    let mut bad = good.clone();
    bad["endpoints"][0]["variants"][1]["weight"] = 30.into();
    env.reload(&bad);
    let log = env.log();
    assert!(
        log.contains("mlep: rejecting configuration: invalid filter configuration: endpoints[0].variants: weights sum to 130"),
        "{log}"
    );
    assert_eq!(
        env.metric(
            "envoy_extension_config_discovery_http_filter_mlep_update_rejected",
            &[]
        ),
        1.0
    );
    assert!(env.metric("mlep_config_errors_total", &[]) >= 1.0);
    // Still served by the previous config: everyone on `a`, with the header set.
    let mut c = env.client();
    for i in 0..20 {
        let r = c.get(HOST, &[("x-user-id", &format!("u{i}"))]);
        assert_eq!((r.status, served_by(&r)), (200, "a".to_owned()));
        assert_eq!(r.header("x-mlep-variant"), Some("a"));
    }
    // Not JSON at all: rejected too, naming the position.
    env.reload(&serde_json::Value::String("{nope".into()));
    assert!(
        env.log()
            .contains("mlep: rejecting configuration: invalid filter configuration: line 1 column"),
        "{}",
        env.log()
    );
    assert_eq!(served_by(&c.get(HOST, &[("x-user-id", "u")])), "a");
}

#[test]
fn metrics_reach_prometheus_with_endpoint_namespace_variant_and_model_labels() {
    let (a, b) = (
        Upstream::with(
            "a",
            Behaviour {
                delay: Duration::from_millis(40),
                ..Behaviour::default()
            },
        ),
        Upstream::with(
            "b",
            Behaviour {
                status: 503,
                ..Behaviour::default()
            },
        ),
    );
    let alloc = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let cfg = filter_config("titanic", &[HOST], &[("a", 50), ("b", 50)], &alloc);
    let env = Env::start(
        vec![route("titanic", &[HOST], &[(&a, 50), (&b, 50)], None)],
        &cfg,
    );
    let mut c = env.client();
    c.get(HOST, &[("x-mlep-target-variant", "a")]);
    c.get(HOST, &[("x-mlep-target-variant", "b")]);
    c.get(HOST, &[]);
    let base_a = [
        ("endpoint", "titanic"),
        ("namespace", "default"),
        ("variant", "a"),
        ("model", "model-a"),
    ];
    let base_b = [
        ("endpoint", "titanic"),
        ("namespace", "default"),
        ("variant", "b"),
        ("model", "model-b"),
    ];
    let with = |base: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
        let mut v = base.to_vec();
        v.push(extra);
        v
    };
    // Per-request counters reach Envoy on the root's flush tick (at most FLUSH_EVERY_MS late).
    assert!(
        poll_until(Duration::from_secs(5), || env
            .metric("mlep_requests_total", &[])
            == 3.0),
        "3 requests counted: {}",
        env.metric("mlep_requests_total", &[])
    );
    assert_eq!(
        env.metric(
            "mlep_assignments_total",
            &with(&base_a, ("reason", "target"))
        ),
        1.0
    );
    assert_eq!(
        env.metric(
            "mlep_assignments_total",
            &with(&base_b, ("reason", "target"))
        ),
        1.0
    );
    assert_eq!(
        env.metric("mlep_assignments_total", &[("reason", "random")]),
        1.0
    );
    assert!(env.metric("mlep_requests_total", &with(&base_b, ("code_class", "5xx"))) >= 1.0);
    assert!(env.metric("mlep_requests_total", &with(&base_a, ("code_class", "2xx"))) >= 1.0);
    assert_eq!(env.metric("mlep_requests_total", &[]), 3.0);
    // Histograms are merged on Envoy's stats flush (every 5 s by default).
    assert!(
        poll_until(Duration::from_secs(15), || env
            .metric("mlep_request_duration_ms_count", &base_a)
            >= 1.0),
        "duration histogram"
    );
    // `a` answers after 40 ms: the recorded duration (Envoy's own stream timing) shows it.
    let sum = env.metric("mlep_request_duration_ms_sum", &base_a);
    assert!(
        (40.0..1000.0).contains(&sum),
        "duration sum {sum} ms for one 40 ms request"
    );
    let text = env.prometheus();
    assert!(
        !text.contains("wasmcustom"),
        "every filter stat had its tags extracted"
    );
    assert!(text.contains("# TYPE mlep_request_duration_ms histogram"));
}
