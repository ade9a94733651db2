//! The real `mlep-capture-sink` binary on 127.0.0.1: started with a destination, fed over
//! HTTP (ureq), read back through the files it writes and its `/metrics` (read by label with
//! the project's one Prometheus parser, `mlep::table`).

// Each suite uses part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use mlep_contract::capture::{self as c, CaptureRecord, Payload, Skipped};

pub const BIN: &str = env!("CARGO_BIN_EXE_mlep-capture-sink");
pub const INSTANCE: &str = "test-sink";
/// 2026-12-03T12:34:56.789Z
pub const T: u64 = 1_796_301_296_789;
/// 2026-12-03T13:00:00.000Z
pub const T_NEXT_HOUR: u64 = 1_796_302_800_000;

pub struct Sink {
    pub child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with only the given object storage environment (none inherited).
pub fn command(destination: &str, extra: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--destination", destination, "--listen", "127.0.0.1:0"]);
    if !extra.contains(&"--instance") {
        cmd.args(["--instance", INSTANCE]);
    }
    cmd.args(extra).env("RUST_LOG", "info");
    for k in mlep_contract::names::OBJECT_STORE_ENV {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

impl Sink {
    /// Start and wait for the "listening" line that carries the bound address.
    pub fn start(destination: &str, extra: &[&str], env: &[(&str, String)]) -> Sink {
        let mut child = command(destination, extra, env)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let keep = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening addr=").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                keep.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => panic!(
                "the sink did not report its address; logs:\n{}",
                logs.lock().unwrap()
            ),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Sink {
            child,
            addr,
            logs,
            agent,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POST one invocation: its status and JSON answer.
    pub fn post(&self, inv: &Invocation) -> (u16, serde_json::Value) {
        let (headers, body) = inv.request();
        self.post_raw(&headers, &body)
    }

    pub fn post_raw(&self, headers: &[(&str, String)], body: &[u8]) -> (u16, serde_json::Value) {
        let mut req = self.agent.post(self.url(c::INGEST_PATH));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut resp = req.send(body).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text}"));
        (status, json)
    }

    pub fn request(&self, method: &str, path: &str) -> u16 {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .body(())
            .unwrap();
        self.agent.run(req).unwrap().status().as_u16()
    }

    pub fn metrics(&self) -> Vec<mlep::table::Sample> {
        let mut resp = self.agent.get(self.url("/metrics")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        mlep::table::parse_prometheus(&resp.body_mut().read_to_string().unwrap())
    }

    /// The sum of `name`'s samples with these labels.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        mlep::table::sum_of(&self.metrics(), name, labels)
    }

    /// SIGTERM (the shell's builtin kill: no dependency on procps) and the exit status,
    /// which must come within `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let sent = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {within:?} after SIGTERM; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Poll `cond` every 20 ms until it holds, for at most `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Debug)]
pub enum Side {
    Bytes(Vec<u8>),
    Skipped(Skipped),
}

/// One invocation as the filter sends it.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub endpoint: String,
    pub variant: String,
    pub model: String,
    pub event_id: Option<String>,
    pub time_ms: u64,
    pub key_hash: Option<String>,
    pub status: u16,
    pub input_type: String,
    pub input: Side,
    pub output_type: String,
    pub output: Side,
}

impl Invocation {
    /// `titanic`/`a`, JSON in and out, at [`T`].
    pub fn json(event_id: &str, input: &str, output: &str) -> Self {
        Self {
            endpoint: "titanic".into(),
            variant: "a".into(),
            model: "titanic-v1".into(),
            event_id: Some(event_id.into()),
            time_ms: T,
            key_hash: None,
            status: 200,
            input_type: "application/json".into(),
            input: Side::Bytes(input.as_bytes().to_vec()),
            output_type: "application/json".into(),
            output: Side::Bytes(output.as_bytes().to_vec()),
        }
    }

    /// The headers and body the filter would send.
    pub fn request(&self) -> (Vec<(&'static str, String)>, Vec<u8>) {
        let mut h = vec![
            (c::H_ENDPOINT, self.endpoint.clone()),
            (c::H_VARIANT, self.variant.clone()),
            (c::H_MODEL, self.model.clone()),
            (c::H_TIME_MS, self.time_ms.to_string()),
            (c::H_STATUS, self.status.to_string()),
            (c::H_INPUT_TYPE, self.input_type.clone()),
            (c::H_OUTPUT_TYPE, self.output_type.clone()),
        ];
        if let Some(id) = &self.event_id {
            h.push((c::H_EVENT_ID, id.clone()));
        }
        if let Some(k) = &self.key_hash {
            h.push((c::H_KEY_HASH, k.clone()));
        }
        let mut body = Vec::new();
        match &self.input {
            Side::Bytes(b) => body.extend_from_slice(b),
            Side::Skipped(s) => h.push((c::H_INPUT_SKIPPED, s.as_str().into())),
        }
        h.push((c::H_INPUT_LEN, body.len().to_string()));
        match &self.output {
            Side::Bytes(b) => body.extend_from_slice(b),
            Side::Skipped(s) => h.push((c::H_OUTPUT_SKIPPED, s.as_str().into())),
        }
        (h, body)
    }

    /// The record's directory under the destination's prefix.
    pub fn dir(&self, prefix: &str) -> String {
        c::object_dir(prefix, &self.endpoint, &self.variant, self.time_ms)
    }

    /// `record` holds exactly this invocation: metadata, and each side's bytes (decoded from
    /// base64 or taken as text) or its skip reason; `encodings` are the expected ones.
    pub fn check(&self, record: &CaptureRecord, encodings: (Option<&str>, Option<&str>)) {
        let m = &record.event_metadata;
        if let Some(id) = &self.event_id {
            assert_eq!(&m.event_id, id);
        } else {
            assert_eq!(m.event_id.len(), 32, "a generated id: {}", m.event_id);
        }
        assert_eq!(m.inference_time, c::rfc3339_ms(self.time_ms));
        assert_eq!(
            (&m.endpoint_name, &m.variant_name, &m.model_name),
            (&self.endpoint, &self.variant, &self.model)
        );
        assert_eq!(m.sticky_key_hash, self.key_hash);
        assert_eq!(m.status, self.status);
        assert_eq!(record.event_version, c::EVENT_VERSION);
        let data = &record.capture_data;
        let sides = [
            (
                data.endpoint_input.as_ref(),
                c::MODE_INPUT,
                &self.input_type,
                &self.input,
                encodings.0,
            ),
            (
                data.endpoint_output.as_ref(),
                c::MODE_OUTPUT,
                &self.output_type,
                &self.output,
                encodings.1,
            ),
        ];
        for (payload, mode, content_type, side, encoding) in sides {
            let p: &Payload = payload.unwrap_or_else(|| panic!("no {mode} payload"));
            assert_eq!(
                (p.mode.as_str(), &p.observed_content_type),
                (mode, content_type)
            );
            assert_eq!(p.encoding.as_deref(), encoding, "{mode} encoding");
            match side {
                Side::Skipped(why) => {
                    assert_eq!((p.skipped, p.data.as_deref()), (Some(*why), None), "{mode}");
                }
                Side::Bytes(bytes) => {
                    assert_eq!(p.skipped, None, "{mode}");
                    let data = p
                        .data
                        .as_deref()
                        .unwrap_or_else(|| panic!("no {mode} data"));
                    let got = if p.encoding.as_deref() == Some("BASE64") {
                        base64::engine::general_purpose::STANDARD
                            .decode(data)
                            .unwrap()
                    } else {
                        data.as_bytes().to_vec()
                    };
                    assert_eq!(&got, bytes, "{mode} bytes");
                }
            }
        }
    }
}

/// Every `.jsonl` file under `root` (relative path, records), sorted by path; anything else
/// there (a store's staging files) is ignored.
pub fn capture_files(root: &Path) -> Vec<(String, Vec<CaptureRecord>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.ends_with('\n'),
                "{}: last line unterminated",
                p.display()
            );
            let records = text
                .lines()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", p.display()))
                })
                .collect();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            (rel, records)
        })
        .collect()
}

/// `<dir>/<yyyymmddThhmmssZ>-<instance>-<seq>.jsonl` of a file whose first record is at
/// `first_time_ms`: the directory and the name's time stamp (the sequence is the sink's).
pub fn check_file_name(rel: &str, dir: &str, first_time_ms: u64) {
    let (got_dir, name) = rel.rsplit_once('/').unwrap();
    assert_eq!(got_dir, dir, "{rel}");
    let t = c::rfc3339_ms(first_time_ms);
    let stamp: String = t[..19].chars().filter(|c| *c != '-' && *c != ':').collect();
    let prefix = format!("{stamp}Z-{INSTANCE}-");
    let seq = name
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix(".jsonl"))
        .unwrap_or_else(|| panic!("{rel}: expected {prefix}<seq>.jsonl"));
    assert!(
        seq.len() >= 6 && seq.bytes().all(|b| b.is_ascii_digit()),
        "{rel}"
    );
}
