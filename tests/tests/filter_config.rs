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
    let good = filter_config("titanic", &[("a", 100), ("b", 0)], &alloc);
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
    assert_eq!(env.rejected_updates(), 1.0);
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
    let env = Env::titanic_half_and_half(HOST, &a, &b);
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

/// Property: a config reload under load never drops or mis-assigns a request. Two configs send
/// everyone to `a` or everyone to `b`; while 4 clients send requests without pause, the config
/// is swapped 8 times. Every request must be answered 200 by the variant that its own
/// `x-mlep-variant` names (assigned by the old config or the new one, never by neither), and
/// both configs must have served.
#[test]
fn a_config_reload_under_load_never_drops_or_misassigns_a_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let to = |w: [(&str, u32); 2]| {
        let alloc = Allocation::initial(&w).unwrap();
        filter_config("titanic", &w, &alloc)
    };
    let (all_a, all_b) = (to([("a", 100), ("b", 0)]), to([("a", 0), ("b", 100)]));
    let mut env = Env::start(
        vec![route("titanic", &[HOST], &[(&a, 50), (&b, 50)], None)],
        &all_a,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (addr, stop) = (env.addr, Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut seen = Vec::new();
                // Bounded: the reloads below take a few seconds; 20 000 requests is a backstop.
                for i in 0..20_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // One attempt each: a retry would hide a dropped request.
                    let key = format!("t{t}-{i}");
                    let r = c
                        .try_send("GET", HOST, "/invocations", &[("x-user-id", &key)], b"")
                        .unwrap_or_else(|| panic!("request {key} was dropped"));
                    seen.push((
                        r.status,
                        r.header("x-mlep-variant").map(str::to_owned),
                        r.body,
                    ));
                }
                seen
            })
        })
        .collect();
    for i in 0..8 {
        env.reload(if i % 2 == 0 { &all_b } else { &all_a });
    }
    stop.store(true, Ordering::SeqCst);
    let seen: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let mut by = std::collections::BTreeMap::new();
    for (status, header, body) in &seen {
        assert_eq!(*status, 200, "{body}");
        let header = header.as_deref().expect("every request was assigned");
        assert_eq!(
            format!("{{\"variant\":\"{header}\"}}"),
            *body,
            "served where assigned"
        );
        *by.entry(header.to_owned()).or_insert(0) += 1;
    }
    assert_eq!(by.len(), 2, "both configs served during the run: {by:?}");
    println!("{} requests across 8 reloads: {by:?}", seen.len());
    assert_eq!(
        a.count() + b.count(),
        seen.len() as u64,
        "every answered request reached exactly one upstream"
    );
    assert_eq!(
        env.metric(
            "envoy_extension_config_discovery_http_filter_mlep_update_success",
            &[]
        ),
        8.0 + 1.0,
        "initial config + 8 reloads accepted"
    );
}
