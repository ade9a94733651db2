//! Rollouts in `mlep local up`, end to end (real Envoy, real model servers): a Canary to a
//! model answering 500 on every other request rolls back with every user back on the old
//! model; a Canary to a healthy model holds its share while paused (measured on users) and
//! promotes with no failed request; a restart of `mlep` mid-Canary resumes with exactly the same
//! users moved, and one after a spec edit to another model aborts and starts over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

fn fixture() -> PathBuf {
    repo().join("cli/tests/fixtures/flaky_model.py")
}

/// The Titanic example plus three local-command models (`flaky`: 500 on every 2nd request;
/// `healthy` and `healthy2`: never) and `rollout` appended to the endpoint's spec.
fn input(dir: &Path, metadata: &str, rollout: &str) {
    titanic_input(dir, |e| {
        e.replace("  name: titanic\n", &format!("  name: titanic\n{metadata}")) + rollout
    });
    let model = |name: &str, fail_every: u32| {
        format!(
            "---\napiVersion: mlep.dev/v1alpha1\nkind: Model\nmetadata:\n  name: {name}\n  annotations:\n    mlep.dev/local-command: \"python3 {}\"\nspec:\n  image: example.com/{name}:1\n  env:\n    - {{name: FAIL_EVERY, value: \"{fail_every}\"}}\n    - {{name: MODEL_NAME, value: {name}}}\n",
            fixture().display()
        )
    };
    let mut models = std::fs::read_to_string(dir.join("input/models.yaml")).unwrap();
    models.push_str(&model("flaky", 2));
    models.push_str(&model("healthy", 0));
    models.push_str(&model("healthy2", 0));
    std::fs::write(dir.join("input/models.yaml"), models).unwrap();
}

/// `(variant, model)` serving `user`, from the response headers.
async fn served(up: &Up, user: &str) -> (String, String) {
    let r = up.invoke(Some(user), &[]).await;
    let h = |n: &str| r.header(n).unwrap_or_default().to_owned();
    (h("x-mlep-variant"), h("x-mlep-model"))
}

/// `(variant, model)` of the users `<prefix>-0` to `<prefix>-<n-1>`.
async fn assignments(up: &Up, prefix: &str, n: usize) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let user = format!("{prefix}-{i}");
        let at = served(up, &user).await;
        out.insert(user, at);
    }
    out
}

/// The first `n` answers to `users` (round robin) on `port`, asking from before anything
/// listens there: `(user, model)` (an answer other than 200 counts as its status and body).
async fn first_answers(port: u16, users: Vec<String>, n: usize) -> Vec<(String, String)> {
    let body = std::fs::read(example().join("request.json")).unwrap();
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    for user in users.iter().cycle() {
        if out.len() == n || start.elapsed() > Duration::from_secs(180) {
            break;
        }
        let req = invocation(Some(user.clone()), &[], &body);
        match mlep::http::send(port, &req, Duration::from_secs(10)).await {
            Ok(r) if r.status == 200 => {
                let model = r.header("x-mlep-model").unwrap_or_default().to_owned();
                out.push((user.clone(), model));
            }
            Ok(r) => out.push((user.clone(), format!("HTTP {}: {}", r.status, r.text()))),
            // Not listening yet: ask again.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    out
}

/// The sum of `metric`'s series for `model` in a `/stats/prometheus` text.
fn total(text: &str, metric: &str, model: &str) -> f64 {
    mlep::table::parse_prometheus(text)
        .iter()
        .filter(|s| {
            s.name.ends_with(metric) && s.labels.get("model").map(String::as_str) == Some(model)
        })
        .map(|s| s.value)
        .sum()
}

const PAUSED: &str = "  annotations:\n    mlep.dev/rollout: pause\n";
const CANARY_50: &str = "  rollout:\n    strategy: Canary\n    stepSeconds: 2\n    canary: {percent: 50}\n    analysis: {minRequests: 10, maxErrorRate: 0.05}\n";

/// `mlep local up` on `dir` with b's model edited to `healthy` under a paused 50% Canary,
/// once the first step is in place.
fn paused_canary_at_half(dir: &Path) -> Up {
    input(dir, PAUSED, CANARY_50);
    let mut up = Up::start(dir);
    up.wait_ready();
    let from = up.lines();
    edit_endpoint(dir, "model: titanic-v2", "model: healthy");
    up.wait_for(
        "rollout titanic: step 1: 50% of b's users on healthy",
        from,
        Duration::from_secs(60),
    );
    up
}

/// Set `mlep.dev/rollout: <command>` on the endpoint in `dir`'s input.
/// Replace `from` with `to` in the endpoint's YAML in `dir`'s input (`mlep up` reloads it).
fn edit_endpoint(dir: &Path, from: &str, to: &str) {
    edit(&dir.join("input/endpoint.yaml"), from, to);
}

fn annotate(dir: &Path, command: &str) {
    edit_endpoint(
        dir,
        "  name: titanic\n",
        &format!("  name: titanic\n  annotations:\n    mlep.dev/rollout: {command}\n"),
    );
}

/// Every user `users` had on variant b is now answered by `model`.
async fn assert_users_of_b_on(up: &Up, users: &BTreeMap<String, (String, String)>, model: &str) {
    for (user, (variant, _)) in users {
        if variant == "b" {
            assert_eq!(served(up, user).await.1, model, "user {user}");
        }
    }
}

/// The rollout state file local mode keeps for the example's endpoint.
fn saved_rollout(dir: &Path) -> serde_json::Value {
    let path = dir.join("state/endpoints/default/titanic.rollout.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_canary_resumes_with_exactly_the_same_users_on_the_new_model() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-resume-{}", std::process::id()));
    let mut first = paused_canary_at_half(&dir);
    let before = assignments(&first, "user", 400).await;
    let on_b = before.values().filter(|(v, _)| v == "b").count();
    let moved = before.values().filter(|(_, m)| m == "healthy").count();
    assert!(moved > 15 && on_b - moved > 15, "{moved} of {on_b} moved");
    first.stop_with(nix::sys::signal::Signal::SIGTERM);
    let saved = saved_rollout(&dir);
    assert_eq!(
        (saved["phase"].as_str(), saved["movedPercent"].as_u64()),
        (Some("Progressing"), Some(50)),
        "{saved}"
    );

    // The same files: the spec names healthy, the state file the rollout half way there.
    let mut up = Up::start(&dir);
    // Moved users ask from before Envoy listens: its very first answers must come from the
    // new model (the split is in Envoy's first filter config, not added a tick later).
    let moved_users: Vec<String> = before
        .iter()
        .filter(|(_, (_, m))| m == "healthy")
        .map(|(u, _)| u.clone())
        .collect();
    let first_answers = tokio::spawn(first_answers(up.port, moved_users, 100));
    let ready = up.wait_ready();
    let load = load_on(&up, Shape::fresh_users(3));
    // From Envoy's first request on: every user where it was (0 moved twice, 0 others moved).
    let after = assignments(&up, "user", 400).await;
    let changed: Vec<_> = before
        .iter()
        .filter(|(user, at)| after.get(*user) != Some(*at))
        .map(|(user, at)| format!("{user}: {at:?} -> {:?}", after.get(user)))
        .collect();
    assert!(
        changed.is_empty(),
        "users moved by the restart: {changed:?}"
    );
    let first = first_answers.await.unwrap();
    assert_eq!(first.len(), 100);
    assert!(
        first.iter().all(|(_, m)| m == "healthy"),
        "moved users served by another model right after the restart: {first:?}"
    );
    let resumed = up.wait_for(
        "rollout titanic: resuming b (titanic-v2 -> healthy) at step 1, 50% of b's users on healthy",
        0,
        Duration::from_secs(1),
    );
    assert!(resumed < ready, "{}", up.output());
    // The live table shows the resumed rollout.
    up.wait_for(
        "Progressing titanic-v2->healthy 50%",
        0,
        Duration::from_secs(30),
    );
    let from = up.lines();
    edit_endpoint(&dir, "mlep.dev/rollout: pause", "mlep.dev/rollout: resume");
    let promoted = up.wait_for("every user on healthy", from, Duration::from_secs(60));
    // Announced before it is applied: b's own cluster has moved once the old servers stop.
    up.wait_for(
        "stopping titanic/b (titanic-v2)",
        promoted,
        Duration::from_secs(30),
    );
    load.stop()
        .await
        .assert_no_failures("load across the restart and the promotion");
    assert_users_of_b_on(&up, &before, "healthy").await;
    assert_eq!(saved_rollout(&dir)["phase"], "Promoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_changed_while_stopped_aborts_the_rollout_and_starts_over_from_the_old_model() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-retarget-{}", std::process::id()));
    let mut first = paused_canary_at_half(&dir);
    first.stop_with(nix::sys::signal::Signal::SIGTERM);
    edit_endpoint(&dir, "model: healthy", "model: healthy2");
    let mut up = Up::start(&dir);
    up.wait_ready();
    let load = load_on(&up, Shape::fresh_users(3));
    let aborted = up.wait_for(
        "aborted b from healthy to titanic-v2: spec now names healthy2; every user is on titanic-v2",
        0,
        Duration::from_secs(60),
    );
    up.wait_for(
        "rollout titanic: step 1: 50% of b's users on healthy2",
        aborted,
        Duration::from_secs(60),
    );
    let saved = saved_rollout(&dir);
    assert_eq!(
        (
            saved["phase"].as_str(),
            saved["fromModel"].as_str(),
            saved["toModel"].as_str()
        ),
        (Some("Progressing"), Some("titanic-v2"), Some("healthy2")),
        "{saved}"
    );
    // The aborted rollout's model never started again; b's users are on the old model or the
    // new rollout's.
    assert!(
        !up.output().contains("ready: titanic/b (healthy) "),
        "{}",
        up.output()
    );
    let after = assignments(&up, "user", 300).await;
    let models: Vec<&str> = after
        .values()
        .filter(|(v, _)| v == "b")
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        models
            .iter()
            .all(|m| *m == "titanic:v2" || *m == "healthy2"),
        "{models:?}"
    );
    assert!(models.contains(&"healthy2") && models.contains(&"titanic:v2"));
    load.stop()
        .await
        .assert_no_failures("load across the abort and the new rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_bake_mirrors_to_the_new_model_again_with_nobody_moved() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-resume-bg-{}", std::process::id()));
    input(
        &dir,
        "",
        "  rollout:\n    strategy: BlueGreen\n    blueGreen: {bakeSeconds: 3600, terminationWaitSeconds: 0}\n    analysis: {minRequests: 10, maxErrorRate: 0.05}\n",
    );
    let mut first = Up::start(&dir);
    first.wait_ready();
    let from = first.lines();
    edit_endpoint(&dir, "model: titanic-v2", "model: healthy");
    first.wait_for(
        "baking healthy on 100% of b's traffic",
        from,
        Duration::from_secs(60),
    );
    first.stop_with(nix::sys::signal::Signal::SIGTERM);

    let mut up = Up::start(&dir);
    let ready = up.wait_ready();
    assert!(
        up.wait_for(
            "resuming b (titanic-v2 -> healthy)",
            0,
            Duration::from_secs(1)
        ) < ready
    );
    let load = load_on(&up, Shape::fresh_users(3));
    // Nobody moves while baking; b's requests are mirrored to healthy again.
    let after = assignments(&up, "bake", 200).await;
    let on_b: Vec<&str> = after
        .values()
        .filter(|(v, _)| v == "b")
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        on_b.len() > 10 && on_b.iter().all(|m| *m == "titanic:v2"),
        "{on_b:?}"
    );
    let start = std::time::Instant::now();
    loop {
        let text = envoy_stats(&up).await;
        if total(&text, "mlep_shadow_requests_total", "healthy") >= 10.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no mirrored requests: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let from = up.lines();
    annotate(&dir, "promote");
    let promoted = up.wait_for("every user on healthy", from, Duration::from_secs(60));
    // Announced before it is applied: b's own cluster has moved once the old servers stop.
    up.wait_for(
        "stopping titanic/b (titanic-v2)",
        promoted,
        Duration::from_secs(30),
    );
    load.stop()
        .await
        .assert_no_failures("load across the restart mid-bake");
    assert_users_of_b_on(&up, &after, "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_blue_green_switch_keeps_blue_for_an_instant_rollback() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-resume-blue-{}", std::process::id()));
    input(
        &dir,
        "",
        "  rollout:\n    strategy: BlueGreen\n    blueGreen: {bakeSeconds: 1, terminationWaitSeconds: 3600}\n    analysis: {minRequests: 1, maxErrorRate: 0.05}\n",
    );
    let mut first = Up::start(&dir);
    first.wait_ready();
    let load = load_on(&first, Shape::fresh_users(2));
    let from = first.lines();
    edit_endpoint(&dir, "model: titanic-v2", "model: healthy");
    first.wait_for(
        "every user on healthy; titanic-v2 keeps running 3600s",
        from,
        Duration::from_secs(60),
    );
    load.stop().await;
    first.stop_with(nix::sys::signal::Signal::SIGTERM);

    let mut up = Up::start(&dir);
    let ready = up.wait_ready();
    // Blue runs again beside green, which serves every user of b.
    assert!(up.wait_for("ready: titanic/b (titanic-v2) ", 0, Duration::from_secs(1)) < ready);
    let load = load_on(&up, Shape::fresh_users(3));
    let after = assignments(&up, "green", 200).await;
    let on_b: Vec<&str> = after
        .values()
        .filter(|(v, _)| v == "b")
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        on_b.len() > 10 && on_b.iter().all(|m| *m == "healthy"),
        "{on_b:?}"
    );
    // An abort in the wait hands the variant back to blue at once.
    let from = up.lines();
    annotate(&dir, "abort");
    let aborted = up.wait_for(
        "aborted b from healthy to titanic-v2",
        from,
        Duration::from_secs(60),
    );
    // Blue took b back; green stops once the abort has drained.
    up.wait_for(
        "stopping titanic/b (healthy)",
        aborted,
        Duration::from_secs(60),
    );
    load.stop()
        .await
        .assert_no_failures("load across the restart and the abort");
    assert_users_of_b_on(&up, &after, "titanic:v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_to_a_failing_model_rolls_back_with_every_user_on_the_old_model() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-back-{}", std::process::id()));
    input(
        &dir,
        "",
        "  rollout:\n    strategy: Canary\n    stepSeconds: 30\n    maxStepSeconds: 60\n    canary: {percent: 50}\n    analysis: {minRequests: 20, maxErrorRate: 0.1}\n",
    );
    let mut up = Up::start(&dir);
    up.wait_ready();
    let load = load_on(&up, Shape::fresh_users(3));
    let from = up.lines();
    edit_endpoint(&dir, "model: titanic-v2", "model: flaky");
    up.wait_for(
        "rollout titanic: step 1: 50% of b's users on flaky (Normal RolloutStep)",
        from,
        Duration::from_secs(60),
    );
    // The operator's Event, one line: the measured value against its limit, type and reason.
    let back = up.wait_for(
        "rollout titanic: rolled back b from flaky to titanic-v2: maxErrorRate: measured ",
        from,
        Duration::from_secs(60),
    );
    let line = up.output().lines().nth(back).unwrap_or_default().to_owned();
    assert!(
        line.contains("against a limit of 0.1") && line.ends_with("(Warning RolledBack)"),
        "{line}"
    );
    let report = load.stop().await;
    assert!(report.succeeded() > 0, "{}", report.summary());
    assert!(
        report
            .failures
            .keys()
            .all(|f| f.starts_with("HTTP 500 ") && f.ends_with(" model=flaky")),
        "only the flaky model's own answers failed: {:?}",
        report.failures
    );
    // Every user of b is back on titanic-v2.
    let mut on_b = 0;
    for i in 0..300 {
        let (variant, model) = served(&up, &format!("after-{i}")).await;
        if variant == "b" {
            on_b += 1;
            assert_eq!(model, "titanic:v2", "user after-{i}");
        }
    }
    assert!(on_b > 20, "{on_b} users on b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_canary_moves_its_share_of_users_and_promotes_without_a_failed_request() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-up-{}", std::process::id()));
    input(
        &dir,
        "  annotations:\n    mlep.dev/rollout: pause\n",
        "  rollout:\n    strategy: Canary\n    stepSeconds: 2\n    canary: {percent: 50}\n    analysis: {minRequests: 10, maxErrorRate: 0.05}\n",
    );
    let mut up = Up::start(&dir);
    up.wait_ready();
    let load = load_on(&up, Shape::fresh_users(3));
    let from = up.lines();
    edit_endpoint(&dir, "model: titanic-v2", "model: healthy");
    up.wait_for(
        "rollout titanic: step 1: 50% of b's users on healthy",
        from,
        Duration::from_secs(60),
    );
    // Held by the annotation: measure the share of b's users on the new model.
    let (mut on_b, mut moved) = (0, 0);
    for i in 0..600 {
        let (variant, model) = served(&up, &format!("share-{i}")).await;
        if variant == "b" {
            on_b += 1;
            moved += usize::from(model == "healthy");
            assert!(model == "healthy" || model == "titanic:v2", "{model}");
        }
    }
    let share = moved as f64 / on_b as f64;
    assert!(on_b > 60, "{on_b} users on b");
    assert!(
        (share - 0.5).abs() < 0.15,
        "{moved} of {on_b} moved, step 50%"
    );
    let from = up.lines();
    edit_endpoint(&dir, "mlep.dev/rollout: pause", "mlep.dev/rollout: resume");
    let promoted = up.wait_for("every user on healthy", from, Duration::from_secs(60));
    // Announced before it is applied: b's own cluster has moved once the old servers stop.
    up.wait_for(
        "stopping titanic/b (titanic-v2)",
        promoted,
        Duration::from_secs(30),
    );
    load.stop()
        .await
        .assert_no_failures("load across the paused canary and its promotion");
    for i in 0..200 {
        let (variant, model) = served(&up, &format!("after-{i}")).await;
        if variant == "b" {
            assert_eq!(model, "healthy", "user after-{i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linear_rollout_promotes_step_by_step_without_a_failed_request() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-linear-{}", std::process::id()));
    input(
        &dir,
        "",
        "  rollout:\n    strategy: Linear\n    stepSeconds: 2\n    linear: {stepPercent: 34}\n    analysis: {minRequests: 5, maxErrorRate: 0.05}\n",
    );
    let mut up = Up::start(&dir);
    up.wait_ready();
    let load = load_on(&up, Shape::fresh_users(3));
    let from = up.lines();
    edit_endpoint(&dir, "model: titanic-v2", "model: healthy");
    let s1 = up.wait_for(
        "step 1: 34% of b's users on healthy",
        from,
        Duration::from_secs(60),
    );
    let s2 = up.wait_for(
        "step 2: 68% of b's users on healthy",
        s1,
        Duration::from_secs(60),
    );
    up.wait_for(
        "step 2 passed: every user on healthy",
        s2,
        Duration::from_secs(60),
    );
    load.stop()
        .await
        .assert_no_failures("load across the linear rollout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_rollout_annotation_is_shown_once_and_ignored_as_the_operator_does() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-badcmd-{}", std::process::id()));
    input(
        &dir,
        "  annotations:\n    mlep.dev/rollout: sideways\n",
        CANARY_50,
    );
    let mut up = Up::start(&dir);
    up.wait_ready();
    // The operator's reading of the annotation (mlep_core::reconcile::command), shown once.
    let warned = up.wait_for(
        "warning: default/titanic: mlep.dev/rollout: \"sideways\" is not one of abort, promote, pause, resume (ignored)",
        0,
        Duration::from_secs(30),
    );
    // Ignored: a model change rolls out as without the annotation (not paused).
    let load = load_on(&up, Shape::fresh_users(3));
    edit_endpoint(&dir, "model: titanic-v2", "model: healthy");
    let step = up.wait_for(
        "rollout titanic: step 1: 50% of b's users on healthy",
        warned,
        Duration::from_secs(60),
    );
    up.wait_for("every user on healthy", step, Duration::from_secs(60));
    load.stop()
        .await
        .assert_no_failures("load with the unknown annotation");
    let shown = up.output().matches("\"sideways\" is not one of").count();
    assert_eq!(shown, 1, "{}", up.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_bakes_on_mirrored_traffic_switches_and_removes_blue_after_the_wait() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-bg-{}", std::process::id()));
    input(
        &dir,
        "",
        "  rollout:\n    strategy: BlueGreen\n    blueGreen: {bakeSeconds: 3, terminationWaitSeconds: 3}\n    analysis: {minRequests: 10, maxErrorRate: 0.05}\n",
    );
    let mut up = Up::start(&dir);
    up.wait_ready();
    let load = load_on(&up, Shape::fresh_users(3));
    let from = up.lines();
    edit_endpoint(&dir, "model: titanic-v2", "model: healthy");
    let bake = up.wait_for(
        "baking healthy on 100% of b's traffic",
        from,
        Duration::from_secs(60),
    );
    // Nobody moves while baking: b's users are still on titanic-v2 (the new model answers
    // only once the switch was announced, which happens before the switch).
    let mut seen_baking = 0;
    for i in 0..100 {
        let (variant, model) = served(&up, &format!("bake-{i}")).await;
        if variant == "b" && model != "titanic:v2" {
            let announced = up
                .output()
                .lines()
                .skip(bake)
                .any(|l| l.contains("every user on healthy"));
            assert!(
                model == "healthy" && announced,
                "user bake-{i} on {model} while baking"
            );
        } else if variant == "b" {
            seen_baking += 1;
        }
    }
    assert!(
        seen_baking > 0,
        "no user of b seen on titanic-v2 while baking"
    );
    let switched = up.wait_for(
        "every user on healthy; titanic-v2 keeps running 3s",
        bake,
        Duration::from_secs(60),
    );
    let at_switch = std::time::Instant::now();
    // The bake mirrored b's requests to the new model and compared the answers.
    let text = envoy_stats(&up).await;
    assert!(
        total(&text, "mlep_shadow_requests_total", "healthy") >= 10.0,
        "{text}"
    );
    assert!(
        total(&text, "mlep_shadow_agreement_total", "healthy") >= 10.0,
        "comparisons counted: {text}"
    );
    up.wait_for(
        "stopping titanic/b (titanic-v2)",
        switched,
        Duration::from_secs(30),
    );
    assert!(
        at_switch.elapsed() >= Duration::from_secs(2),
        "blue kept running through terminationWaitSeconds (stopped after {:?})",
        at_switch.elapsed()
    );
    load.stop()
        .await
        .assert_no_failures("load across the bake and the switch");
    for i in 0..100 {
        let (variant, model) = served(&up, &format!("after-{i}")).await;
        if variant == "b" {
            assert_eq!(model, "healthy", "user after-{i}");
        }
    }
}

/// Issue 23, item 8: a variant's servers on a model are its own (as the cluster's Deployment
/// per variant and model), and so is their readiness. A Canary of `a` to the model `b`
/// serves, started while an aborted rollout of `a` still drains, starts `a`'s own servers on
/// that model and moves `a`'s users (it used to wait for "a ready pod" forever, the drained
/// model's servers standing in for `a`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_to_the_model_another_variant_serves_moves_users_after_an_abort() {
    let dir = std::env::temp_dir().join(format!("mlep-rollout-shared-{}", std::process::id()));
    input(&dir, PAUSED, CANARY_50);
    let mut up = Up::start(&dir);
    up.wait_ready();
    let from = up.lines();
    edit_endpoint(&dir, "model: titanic-v1", "model: healthy");
    up.wait_for(
        "rollout titanic: step 1: 50% of a's users on healthy",
        from,
        Duration::from_secs(60),
    );
    let from = up.lines();
    edit_endpoint(&dir, "mlep.dev/rollout: pause", "mlep.dev/rollout: abort");
    let aborted = up.wait_for(
        "aborted a from healthy to titanic-v1",
        from,
        Duration::from_secs(60),
    );
    // At once (the aborted model drains for a few seconds): a to titanic-v2, b's model.
    let text = std::fs::read_to_string(dir.join("input/endpoint.yaml")).unwrap();
    let retargeted = text
        .replacen("mlep.dev/rollout: abort", "mlep.dev/rollout: pause", 1)
        .replacen("model: healthy", "model: titanic-v2", 1);
    let tmp = dir.join("input/endpoint.yaml.tmp");
    std::fs::write(&tmp, retargeted).unwrap();
    std::fs::rename(&tmp, dir.join("input/endpoint.yaml")).unwrap();
    let load = load_on(&up, Shape::fresh_users(3));
    let step = up.wait_for(
        "rollout titanic: step 1: 50% of a's users on titanic-v2",
        aborted,
        Duration::from_secs(60),
    );
    // a got its own server on titanic-v2, beside b's; the aborted model's servers are gone.
    let out = up.output();
    let ready_a = out
        .lines()
        .skip(aborted)
        .position(|l| l.contains("ready: titanic/a (titanic-v2) "));
    assert!(ready_a.is_some_and(|i| aborted + i < step), "{out}");
    up.wait_for(
        "stopping titanic/a (healthy)",
        aborted,
        Duration::from_secs(30),
    );
    // Half of a's users now get titanic-v2's answers; b's users keep theirs.
    let after = assignments(&up, "shared", 300).await;
    let on = |variant: &str, model: &str| {
        after
            .values()
            .filter(|(v, m)| v == variant && m == model)
            .count()
    };
    let on_a = after.values().filter(|(v, _)| v == "a").count();
    assert!(
        on("a", "titanic:v2") > on_a / 4 && on("a", "titanic:v1") > on_a / 4,
        "{after:?}"
    );
    assert_eq!(
        on("b", "titanic:v2"),
        after.values().filter(|(v, _)| v == "b").count()
    );
    load.stop()
        .await
        .assert_no_failures("load across the abort and the new canary");
}
