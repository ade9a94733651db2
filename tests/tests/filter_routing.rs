//! Routing, stickiness, split accuracy, monotone weight changes, targeting and the cookie
//! flow, through a real Envoy running the built filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep_contract::Allocation;
use mlep_tests::*;
use std::collections::BTreeMap;

const HOST: &str = "titanic.local";

fn two_variants(wa: u32, wb: u32) -> (Upstream, Upstream, Env) {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let alloc = Allocation::initial(&[("a", wa), ("b", wb)]).unwrap();
    let cfg = filter_config("titanic", &[("a", wa), ("b", wb)], &alloc);
    let env = Env::start(
        vec![route("titanic", &[HOST], &[(&a, wa), (&b, wb)], None)],
        &cfg,
    );
    (a, b, env)
}

/// Which variant serves each key (checking the response header agrees with the upstream).
fn assignments(env: &Env, keys: &[String]) -> BTreeMap<String, String> {
    let chunks: Vec<Vec<String>> = keys
        .chunks(keys.len().div_ceil(4))
        .map(<[String]>::to_vec)
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let addr = env.addr;
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                chunk
                    .into_iter()
                    .map(|k| {
                        let r = c.get(HOST, &[("x-user-id", &k)]);
                        assert_eq!(r.status, 200, "{}", r.body);
                        let v = served_by(&r);
                        assert_eq!(
                            r.header("x-mlep-variant"),
                            Some(v.as_str()),
                            "response header names the serving variant"
                        );
                        (k, v)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn keys(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

#[test]
fn requests_are_routed_by_the_header_the_filter_sets_not_the_clients() {
    let (a, b, env) = two_variants(50, 50);
    let mut c = env.client();
    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let key = format!("user-{i}");
        // The client tries to pick `b` by sending the routing header itself: it must be stripped.
        let r = c.get(HOST, &[("x-user-id", &key), ("x-mlep-variant", "b")]);
        assert_eq!(r.status, 200);
        let v = served_by(&r);
        let expected = if mlep_contract::bucket_of("default/titanic", &key) < 5000 {
            "a"
        } else {
            "b"
        };
        assert_eq!(v, expected, "key {key} must go where its bucket says");
        *seen.entry(v).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both variants served some keys: {seen:?}");
    let on_a = a.seen();
    assert!(on_a
        .iter()
        .all(|s| s.headers.get("x-mlep-variant").map(String::as_str) == Some("a")));
    assert!(b
        .seen()
        .iter()
        .all(|s| s.headers.get("x-mlep-variant").map(String::as_str) == Some("b")));
}

#[test]
fn users_stick_across_requests_envoy_restarts_and_config_reloads() {
    let (_a, _b, mut env) = two_variants(50, 50);
    let ks = keys(300, "stick");
    let first = assignments(&env, &ks);
    assert_eq!(assignments(&env, &ks), first, "repeated requests");
    env.restart();
    assert_eq!(assignments(&env, &ks), first, "after an Envoy restart");
    // Same weights and allocation, other settings changed: a real reload, same users.
    let alloc = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let mut cfg = filter_config("titanic", &[("a", 50), ("b", 50)], &alloc);
    cfg["endpoints"][0]["routing"]["sticky"]["cookieMaxAgeSeconds"] = 60.into();
    env.reload(&cfg);
    let mut c = env.client();
    let r = c.get(HOST, &[]);
    assert!(
        r.header("set-cookie").unwrap().contains("Max-Age=60"),
        "the reload took effect"
    );
    assert_eq!(
        assignments(&env, &ks),
        first,
        "after a config reload with unchanged weights"
    );
}

#[test]
fn split_over_ten_thousand_keys_matches_the_weights() {
    let (_a, _b, env) = two_variants(70, 30);
    let got = assignments(&env, &keys(10_000, "split"));
    let on_b = got.values().filter(|v| *v == "b").count() as f64 / got.len() as f64;
    assert!(
        (on_b - 0.30).abs() <= 0.015,
        "share of b is {on_b:.4}, weight 0.30"
    );
}

#[test]
fn moving_weight_from_first_to_last_moves_only_users_of_the_first_to_the_last() {
    let ups = [
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    ];
    let w1 = [("a", 70), ("b", 20), ("c", 10)];
    let w2 = [("a", 60), ("b", 20), ("c", 20)];
    let a1 = Allocation::initial(&w1).unwrap();
    let a2 = a1.rebalance(&w2).unwrap();
    let r = route(
        "titanic",
        &[HOST],
        &[(&ups[0], 70), (&ups[1], 20), (&ups[2], 10)],
        None,
    );
    let mut env = Env::start(vec![r], &filter_config("titanic", &w1, &a1));
    let ks = keys(4000, "move");
    let before = assignments(&env, &ks);
    env.reload(&filter_config("titanic", &w2, &a2));
    let after = assignments(&env, &ks);
    let mut moved = 0;
    for k in &ks {
        if before[k] != after[k] {
            assert_eq!(
                (before[k].as_str(), after[k].as_str()),
                ("a", "c"),
                "key {k} moved the wrong way"
            );
            moved += 1;
        }
    }
    let share = moved as f64 / ks.len() as f64;
    assert!(
        (share - 0.10).abs() <= 0.02,
        "{share:.4} of users moved, the weight delta is 0.10"
    );
}

#[test]
fn a_client_can_target_a_variant_and_an_unknown_one_gets_a_400_listing_valid_variants() {
    let (_a, b, env) = two_variants(100, 0);
    let mut c = env.client();
    let r = c.get(HOST, &[("x-mlep-target-variant", "b"), ("x-user-id", "u")]);
    assert_eq!((r.status, served_by(&r)), (200, "b".to_owned()));
    assert_eq!(b.count(), 1);
    let r = c.get(HOST, &[("x-mlep-target-variant", "nope")]);
    assert_eq!(r.status, 400);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["validVariants"], serde_json::json!(["a", "b"]));
    assert!(v["error"].as_str().unwrap().contains("nope"));
    assert_eq!(b.count(), 1, "a rejected request reaches no upstream");
}

#[test]
fn a_visitor_without_a_key_gets_a_cookie_and_then_sticks_to_its_variant() {
    let (_a, _b, env) = two_variants(50, 50);
    let mut c = env.client();
    for _ in 0..10 {
        let first = c.get(HOST, &[]);
        let set = first
            .header("set-cookie")
            .expect("a cookie for a new visitor")
            .to_owned();
        assert!(
            set.starts_with("mlep-titanic=")
                && set.contains("Path=/")
                && set.contains("HttpOnly")
                && set.contains("SameSite=Lax"),
            "{set}"
        );
        let pair = set.split(';').next().unwrap().to_owned();
        let v = served_by(&first);
        for _ in 0..3 {
            let again = c.get(HOST, &[("cookie", &format!("theme=dark; {pair}"))]);
            assert_eq!(served_by(&again), v);
            assert_eq!(
                again.header("set-cookie"),
                None,
                "a returning visitor keeps its cookie"
            );
        }
    }
}

#[test]
fn requests_to_other_hosts_are_left_alone() {
    let (a, b, env) = two_variants(50, 50);
    let mut c = env.client();
    let r = c.get("elsewhere.local", &[("x-user-id", "u")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-mlep-variant"), None);
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(a.count() + b.count(), 0);
}

/// Every name a client can use for the endpoint (a wildcard host, the Service's short and
/// qualified names) reaches its virtual host, and the filter knows the endpoint by that
/// virtual host, not by the name: each gets assignment, and a client-sent `x-mlep-variant`
/// is overwritten on each, so routes on that header cannot be used to bypass assignment or
/// targeting rules through another name.
#[test]
fn every_name_of_the_endpoint_is_assigned_and_a_client_sent_variant_is_overwritten() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let alloc = Allocation::initial(&[("a", 100), ("b", 0)]).unwrap();
    let mut cfg = filter_config("titanic", &[("a", 100), ("b", 0)], &alloc);
    cfg["endpoints"][0]["routing"]["allowTargeting"] = false.into();
    let names = [
        "api.example.com",
        "eu.api.example.com",
        "titanic",
        "titanic.default",
        "titanic.default.svc",
        "titanic.default.svc.cluster.local",
    ];
    let mut domains = vec!["*.example.com"];
    domains.extend_from_slice(&names[2..]);
    let env = Env::start(
        vec![route("titanic", &domains, &[(&a, 100), (&b, 0)], None)],
        &cfg,
    );
    let mut c = env.client();
    for (i, host) in names.iter().enumerate() {
        let r = c.get(
            host,
            &[
                ("x-user-id", &format!("u{i}")),
                ("x-mlep-variant", "b"),
                ("x-mlep-target-variant", "b"),
            ],
        );
        assert_eq!((r.status, served_by(&r).as_str()), (200, "a"), "{host}");
        assert_eq!(r.header("x-mlep-variant"), Some("a"), "{host}");
    }
    assert_eq!(b.count(), 0, "no name let the client pick b");
    // Counters reach Envoy on the filter's flush tick.
    assert!(
        poll_until(std::time::Duration::from_secs(5), || env
            .metric("mlep_assignments_total", &[("reason", "sticky")])
            == names.len() as f64),
        "each name was assigned by the filter: {}",
        env.metric("mlep_assignments_total", &[])
    );
}

/// Where the filter does not run for an endpoint (here: its config names another virtual
/// host, as on a proxy that has not got the endpoint's config yet, or whose module could not
/// be fetched), a client sending the routing headers, even in the routed form with a guessed
/// key, is served by the weighted default: only the filter can produce a value the header
/// routes obey.
#[test]
fn without_the_filter_no_client_sent_header_picks_a_variant_or_model() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let alloc = Allocation::initial(&[("a", 100), ("b", 0)]).unwrap();
    let mut cfg = filter_config("titanic", &[("a", 100), ("b", 0)], &alloc);
    cfg["endpoints"][0]["virtualHosts"] = serde_json::json!(["not-this-one:80"]);
    let mut r = route("titanic", &[HOST], &[(&a, 100), (&b, 0)], None);
    r.variants[1].rollout_upstream = Some(b.addr);
    let env = Env::start(vec![r], &cfg);
    let mut c = env.client();
    let guesses = [
        vec![("x-mlep-variant", "b".to_owned())],
        vec![("x-mlep-variant", "b.guessed-route-key-0001".to_owned())],
        vec![
            ("x-mlep-variant", "b".to_owned()),
            ("x-mlep-model", "model-b.guessed-route-key-0001".to_owned()),
        ],
    ];
    for (i, headers) in guesses.iter().enumerate() {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = c.get(HOST, &h);
        assert_eq!(
            (r.status, served_by(&r).as_str()),
            (200, "a"),
            "guess {i}: {headers:?}"
        );
        assert_eq!(r.header("x-mlep-variant"), None, "the filter did not run");
    }
    assert_eq!(b.count(), 0, "no client-sent header reached b");
}

/// A client targets a variant that has no header route here (in a cluster: one with no ready
/// pod). The filter sets `x-mlep-variant: b.<routeKey>`, no header route matches, and the
/// weighted default serves; it removes both routing headers, so the model that answers never
/// sees the route key (nor a client's own routing headers).
#[test]
fn a_request_for_a_variant_without_a_route_reaches_the_default_without_the_route_key() {
    let a = Upstream::start("a");
    let alloc = Allocation::initial(&[("a", 100), ("b", 0)]).unwrap();
    let cfg = filter_config("titanic", &[("a", 100), ("b", 0)], &alloc);
    let env = Env::start(vec![route("titanic", &[HOST], &[(&a, 100)], None)], &cfg);
    let mut c = env.client();
    let r = c.get(
        HOST,
        &[
            ("x-mlep-target-variant", "b"),
            ("x-mlep-model", "model-b.guessed-route-key-0001"),
        ],
    );
    assert_eq!((r.status, served_by(&r).as_str()), (200, "a"));
    let seen = a.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(h.get("x-mlep-variant"), None, "{h:?}");
    assert_eq!(h.get("x-mlep-model"), None, "{h:?}");
    assert!(h.values().all(|v| !v.contains(ROUTE_KEY)), "{h:?}");
}

/// Envoy passes header values with bytes that are not UTF-8 (obs-text); the proxy-wasm SDK's
/// plain header getters `unwrap` a UTF-8 conversion, so such a value used to panic the VM,
/// after which Envoy answered 503 to every request of that worker. Found while reading the
/// SDK for the fuzzing work; the filter now reads header bytes.
#[test]
fn a_header_value_that_is_not_utf8_is_assigned_and_does_not_kill_the_vm() {
    use std::io::{Read, Write};
    let (_a, _b, env) = two_variants(50, 50);
    let raw = |key: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(env.addr).unwrap();
        let mut req = b"GET /invocations HTTP/1.1\r\nhost: titanic.local\r\nx-user-id: ".to_vec();
        req.extend_from_slice(key);
        req.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        s.write_all(&req).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let first = raw(b"caf\xe9-\xff");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let variant = |r: &str| {
        r.lines()
            .find_map(|l| l.strip_prefix("x-mlep-variant: "))
            .map(|v| v.trim().to_owned())
    };
    assert!(variant(&first).is_some(), "assigned: {first}");
    assert_eq!(
        variant(&raw(b"caf\xe9-\xff")),
        variant(&first),
        "and sticky"
    );
    let r = env.client().get(HOST, &[("x-user-id", "u1")]);
    assert_eq!(r.status, 200, "the VM is still alive");
    assert!(r.header("x-mlep-variant").is_some());
}
