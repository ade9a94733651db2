//! Rollout splits through a real Envoy running the built filter: the users a rollout moved
//! reach the new model's upstream (by the model header the filter sets), the share grows
//! without moving anyone back, a rollback returns exactly the moved users, and metrics count
//! moved requests under the new model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep::rollout::EnvoyStats;
use mlep_contract::rollout::{grow, target_for, Span};
use mlep_contract::Allocation;
use mlep_core::rollout::{AnalysisSource, Query, Traffic};
use mlep_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;

const HOST: &str = "titanic.local";

/// `a` and `b` at 50/50; `b` is being rolled out to `model-b2` with `moved` buckets moved.
fn config(alloc: &Allocation, moved: Option<&[Span]>) -> serde_json::Value {
    let mut cfg = filter_config("titanic", &[("a", 50), ("b", 50)], alloc);
    if let Some(m) = moved {
        cfg["endpoints"][0]["variants"][1]["rollout"] =
            serde_json::json!({"model": "model-b2", "buckets": m});
    }
    cfg
}

/// Which upstream served each key. `forge`: send a model header of our own on every request
/// (the filter must overwrite or strip it on a variant being rolled out).
fn served(env: &Env, keys: &[String], forge: bool) -> BTreeMap<String, String> {
    let mut c = env.client();
    keys.iter()
        .map(|k| {
            let mut headers = vec![("x-user-id", k.as_str())];
            if forge {
                headers.push(("x-mlep-model", "model-b2"));
            }
            let r = c.get(HOST, &headers);
            assert_eq!(r.status, 200, "{}", r.body);
            (k.clone(), served_by(&r))
        })
        .collect()
}

fn in_spans(spans: &[Span], bucket: u32) -> bool {
    spans.iter().any(|s| s.start <= bucket && bucket < s.end)
}

#[test]
fn moved_users_reach_the_new_model_the_share_only_grows_and_a_rollback_returns_them_exactly() {
    let (a, b, b2) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("b2"),
    );
    let alloc = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let step1 = grow(&alloc, "b", &[], target_for(&alloc, "b", 20));
    let mut r = route("titanic", &[HOST], &[(&a, 50), (&b, 50)], None);
    r.variants[1].rollout_upstream = Some(b2.addr);
    let mut env = Env::start(vec![r], &config(&alloc, Some(&step1)));
    let keys: Vec<String> = (0..1500).map(|i| format!("user-{i}")).collect();
    let bucket = |k: &str| mlep_contract::bucket_of("default/titanic", k);
    // Local mode's analysis source, fed this Envoy's stats: a scrape when the step starts.
    let mut stats = EnvoyStats::new();
    stats.observe(100, &env.prometheus());

    // Step 1: exactly the keys in moved buckets reach b2; a forged header moves no one else.
    let s1 = served(&env, &keys, true);
    for (k, up) in &s1 {
        let want = match (alloc.lookup(bucket(k)), in_spans(&step1, bucket(k))) {
            (Some("a"), _) => "a",
            (_, true) => "b2",
            _ => "b",
        };
        assert_eq!(up, want, "key {k} bucket {}", bucket(k));
    }
    let on_b2 = s1.values().filter(|v| *v == "b2").count();
    let on_b = s1.values().filter(|v| *v == "b").count();
    let share = on_b2 as f64 / (on_b2 + on_b) as f64;
    assert!(
        (share - 0.20).abs() < 0.05,
        "moved share {share:.3}, step 20%"
    );
    assert!(
        b.seen()
            .iter()
            .all(|s| !s.headers.contains_key("x-mlep-model")),
        "the old model's requests carry no model header"
    );
    // The filter marked the moved users with the keyed model (the route obeyed it); the route
    // removed the mark and put the plain variant back: no model ever sees the route key.
    assert!(!b2.seen().is_empty());
    assert!(b2.seen().iter().chain(b.seen().iter()).all(|s| {
        !s.headers.contains_key("x-mlep-model")
            && s.headers.get("x-mlep-variant").map(String::as_str) == Some("b")
    }));

    // Metrics: requests the new model served are counted under its model label.
    let counted = |model: &str| {
        env.metric(
            "mlep_requests_total",
            &[("variant", "b"), ("model", model), ("code_class", "2xx")],
        )
    };
    // Both counts are the streams', handed to Envoy once a second: wait for both.
    assert!(
        poll_until(std::time::Duration::from_secs(10), || counted("model-b2")
            == on_b2 as f64
            && counted("model-b") == on_b as f64),
        "model-b2 counted {} of {on_b2}, model-b {} of {on_b}",
        counted("model-b2"),
        counted("model-b")
    );
    // What the rollout's analysis sees for the step: exactly the new model's requests.
    stats.observe(160, &env.prometheus());
    let step = query("b", "model-b2", Traffic::Served);
    let sample = stats.sample(&step).unwrap();
    assert_eq!((sample.requests, sample.errors), (on_b2 as u64, 0));

    // Step 2: the share grows; nobody on b2 goes back, a's users never move.
    let step2 = grow(&alloc, "b", &step1, target_for(&alloc, "b", 60));
    env.reload(&config(&alloc, Some(&step2)));
    let s2 = served(&env, &keys, true);
    for k in &keys {
        match (s1[k].as_str(), s2[k].as_str()) {
            (x, y) if x == y => {}
            ("b", "b2") => {}
            moved => panic!("key {k} moved {moved:?}"),
        }
    }
    let moved_more = keys.iter().filter(|k| s1[*k] != s2[*k]).count();
    assert!(moved_more > 0, "step 2 moved more users");

    // Rollback: the split goes away, every user on b2 returns to b, nobody else changes.
    // (Without a rollout the filter leaves the model header alone, so this Envoy, whose
    // rollout route still points at b2, would honour a forged one: local mode points that
    // route back at the variant's own servers right after the filter config, see
    // docs/rollouts.md.)
    env.reload(&config(&alloc, None));
    let s3 = served(&env, &keys, false);
    for k in &keys {
        let want = if s2[k] == "b2" { "b" } else { s2[k].as_str() };
        assert_eq!(s3[k], want, "key {k} after rollback");
    }
}

#[test]
fn a_targeted_keyed_request_follows_a_half_split_by_its_key() {
    let (a, b, b2) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("b2"),
    );
    let alloc = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let half = grow(&alloc, "b", &[], target_for(&alloc, "b", 50));
    let mut r = route("titanic", &[HOST], &[(&a, 50), (&b, 50)], None);
    r.variants[1].rollout_upstream = Some(b2.addr);
    let env = Env::start(vec![r], &config(&alloc, Some(&half)));
    let keys: Vec<String> = (0..600).map(|i| format!("target-{i}")).collect();
    let mut c = env.client();
    let mut ask = |k: &str| {
        let r = c.get(HOST, &[("x-mlep-target-variant", "b"), ("x-user-id", k)]);
        assert_eq!(r.status, 200, "{}", r.body);
        served_by(&r)
    };
    let first: BTreeMap<&str, String> = keys.iter().map(|k| (k.as_str(), ask(k))).collect();
    // Every targeted request reaches b's old or new model, ~half of the keys the new one
    // (binomial, n = 600: sd ~ 2%), users of a included.
    let on_b2 = first.values().filter(|v| *v == "b2").count();
    assert!(first.values().all(|v| v == "b" || v == "b2"), "{first:?}");
    let share = on_b2 as f64 / keys.len() as f64;
    assert!(
        (share - 0.5).abs() < 0.08,
        "targeted share on the new model {share:.3}"
    );
    let of_a = keys
        .iter()
        .filter(|k| alloc.lookup(mlep_contract::bucket_of("default/titanic", k)) == Some("a"));
    assert!(
        of_a.clone().any(|k| first[k.as_str()] == "b2")
            && of_a.clone().any(|k| first[k.as_str()] == "b")
    );
    // The same key always gets the same model.
    for k in keys.iter().take(200) {
        assert_eq!(ask(k), first[k.as_str()], "key {k}");
    }
    // Counted under the model that served them, with reason target.
    let target = |model: &str| {
        env.metric(
            "mlep_assignments_total",
            &[("variant", "b"), ("model", model), ("reason", "target")],
        )
    };
    let first_b2 = keys
        .iter()
        .take(200)
        .filter(|k| first[k.as_str()] == "b2")
        .count();
    let want = (on_b2 + first_b2) as f64;
    let want_b = (800 - on_b2 - first_b2) as f64;
    assert!(
        poll_until(Duration::from_secs(10), || target("model-b2") == want
            && target("model-b") == want_b),
        "model-b2 counted {} of {want}, model-b {} of {want_b}",
        target("model-b2"),
        target("model-b")
    );
}

fn query(variant: &str, model: &str, traffic: Traffic) -> Query {
    Query {
        endpoint: "titanic".into(),
        namespace: "default".into(),
        variant: variant.into(),
        model: model.into(),
        traffic,
        since_unix: 100,
        now_unix: 160,
    }
}

#[test]
fn a_blue_green_bake_mirrors_only_its_variant_and_counts_agreement_for_the_analysis() {
    const SHADOW: &str = "mlep|titanic|shadow";
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    // Green answers like blue, so every compared answer agrees.
    let green = Upstream::with(
        "green",
        Behaviour {
            body: Some("{\"variant\":\"b\"}".into()),
            ..Behaviour::default()
        },
    );
    let alloc = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let mut cfg = config(&alloc, None);
    cfg["endpoints"][0]["shadow"] = serde_json::json!({
        "cluster": SHADOW, "model": "model-b2", "percent": 100, "variant": "b",
        "timeoutMs": 2000, "compare": {"mode": "json", "tolerance": 0.000001}
    });
    let env = Env::start(
        vec![route(
            "titanic",
            &[HOST],
            &[(&a, 50), (&b, 50)],
            Some((SHADOW, green.addr)),
        )],
        &cfg,
    );
    let mut stats = EnvoyStats::new();
    stats.observe(100, &env.prometheus());
    let keys: Vec<String> = (0..300).map(|i| format!("bake-{i}")).collect();
    let served = served(&env, &keys, false);
    let on_b = served.values().filter(|v| *v == "b").count() as u64;
    assert!(on_b > 0 && on_b < 300, "both variants serve: {on_b} on b");
    let bake = query("b", "model-b2", Traffic::Mirrored);
    let settled = poll_until(Duration::from_secs(15), || {
        stats.observe(160, &env.prometheus());
        stats
            .sample(&bake)
            .is_ok_and(|s| s.requests == on_b && s.compared == on_b)
    });
    let sample = stats.sample(&bake).unwrap();
    assert!(settled, "mirrored {sample:?}, b served {on_b}");
    assert_eq!(green.count(), on_b, "only b's requests were mirrored");
    assert_eq!((sample.agreed, sample.errors), (on_b, 0));
}

#[test]
fn a_split_outside_its_variant_is_rejected_naming_the_field_and_the_last_split_keeps_serving() {
    let (a, b, b2) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("b2"),
    );
    let alloc = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let good = grow(&alloc, "b", &[], target_for(&alloc, "b", 30));
    let mut r = route("titanic", &[HOST], &[(&a, 50), (&b, 50)], None);
    r.variants[1].rollout_upstream = Some(b2.addr);
    let mut env = Env::start(vec![r], &config(&alloc, Some(&good)));
    let keys: Vec<String> = (0..400).map(|i| format!("reject-{i}")).collect();
    let before = served(&env, &keys, false);
    // Buckets 0..100 belong to a: a split of b may not name them.
    let bad = [Span { start: 0, end: 100 }];
    env.reload(&config(&alloc, Some(&bad)));
    let log = env.log();
    assert!(
        log.contains("endpoints[0].variants[1].rollout.buckets") && log.contains("does not own"),
        "{log}"
    );
    assert_eq!(env.rejected_updates(), 1.0);
    assert_eq!(
        served(&env, &keys, false),
        before,
        "the last good split serves"
    );
}
