//! The filter's native build (`libmlep_filter_native.so`, an Envoy dynamic module) in a real
//! Envoy, beside the Wasm build as local mode runs them: the same assignment, targeting,
//! cookies and metrics as the Wasm build, the endpoint known by its virtual host's
//! per-route config, and a config it cannot serve handed to the Wasm build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep_contract::Allocation;
use mlep_tests::*;

const HOST: &str = "titanic.local";
const WASM: &str = mlep_core::envoy::WASM_TYPE_URL;
const DYNAMIC_MODULE: &str = mlep_core::envoy::DYNAMIC_MODULE_TYPE_URL;

/// `titanic` at 50/50 (served by `a` and `b`) and, on `other.local`, a plain endpoint-less
/// host whose virtual host does not enable the filter.
fn start(native: bool) -> (Upstream, Upstream, Env) {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let weights = [("a", 50), ("b", 50)];
    let alloc = Allocation::initial(&weights).unwrap();
    let cfg = filter_config("titanic", &weights, &alloc);
    let routes = vec![route("titanic", &[HOST], &[(&a, 50), (&b, 50)], None)];
    let env = match native {
        true => Env::start_native(routes, &cfg),
        false => Env::start(routes, &cfg),
    };
    (a, b, env)
}

#[test]
fn the_native_build_assigns_every_key_as_the_wasm_build_does() {
    let (_a, _b, native) = start(true);
    assert_eq!(native.filter_type(), DYNAMIC_MODULE, "{}", native.log());
    let (_a2, _b2, wasm) = start(false);
    let (mut n, mut w) = (native.client(), wasm.client());
    let mut served = std::collections::BTreeMap::new();
    for i in 0..60 {
        let key = format!("user-{i}");
        // A client-sent routing header picks nothing on either build.
        let headers = [("x-user-id", key.as_str()), ("x-mlep-variant", "b")];
        let (rn, rw) = (n.get(HOST, &headers), w.get(HOST, &headers));
        assert_eq!((rn.status, rw.status), (200, 200), "{}", rn.body);
        let v = served_by(&rn);
        assert_eq!(v, served_by(&rw), "key {key}: both builds assign alike");
        let expected = match mlep_contract::bucket_of("default/titanic", &key) < 5000 {
            true => "a",
            false => "b",
        };
        assert_eq!(v, expected, "key {key} goes where its bucket says");
        assert_eq!(rn.header("x-mlep-variant"), Some(v.as_str()));
        *served.entry(v).or_insert(0) += 1;
    }
    assert_eq!(served.len(), 2, "both variants served: {served:?}");
    // Every request counted, under the Wasm build's Prometheus names and labels.
    let requests = |variant| {
        native.metric(
            "mlep_requests_total",
            &[
                ("endpoint", "titanic"),
                ("variant", variant),
                ("code_class", "2xx"),
            ],
        )
    };
    assert_eq!(
        requests("a") + requests("b"),
        60.0,
        "{}",
        native.prometheus()
    );
    assert_eq!(requests("a"), f64::from(served["a"]));
    let sticky = native.metric(
        "mlep_assignments_total",
        &[("endpoint", "titanic"), ("reason", "sticky")],
    );
    assert_eq!(sticky, 60.0);
}

#[test]
fn targeting_cookies_and_unknown_targets_on_the_native_build() {
    let (_a, _b, env) = start(true);
    let mut c = env.client();
    let r = c.get(HOST, &[("x-mlep-target-variant", "b")]);
    assert_eq!((r.status, served_by(&r)), (200, "b".to_owned()));

    // An unknown target: the filter's own 400, naming the variants, and no upstream call.
    let r = c.get(HOST, &[("x-mlep-target-variant", "zzz")]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("zzz"), "{body}");
    assert_eq!(body["validVariants"], serde_json::json!(["a", "b"]));

    // A keyless visitor gets a cookie and sticks to its variant by it.
    let r = c.get(HOST, &[]);
    let cookie = r
        .header("set-cookie")
        .expect("a keyless visitor gets a cookie");
    assert!(cookie.starts_with("mlep-titanic="), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let first = served_by(&r);
    for _ in 0..10 {
        let again = c.get(HOST, &[("cookie", &pair)]);
        assert_eq!(served_by(&again), first);
        assert_eq!(again.header("set-cookie"), None);
    }
}

#[test]
fn a_config_only_wasm_serves_moves_the_filter_to_wasm_and_back_and_no_count_is_lost() {
    let (_a, _b, mut env) = start(true);
    let weights = [("a", 50), ("b", 50)];
    let alloc = Allocation::initial(&weights).unwrap();
    let plain = filter_config("titanic", &weights, &alloc);
    let mut captured = plain.clone();
    captured["endpoints"][0]["capture"] = serde_json::json!({
        "cluster": "capture", "percent": 0.0, "request": true, "response": true,
        "maxPayloadBytes": 1024, "contentTypes": [], "timeoutMs": 1000
    });
    let send = |env: &Env, n: usize| {
        let mut c = env.client();
        for i in 0..n {
            let r = c.get(HOST, &[("x-user-id", &format!("k{i}"))]);
            assert_eq!(r.status, 200, "{}", r.body);
        }
    };
    send(&env, 5);
    env.reload(&captured);
    assert_eq!(env.filter_type(), WASM, "{}", env.log());
    send(&env, 7);
    env.reload(&plain);
    assert_eq!(env.filter_type(), DYNAMIC_MODULE);
    send(&env, 11);
    assert_eq!(env.rejected_updates(), 0.0, "{}", env.log());
    // Every request counted once and timed once, whichever build served it: both builds
    // define the same Envoy stats, which outlive each config update (histograms show after
    // Envoy's 5 s stats flush).
    let total = |m| env.metric(m, &[("endpoint", "titanic")]);
    let settled =
        || total("mlep_requests_total") == 23.0 && total("mlep_request_duration_ms_count") == 23.0;
    assert!(
        poll_until(std::time::Duration::from_secs(15), settled),
        "{} requests and {} durations of 23 counted:\n{}",
        total("mlep_requests_total"),
        total("mlep_request_duration_ms_count"),
        env.prometheus()
    );
}

/// Handed a config only the Wasm build serves (no renderer does that), the native build
/// refuses it naming the endpoint and the feature: Envoy rejects the update and the last good
/// config keeps serving, assignments unchanged.
#[test]
fn the_native_build_refuses_what_it_cannot_serve_and_the_last_good_config_serves_on() {
    let (_a, _b, mut env) = start(true);
    let before = served_by(&env.client().get(HOST, &[("x-user-id", "u1")]));
    let weights = [("a", 50), ("b", 50)];
    let alloc = Allocation::initial(&weights).unwrap();
    let mut captured = filter_config("titanic", &weights, &alloc);
    captured["endpoints"][0]["capture"] = serde_json::json!({
        "cluster": "capture", "percent": 100.0, "timeoutMs": 1000
    });
    let module = native_path();
    env.reload_typed(mlep_core::envoy::native_filter(
        &module.to_string_lossy(),
        &captured.to_string(),
    ));
    assert_eq!(env.rejected_updates(), 1.0, "{}", env.log());
    assert!(
        env.log()
            .contains("endpoint default/titanic uses data capture"),
        "the reason is logged:\n{}",
        env.log()
    );
    assert_eq!(env.filter_type(), DYNAMIC_MODULE);
    for _ in 0..5 {
        let r = env.client().get(HOST, &[("x-user-id", "u1")]);
        assert_eq!((r.status, served_by(&r)), (200, before.clone()));
    }
}
