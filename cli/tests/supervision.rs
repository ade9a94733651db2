//! End to end: `mlep local up` keeps serving through crashes, like a kubelet and a mesh would:
//! a model server killed with SIGKILL is restarted (on the same port, with back-off), Envoy
//! routes around a dead replica, a killed Envoy is restarted with the same configuration, and
//! oversized bodies always get the model server's JSON 413. Real processes, a real Envoy.
//!
//! Every test runs its own `mlep local up` on free ports, in its own directory, so they run in
//! parallel with each other and with other copies of this suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod support;

use mlep::http::{self, Request};
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// Lines of the output that contain `needle`.
fn count(up: &Up, needle: &str) -> usize {
    up.output().lines().filter(|l| l.contains(needle)).count()
}

/// Wait for a table row of `variant` whose columns from READY on read `tail`.
fn wait_for_row(up: &mut Up, variant: &str, tail: &str, timeout: Duration) -> String {
    let what = format!("ending {tail:?}");
    let fits = |cols: &[&str]| cols.join(" ").starts_with(tail);
    wait_for_table_row(up, variant, 0, "READY", fits, &what, timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_model_servers_are_restarted_and_a_second_replica_takes_every_request_meanwhile() {
    let dir = test_dir("kill-server");
    titanic_input(&dir, |e| e.replacen("replicas: 1", "replicas: 2", 1));
    let mut up = Up::start(&dir);
    up.wait_ready();
    let a = ports_of(&up, "titanic/a");
    let b = ports_of(&up, "titanic/b");
    assert_eq!((a.len(), b.len()), (2, 1), "{}", up.output());

    // Two replicas of a, under load aimed at a: one is killed, no request fails. Envoy retries
    // what hit the dead one on the other and health checks take it out until it is back.
    let load = load_on(
        &up,
        Shape::fresh_users(3).header("x-mlep-target-variant", "a"),
    );
    let warm = Instant::now();
    while load.succeeded() < 30 {
        assert!(
            warm.elapsed() < Duration::from_secs(30),
            "load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from = up.lines();
    kill9(server_on(&up, a[0]));
    let i = up.wait_for(
        "ready again: titanic/a/titanic-v1#0",
        from,
        Duration::from_secs(20),
    );
    let line = up.out.lock().unwrap()[i].clone();
    assert!(
        line.contains(&format!("on 127.0.0.1:{} ", a[0])),
        "restarted on the same port (the EDS file stays as it is): {line}"
    );
    let ok_at_restart = load.succeeded();
    while load.succeeded() < ok_at_restart + 30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = load.stop().await;
    eprintln!(
        "measured: one of two replicas killed under load: {}",
        report.summary()
    );
    report.assert_no_failures("a replica down");

    // The single replica of b: killed, restarted, serving again within 5 s.
    let from = up.lines();
    let killed = Instant::now();
    kill9(server_on(&up, b[0]));
    let target_b = [("x-mlep-target-variant", "b".to_owned())];
    let took = serving_again(&up, &target_b, Duration::from_secs(5)).await;
    eprintln!(
        "measured: b (1 replica) served again {:?} after kill -9",
        killed.elapsed()
    );
    assert!(took < Duration::from_secs(5));
    up.wait_for(
        "ready again: titanic/b/titanic-v2#0",
        from,
        Duration::from_secs(5),
    );
    // Said once, with the restart in the table.
    assert_eq!(count(&up, "titanic/b/titanic-v2#0 exited (signal: 9"), 1);
    wait_for_row(&mut up, "b", "1/1 1 Running", Duration::from_secs(10));
    wait_for_row(&mut up, "a", "2/2 1 Running", Duration::from_secs(10));
    up.stop_with(nix::sys::signal::Signal::SIGINT);
}

/// A model that exits at start (here: once a file exists) is restarted 1 s, 2 s, 4 s … after
/// each exit; each exit is reported once with its last log lines (not on every table refresh);
/// the table says CrashLoopBackOff; once the cause is gone the next restart serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_model_backs_off_and_says_so_once_per_restart() {
    let dir = test_dir("crash-loop");
    titanic_input(&dir, |e| e);
    let crash = dir.join("crash");
    let server = Path::new(env!("CARGO_BIN_EXE_mlep")).with_file_name("mlep-model-server");
    let command = format!(
        "test -e {} && {{ echo 'boom: crash file present' >&2; exit 3; }}; exec {} --host 127.0.0.1 --port $PORT --model-dir $MODEL_DIR",
        crash.display(),
        server.display()
    );
    let models = std::fs::read_to_string(dir.join("input/models.yaml")).unwrap();
    let models = models.replacen(
        "  name: titanic-v2\n",
        &format!("  name: titanic-v2\n  annotations:\n    mlep.dev/local-command: \"{command}\"\n"),
        1,
    );
    std::fs::write(dir.join("input/models.yaml"), models).unwrap();
    let mut up = Up::start(&dir);
    up.wait_ready();
    let b = ports_of(&up, "titanic/b");

    std::fs::write(&crash, "").unwrap();
    let from = up.lines();
    kill9(server_on(&up, b[0]));
    // Exits 1 (the kill), 2 and 3 (the crash file): waits of 1 s, 2 s, then 4 s.
    up.wait_for("exited (signal: 9", from, Duration::from_secs(5));
    // The cluster's condition reason names it.
    up.wait_for(
        "restart 2 in 2s (ModelCrashLooping)",
        from,
        Duration::from_secs(10),
    );
    up.wait_for("restart 3 in 4s", from, Duration::from_secs(10));
    // The cause goes away now; the restart after the 4 s wait will serve.
    std::fs::remove_file(&crash).unwrap();
    let row = wait_for_row(
        &mut up,
        "b",
        "0/1 2 CrashLoopBackOff (restart in",
        Duration::from_secs(4),
    );
    eprintln!("measured: crash loop row: {row}");
    assert!(
        up.output().contains("boom: crash file present"),
        "the last log lines come with the report:\n{}",
        up.output()
    );
    up.wait_for(
        "ready again: titanic/b/titanic-v2#0",
        from,
        Duration::from_secs(10),
    );
    let reports = count(&up, "titanic/b/titanic-v2#0 exited");
    let tables = count(&up, "ENDPOINT ");
    assert_eq!(reports, 3, "one report per exit:\n{}", up.output());
    assert!(tables > 2 * reports, "{tables} tables");
    let target_b = [("x-mlep-target-variant", "b".to_owned())];
    serving_again(&up, &target_b, Duration::from_secs(5)).await;
    wait_for_row(&mut up, "b", "1/1 3 Running", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_envoy_is_restarted_and_users_keep_their_variants() {
    let dir = test_dir("kill-envoy");
    titanic_input(&dir, |e| e);
    // Envoy through a wrapper that refuses to start once `dir/no-envoy` exists.
    let envoy = mlep::envoy::find_or_install_envoy().unwrap();
    let wrapper = dir.join("envoy");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ntest -e {} && {{ echo 'cannot start: no-envoy exists' >&2; exit 1; }}\nexec {} \"$@\"\n",
            dir.join("no-envoy").display(),
            envoy.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut up = Up::start_with_env(&dir, &[("MLEP_ENVOY", wrapper.as_os_str())]);
    up.wait_ready();
    let before = split(&up, "user", 200).await;
    assert!(before.values().any(|v| v == "b") && before.values().any(|v| v == "a"));

    let from = up.lines();
    let killed = Instant::now();
    kill9(envoy_of(&up));
    let took = serving_again(&up, &[], Duration::from_secs(5)).await;
    eprintln!("measured: serving again {took:?} after kill -9 of Envoy");
    up.wait_for(
        "warning: Envoy exited (signal: 9",
        from,
        Duration::from_secs(5),
    );
    up.wait_for("Envoy is back after", from, Duration::from_secs(5));
    assert!(killed.elapsed() < Duration::from_secs(10));
    let after = split(&up, "user", 200).await;
    assert_eq!(
        before, after,
        "users kept their variants across the restart"
    );

    // Envoy dies again and cannot start any more: mlep says why, exits non-zero and stops
    // every process it started.
    let kids = children_of(up.child.id());
    std::fs::write(dir.join("no-envoy"), "").unwrap();
    kill9(envoy_of(&up));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "mlep kept running without Envoy:\n{}",
            up.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{}", up.output());
    let i = up.wait_for("could not be restarted", 0, Duration::from_secs(5));
    let line = up.out.lock().unwrap()[i].clone();
    assert!(line.starts_with("error: Envoy exited (signal: 9"), "{line}");
    up.wait_for("cannot start: no-envoy exists", i, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while kids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "processes left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bodies over the model server's limit (6 MiB) get its JSON 413 naming the limit, 20 times out
/// of 20, through Envoy: the server reads the body to its end before answering, so Envoy never
/// sees a reset while it is still uploading (which it would answer with a 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_always_get_the_json_413_naming_the_limit() {
    let dir = test_dir("413");
    titanic_input(&dir, |e| e);
    let mut up = Up::start(&dir);
    up.wait_ready();
    for size in [20_000_000usize, 7_000_000] {
        let body = vec![b' '; size];
        let mut statuses = Vec::new();
        for i in 0..20 {
            let req = Request {
                method: "POST",
                path: "/invocations",
                headers: vec![
                    ("content-type", "application/json".to_owned()),
                    ("x-user-id", format!("big-{i}")),
                ],
                body: &body,
            };
            let outcome = match http::send(up.port, &req, Duration::from_secs(30)).await {
                Ok(r) if r.status == 413 => {
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(v["error"]["code"], "body_too_large", "{}", r.text());
                    let message = v["error"]["message"].as_str().unwrap();
                    assert!(message.contains("6291456 bytes"), "{}", r.text());
                    "413".to_owned()
                }
                Ok(r) => format!("{} {}", r.status, r.text()),
                Err(e) => e.to_string(),
            };
            statuses.push(outcome);
        }
        eprintln!("measured: {size}-byte bodies: statuses {statuses:?}");
        assert!(
            statuses.iter().all(|s| s == "413"),
            "{size} bytes: {statuses:?}"
        );
    }
    // And a normal request still works.
    assert_eq!(up.invoke(Some("small"), &[]).await.status, 200);
}
