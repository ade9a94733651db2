//! Shadowing through a real Envoy, on each build of the filter (the Wasm module sends copies
//! from its root context, the native module from Envoy's main thread): copies arrive intact
//! and without credentials, a slow or dead shadow does not touch the primary, and agreement
//! is recorded under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep_contract::Allocation;
use mlep_tests::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HOST: &str = "titanic.local";
const SHADOW: &str = "mlep|titanic|shadow";

/// Each test below runs once per build: `<test>::wasm` and `<test>::native`.
macro_rules! on_both_builds {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn wasm() {
                super::$name(super::Build::Wasm)
            }
            #[test]
            fn native() {
                super::$name(super::Build::Native)
            }
        }
    )*};
}

on_both_builds!(
    the_shadow_receives_method_path_and_body_intact_without_credentials,
    a_copy_leaves_while_its_request_is_in_flight,
    a_slow_or_dead_shadow_leaves_primary_status_and_latency_unchanged,
    agreement_is_recorded_for_at_least_99_percent_of_sampled_requests_under_load,
    a_sampled_comparison_copies_every_request_and_compares_its_share,
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    Wasm,
    Native,
}

/// One variant `a` (100%) and a shadow at `shadow` mirroring `percent` with `compare`, on
/// `build`.
fn env_with_shadow(
    build: Build,
    a: &Upstream,
    shadow: Option<SocketAddr>,
    percent: f64,
    timeout_ms: u32,
) -> Env {
    env_comparing(build, a, shadow, percent, timeout_ms, 100.0)
}

/// [`env_with_shadow`] comparing `compared` % of the copies.
fn env_comparing(
    build: Build,
    a: &Upstream,
    shadow: Option<SocketAddr>,
    percent: f64,
    timeout_ms: u32,
    compared: f64,
) -> Env {
    let alloc = Allocation::initial(&[("a", 100)]).unwrap();
    let mut cfg = filter_config("titanic", &[("a", 100)], &alloc);
    if shadow.is_some() {
        cfg["endpoints"][0]["shadow"] = serde_json::json!({
            "cluster": SHADOW, "model": "model-s", "percent": percent, "timeoutMs": timeout_ms,
            "maxBodyBytes": 65536,
            "compare": {"mode": "json", "tolerance": 0.001, "percent": compared}
        });
    }
    let routes = vec![route(
        "titanic",
        &[HOST],
        &[(a, 100)],
        shadow.map(|s| (SHADOW, s)),
    )];
    let env = match build {
        Build::Wasm => Env::start(routes, &cfg),
        Build::Native => Env::start_native(routes, &cfg),
    };
    let expected = match build {
        Build::Wasm => mlep_core::envoy::WASM_TYPE_URL,
        Build::Native => mlep_core::envoy::DYNAMIC_MODULE_TYPE_URL,
    };
    assert_eq!(env.filter_type(), expected, "{}", env.log());
    env
}

fn shadow_total(env: &Env) -> f64 {
    env.metric(
        "mlep_shadow_requests_total",
        &[("endpoint", "titanic"), ("model", "model-s")],
    )
}

fn the_shadow_receives_method_path_and_body_intact_without_credentials(build: Build) {
    let a = Upstream::start("a");
    let s = Upstream::with(
        "shadow",
        Behaviour {
            body: Some("{\"variant\":\"a\"}".into()),
            ..Behaviour::default()
        },
    );
    let env = env_with_shadow(build, &a, Some(s.addr), 100.0, 1000);
    let mut c = env.client();
    let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let r = c.send(
        "POST",
        HOST,
        "/invocations?x=1",
        &[
            ("authorization", "Bearer secret"),
            ("cookie", "sid=1"),
            ("x-user-id", "u1"),
        ],
        &body,
    );
    assert_eq!((r.status, served_by(&r)), (200, "a".to_owned()));
    assert!(
        poll_until(Duration::from_secs(20), || s.count() == 1),
        "the shadow got the copy"
    );
    let copy = &s.seen()[0];
    assert_eq!(
        (copy.method.as_str(), copy.path.as_str()),
        ("POST", "/invocations?x=1")
    );
    assert_eq!(copy.body, body, "body intact");
    assert_eq!(
        copy.headers.get("x-user-id").map(String::as_str),
        Some("u1")
    );
    assert!(
        !copy.headers.contains_key("authorization") && !copy.headers.contains_key("cookie"),
        "{:?}",
        copy.headers
    );
    assert_eq!(a.seen()[0].body, body, "the primary got the body too");
    assert!(poll_until(Duration::from_secs(5), || env
        .metric("mlep_shadow_requests_total", &[("outcome", "ok")])
        == 1.0));
}

/// A compared copy leaves while its request is being served: the primary answers only once
/// it has seen its copy arrive at the shadow (or after 500 ms). Copies sent by the root's
/// counter tick (once a second) instead of from the stream's own callback would miss that
/// window about half the time, so 20 requests in a row would not all see theirs.
fn a_copy_leaves_while_its_request_is_in_flight(build: Build) {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    let copies: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let seen_in_time: Arc<Mutex<Vec<bool>>> = Arc::default();
    let key = |r: &Seen| r.headers.get("x-user-id").cloned().unwrap_or_default();
    let c2 = copies.clone();
    let s = Upstream::with_hook(
        "shadow",
        Behaviour {
            body: Some("{\"variant\":\"a\"}".into()),
            ..Behaviour::default()
        },
        Arc::new(move |r: &Seen| {
            c2.lock().unwrap().insert(key(r));
        }),
    );
    let (c3, t3) = (copies.clone(), seen_in_time.clone());
    let a = Upstream::with_hook(
        "a",
        Behaviour::default(),
        Arc::new(move |r: &Seen| {
            let k = key(r);
            let arrived = poll_until(Duration::from_millis(500), || {
                c3.lock().unwrap().contains(&k)
            });
            t3.lock().unwrap().push(arrived);
        }),
    );
    let env = env_with_shadow(build, &a, Some(s.addr), 100.0, 2000);
    let mut c = env.client();
    for i in 0..20 {
        let r = c.post(HOST, &[("x-user-id", &format!("u{i}"))], b"{\"x\": 1}");
        assert_eq!((r.status, served_by(&r)), (200, "a".to_owned()));
    }
    let in_time = seen_in_time.lock().unwrap().clone();
    assert_eq!(in_time.len(), 20, "the primary served every request");
    assert!(
        in_time.iter().all(|&x| x),
        "copies that reached the shadow while their request was served: {in_time:?}"
    );
    assert!(
        poll_until(Duration::from_secs(10), || env
            .metric("mlep_shadow_agreement_total", &[("result", "match")])
            == 20.0),
        "every copy's answer came back to the filter and was compared: {}",
        env.metric("mlep_shadow_agreement_total", &[])
    );
}

/// Median latency and statuses of `n` sequential requests.
fn run(env: &Env, n: usize) -> (Duration, Vec<u16>) {
    let mut c = env.client();
    let mut times = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = c.post(HOST, &[("x-user-id", &format!("u{i}"))], b"{\"x\": 1}");
        times.push(t.elapsed());
        statuses.push(r.status);
        assert_eq!(served_by(&r), "a");
    }
    times.sort();
    (times[n / 2], statuses)
}

fn a_slow_or_dead_shadow_leaves_primary_status_and_latency_unchanged(build: Build) {
    let a = Upstream::start("a");
    let baseline = env_with_shadow(build, &a, None, 0.0, 1000);
    let (base_p50, base_status) = run(&baseline, 40);
    drop(baseline);
    assert!(base_status.iter().all(|s| *s == 200));

    // Slow: answers after 2 s with a 300 ms shadow timeout.
    let slow = Upstream::with(
        "shadow",
        Behaviour {
            delay: Duration::from_secs(2),
            ..Behaviour::default()
        },
    );
    let env = env_with_shadow(build, &a, Some(slow.addr), 100.0, 300);
    let (slow_p50, slow_status) = run(&env, 40);
    assert_eq!(slow_status, base_status);
    // Generous bound: the shadow is 2000 ms slow, a blocking copy would add at least 300 ms.
    assert!(
        slow_p50 < base_p50 + Duration::from_millis(100),
        "p50 {slow_p50:?} vs baseline {base_p50:?}"
    );
    assert!(
        poll_until(Duration::from_secs(20), || env
            .metric("mlep_shadow_requests_total", &[("outcome", "timeout")])
            == 40.0),
        "40 timeouts counted: {}",
        env.metric("mlep_shadow_requests_total", &[])
    );
    drop(env);

    // Dead: nothing listens.
    let env = env_with_shadow(build, &a, Some(dead_addr()), 100.0, 300);
    let (dead_p50, dead_status) = run(&env, 40);
    assert_eq!(dead_status, base_status);
    assert!(
        dead_p50 < base_p50 + Duration::from_millis(100),
        "p50 {dead_p50:?} vs baseline {base_p50:?}"
    );
    assert!(
        poll_until(Duration::from_secs(20), || env
            .metric("mlep_shadow_requests_total", &[("outcome", "error")])
            == 40.0),
        "40 errors counted: {}",
        env.metric("mlep_shadow_requests_total", &[])
    );
}

fn agreement_is_recorded_for_at_least_99_percent_of_sampled_requests_under_load(build: Build) {
    let a = Upstream::start("a");
    // Same answer as the primary, a little slower, so most copies finish after their stream.
    let s = Upstream::with(
        "shadow",
        Behaviour {
            body: Some("{\"variant\":\"a\"}".into()),
            delay: Duration::from_millis(5),
            ..Behaviour::default()
        },
    );
    let env = env_with_shadow(build, &a, Some(s.addr), 50.0, 2000);
    let (threads, per_thread) = (8, 300);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = env.addr;
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                for i in 0..per_thread {
                    let r = c.post(
                        HOST,
                        &[("x-user-id", &format!("u{t}-{i}"))],
                        b"{\"x\": [1, 2, 3]}",
                    );
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Wait until every request is counted (streams hand their counts to Envoy once a second;
    // `mlep_requests_total` is a stream's last count), every copy the shadow took has an
    // outcome, and every answered copy its comparison (counted by whichever of the primary and
    // the shadow finished last: the stream, batched, or the root, at once).
    let total = f64::from(threads * per_thread);
    let settled = poll_until(Duration::from_secs(20), || {
        let ok = env.metric("mlep_shadow_requests_total", &[("outcome", "ok")]);
        let compared = env.metric("mlep_shadow_agreement_total", &[]);
        env.metric("mlep_requests_total", &[]) == total && ok == s.count() as f64 && compared == ok
    });
    let sampled = shadow_total(&env);
    let ok = env.metric("mlep_shadow_requests_total", &[("outcome", "ok")]);
    let matched = env.metric("mlep_shadow_agreement_total", &[("result", "match")]);
    let mismatched = env.metric("mlep_shadow_agreement_total", &[("result", "mismatch")]);
    assert!(
        settled,
        "not settled: {} requests counted of {total}, shadow took {}, {ok} ok, {} compared",
        env.metric("mlep_requests_total", &[]),
        s.count(),
        matched + mismatched
    );
    assert!(
        (sampled / total - 0.5).abs() < 0.06,
        "{sampled} of {total} sampled at 50%"
    );
    assert_eq!(mismatched, 0.0, "identical answers never mismatch");
    assert!(
        matched / sampled >= 0.99,
        "agreement recorded for {matched} of {sampled} sampled ({ok} ok)"
    );
    assert_eq!(
        s.count() as f64,
        ok,
        "every copy the shadow answered was counted"
    );
}

/// 100 % of requests copied, 30 % of the copies compared, against a shadow that always
/// disagrees: the shadow gets every copy once, every outcome is counted, and the compared
/// share (within four standard deviations of 30 % of 200) all count as mismatches; none is
/// compared twice or counted as a match.
fn a_sampled_comparison_copies_every_request_and_compares_its_share(build: Build) {
    let a = Upstream::start("a");
    let s = Upstream::with(
        "shadow",
        Behaviour {
            body: Some("{\"variant\":\"s\"}".into()),
            ..Behaviour::default()
        },
    );
    let env = env_comparing(build, &a, Some(s.addr), 100.0, 2000, 30.0);
    let mut c = env.client();
    let n: u32 = 200;
    for i in 0..n {
        let r = c.post(HOST, &[("x-user-id", &format!("u{i}"))], b"{\"x\": 1}");
        assert_eq!((r.status, served_by(&r)), (200, "a".to_owned()));
    }
    let total = f64::from(n);
    let ok = || env.metric("mlep_shadow_requests_total", &[("outcome", "ok")]);
    let settled = poll_until(Duration::from_secs(20), || {
        ok() == total && env.metric("mlep_requests_total", &[]) == total
    });
    assert!(settled, "{} of {total} copies answered ok", ok());
    assert_eq!(s.count(), u64::from(n), "the shadow got every copy once");
    let matched = env.metric("mlep_shadow_agreement_total", &[("result", "match")]);
    let mismatched = env.metric("mlep_shadow_agreement_total", &[("result", "mismatch")]);
    assert_eq!(matched, 0.0, "a disagreeing shadow never matches");
    assert!(
        (34.0..=86.0).contains(&mismatched),
        "{mismatched} of {total} copies compared at 30 %"
    );
}
