//! Contract tests: the real `mlep-model-server` binary, the committed Titanic artifacts, plain
//! HTTP/1.1 over TCP.

// Test helpers outside #[test] fns unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_mlep-model-server");

fn titanic() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/titanic")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(titanic().join("expected.json")).unwrap()).unwrap()
}

fn unpack(version: &str, into: &Path) {
    let f =
        std::fs::File::open(titanic().join(format!("artifacts/titanic-{version}.tar.gz"))).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(f))
        .unpack(into)
        .unwrap();
}

struct Server {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(model_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with(
            Command::new(BIN)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--load-poll-ms",
                    "20",
                    "--model-dir",
                ])
                .arg(model_dir)
                .args(extra),
        )
    }

    /// Spawn and wait for the "listening" log line that carries the bound address.
    fn start_with(cmd: &mut Command) -> Server {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not report its address")
            .parse()
            .unwrap();
        Server { child, addr, logs }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    fn wait_ready(&self) {
        wait_for(|| get(self.addr, "/ping").status == 200, "ping 200");
    }
}

/// Poll `cond` every 10 ms for up to 20 s.
fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read_response(stream: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

fn post_json(addr: SocketAddr, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        "/invocations",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn assert_predictions(got: &Value, want: &[Value], tol: f64, context: &str) {
    let got = got["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("{context}: no predictions in {got}"));
    assert_eq!(got.len(), want.len(), "{context}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g["survived"], w["survived"],
            "{context}: row {i}: {g} vs {w}"
        );
        let (gp, wp) = (
            g["probability"].as_f64().unwrap(),
            w["probability"].as_f64().unwrap(),
        );
        assert!(
            (gp - wp).abs() <= tol,
            "{context}: row {i}: probability {gp} vs expected {wp}"
        );
    }
}

#[test]
fn ping_is_503_while_the_model_is_missing_and_200_once_it_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let r = get(server.addr, "/ping");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "loading");
    let r = post_json(server.addr, &json!([{"pclass": 3}]));
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("model_not_ready"))
    );

    // Publish like model-init does: the model file first, metadata.json last.
    let staging = tempfile::tempdir().unwrap();
    unpack("v1", staging.path());
    std::fs::rename(
        staging.path().join("model.onnx"),
        dir.path().join("model.onnx"),
    )
    .unwrap();
    std::fs::rename(
        staging.path().join("metadata.json"),
        dir.path().join("metadata.json"),
    )
    .unwrap();
    server.wait_ready();
    let r = get(server.addr, "/ping");
    assert_eq!(
        r.headers.get("x-mlep-model").map(String::as_str),
        Some("titanic:v1")
    );
    assert_eq!(r.json(), json!({"status": "ok", "model": "titanic:v1"}));
}

#[test]
fn a_model_that_fails_to_load_keeps_ping_503_and_logs_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    unpack("v1", dir.path());
    std::fs::write(dir.path().join("model.onnx"), b"this is not a protobuf").unwrap();
    let server = Server::start(dir.path(), &[]);
    wait_for(
        || {
            get(server.addr, "/ping").json()["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("failed"))
        },
        "load failure",
    );
    let r = get(server.addr, "/ping");
    assert_eq!(r.status, 503);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("model.onnx"),
        "{}",
        r.text()
    );
    wait_for(
        || server.logs().contains("model failed to load"),
        "log line",
    );

    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(
        dir2.path().join("metadata.json"),
        br#"{"name":"t","version":"v","features":[],"prediction":{"label":"y"}}"#,
    )
    .unwrap();
    let server2 = Server::start(dir2.path(), &[]);
    wait_for(
        || {
            get(server2.addr, "/ping").json()["reason"]
                .as_str()
                .is_some_and(|r| r.contains("features"))
        },
        "metadata failure",
    );
    assert_eq!(get(server2.addr, "/ping").status, 503);
}

/// A graph the runtime panics on while optimising (tests/fixtures/tract-panic: v1 behind a
/// Reshape of its input) is a load failure like any other, not a loader that never finishes.
#[test]
fn a_model_the_runtime_panics_on_is_a_load_failure_naming_the_panic() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tract-panic");
    let server = Server::start(&fixture, &[]);
    wait_for(
        || {
            get(server.addr, "/ping").json()["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("failed"))
        },
        "load failure after the runtime's panic",
    );
    let r = get(server.addr, "/ping");
    assert_eq!(r.status, 503);
    assert!(
        r.json()["reason"].as_str().unwrap().contains("panicked"),
        "{}",
        r.text()
    );
}

#[test]
fn json_and_csv_invocations_return_the_expected_predictions_of_both_versions() {
    let exp = expected();
    let inputs = exp["inputs"].as_array().unwrap().clone();
    let tol = exp["tolerance"].as_f64().unwrap();
    let mut labels = BTreeMap::new();
    for version in ["v1", "v2"] {
        let want = exp["versions"][version]["predictions"]
            .as_array()
            .unwrap()
            .clone();
        let dir = tempfile::tempdir().unwrap();
        unpack(version, dir.path());
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("metadata.json")).unwrap())
                .unwrap();
        let features: Vec<String> = meta["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect();
        let server = Server::start(dir.path(), &[]);
        server.wait_ready();
        let addr = server.addr;

        // Records (with extra fields the model does not use), instances, columns, positional.
        let r = post_json(addr, &Value::Array(inputs.clone()));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.headers.get("x-mlep-model").unwrap(),
            &format!("titanic:{version}")
        );
        assert_predictions(&r.json(), &want, tol, &format!("{version} records"));
        labels.insert(
            version,
            r.json()["predictions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["survived"].clone())
                .collect::<Vec<_>>(),
        );

        assert_predictions(
            &post_json(addr, &json!({"instances": inputs})).json(),
            &want,
            tol,
            &format!("{version} instances"),
        );
        let columns: serde_json::Map<String, Value> = features
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    Value::Array(inputs.iter().map(|i| i[f].clone()).collect()),
                )
            })
            .collect();
        assert_predictions(
            &post_json(addr, &Value::Object(columns)).json(),
            &want,
            tol,
            &format!("{version} columns"),
        );
        let positional: Vec<Value> = inputs
            .iter()
            .map(|i| Value::Array(features.iter().map(|f| i[f].clone()).collect()))
            .collect();
        assert_predictions(
            &post_json(addr, &json!({"instances": positional})).json(),
            &want,
            tol,
            &format!("{version} positional"),
        );

        // CSV with a header (all seven columns, any order) and without (metadata order).
        let all = ["embarked", "fare", "parch", "sibsp", "age", "sex", "pclass"];
        let cell = |v: &Value| {
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        };
        let mut with_header = all.join(",") + "\r\n";
        for i in &inputs {
            with_header += &(all
                .iter()
                .map(|f| cell(&i[*f]))
                .collect::<Vec<_>>()
                .join(",")
                + "\r\n");
        }
        let r = request(
            addr,
            "POST",
            "/invocations",
            &[("content-type", "text/csv")],
            with_header.as_bytes(),
        );
        assert_predictions(&r.json(), &want, tol, &format!("{version} csv with header"));
        let mut no_header = String::new();
        for i in &inputs {
            no_header += &(features
                .iter()
                .map(|f| cell(&i[f]))
                .collect::<Vec<_>>()
                .join(",")
                + "\n");
        }
        let r = request(
            addr,
            "POST",
            "/invocations",
            &[("content-type", "text/csv"), ("accept", "text/csv")],
            no_header.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers.get("content-type").unwrap(), "text/csv");
        let text = r.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), want.len());
        for (line, w) in lines.iter().zip(&want) {
            let (label, p) = line.split_once(',').unwrap();
            assert_eq!(
                label,
                w["survived"].to_string(),
                "{version} csv out: {line}"
            );
            assert!(
                (p.parse::<f64>().unwrap() - w["probability"].as_f64().unwrap()).abs() <= tol,
                "{version} csv out: {line}"
            );
        }
    }
    assert_ne!(
        labels["v1"], labels["v2"],
        "the two versions must disagree on some fixed input"
    );
}

#[test]
fn bad_requests_get_4xx_json_errors_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    unpack("v1", dir.path());
    let server = Server::start(dir.path(), &["--max-body-bytes", "300"]);
    server.wait_ready();
    let addr = server.addr;
    let json_ct = [("content-type", "application/json")];
    let cases: Vec<(Resp, u16, &str, &str)> = vec![
        (
            request(addr, "POST", "/invocations", &json_ct, b"[{\"pclass\": 3,"),
            400,
            "malformed",
            "invalid JSON",
        ),
        (
            post_json(addr, &json!([{"pclass": 3, "sex": "male", "fare": 7.25}])),
            400,
            "missing_field",
            "\"age\"",
        ),
        (
            post_json(
                addr,
                &json!([{"pclass": 3, "sex": "male", "age": "old", "fare": 7.25}]),
            ),
            400,
            "wrong_type",
            "field \"age\": expected a number",
        ),
        (
            post_json(
                addr,
                &json!([{"pclass": 3, "sex": "robot", "age": 3, "fare": 7.25}]),
            ),
            400,
            "unknown_category",
            "\"robot\"",
        ),
        (
            post_json(addr, &json!(42)),
            400,
            "malformed",
            "expected an array of records",
        ),
        (
            request(
                addr,
                "POST",
                "/invocations",
                &[("content-type", "text/csv")],
                b"3,male\n",
            ),
            400,
            "wrong_arity",
            "the model takes 4",
        ),
        (
            request(
                addr,
                "POST",
                "/invocations",
                &[("content-type", "text/plain")],
                b"hi",
            ),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            request(addr, "POST", "/invocations", &[], b"{}"),
            415,
            "unsupported_media_type",
            "missing Content-Type",
        ),
        (
            request(
                addr,
                "POST",
                "/invocations",
                &[
                    ("content-type", "application/json"),
                    ("accept", "image/png"),
                ],
                b"[]",
            ),
            406,
            "not_acceptable",
            "image/png",
        ),
        (
            request(addr, "POST", "/invocations", &json_ct, &[b' '; 301]),
            413,
            "body_too_large",
            "300 bytes",
        ),
        (get(addr, "/invocations"), 405, "method_not_allowed", "GET"),
        (get(addr, "/nope"), 404, "not_found", "/nope"),
    ];
    for (r, status, code, says) in cases {
        let body = r.json();
        assert_eq!(
            (r.status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{}",
            r.text()
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{code}: {}",
            r.text()
        );
    }

    // A chunked body without Content-Length is cut off at the limit too.
    let mut s = TcpStream::connect(addr).unwrap();
    let chunk = "x".repeat(200);
    let req = format!(
        "POST /invocations HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nc8\r\n{chunk}\r\nc8\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).status, 413);

    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("mlep_model_server_requests_total{path=\"/invocations\",code=\"400\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlep_model_server_errors_total{reason=\"body_too_large\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlep_model_server_model_loaded{model=\"titanic:v1\"} 1"),
        "{metrics}"
    );
}

#[test]
fn metrics_count_requests_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    unpack("v2", dir.path());
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();
    let body = std::fs::read(titanic().join("request.json")).unwrap();
    for _ in 0..3 {
        let r = request(
            server.addr,
            "POST",
            "/invocations",
            &[("content-type", "application/json")],
            &body,
        );
        assert_eq!(r.status, 200);
    }
    let m = get(server.addr, "/metrics");
    assert!(m.headers["content-type"].starts_with("text/plain"));
    let text = m.text();
    assert!(
        text.contains("mlep_model_server_requests_total{path=\"/invocations\",code=\"200\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "mlep_model_server_request_duration_seconds_count{path=\"/invocations\"} 3\n"
        ),
        "{text}"
    );
    assert!(text.contains("mlep_model_server_request_duration_seconds_bucket{path=\"/invocations\",le=\"+Inf\"} 3\n"), "{text}");
    assert!(
        text.contains("mlep_model_server_predictions_total 6\n"),
        "{text}"
    );
}

/// The proxy's model latency comes from this header (mlep_contract::latency): every
/// /invocations answer reports the server's own time, within what the client waited.
#[test]
fn invocations_report_the_servers_own_time_in_server_timing() {
    use mlep_contract::latency::{model_duration_us, SERVER_TIMING_HEADER};
    let dir = tempfile::tempdir().unwrap();
    unpack("v2", dir.path());
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();
    // A batch big enough to take measurable work (thousands of rows), and a bad request.
    let rows: Vec<Value> = (0..5000)
        .map(|i| json!({"pclass": 1 + i % 3, "sex": "female", "age": 30, "fare": 10.5, "sibsp": 0, "parch": 0, "embarked": "S"}))
        .collect();
    let cases = [
        (serde_json::to_vec(&rows).unwrap(), 200),
        (b"[".to_vec(), 400),
    ];
    for (body, status) in cases {
        let t = Instant::now();
        let r = request(
            server.addr,
            "POST",
            "/invocations",
            &[("content-type", "application/json")],
            &body,
        );
        let waited_us = t.elapsed().as_micros() as u64;
        assert_eq!(r.status, status, "{}", r.text());
        let header = r
            .headers
            .get(SERVER_TIMING_HEADER)
            .unwrap_or_else(|| panic!("no {SERVER_TIMING_HEADER} on a {status}: {:?}", r.headers));
        let us = model_duration_us(header).unwrap_or_else(|| panic!("unreadable: {header}"));
        assert!(
            us <= waited_us,
            "reported {us} µs, client waited {waited_us} µs"
        );
        if status == 200 {
            assert!(
                us >= 100,
                "5000 rows reported as {us} µs of work ({header})"
            );
        }
    }
    assert!(!get(server.addr, "/ping")
        .headers
        .contains_key(SERVER_TIMING_HEADER));
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    unpack("v1", dir.path());
    let server = Server::start(dir.path(), &[]);
    server.wait_ready();
    let addr = server.addr;

    // A slow client: headers and half of the body now, the rest after SIGTERM.
    let body = std::fs::read(titanic().join("request.json")).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut slow = TcpStream::connect(addr).unwrap();
    let head = format!("POST /invocations HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(first).unwrap();
    slow.flush().unwrap();
    wait_for(
        || {
            get(addr, "/metrics")
                .text()
                .contains("mlep_model_server_in_flight_requests 1\n")
        },
        "request in flight",
    );

    // The shell's builtin kill: no dependency on procps being installed.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", server.child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(|| TcpStream::connect(addr).is_err(), "listener closed");

    slow.write_all(rest).unwrap();
    let r = read_response(&mut slow);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["predictions"].as_array().unwrap().len(), 2);

    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(server.logs().contains("drained"), "{}", server.logs());
}

#[test]
fn a_leading_serve_argument_and_sagemaker_port_variable_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    unpack("v1", dir.path());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start_with(
        Command::new(BIN)
            .args(["serve", "--host", "127.0.0.1", "--model-dir"])
            .arg(dir.path())
            .env_remove("MLEP_PORT")
            .env("SAGEMAKER_BIND_TO_PORT", port.to_string()),
    );
    assert_eq!(server.addr.port(), port);
    server.wait_ready();
}

/// One response from a keep-alive connection: headers, then `content-length` bytes of body.
fn read_one_response(s: &mut TcpStream) -> (u16, BTreeMap<String, String>, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed mid-headers"
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = vec![0u8; headers["content-length"].parse().unwrap()];
    s.read_exact(&mut body).unwrap();
    (status, headers, body)
}

/// A proxy in front of the server (Envoy) that is still uploading when the server answers and
/// closes gets a reset and answers 503 instead of the 413; so the server reads an oversized
/// body to its end before answering, and the connection stays open for the next request.
#[test]
fn an_oversized_body_is_drained_before_the_413_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    unpack("v1", dir.path());
    let server = Server::start(dir.path(), &["--max-body-bytes", "300"]);
    server.wait_ready();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (what, len) in [("announced", 3_000_000usize), ("just over", 301)] {
        let head = format!(
            "POST /invocations HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&vec![b' '; len]).unwrap();
        let (status, headers, body) = read_one_response(&mut s);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (413, Some("body_too_large")),
            "{what}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("300 bytes"),
            "{body}"
        );
        assert_ne!(headers.get("connection").map(String::as_str), Some("close"));
    }
    // The same connection still serves: the oversized bodies were read to their end.
    s.write_all(b"GET /ping HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_one_response(&mut s).0, 200);
}
