//! The sink against a real S3 server (Versity's gateway, `mlep_model_init::testing`): records
//! land under `s3://<bucket>/<prefix>/<endpoint>/<variant>/yyyy/mm/dd/hh/`; a store that hangs
//! or refuses never blocks a caller and never takes the buffer over its bound (503 past it);
//! files it cannot take are given up and counted; a store that comes back gets everything
//! held, with no restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{capture_files, check_file_name, wait_for, Invocation, Sink};
use mlep_contract::capture::sink_metrics::{
    BUFFERED_BYTES, DROPPED, FILES, RECEIVED, STORE_ERRORS, WRITTEN,
};
use mlep_model_init::testing::{S3Server, SERVER_ENV};

const WAIT: Duration = Duration::from_secs(20);
const ACCESS: &str = "mlep-test";
const SECRET: &str = "mlep-test-secret-key";

/// The sink's environment for an S3 endpoint.
fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
    ]
}

/// A port nothing listens on (connections are refused).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn big(event_id: &str, bytes: usize) -> Invocation {
    Invocation::json(
        event_id,
        &format!("{{\"x\":\"{}\"}}", "x".repeat(bytes)),
        "[1]",
    )
}

#[test]
fn records_reach_a_real_s3_server_under_the_prefix() {
    let s3 = S3Server::start();
    std::fs::create_dir_all(s3.root.join("captures")).unwrap();
    let sink = Sink::start(
        "s3://captures/prod/eu",
        &["--max-file-age-ms", "200"],
        &s3.env(),
    );
    let sent = [
        Invocation::json("s3-0", "{\"a\":1}", "{\"p\":0.5}"),
        Invocation {
            variant: "b".into(),
            input_type: "application/octet-stream".into(),
            input: common::Side::Bytes(vec![0, 159, 146, 150]),
            ..Invocation::json("s3-1", "", "[0]")
        },
        Invocation::json("s3-2", "[1,2,3]", "[4]"),
    ];
    for inv in &sent {
        assert_eq!(sink.post(inv).0, 202);
    }
    wait_for("3 records written", WAIT, || {
        sink.metric(WRITTEN, &[]) == 3.0
    });
    let files = capture_files(&s3.root.join("captures"));
    let mut found = 0;
    for (rel, records) in &files {
        let first = sent
            .iter()
            .find(|i| i.event_id.as_deref() == Some(&records[0].event_metadata.event_id))
            .unwrap();
        check_file_name(rel, &first.dir("prod/eu"), first.time_ms);
        assert!(rel.starts_with("prod/eu/titanic/"), "{rel}");
        for r in records {
            let inv = sent
                .iter()
                .find(|i| i.event_id.as_deref() == Some(&r.event_metadata.event_id))
                .unwrap();
            let input = if inv.variant == "b" { "BASE64" } else { "JSON" };
            inv.check(r, (Some(input), Some("JSON")));
            found += 1;
        }
    }
    assert_eq!(found, 3, "{files:?}");
    assert_eq!(files.len() as f64, sink.metric(FILES, &[]));
    assert_eq!(sink.metric(STORE_ERRORS, &[]), 0.0);
}

/// Accepts connections and never answers: a store that hangs.
struct Blackhole {
    port: u16,
    _accepted: std::thread::JoinHandle<()>,
}

impl Blackhole {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for s in listener.incoming().map_while(Result::ok) {
                held.push(s);
            }
        });
        Self {
            port,
            _accepted: accepted,
        }
    }
}

#[test]
fn a_hanging_store_never_blocks_a_caller_and_past_the_buffer_bound_requests_get_503() {
    let store = Blackhole::start();
    let max = 100_000.0;
    let sink = Sink::start(
        "s3://captures/x",
        &[
            "--max-buffer-bytes",
            "100000",
            "--max-file-bytes",
            "25000",
            "--max-file-age-ms",
            "600000",
            "--put-timeout-ms",
            "500",
        ],
        &s3_env(&format!("http://127.0.0.1:{}", store.port)),
    );
    let (mut accepted, mut refused, mut slowest) = (0u32, 0u32, Duration::ZERO);
    for i in 0..40 {
        let started = Instant::now();
        let (status, answer) = sink.post(&big(&format!("b{i}"), 10_000));
        slowest = slowest.max(started.elapsed());
        match status {
            202 => {
                assert_eq!(refused, 0, "a 202 after a 503 with nothing written");
                accepted += 1;
            }
            503 => {
                assert_eq!(answer["error"]["code"], "buffer_full", "{answer}");
                refused += 1;
            }
            other => panic!("{other}: {answer}"),
        }
        assert!(sink.metric(BUFFERED_BYTES, &[]) <= max);
    }
    eprintln!("accepted {accepted}, refused {refused}, slowest answer {slowest:?}");
    assert!(accepted >= 5 && refused > 0, "~10 KB records into 100 KB");
    assert!(
        slowest < Duration::from_secs(2),
        "a caller waited {slowest:?}"
    );
    // Refused exactly at the bound: one more record (they are all about the same size)
    // would have gone over it.
    let buffered = sink.metric(BUFFERED_BYTES, &[]);
    let record = buffered / f64::from(accepted);
    assert!(
        buffered <= max && buffered + record > max,
        "{buffered} + {record}"
    );
    wait_for("a put to time out", WAIT, || {
        sink.metric(STORE_ERRORS, &[]) >= 1.0
    });
    let m = sink.metrics();
    let sum = |name, labels: &[(&str, &str)]| mlep::table::sum_of(&m, name, labels);
    assert_eq!(sum(RECEIVED, &[]), f64::from(accepted));
    assert_eq!(
        sum(
            DROPPED,
            &[("endpoint", "titanic"), ("reason", "buffer_full")]
        ),
        f64::from(refused)
    );
    assert_eq!(sum(WRITTEN, &[]), 0.0);
    assert!(sum(BUFFERED_BYTES, &[]) <= max);
}

#[test]
fn files_a_refusing_store_cannot_take_are_given_up_after_ten_file_ages_and_counted() {
    let port = closed_port();
    let sink = Sink::start(
        "s3://captures",
        &["--max-file-age-ms", "100"],
        &s3_env(&format!("http://127.0.0.1:{port}")),
    );
    for i in 0..4 {
        assert_eq!(
            sink.post(&Invocation::json(&format!("g{i}"), "[1]", "[2]"))
                .0,
            202
        );
    }
    wait_for("4 records given up", WAIT, || {
        sink.metric(
            DROPPED,
            &[("endpoint", "titanic"), ("reason", "store_error")],
        ) == 4.0
    });
    assert_eq!(
        sink.metric(BUFFERED_BYTES, &[]),
        0.0,
        "their bytes are freed"
    );
    assert!(sink.metric(STORE_ERRORS, &[]) >= 1.0);
    assert_eq!(sink.metric(RECEIVED, &[]), 4.0);
    assert_eq!(sink.metric(WRITTEN, &[]), 0.0);
    assert_eq!(sink.post(&Invocation::json("g4", "[1]", "[2]")).0, 202);
}

/// versitygw serving `root` on `port`, as `mlep_model_init::testing::S3Server` starts it
/// (which picks its own port: a store that comes back must come back where it was).
struct Versitygw(Child);

impl Versitygw {
    fn start(port: u16, root: &Path) -> Self {
        let bin = std::env::var(SERVER_ENV)
            .unwrap_or_else(|_| panic!("{SERVER_ENV} must name the versitygw binary"));
        let child = Command::new(&bin)
            .args(["--access", ACCESS, "--secret", SECRET, "--quiet"])
            .args(["--port", &format!("127.0.0.1:{port}")])
            .args(["posix", "--nometa"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        Self(child)
    }
}

impl Drop for Versitygw {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn writing_resumes_by_itself_when_the_store_comes_back() {
    let port = closed_port();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s3");
    std::fs::create_dir_all(root.join("captures")).unwrap();
    // Files are due after 1 s and given up after 10 s: the store is back well before.
    let sink = Sink::start(
        "s3://captures/late",
        &["--max-file-age-ms", "1000"],
        &s3_env(&format!("http://127.0.0.1:{port}")),
    );
    let sent: Vec<Invocation> = (0..5)
        .map(|i| Invocation::json(&format!("r{i}"), &format!("{{\"i\":{i}}}"), "[0]"))
        .collect();
    for inv in &sent {
        assert_eq!(sink.post(inv).0, 202);
    }
    wait_for("two failed puts", WAIT, || {
        sink.metric(STORE_ERRORS, &[]) >= 2.0
    });
    assert_eq!(sink.metric(WRITTEN, &[]), 0.0);
    let _store = Versitygw::start(port, &root);
    wait_for("the held records written", WAIT, || {
        sink.metric(WRITTEN, &[]) == 5.0
    });
    let files = capture_files(&root.join("captures"));
    let records: Vec<_> = files.iter().flat_map(|(_, rs)| rs.iter()).collect();
    assert_eq!(records.len(), 5, "{files:?}");
    for (inv, r) in sent.iter().zip(&records) {
        inv.check(r, (Some("JSON"), Some("JSON")));
    }
    for (rel, _) in &files {
        check_file_name(rel, &sent[0].dir("late"), sent[0].time_ms);
    }
    assert_eq!(sink.metric(BUFFERED_BYTES, &[]), 0.0);
    assert_eq!(sink.metric(DROPPED, &[]), 0.0);
}

#[test]
fn sigterm_with_the_store_down_exits_zero_by_the_deadline_and_counts_what_is_lost() {
    let port = closed_port();
    let mut sink = Sink::start(
        "s3://captures",
        &[
            "--max-file-age-ms",
            "600000",
            "--shutdown-timeout-ms",
            "1000",
        ],
        &s3_env(&format!("http://127.0.0.1:{port}")),
    );
    for i in 0..3 {
        assert_eq!(
            sink.post(&Invocation::json(&format!("d{i}"), "[1]", "[2]"))
                .0,
            202
        );
    }
    let started = Instant::now();
    let status = sink.terminate(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    eprintln!("SIGTERM to exit with the store down: {took:?}");
    let logs = sink.logs();
    let lost = logs
        .lines()
        .find(|l| l.contains("shutdown deadline passed"))
        .unwrap_or_else(|| panic!("no line about the lost records:\n{logs}"));
    assert!(lost.contains("records=3"), "{lost}");
}
