//! The sink writing to a directory (`file://`): every record byte for byte under its hour's
//! directory, bad requests refused and counted, a flush on SIGTERM, a bad destination
//! refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{capture_files, check_file_name, wait_for, Invocation, Side, Sink, T, T_NEXT_HOUR};
use mlep_contract::capture::sink_metrics::{
    BUFFERED_BYTES, DROPPED, FILES, RECEIVED, STORE_ERRORS, WRITTEN,
};
use mlep_contract::capture::{self as c, Skipped};

const WAIT: Duration = Duration::from_secs(20);

fn file_destination(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

/// The invocations of the first test, each with the encodings its record must have.
fn invocations() -> Vec<Expected> {
    let json = Invocation {
        key_hash: Some("00000000000009af".into()),
        ..Invocation::json(
            "e-json",
            "{\"pclass\": 3, \"name\": \"O'Brien \\u00e9\"}\n",
            "{\"p\":[0.9,0.1]}",
        )
    };
    let csv = Invocation {
        variant: "b".into(),
        model: "titanic-v2".into(),
        time_ms: T + 1_000,
        input_type: "text/csv".into(),
        input: Side::Bytes(b"3,male,22\n1,female,38\n".to_vec()),
        output_type: "text/csv; charset=utf-8".into(),
        output: Side::Bytes(b"0.1\n0.9\n".to_vec()),
        ..Invocation::json("e-csv", "", "")
    };
    // Not UTF-8 on either side, whatever the content type says.
    let binary = Invocation {
        time_ms: T + 2_000,
        input_type: "application/x-npy".into(),
        input: Side::Bytes(vec![
            0x93, b'N', b'U', b'M', b'P', b'Y', 0x01, 0x00, 0xff, 0xfe, b'\n',
        ]),
        output: Side::Bytes(vec![b'{', 0xc3, 0x28, b'}']),
        status: 500,
        ..Invocation::json("e-binary", "", "")
    };
    let skipped = Invocation {
        time_ms: T + 3_000,
        output: Side::Skipped(Skipped::TooLarge),
        ..Invocation::json("e-skipped", "[1, 2]", "")
    };
    let input_skipped = Invocation {
        time_ms: T + 3_500,
        input_type: String::new(),
        input: Side::Skipped(Skipped::ContentType),
        ..Invocation::json("e-input-skipped", "", "{\"ok\":true}")
    };
    let next_hour = Invocation {
        time_ms: T_NEXT_HOUR,
        event_id: None,
        ..Invocation::json("", "{\"late\":1}", "{}")
    };
    let mut all = vec![
        (json, (Some("JSON"), Some("JSON"))),
        (csv, (Some("CSV"), Some("CSV"))),
        (binary, (Some("BASE64"), Some("BASE64"))),
        (skipped, (Some("JSON"), None)),
        (input_skipped, (None, Some("JSON"))),
        (next_hour, (Some("JSON"), Some("JSON"))),
    ];
    // More of the same hour, so files hold several records.
    for i in 0..10 {
        let inv = Invocation {
            time_ms: T + 4_000 + i,
            ..Invocation::json(&format!("e-{i}"), &format!("{{\"i\":{i}}}"), "[0.5]")
        };
        all.push((inv, (Some("JSON"), Some("JSON"))));
    }
    all
}

#[test]
fn every_record_is_written_byte_for_byte_under_its_hour_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("captures");
    let sink = Sink::start(&file_destination(&dir), &["--max-file-age-ms", "300"], &[]);
    let all = invocations();
    for (inv, _) in &all {
        let (status, answer) = sink.post(inv);
        assert_eq!(status, 202, "{answer}");
    }
    let n = all.len() as f64;
    wait_for("every record written", WAIT, || {
        sink.metric(WRITTEN, &[]) == n
    });

    let files = capture_files(&dir);
    let mut found = 0;
    for (rel, records) in &files {
        let (first, _) = sent(&all, &records[0]);
        check_file_name(rel, &first.dir(""), first.time_ms);
        for record in records {
            let (inv, encodings) = sent(&all, record);
            inv.check(record, *encodings);
            assert_eq!(rel.rsplit_once('/').unwrap().0, inv.dir(""), "{rel}");
            found += 1;
        }
    }
    assert_eq!(found, all.len(), "each record once: {files:?}");
    // Three directories: titanic/a at 12h and at 13h, titanic/b at 12h.
    let mut dirs: Vec<&str> = files
        .iter()
        .map(|(rel, _)| rel.rsplit_once('/').unwrap().0)
        .collect();
    dirs.dedup();
    assert_eq!(
        dirs,
        [
            "titanic/a/2026/12/03/12",
            "titanic/a/2026/12/03/13",
            "titanic/b/2026/12/03/12"
        ]
    );

    let m = sink.metrics();
    let sum = |name, labels: &[(&str, &str)]| mlep::table::sum_of(&m, name, labels);
    assert_eq!(sum(RECEIVED, &[("endpoint", "titanic")]), n);
    assert_eq!(sum(WRITTEN, &[("endpoint", "titanic")]), n);
    assert_eq!(sum(FILES, &[]), files.len() as f64);
    assert_eq!(sum(DROPPED, &[]), 0.0);
    assert_eq!(sum(STORE_ERRORS, &[]), 0.0);
    assert_eq!(sum(BUFFERED_BYTES, &[]), 0.0);
}

type Expected = (Invocation, (Option<&'static str>, Option<&'static str>));

/// The invocation a record came from: by its event id, or by its time when the sink made
/// the id.
fn sent<'a>(all: &'a [Expected], record: &c::CaptureRecord) -> &'a Expected {
    let m = &record.event_metadata;
    all.iter()
        .find(|(inv, _)| match &inv.event_id {
            Some(id) => *id == m.event_id,
            None => c::rfc3339_ms(inv.time_ms) == m.inference_time,
        })
        .unwrap_or_else(|| panic!("unexpected record {record:?}"))
}

#[test]
fn a_file_is_written_once_it_reaches_the_size_bound_without_waiting_for_its_age() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        &file_destination(tmp.path()),
        &["--max-file-bytes", "1000", "--max-file-age-ms", "600000"],
        &[],
    );
    let big = "x".repeat(400);
    for i in 0..3 {
        let inv = Invocation::json(&format!("s{i}"), &format!("{{\"x\":\"{big}\"}}"), "[1]");
        assert_eq!(sink.post(&inv).0, 202);
    }
    // Three ~600-byte records: the first two seal a file (>= 1000 bytes), the third waits.
    wait_for("one file", WAIT, || sink.metric(FILES, &[]) == 1.0);
    let files = capture_files(tmp.path());
    assert_eq!(files.len(), 1);
    let ids: Vec<&str> = files[0]
        .1
        .iter()
        .map(|r| r.event_metadata.event_id.as_str())
        .collect();
    assert_eq!(ids, ["s0", "s1"]);
    assert_eq!(sink.metric(WRITTEN, &[]), 2.0);
    assert!(
        sink.metric(BUFFERED_BYTES, &[]) > 400.0,
        "the third record is still held"
    );
}

#[test]
fn bad_requests_are_refused_naming_the_header_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        &file_destination(tmp.path()),
        &["--max-body-bytes", "1000"],
        &[],
    );
    let good = Invocation::json("ok", "{}", "{}");
    let (headers, body) = good.request();

    let without = |name: &str| -> Vec<(&str, String)> {
        headers
            .iter()
            .filter(|(k, _)| *k != name)
            .cloned()
            .collect()
    };
    let (status, answer) = sink.post_raw(&without(c::H_VARIANT), &body);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["header"], c::H_VARIANT);
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains(c::H_VARIANT));

    let mut short = without(c::H_INPUT_LEN);
    short.push((c::H_INPUT_LEN, "100".into()));
    let (status, answer) = sink.post_raw(&short, &body);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["header"], c::H_INPUT_LEN);

    let mut bad_time = without(c::H_TIME_MS);
    bad_time.push((c::H_TIME_MS, "yesterday".into()));
    let (status, answer) = sink.post_raw(&bad_time, &body);
    assert_eq!(
        (status, &answer["error"]["header"]),
        (400, &c::H_TIME_MS.into())
    );

    let (status, answer) = sink.post_raw(&headers, &[b'x'; 1001]);
    assert_eq!(status, 413, "{answer}");

    assert_eq!(sink.request("GET", c::INGEST_PATH), 405);
    assert_eq!(sink.request("POST", "/metrics"), 405);
    assert_eq!(sink.request("GET", "/nowhere"), 404);
    assert_eq!(sink.request("GET", "/healthz"), 200);
    assert_eq!(sink.request("GET", "/readyz"), 200);

    assert_eq!(sink.post(&good).0, 202, "a good request after bad ones");
    let m = sink.metrics();
    let sum = |name, labels: &[(&str, &str)]| mlep::table::sum_of(&m, name, labels);
    assert_eq!(
        sum(
            DROPPED,
            &[("endpoint", "titanic"), ("reason", "bad_request")]
        ),
        4.0
    );
    assert_eq!(sum(DROPPED, &[]), 4.0);
    assert_eq!(sum(RECEIVED, &[]), 1.0);
}

#[test]
fn sigterm_writes_what_is_held_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    // Files would not be due for ten minutes.
    let mut sink = Sink::start(
        &file_destination(tmp.path()),
        &["--max-file-age-ms", "600000"],
        &[],
    );
    for i in 0..5 {
        assert_eq!(
            sink.post(&Invocation::json(&format!("t{i}"), "[1]", "[2]"))
                .0,
            202
        );
    }
    assert!(sink.metric(BUFFERED_BYTES, &[]) > 0.0);
    assert!(capture_files(tmp.path()).is_empty());
    let started = Instant::now();
    let status = sink.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}; logs:\n{}", sink.logs());
    let files = capture_files(tmp.path());
    let ids: Vec<String> = files
        .iter()
        .flat_map(|(_, rs)| rs.iter().map(|r| r.event_metadata.event_id.clone()))
        .collect();
    assert_eq!(ids, ["t0", "t1", "t2", "t3", "t4"], "{files:?}");
    eprintln!(
        "SIGTERM to exit with 5 records flushed: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_bad_destination_or_instance_is_refused_at_start_naming_the_value() {
    for (destination, instance, named) in [
        ("ftp://host/dir", "ok", "\"ftp://host/dir\""),
        ("file://relative", "ok", "\"file://relative\""),
        ("s3://Bad_Bucket/x", "ok", "\"s3://Bad_Bucket/x\""),
        ("file:///tmp/x", "a/b", "\"a/b\""),
    ] {
        let out = common::command(destination, &["--instance", instance], &[])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{destination}: {stderr}");
        assert!(stderr.contains(named), "{destination}: {stderr}");
        if instance == "ok" {
            assert!(
                stderr.contains(
                    "s3://<bucket>[/<prefix>], gs://<bucket>[/<prefix>], file:///<absolute dir>"
                ),
                "{stderr}"
            );
        }
    }
}
