//! Data capture in local mode, end to end: `mlep local up` on the Titanic example with
//! `spec.dataCapture`, the real filter in Envoy and the real capture sink, writing to a
//! directory and then (changed live) to a real S3 server. Every captured invocation is in a
//! JSON Lines file under `<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/` with the request and
//! the prediction as sent and answered; turning capture off and on again applies live, and no
//! invocation of the "off" period is captured anywhere.
//!
//! Needs (scripts/test-cli.sh does it): `mlep-model-server` and `mlep-capture-sink` beside the
//! `mlep` test binary, the built filter, and `MLEP_S3_SERVER` (versitygw).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod support;

use mlep_contract::capture::CaptureRecord;
use mlep_contract::metrics::{CAPTURE_RECORDS_TOTAL, REQUESTS_TOTAL};
use mlep_model_init::testing::S3Server;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

/// Every `.jsonl` file under `root`, recursively, with its path relative to `root`.
fn capture_files(root: &Path) -> Vec<(String, Vec<CaptureRecord>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let text = std::fs::read_to_string(&p).unwrap();
                let records = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                    .collect();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, records));
            }
        }
    }
    out
}

fn records(root: &Path) -> Vec<(String, CaptureRecord)> {
    capture_files(root)
        .into_iter()
        .flat_map(|(f, rs)| rs.into_iter().map(move |r| (f.clone(), r)))
        .collect()
}

fn key_hash(user: &str) -> String {
    format!(
        "{:016x}",
        mlep_contract::hash::hash_key("default/titanic", user)
    )
}

fn wait_records(root: &Path, n: usize) -> Vec<(String, CaptureRecord)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = records(root);
        if r.len() >= n || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn capture_yaml(destination: &str, enabled: bool) -> String {
    format!(
        "  dataCapture:\n    enabled: {enabled}\n    samplingPercent: 100\n    destinationUri: {destination}\n    contentTypes: [application/json]\n"
    )
}

/// A fresh input directory `<tmp>/<tag>-<pid>/input` with the Titanic models and its endpoint
/// capturing to `<dir>/captures`; returns the directory, the endpoint file, the endpoint YAML
/// without capture, and the capture directory with its `file://` URI.
fn capture_input(tag: &str) -> (PathBuf, PathBuf, String, PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    std::fs::copy(example().join("models.yaml"), dir.join("input/models.yaml")).unwrap();
    let endpoint = dir.join("input/endpoint.yaml");
    let base = std::fs::read_to_string(example().join("endpoint.yaml")).unwrap();
    let local = dir.join("captures");
    let dest = format!("file://{}", local.display());
    std::fs::write(&endpoint, format!("{base}{}", capture_yaml(&dest, true))).unwrap();
    (dir, endpoint, base, local, dest)
}

/// `mlep_capture_records_total{outcome}` summed over endpoints, from Envoy's stats text.
fn capture_count(stats: &str, outcome: &str) -> f64 {
    metric_sum(stats, CAPTURE_RECORDS_TOTAL, "outcome", outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_invocations_land_as_records_and_capture_follows_live_edits() {
    let (dir, endpoint, base, local, file_dest) = capture_input("mlep-capture");
    let s3 = S3Server::start();
    std::fs::create_dir_all(s3.root.join("captures")).unwrap();
    let mut env: Vec<(String, std::ffi::OsString)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    env.push(("MLEP_CAPTURE_MAX_FILE_AGE_MS".into(), "300".into()));
    let env_refs: Vec<(&str, &std::ffi::OsStr)> = env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_os_str()))
        .collect();
    let mut up = Up::start_with_env(&dir, &env_refs);
    up.wait_ready();

    // 1. Capture on, to a directory: 40 users, each invocation captured once.
    let request = std::fs::read(example().join("request.json")).unwrap();
    let mut answers: BTreeMap<String, (String, String)> = BTreeMap::new();
    for i in 0..40 {
        let user = format!("on-{i}");
        let r = up.invoke(Some(&user), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let variant = r.header("x-mlep-variant").unwrap().to_owned();
        answers.insert(key_hash(&user), (variant, r.text()));
    }
    let got = wait_records(&local, 40);
    assert_eq!(
        got.len(),
        40,
        "records: {:?}",
        capture_files(&local)
            .iter()
            .map(|f| &f.0)
            .collect::<Vec<_>>()
    );
    for (file, r) in &got {
        let m = &r.event_metadata;
        let hash = m.sticky_key_hash.clone().unwrap();
        let (variant, answer) = answers
            .get(&hash)
            .unwrap_or_else(|| panic!("no request hashes to {hash}"));
        assert_eq!(&m.variant_name, variant);
        assert_eq!(m.endpoint_name, "titanic");
        assert_eq!(
            m.model_name,
            if variant == "a" {
                "titanic-v1"
            } else {
                "titanic-v2"
            }
        );
        assert_eq!(m.status, 200);
        let input = r.capture_data.endpoint_input.as_ref().unwrap();
        assert_eq!(input.encoding.as_deref(), Some("JSON"));
        assert_eq!(
            input.data.as_deref().unwrap().as_bytes(),
            request.as_slice(),
            "request as sent"
        );
        let output = r.capture_data.endpoint_output.as_ref().unwrap();
        assert_eq!(
            output.data.as_deref(),
            Some(answer.as_str()),
            "prediction as answered"
        );
        // <endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<file>.jsonl, the hour of the record's time.
        let t = &m.inference_time;
        let want_dir = format!(
            "titanic/{variant}/{}/{}/{}/{}/",
            &t[0..4],
            &t[5..7],
            &t[8..10],
            &t[11..13]
        );
        assert!(file.starts_with(&want_dir), "{file} not under {want_dir}");
    }

    // `mlep capture` prints the same records from the destination the input names.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlep"))
        .args(["capture", "-f"])
        .arg(dir.join("input"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<CaptureRecord> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut want: Vec<_> = got
        .iter()
        .map(|(_, r)| r.event_metadata.event_id.clone())
        .collect();
    let mut seen: Vec<_> = printed
        .iter()
        .map(|r| r.event_metadata.event_id.clone())
        .collect();
    want.sort();
    seen.sort();
    assert_eq!(seen, want, "mlep capture prints every record once");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlep"))
        .args([
            "capture",
            "--destination",
            &file_dest,
            "--endpoint",
            "titanic",
            "--variant",
            "a",
            "--files",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        !listed.is_empty() && listed.lines().all(|l| l.starts_with("titanic/a/")),
        "{listed}"
    );

    // 2. Capture off (live): the sink is retired; these invocations are captured nowhere.
    let from = up.lines();
    std::fs::write(
        &endpoint,
        format!("{base}{}", capture_yaml(&file_dest, false)),
    )
    .unwrap();
    up.wait_for("stopping capture sink", from, Duration::from_secs(30));
    up.wait_for("applied:", from, Duration::from_secs(30));
    for i in 0..20 {
        let r = up.invoke(Some(&format!("off-{i}")), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // 3. On again, to S3 (a new destination): 10 more, and only those, arrive there.
    let from = up.lines();
    let s3_dest = "s3://captures/local-test";
    std::fs::write(&endpoint, format!("{base}{}", capture_yaml(s3_dest, true))).unwrap();
    up.wait_for("applied:", from, Duration::from_secs(30));
    for i in 0..10 {
        let r = up.invoke(Some(&format!("again-{i}")), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let in_s3 = wait_records(&s3.root.join("captures/local-test"), 10);
    assert_eq!(in_s3.len(), 10);
    let again: Vec<String> = (0..10).map(|i| key_hash(&format!("again-{i}"))).collect();
    for (_, r) in &in_s3 {
        assert!(again.contains(r.event_metadata.sticky_key_hash.as_ref().unwrap()));
    }
    // Nothing of the "off" period anywhere, and nothing was lost on the way.
    let off: Vec<String> = (0..20).map(|i| key_hash(&format!("off-{i}"))).collect();
    let everywhere: Vec<_> = records(&local)
        .into_iter()
        .chain(records(&s3.root))
        .collect();
    assert_eq!(everywhere.len(), 50);
    assert!(everywhere
        .iter()
        .all(|(_, r)| !off.contains(r.event_metadata.sticky_key_hash.as_ref().unwrap())));
    // Envoy's counts once settled: the 70 invocations (a stream's last count, handed over
    // once a second with the streams' `queue_full`) and the sink's 50 answers (the root's).
    let start = std::time::Instant::now();
    let counts = loop {
        let stats = envoy_stats(&up).await;
        let count = |outcome: &str| capture_count(&stats, outcome);
        let counts = (count("sent"), count("sink_error"), count("queue_full"));
        let requests = metric_sum(&stats, REQUESTS_TOTAL, "endpoint", "titanic");
        if requests == 70.0 && counts.0 + counts.1 + counts.2 >= 50.0 {
            break counts;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not settled: {requests} of 70 requests counted, capture outcomes {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(counts, (50.0, 0.0, 0.0));
    eprintln!(
        "measured: 50 records in {} files (directory) + {} (S3)\n--- mlep's output:\n{}",
        capture_files(&local).len(),
        capture_files(&s3.root).len(),
        up.output()
    );
    up.stop_with(nix::sys::signal::Signal::SIGINT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_under_load_fails_no_request_and_capture_resumes_after_its_restart() {
    let (dir, _, _, local, _) = capture_input("mlep-capture-kill");
    let age = std::ffi::OsString::from("200");
    let mut up = Up::start_with_env(&dir, &[("MLEP_CAPTURE_MAX_FILE_AGE_MS", age.as_os_str())]);
    up.wait_ready();
    let sink = || {
        children_of(up.child.id())
            .into_iter()
            .find(|p| cmdline(*p).contains("mlep-capture-sink"))
    };
    let load = load_on(&up, Shape::fresh_users(2));
    let warm = std::time::Instant::now();
    while load.succeeded() < 50 {
        assert!(
            warm.elapsed() < Duration::from_secs(30),
            "load did not get going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let from = up.lines();
    let killed_at = mlep_contract::capture::rfc3339_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    kill9(sink().expect("a capture sink under mlep"));
    up.wait_for(
        "capture sink default/titanic/capture exited; restarting",
        from,
        Duration::from_secs(10),
    );
    let at_restart = load.succeeded();
    while load.succeeded() < at_restart + 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = load.stop().await;
    eprintln!(
        "measured: capture sink killed -9 under load: {}",
        report.summary()
    );
    report.assert_no_failures("the capture sink killed");
    // What the filter could not hand over while the sink was down is counted, not lost
    // silently; what the restarted sink took is written.
    let count = capture_count;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats = envoy_stats(&up).await;
        let (sent, errors) = (count(&stats, "sent"), count(&stats, "sink_error"));
        let total = sent + errors + count(&stats, "queue_full");
        if total == report.succeeded() as f64 {
            eprintln!("measured: {sent} records sent, {errors} counted sink_error");
            assert!(sent > 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{total} of {} records accounted for",
            report.succeeded()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Invocations after the kill are captured again (by the restarted sink).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !records(&local)
        .iter()
        .any(|(_, r)| r.event_metadata.inference_time > killed_at)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no record of an invocation after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up.stop_with(nix::sys::signal::Signal::SIGINT);
}
