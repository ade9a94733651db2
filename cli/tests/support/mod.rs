//! What the end-to-end tests of `mlep local up` share: a running `mlep local up` with its
//! output ([`Up`]), load on it (through the project's one no-retry client, `mlep_tests::load`),
//! process lookups and the Titanic example's expectations.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep::http::{self, Request, Response};
pub use mlep_tests::load::{Load, Shape, Target};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

pub fn example() -> PathBuf {
    repo().join("examples/titanic")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `mlep local up`, its output collected line by line.
pub struct Up {
    pub child: Child,
    pub out: Arc<Mutex<Vec<String>>>,
    pub port: u16,
    pub dir: PathBuf,
}

impl Up {
    pub fn start(dir: &Path) -> Up {
        Self::start_with_env(dir, &[])
    }

    /// Like [`Up::start`], with extra environment variables for mlep.
    pub fn start_with_env(dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Up {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlep"))
            .envs(env.iter().copied())
            .args(["local", "up", "-f"])
            .arg(dir.join("input"))
            .args([
                "--port",
                &port.to_string(),
                "--table-interval-ms",
                "500",
                "--watch-interval-ms",
                "200",
            ])
            .arg("--artifacts")
            .arg(example().join("artifacts"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mlep");
        let out = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    out.lock().unwrap().push(line);
                }
            });
        }
        Up {
            child,
            out,
            port,
            dir: dir.to_owned(),
        }
    }

    pub fn output(&self) -> String {
        self.out.lock().unwrap().join("\n")
    }

    /// Wait until a line containing `needle` appears after line `from`; returns its index.
    /// Wait (up to 180 s, from the first line) for `mlep up` to say its endpoint is ready;
    /// returns that line's index.
    pub fn wait_ready(&mut self) -> usize {
        self.wait_for(
            "Endpoint ready: http://127.0.0.1:",
            0,
            Duration::from_secs(180),
        )
    }

    pub fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self
                .out
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .position(|l| l.contains(needle))
            {
                return from + i;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mlep exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} within {timeout:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lines(&self) -> usize {
        self.out.lock().unwrap().len()
    }

    pub async fn invoke(&self, user: Option<&str>, extra: &[(&'static str, String)]) -> Response {
        self.try_invoke(user, extra).await.unwrap()
    }

    pub async fn try_invoke(
        &self,
        user: Option<&str>,
        extra: &[(&'static str, String)],
    ) -> Result<Response, http::HttpError> {
        let body = std::fs::read(example().join("request.json")).unwrap();
        let req = invocation(user.map(str::to_owned), extra, &body);
        http::send(self.port, &req, Duration::from_secs(10)).await
    }

    pub async fn variant_of(&self, user: &str) -> String {
        let r = self.invoke(Some(user), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-mlep-variant")
            .expect("x-mlep-variant on the response")
            .to_owned()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed assertion must not leave processes behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Send `signal` to mlep and check that it exits 0 within 30 s and that every process it had
/// started (Envoy, model servers) is gone within 5 s more. Returns how long mlep took to exit.
impl Up {
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> Duration {
        let pid = self.child.id();
        let kids = children_of(pid);
        assert!(
            kids.len() >= 3,
            "expected Envoy and two model servers under mlep, found {kids:?}"
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mlep did not stop within 30s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = start.elapsed();
        assert!(
            status.success(),
            "mlep exited with {status}:\n{}",
            self.output()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while kids.iter().any(|p| alive(*p)) {
            assert!(
                Instant::now() < deadline,
                "processes left behind: {:?}",
                kids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        took
    }
}

/// Every process whose parent is `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the command (which is in parentheses and may contain spaces).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_owned()) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid) {
            out.push(p);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

pub fn predictions(r: &Response) -> Vec<f64> {
    let v: Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()));
    v["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions: {v}"))
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect()
}

pub fn expected(version: &str) -> Vec<f64> {
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(example().join("expected.json")).unwrap())
            .unwrap();
    e["versions"][version]["predictions"].as_array().unwrap()[..2]
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .collect()
}

pub fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
}

/// Replace a file atomically (what editors that save via rename do; mlep also copes with
/// in-place writes, re-reading until the YAML is valid).
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The no-retry load client's view of `up`: its Envoy, with the `host` that
/// [`mlep::http::send`] names.
pub fn target(up: &Up) -> Target {
    let addr = SocketAddr::from(([127, 0, 0, 1], up.port));
    Target::titanic(addr, &addr.to_string())
}

/// Load on `up`'s Envoy, shaped by `shape` (e.g. `Shape::fresh_users(3)`).
pub fn load_on(up: &Up, shape: Shape) -> Load {
    Load::start_shaped(target(up), shape)
}

pub async fn split(up: &Up, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let user = format!("{prefix}-{i}");
        let v = up.variant_of(&user).await;
        out.insert(user, v);
    }
    out
}

pub fn share(m: &BTreeMap<String, String>, variant: &str) -> f64 {
    m.values().filter(|v| *v == variant).count() as f64 / m.len() as f64
}

/// The command line of process `pid`, its arguments joined by spaces.
/// The `@type` of the filter config local mode last wrote for Envoy (its ECDS file under
/// `<state>/run/<pid>/filter/`): which build of the filter serves.
pub fn filter_build(up: &Up) -> String {
    let path = up
        .dir
        .join("state/run")
        .join(up.child.id().to_string())
        .join("filter")
        .join("mlep-filter.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["resources"][0]["typed_config"]["@type"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The child of mlep whose command line says `--port <port>` (a model server).
pub fn server_on(up: &Up, port: u16) -> u32 {
    let kids = children_of(up.child.id());
    kids.iter()
        .copied()
        .find(|p| cmdline(*p).contains(&format!("--port {port} ")))
        .unwrap_or_else(|| panic!("no child of mlep listens on {port}: {kids:?}"))
}

/// mlep's Envoy.
pub fn envoy_of(up: &Up) -> u32 {
    let kids = children_of(up.child.id());
    kids.iter()
        .copied()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "envoy")
        })
        .unwrap_or_else(|| panic!("no Envoy under mlep: {kids:?}"))
}

/// The ports of a set from its `ready: <endpoint>/<role> (<model>) on 127.0.0.1:P, ...` line.
pub fn ports_of(up: &Up, set: &str) -> Vec<u16> {
    let out = up.output();
    let line = out
        .lines()
        .find(|l| l.contains(&format!("ready: {set} ")))
        .unwrap_or_else(|| panic!("no ready line for {set}:\n{out}"));
    line.rsplit(" on ")
        .next()
        .unwrap()
        .split(", ")
        .map(|a| a.rsplit(':').next().unwrap().trim().parse().unwrap())
        .collect()
}

pub fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// Send requests (with `extra` headers) until one answers 200; panics after `timeout`.
/// Returns how long it took.
pub async fn serving_again(
    up: &Up,
    extra: &[(&'static str, String)],
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = up.try_invoke(Some("again"), extra).await;
        if r.as_ref().is_ok_and(|r| r.status == 200) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "not serving again within {timeout:?}: last {:?}\n{}",
            r.map(|r| (r.status, r.text())),
            up.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A copy of the Titanic example's input in `dir/input`, `endpoint.yaml` passed through `edit`.
/// A directory of its own for one test of this process.
pub fn test_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mlep-e2e-{name}-{}", std::process::id()))
}

pub fn titanic_input(dir: &Path, edit: impl Fn(String) -> String) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    std::fs::copy(example().join("models.yaml"), dir.join("input/models.yaml")).unwrap();
    let endpoint = std::fs::read_to_string(example().join("endpoint.yaml")).unwrap();
    std::fs::write(dir.join("input/endpoint.yaml"), edit(endpoint)).unwrap();
}

/// A JSON `POST /invocations` with `body`, the user key (if any) and `extra` headers.
pub fn invocation<'a>(
    user: Option<String>,
    extra: &[(&'static str, String)],
    body: &'a [u8],
) -> Request<'a> {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(u) = user {
        headers.push(("x-user-id", u));
    }
    headers.extend(extra.iter().cloned());
    Request {
        method: "POST",
        path: "/invocations",
        headers,
        body,
    }
}

/// Index of the table column headed `name` in local mode's output (its last header line).
pub fn column(out: &str, name: &str) -> Option<usize> {
    out.lines()
        .rev()
        .find(|l| l.starts_with("ENDPOINT "))
        .and_then(|h| h.split_whitespace().position(|c| c == name))
}

/// Wait for a table row of `variant` in the output after line `from` (the latest first) whose
/// columns from the one headed `column` on pass `fits`; `what` names the wait in the failure.
pub fn wait_for_table_row(
    up: &Up,
    variant: &str,
    from: usize,
    column_name: &str,
    fits: impl Fn(&[&str]) -> bool,
    what: &str,
    timeout: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let out = up.output();
        let at = column(&out, column_name).unwrap_or(usize::MAX);
        let row = out
            .lines()
            .skip(from)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1) == Some(&variant) && cols.len() > at && fits(&cols[at..])
            });
        if let Some(row) = row {
            return row.to_owned();
        }
        assert!(
            start.elapsed() < timeout,
            "no table row of {variant} {what} within {timeout:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of counter `name` (Envoy prefixes the filter's metric names) over the samples
/// whose `label` has `value`, in Envoy's `/stats/prometheus` text.
pub fn metric_sum(stats: &str, name: &str, label: &str, value: &str) -> f64 {
    mlep::table::parse_prometheus(stats)
        .iter()
        .filter(|s| {
            s.name.ends_with(name) && s.labels.get(label).map(String::as_str) == Some(value)
        })
        .map(|s| s.value)
        .sum()
}

/// mlep's Envoy's `/stats/prometheus` (its admin port from mlep's output).
pub async fn envoy_stats(up: &Up) -> String {
    let admin: u16 = up
        .output()
        .split("Envoy admin: http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    mlep::http::get(admin, "/stats/prometheus", Duration::from_secs(5))
        .await
        .unwrap()
        .text()
}
