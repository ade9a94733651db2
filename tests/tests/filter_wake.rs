//! Scale to zero through a real Envoy: the filter holds a sleeping variant's requests, wakes
//! it (a wake call, then a probe of the variant's own cluster through Envoy) and lets them go
//! with their body, answers 503 naming the variant when it does not wake in time, and leaves
//! other variants alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep::envoy::{variant_cluster, ClusterUpstream, RouteVariant};
use mlep_contract::Allocation;
use mlep_tests::*;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HOST: &str = "titanic.local";
const WAKE_CLUSTER: &str = "mlep|wake";
const WAKE_PATH: &str = "/wake/default/titanic/b";

/// Endpoint `titanic`: `a` served by `a`, `b` asleep with its servers at `b_addr` (nothing
/// may listen there yet), woken through `wake`.
fn env(a: &Upstream, b_addr: SocketAddr, wake: &Upstream, timeout_ms: u32) -> Env {
    let weights = [("a", 50), ("b", 50)];
    let alloc = Allocation::initial(&weights).unwrap();
    let mut cfg = filter_config("titanic", &weights, &alloc);
    cfg["endpoints"][0]["routing"]["allowTargeting"] = true.into();
    cfg["endpoints"][0]["variants"][1]["asleep"] = serde_json::json!({
        "cluster": WAKE_CLUSTER, "authority": "mlep-operator.mlep-system", "path": WAKE_PATH,
        "probeCluster": variant_cluster("titanic", "b"), "probeAuthority": "titanic-b",
        "timeoutMs": timeout_ms
    });
    let mut ep = route("titanic", &[HOST], &[(a, 50)], None);
    ep.variants.push(RouteVariant {
        name: "b".into(),
        weight: 50,
        upstream: b_addr,
        rollout_upstream: None,
    });
    // A cluster only the filter calls, as the capture sink's is.
    ep.capture = Some(ClusterUpstream {
        cluster: WAKE_CLUSTER.into(),
        upstream: wake.addr,
    });
    Env::start(vec![ep], &cfg)
}

/// A wake server that runs `on_wake` on every wake call, and, like the control plane, takes a
/// moment to answer a `retry=1` call.
fn wake_server(on_wake: impl Fn() + Send + Sync + 'static) -> Upstream {
    Upstream::with_hook(
        "wake",
        Behaviour {
            body: Some("{}".into()),
            ..Behaviour::default()
        },
        Arc::new(move |seen: &Seen| {
            if seen.method == "POST" && seen.path.starts_with(WAKE_PATH) {
                on_wake();
            }
            if seen.path.contains("retry=1") {
                std::thread::sleep(Duration::from_millis(100));
            }
        }),
    )
}

fn invoke_b(c: &mut Client, body: &[u8]) -> Response {
    c.send(
        "POST",
        HOST,
        "/invocations",
        &[
            ("x-mlep-target-variant", "b"),
            ("content-type", "application/json"),
        ],
        body,
    )
}

fn invocations(u: &Upstream) -> Vec<Seen> {
    u.seen()
        .into_iter()
        .filter(|s| s.path == "/invocations")
        .collect()
}

#[test]
fn a_sleeping_variants_request_is_held_until_it_wakes_then_served_with_its_body() {
    let a = Upstream::start("a");
    let b_addr = dead_addr();
    let b: Arc<Mutex<Option<Upstream>>> = Arc::default();
    let b2 = b.clone();
    let wake = wake_server(move || {
        let mut b = b2.lock().unwrap();
        if b.is_none() {
            *b = Some(Upstream::at("b", b_addr, Behaviour::default()));
        }
    });
    let env = env(&a, b_addr, &wake, 10_000);
    let mut c = env.client();
    let body: Vec<u8> = format!("{{\"rows\": [{}]}}", "1.5, ".repeat(5_000) + "2").into_bytes();
    let r = invoke_b(&mut c, &body);
    assert_eq!(
        (r.status, served_by(&r)),
        (200, "b".to_owned()),
        "{}",
        r.body
    );
    let calls = wake.count();
    assert!(calls >= 1, "the wake server was called");
    let seen = invocations(b.lock().unwrap().as_ref().unwrap());
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body, "the body reached the model intact");
    assert_eq!(
        seen[0].headers.get("x-mlep-variant").map(String::as_str),
        Some("b"),
        "routed by the header the filter set before holding"
    );

    // Right after: the VM remembers the variant is awake, so no new wake call.
    let r = invoke_b(&mut c, b"{\"rows\": [1]}");
    assert_eq!((r.status, served_by(&r)), (200, "b".to_owned()));
    assert_eq!(wake.count(), calls, "no wake call for a variant just woken");
    assert_eq!(invocations(b.lock().unwrap().as_ref().unwrap()).len(), 2);
    // One hold, counted once as woken (the second request was not held).
    let woken = || env.metric("mlep_wake_holds_total", &[("outcome", "woken")]);
    assert!(
        poll_until(Duration::from_secs(10), || woken() == 1.0),
        "mlep_wake_holds_total{{outcome=\"woken\"}} is {}",
        woken()
    );
}

#[test]
fn while_a_variant_wakes_another_variants_requests_answer_at_once_without_a_wake_call() {
    let a = Upstream::start("a");
    let b_addr = dead_addr();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let b: Arc<Mutex<Option<Upstream>>> = Arc::default();
    let b2 = b.clone();
    // The wake answers once the test says so (the variant's scale-up taking its time).
    let wake = wake_server(move || {
        let _ = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20));
        let mut b = b2.lock().unwrap();
        if b.is_none() {
            *b = Some(Upstream::at("b", b_addr, Behaviour::default()));
        }
    });
    let env = env(&a, b_addr, &wake, 30_000);
    let addr = env.addr;
    let held = std::thread::spawn(move || invoke_b(&mut Client::new(addr), b"{\"x\": 1}"));
    assert!(
        poll_until(Duration::from_secs(10), || wake.count() == 1),
        "the held request asked for a wake"
    );
    let t = Instant::now();
    let r = env.client().send(
        "POST",
        HOST,
        "/invocations",
        &[("x-mlep-target-variant", "a")],
        b"{\"x\": 2}",
    );
    assert_eq!((r.status, served_by(&r)), (200, "a".to_owned()));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!held.is_finished(), "b's request is still held");
    assert_eq!(wake.count(), 1, "a's request made no wake call");
    release.send(()).unwrap();
    let r = held.join().unwrap();
    assert_eq!((r.status, served_by(&r)), (200, "b".to_owned()));
    assert_eq!(a.count(), 1);
}

#[test]
fn a_variant_that_does_not_wake_in_time_answers_503_naming_it() {
    let a = Upstream::start("a");
    let b_addr = dead_addr();
    // Says it woke the variant, but nothing ever listens at its address: every probe fails.
    let wake = wake_server(|| {});
    let env = env(&a, b_addr, &wake, 1_500);
    let t = Instant::now();
    let r = invoke_b(&mut env.client(), b"{\"x\": 1}");
    let waited = t.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (v["endpoint"].as_str(), v["variant"].as_str()),
        (Some("titanic"), Some("b"))
    );
    assert_eq!(
        v["error"].as_str(),
        Some("variant \"b\" of endpoint \"titanic\" did not wake within 1500 ms")
    );
    // Held for the hold's time (not failed at the first failed probe); asked again meanwhile.
    assert!(waited >= Duration::from_millis(1_000), "{waited:?}");
    let retried = wake
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("?retry=1"))
        .count();
    assert!(retried >= 1, "{:?}", wake.seen());
    assert_eq!(a.count(), 0);
    let timed_out = || env.metric("mlep_wake_holds_total", &[("outcome", "timed_out")]);
    assert!(
        poll_until(Duration::from_secs(10), || timed_out() == 1.0),
        "mlep_wake_holds_total{{outcome=\"timed_out\"}} is {}",
        timed_out()
    );
}
