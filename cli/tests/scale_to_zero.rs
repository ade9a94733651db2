//! End to end: scale to zero in local mode. A variant with `minReplicas: 0` whose requests stop
//! falls asleep (the filter configuration marks it), loses its server after the grace, and a
//! request for it is held by the filter in the real Envoy, which asks mlep's wake server to
//! start the server again, probes it and then lets the request through; the other variant
//! answers at once meanwhile. Real processes, a real Envoy, the built filter.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod support;

use mlep::http;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// Whether a server answers `GET /ping` with 200 on `port`.
async fn pings(port: u16) -> bool {
    http::get(port, "/ping", Duration::from_millis(500))
        .await
        .is_ok_and(|r| r.status == 200)
}

/// Wait for a table row of `variant`, after output line `from`, whose STATUS reads `status`.
fn wait_for_status(up: &Up, variant: &str, status: &str, from: usize, timeout: Duration) {
    let what = format!("with STATUS {status}");
    let fits = |cols: &[&str]| cols.first() == Some(&status);
    wait_for_table_row(up, variant, from, "STATUS", fits, &what, timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_variant_sleeps_and_a_held_request_wakes_it_while_the_other_answers_at_once() {
    let dir = test_dir("scale-to-zero");
    titanic_input(&dir, |e| {
        let b = "      weight: 20\n      replicas: 1\n";
        assert!(e.contains(b), "the example's variant b changed");
        e.replacen(
            b,
            "      weight: 20\n      autoscaling: {minReplicas: 0, maxReplicas: 1, \
             targetRequestsPerSecond: 5, scaleToZeroAfterSeconds: 30}\n",
            1,
        )
    });
    let mut up = Up::start(&dir);
    up.wait_ready();
    let started = Instant::now();
    let b_port = ports_of(&up, "titanic/b")[0];
    let to_b = [("x-mlep-target-variant", "b".to_owned())];
    let to_a = [("x-mlep-target-variant", "a".to_owned())];
    // Not synchronisation: b's one request comes 8 s into its idle time, which must start
    // anew (so the request counts are read), else b would sleep 22 s after it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // b answers while awake: its model, to compare with after the wake.
    let first = up.invoke(None, &to_b).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let b_model = first.header("x-mlep-model").unwrap().to_owned();
    let last_request = Instant::now();

    // 30 s without a request: marked asleep, then (10 s grace) its server goes.
    let asleep = up.wait_for(
        "titanic/b: no request for 30 s, asleep",
        0,
        Duration::from_secs(60),
    );
    let idle = last_request.elapsed();
    assert!(
        idle >= Duration::from_secs(29),
        "b fell asleep {idle:?} after its last request ({:?} after the start)",
        started.elapsed()
    );
    up.wait_for("titanic/b: 0 servers", asleep, Duration::from_secs(20));
    let gone = Instant::now();
    while pings(b_port).await {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "b's server still answers on {b_port}:\n{}",
            up.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_status(&up, "b", "Asleep", asleep, Duration::from_secs(5));

    // One request for b: held by the filter until b's server is back. Meanwhile requests to
    // a go one after another; some must start and end within b's hold, all answered by a.
    let from = up.lines();
    let port = up.port;
    let stop = Arc::new(AtomicBool::new(false));
    let to_a_loop = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let body = std::fs::read(example().join("request.json")).unwrap();
            let mut done = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = invocation(None, &to_a, &body);
                let started = Instant::now();
                let r = http::send(port, &req, Duration::from_secs(10))
                    .await
                    .unwrap();
                let variant = r.header("x-mlep-variant").map(str::to_owned);
                done.push((started, Instant::now(), r.status, variant));
            }
            done
        })
    };
    let sent = Instant::now();
    let held = tokio::spawn(async move {
        let body = std::fs::read(example().join("request.json")).unwrap();
        let req = invocation(None, &to_b, &body);
        let r = http::send(port, &req, Duration::from_secs(60)).await;
        (r, Instant::now())
    });
    let (b, answered) = held.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let a_answers = to_a_loop.await.unwrap();
    let cold = answered - sent;
    assert!(a_answers
        .iter()
        .all(|(_, _, status, v)| *status == 200 && v.as_deref() == Some("a")));
    let during: Vec<Duration> = a_answers
        .iter()
        .filter(|(start, end, _, _)| *start >= sent && *end <= answered)
        .map(|(start, end, _, _)| *end - *start)
        .collect();
    assert!(
        !during.is_empty(),
        "no request to a started and ended while b's was held ({cold:?}): {a_answers:?}\n{}",
        up.output()
    );
    let a_took = during.iter().max().copied().unwrap_or_default();
    up.wait_for(
        "titanic/b: woken by a request",
        from,
        Duration::from_secs(10),
    );
    let b = b.unwrap();
    assert_eq!(b.status, 200, "{}\n{}", b.text(), up.output());
    assert_eq!(b.header("x-mlep-variant"), Some("b"));
    assert_eq!(b.header("x-mlep-model"), Some(b_model.as_str()));
    assert!(close(&predictions(&b), &expected("v2")), "{}", b.text());
    // Answered by a server started again after the wake call.
    up.wait_for("ready: titanic/b ", from, Duration::from_secs(1));
    up.wait_for("titanic/b: awake", from, Duration::from_secs(10));
    let restarted = up
        .output()
        .lines()
        .skip(from)
        .find(|l| l.contains("ready: titanic/b "))
        .map(str::to_owned)
        .unwrap();
    let restarted_port: u16 = restarted
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    assert!(pings(restarted_port).await, "{restarted}");
    wait_for_status(&up, "b", "Running", from, Duration::from_secs(5));
    eprintln!(
        "measure: cold start of b, a request held while its server started again: {cold:?} \
         ({} requests to a answered meanwhile, the slowest in {a_took:?})",
        during.len()
    );
    up.stop_with(nix::sys::signal::Signal::SIGINT);
}
