//! Contract tests for mlep-model-init: the real binary against a real HTTP server started here
//! on 127.0.0.1:0 (std only, so each test controls status codes, truncation and pacing).

// Test helpers outside #[test] fns unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mlep_model_init::{fetch, Event, FetchRequest, Progress, MARKER_FILE};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_mlep-model-init");

fn titanic_v1() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/titanic/artifacts/titanic-v1.tar.gz");
    std::fs::read(p).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the test server answers the n-th request (0-based).
#[derive(Clone, Copy)]
enum Reply {
    Ok,
    Status(u16),
    /// Announce the full length, send half, close.
    Truncate,
    /// Full body in small chunks with a pause between them.
    Slow(Duration),
}

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(
            self.url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap(),
        );
    }
}

fn serve(body: Vec<u8>, plan: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s, body, plan) = (hits.clone(), stop.clone(), Arc::new(body), Arc::new(plan));
    thread::spawn(move || {
        for conn in listener.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut conn) = conn else { continue };
            let n = h.fetch_add(1, Ordering::SeqCst);
            let (body, plan) = (body.clone(), plan.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|k| k > 2) {
                    line.clear();
                }
                let head = |status: u16, len: usize| {
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                    )
                };
                let _ = match plan(n) {
                    Reply::Ok => conn
                        .write_all(head(200, body.len()).as_bytes())
                        .and_then(|_| conn.write_all(&body)),
                    Reply::Status(code) => conn
                        .write_all(head(code, 4).as_bytes())
                        .and_then(|_| conn.write_all(b"nope")),
                    Reply::Truncate => conn
                        .write_all(head(200, body.len()).as_bytes())
                        .and_then(|_| conn.write_all(&body[..body.len() / 2])),
                    Reply::Slow(pause) => conn
                        .write_all(head(200, body.len()).as_bytes())
                        .and_then(|_| {
                            for chunk in body.chunks(64) {
                                conn.write_all(chunk)?;
                                conn.flush()?;
                                thread::sleep(pause);
                            }
                            Ok(())
                        }),
                };
                let _ = conn.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    Server {
        url: format!("http://{addr}/models/titanic-v1.tar.gz"),
        hits,
        stop,
    }
}

fn run(uri: &str, sha256: &str, dest: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--uri", uri, "--sha256", sha256, "--dest"])
        .arg(dest)
        .args([
            "--retry-backoff-ms",
            "20",
            "--retry-max-backoff-ms",
            "100",
            "--http-timeout-seconds",
            "5",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Only `dest` may exist next to it afterwards: no staging dirs, no lock files.
fn siblings(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn assert_titanic_published(dest: &Path, sha256: &str) {
    assert!(dest.join("model.onnx").is_file());
    let meta: String = std::fs::read_to_string(dest.join("metadata.json")).unwrap();
    assert!(meta.contains("\"titanic\""), "{meta}");
    let marker = std::fs::read_to_string(dest.join(MARKER_FILE)).unwrap();
    assert!(
        marker.starts_with(&format!("sha256 {sha256}\n")),
        "{marker}"
    );
}

#[test]
fn good_artifact_over_http_is_verified_unpacked_and_published() {
    let body = titanic_v1();
    let sum = sha(&body);
    let server = serve(body, |_| Reply::Ok);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(
        &server.url,
        &format!("sha256:{}", sum.to_uppercase()),
        &dest,
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_titanic_published(&dest, &sum);
    assert_eq!(siblings(tmp.path()), vec!["model"]);
    // A second run finds the complete copy and does not download again.
    let out = run(&server.url, &sum, &dest, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn wrong_checksum_exits_4_and_publishes_nothing() {
    let body = titanic_v1();
    let server = serve(body, |_| Reply::Ok);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(&server.url, &"0".repeat(64), &dest, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));
    assert!(
        siblings(tmp.path()).is_empty(),
        "left behind: {:?}",
        siblings(tmp.path())
    );
}

/// A tar.gz with one raw entry (the tar crate's safe setters refuse these names, so the header
/// bytes are written directly, as an attacker would).
fn evil_tar_gz(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_ustar();
    ok.set_path("metadata.json").unwrap();
    ok.set_size(2);
    ok.set_cksum();
    builder.append(&ok, &b"{}"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_ustar_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    builder.append(&h, data).unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn archives_with_entries_escaping_the_target_are_refused() {
    let cases = [
        (
            "dotdot",
            evil_tar_gz("../escaped.txt", tar::EntryType::Regular, "", b"pwned"),
            "`..`",
        ),
        (
            "absolute",
            evil_tar_gz(
                "/tmp/mlep-escaped.txt",
                tar::EntryType::Regular,
                "",
                b"pwned",
            ),
            "absolute",
        ),
        (
            "symlink",
            evil_tar_gz("link", tar::EntryType::Symlink, "../../../etc", b""),
            "outside",
        ),
        (
            "abs-symlink",
            evil_tar_gz("link", tar::EntryType::Symlink, "/etc", b""),
            "absolute target",
        ),
        (
            "hardlink",
            evil_tar_gz("hl", tar::EntryType::Link, "/etc/passwd", b""),
            "hard links",
        ),
    ];
    for (label, body, why) in cases {
        let sum = sha(&body);
        let server = serve(body, |_| Reply::Ok);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("sub").join("model");
        let out = run(&server.url, &sum, &dest, &[]);
        assert_eq!(out.status.code(), Some(4), "{label}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("unsafe archive entry") && stderr(&out).contains(why),
            "{label}: {}",
            stderr(&out)
        );
        assert!(!dest.exists(), "{label}: published");
        assert!(
            !tmp.path().join("escaped.txt").exists()
                && !tmp.path().join("sub/escaped.txt").exists(),
            "{label}: escaped"
        );
        assert!(
            siblings(&tmp.path().join("sub")).is_empty(),
            "{label}: left {:?}",
            siblings(&tmp.path().join("sub"))
        );
    }
    assert!(!Path::new("/tmp/mlep-escaped.txt").exists());
}

#[test]
fn zip_artifacts_unpack_and_zip_traversal_is_refused() {
    let zip_of = |name: &str| {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("metadata.json", opts).unwrap();
        w.write_all(br#"{"name":"z"}"#).unwrap();
        w.start_file(name, opts).unwrap();
        w.write_all(b"weights").unwrap();
        w.finish().unwrap().into_inner()
    };
    let good = zip_of("nested/model.onnx");
    let server = serve(good.clone(), |_| Reply::Ok);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(&server.url, &sha(&good), &dest, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dest.join("nested/model.onnx")).unwrap(),
        b"weights"
    );

    let evil = zip_of("../zip-escaped.onnx");
    let server = serve(evil.clone(), |_| Reply::Ok);
    let dest = tmp.path().join("model2");
    let out = run(&server.url, &sha(&evil), &dest, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!dest.exists() && !tmp.path().join("zip-escaped.onnx").exists());
}

#[test]
fn downloads_and_unpacked_archives_over_the_size_limits_are_refused() {
    let body = titanic_v1();
    let sum = sha(&body);
    let server = serve(body.clone(), |_| Reply::Ok);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(&server.url, &sum, &dest, &["--max-download-bytes", "100"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("download over the limit of 100 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists());

    // 4 MiB of zeros compresses to a few KiB: the unpacked limit must catch it.
    let bomb = evil_tar_gz(
        "zeros.bin",
        tar::EntryType::Regular,
        "",
        &vec![0u8; 4 << 20],
    );
    assert!(bomb.len() < 64 << 10);
    let server = serve(bomb.clone(), |_| Reply::Ok);
    let out = run(
        &server.url,
        &sha(&bomb),
        &dest,
        &["--max-unpacked-bytes", "1000000"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unpacked size over the limit"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists());
    assert!(
        siblings(tmp.path()).is_empty(),
        "left {:?}",
        siblings(tmp.path())
    );
}

#[test]
fn transient_failures_are_retried_until_success() {
    let body = titanic_v1();
    let sum = sha(&body);
    // 503, 502, truncated body, then the real thing.
    let server = serve(body, |n| match n {
        0 => Reply::Status(503),
        1 => Reply::Status(502),
        2 => Reply::Truncate,
        _ => Reply::Ok,
    });
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(&server.url, &sum, &dest, &["--retry-attempts", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.hits.load(Ordering::SeqCst), 4);
    assert!(stderr(&out).contains("truncated body"), "{}", stderr(&out));
    assert_titanic_published(&dest, &sum);
}

#[test]
fn exhausted_retries_exit_3_and_permanent_errors_exit_2() {
    let body = titanic_v1();
    let sum = sha(&body);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");

    let truncating = serve(body.clone(), |_| Reply::Truncate);
    let out = run(&truncating.url, &sum, &dest, &["--retry-attempts", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gave up after 3 attempts"),
        "{}",
        stderr(&out)
    );
    assert_eq!(truncating.hits.load(Ordering::SeqCst), 3);

    let missing = serve(body, |_| Reply::Status(404));
    let out = run(&missing.url, &sum, &dest, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(missing.hits.load(Ordering::SeqCst), 1, "404 is not retried");

    let out = run("ftp://host/titanic.tar.gz", &sum, &dest, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unsupported artifact URI scheme \"ftp\""),
        "{}",
        stderr(&out)
    );

    let out = run("file://relative/titanic.tar.gz", &sum, &dest, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = run(&missing.url, "not-a-sha", &dest, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dest.exists());
}

#[test]
fn two_concurrent_inits_on_one_volume_download_once_and_never_expose_a_partial_dir() {
    let body = titanic_v1();
    let sum = sha(&body);
    // 11 chunks of 64 bytes, 60 ms apart: the first init holds the lock for ~650 ms, long
    // enough for the second one to start even on a loaded machine.
    let server = serve(body, |_| Reply::Slow(Duration::from_millis(60)));
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");

    // A reader polling the destination must only ever see a complete model or nothing.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dest, done) = (dest.clone(), done.clone());
        thread::spawn(move || {
            let mut saw_partial = false;
            while !done.load(Ordering::SeqCst) {
                if dest.exists()
                    && !(dest.join(MARKER_FILE).exists() && dest.join("model.onnx").exists())
                {
                    saw_partial = true;
                }
                thread::sleep(Duration::from_millis(1));
            }
            saw_partial
        })
    };
    let spawn = |dest: &PathBuf| {
        Command::new(BIN)
            .args(["--uri", &server.url, "--sha256", &sum, "--dest"])
            .arg(dest)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&dest), spawn(&dest));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    done.store(true, Ordering::SeqCst);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(
        !watcher.join().unwrap(),
        "a reader saw a partial model directory"
    );
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "the second init must reuse the first one's download"
    );
    assert!(stderr(&a).contains("waiting") || stderr(&b).contains("waiting"));
    assert_titanic_published(&dest, &sum);
    assert_eq!(siblings(tmp.path()), vec!["model"]);
}

#[test]
fn a_lock_left_by_a_dead_process_is_taken_over() {
    let body = titanic_v1();
    let sum = sha(&body);
    let server = serve(body, |_| Reply::Ok);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        tmp.path().join(".model.mlep-lock"),
        format!("{dead_pid} {} 1-1\n", host.trim()),
    )
    .unwrap();
    std::fs::create_dir(tmp.path().join(".model.mlep-staging-crashed")).unwrap();
    let out = run(&server.url, &sum, &dest, &["--lock-wait-seconds", "10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale lock"), "{}", stderr(&out));
    assert_titanic_published(&dest, &sum);
    assert_eq!(
        siblings(tmp.path()),
        vec!["model"],
        "stale lock and staging dir are cleaned up"
    );
}

#[test]
fn a_live_lock_makes_the_second_init_wait_and_time_out_with_exit_3() {
    let body = titanic_v1();
    let sum = sha(&body);
    let server = serve(body, |_| Reply::Ok);
    let tmp = tempfile::tempdir().unwrap();
    // Held by this (live) test process on this host, fresh mtime.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    std::fs::write(
        tmp.path().join(".model.mlep-lock"),
        format!("{} {} 1-1\n", std::process::id(), host.trim()),
    )
    .unwrap();
    let out = run(
        &server.url,
        &sum,
        &tmp.path().join("model"),
        &["--lock-wait-seconds", "1"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("waiting for the lock"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn an_existing_mounted_directory_is_filled_in_place_and_an_old_model_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("old-weights.bin"), b"old").unwrap();
    let body = titanic_v1();
    let sum = sha(&body);
    let server = serve(body, |_| Reply::Ok);
    let out = run(&server.url, &sum, &dest, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_titanic_published(&dest, &sum);
    let mut names = siblings(&dest);
    names.retain(|n| n != MARKER_FILE);
    assert_eq!(
        names,
        vec!["metadata.json", "model.onnx"],
        "old files, lock and staging are gone"
    );
}

struct Recorder(std::sync::Mutex<Vec<Event>>);

impl Progress for Recorder {
    fn event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

#[test]
fn library_fetch_of_a_single_file_uri_reports_byte_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("weights.onnx");
    std::fs::write(&src, vec![7u8; 200_000]).unwrap();
    let uri = format!("file://{}", src.display());
    let req = FetchRequest::new(
        uri,
        sha(&std::fs::read(&src).unwrap()),
        tmp.path().join("cache/abc"),
    );
    let rec = Recorder(Default::default());
    let dir = fetch(&req, &rec).unwrap();
    assert_eq!(
        std::fs::read(dir.join("weights.onnx")).unwrap().len(),
        200_000
    );
    let events = rec.0.into_inner().unwrap();
    assert!(events.contains(&Event::Bytes {
        done: 200_000,
        total: Some(200_000)
    }));
    assert!(matches!(events.last(), Some(Event::Published { .. })));
    let mut buf = Vec::new();
    std::fs::File::open(dir.join(MARKER_FILE))
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap();
    assert!(String::from_utf8(buf).unwrap().contains("uri file:///"));
}
