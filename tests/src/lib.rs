//! Helpers for integration tests: tiny HTTP/1.1 upstreams on 127.0.0.1:0 that say which
//! variant they are and record what they received, a keep-alive client, and an Envoy
//! harness running the built filter. Test support code: failures here are test failures,
//! so `unwrap`/`panic` are fine (clippy.toml allows them in tests; this crate is tests only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod load;

use mlep::envoy::{
    self, BootstrapSpec, ClusterUpstream, EnvoyProcess, FilterBuilds, RouteEndpoint, RouteVariant,
    StartOptions,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as an upstream saw it.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// How an upstream answers.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub status: u16,
    /// `None`: `{"variant":"<name>"}`.
    pub body: Option<String>,
    pub delay: Duration,
    /// Report the time it spent on the request (from reading it to answering, the delay
    /// included) as a model server does: `Server-Timing: model;dur=<ms>`.
    pub server_timing: bool,
    /// More response headers, sent as given.
    pub headers: Vec<(String, String)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            status: 200,
            body: None,
            delay: Duration::ZERO,
            server_timing: false,
            headers: Vec::new(),
        }
    }
}

/// Called with each request an upstream receives, once it is counted and before it is
/// answered (e.g. a wake server that starts another upstream).
pub type Hook = Arc<dyn Fn(&Seen) + Send + Sync>;

/// An HTTP/1.1 upstream (keep-alive, thread per connection) on 127.0.0.1:0.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(name: &str) -> Self {
        Self::with(name, Behaviour::default())
    }

    pub fn with(name: &str, b: Behaviour) -> Self {
        Self::listen(
            name,
            TcpListener::bind("127.0.0.1:0").unwrap(),
            b,
            Arc::new(|_| {}),
        )
    }

    /// An upstream on a given address (e.g. one reserved with [`dead_addr`] and started later).
    pub fn at(name: &str, addr: SocketAddr, b: Behaviour) -> Self {
        Self::listen(name, TcpListener::bind(addr).unwrap(), b, Arc::new(|_| {}))
    }

    /// An upstream on 127.0.0.1:0 that calls `hook` with each request before answering it.
    pub fn with_hook(name: &str, b: Behaviour, hook: Hook) -> Self {
        Self::listen(name, TcpListener::bind("127.0.0.1:0").unwrap(), b, hook)
    }

    fn listen(name: &str, l: TcpListener, b: Behaviour, hook: Hook) -> Self {
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body = b
            .body
            .clone()
            .unwrap_or_else(|| format!("{{\"variant\":\"{name}\"}}"));
        let (s2, c2, st2) = (seen.clone(), count.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s3, c3, body, b) = (s2.clone(), c2.clone(), body.clone(), b.clone());
                let (st3, h3) = (st2.clone(), hook.clone());
                std::thread::spawn(move || serve(conn, &s3, &c3, &st3, &body, &b, &*h3));
            }
        });
        Self {
            name: name.to_owned(),
            addr,
            seen,
            count,
            stop,
        }
    }

    /// Requests seen so far (bodies kept only for the last 100 000).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

type Message = (String, Vec<(String, String)>, Vec<u8>);

fn fold(headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (k, v) in headers {
        m.entry(k.clone())
            .and_modify(|old: &mut String| *old = format!("{old}, {v}"))
            .or_insert_with(|| v.clone());
    }
    m
}

/// One line, with bytes that are not UTF-8 replaced (header values may carry obs-text).
fn read_line_lossy<R: BufRead>(r: &mut R) -> Option<String> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).ok()? == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

fn read_message<R: BufRead>(r: &mut R) -> Option<Message> {
    let line = read_line_lossy(r)?;
    let start = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        let h = read_line_lossy(r)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut body = Vec::new();
    let folded = fold(&headers);
    if folded
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = folded
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    }
    Some((start, headers, body))
}

/// Answer requests on `conn` until it closes; once the upstream is dropped (`stop`), its
/// kept-alive connections close at their next request unanswered, as a killed process's would.
fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    count: &AtomicU64,
    stop: &AtomicBool,
    body: &str,
    b: &Behaviour,
    hook: &(dyn Fn(&Seen) + Send + Sync),
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    while let Some((start, headers, req_body)) = read_message(&mut r) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut parts = start.split_whitespace();
        let request = Seen {
            method: parts.next().unwrap_or_default().to_owned(),
            path: parts.next().unwrap_or_default().to_owned(),
            headers: fold(&headers),
            body: req_body,
        };
        {
            let mut s = seen.lock().unwrap();
            if s.len() < 100_000 {
                s.push(request.clone());
            }
        }
        count.fetch_add(1, Ordering::SeqCst);
        hook(&request);
        let started = Instant::now();
        if !b.delay.is_zero() {
            std::thread::sleep(b.delay);
        }
        let mut extra: String = b
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        if b.server_timing {
            let timing = mlep_contract::latency::server_timing(started.elapsed());
            extra.push_str(&format!("server-timing: {timing}\r\n"));
        }
        let resp = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{}",
            b.status,
            body.len(),
            body
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// An address nothing listens on (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A response as the client saw it.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header name (lowercase) -> all values.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A keep-alive HTTP/1.1 client to one address. Every request is sent once: a connection the
/// server closed while idle is replaced *before* the request goes out (seen closed by a
/// non-blocking peek), and a response carrying `connection: close` ends the connection; a
/// request that fails after it was sent is a failure, never sent again.
pub struct Client {
    addr: SocketAddr,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    pub fn get(&mut self, host: &str, headers: &[(&str, &str)]) -> Response {
        self.send("GET", host, "/invocations", headers, b"")
    }

    pub fn post(&mut self, host: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send("POST", host, "/invocations", headers, body)
    }

    /// One request; panics naming what failed (the test fails: nothing is retried).
    pub fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.attempt(method, host, path, headers, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path} to {}: {e} (sent once, not retried)",
                    self.addr
                )
            })
    }

    /// One request, `None` if it failed (connect, send, or no complete answer).
    pub fn try_send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<Response> {
        self.attempt(method, host, path, headers, body).ok()
    }

    fn attempt(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        if self
            .conn
            .as_ref()
            .is_some_and(|(s, r)| !r.buffer().is_empty() || !open_and_idle(s))
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .and_then(|()| s.set_nodelay(true))
                .map_err(|e| format!("socket options: {e}"))?;
            let r = BufReader::new(s.try_clone().map_err(|e| format!("socket: {e}"))?);
            self.conn = Some((s, r));
        }
        let result = self.exchange(method, host, path, headers, body);
        if result.as_ref().map_or(true, |r| {
            r.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        }) {
            self.conn = None;
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let (w, r) = self.conn.as_mut().ok_or("no connection")?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        w.write_all(&bytes).map_err(|e| format!("send: {e}"))?;
        let (start, raw, body) =
            read_message(r).ok_or("the connection ended before a complete answer")?;
        let status = start
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP status line: {start:?}"))?;
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in raw {
            headers.entry(k).or_default().push(v);
        }
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Whether a kept-alive connection is still open with nothing unread: a peek that would block.
/// End of stream (the server closed it while idle), an error, or stray bytes all say: do not
/// send on it.
fn open_and_idle(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let idle =
        matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).is_ok() && idle
}

/// The built filter: `$MLEP_FILTER_WASM`, else the workspace's release wasm32-wasip1 build.
pub fn wasm_path() -> PathBuf {
    built_wasm(
        "MLEP_FILTER_WASM",
        "target/wasm32-wasip1/release/mlep_filter.wasm",
        "cargo build -p mlep-filter --target wasm32-wasip1 --release",
    )
}

/// The test-only build that panics on `x-mlep-test-panic` (`--features test-panic`, built by
/// scripts/test-filter.sh): `$MLEP_FILTER_PANIC_WASM`, else its default place.
pub fn panic_wasm_path() -> PathBuf {
    built_wasm(
        "MLEP_FILTER_PANIC_WASM",
        "target/test-panic/wasm32-wasip1/release/mlep_filter.wasm",
        "cargo build -p mlep-filter --target wasm32-wasip1 --release --features test-panic --target-dir target/test-panic",
    )
}

/// The filter's native build (an Envoy dynamic module): `$MLEP_FILTER_NATIVE`, else the
/// workspace's release build.
pub fn native_path() -> PathBuf {
    built_wasm(
        "MLEP_FILTER_NATIVE",
        "target/release/libmlep_filter_native.so",
        "cargo build -p mlep-filter-native --release",
    )
}

/// `$<env>`, else `<workspace>/<default>`; fails naming the command that builds it.
fn built_wasm(env: &str, default: &str, build: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(default)
    });
    assert!(
        p.is_file(),
        "{} missing: build it with `{build}` (or set {env})",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// Envoy's ECDS counter `<stat>` for the filter (`mlep`).
fn ecds_stat(stat: &str) -> String {
    format!("envoy_extension_config_discovery_http_filter_mlep_{stat}")
}

/// The Envoy binary (found or installed once per test process).
pub fn envoy_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| envoy::find_or_install_envoy().unwrap())
        .clone()
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "mlep-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Poll `f` every 20 ms until it returns true or `timeout` passes; returns the last result.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The route key of the tests' endpoints.
pub const ROUTE_KEY: &str = "envoy-tests-route-key";

/// The virtual host of endpoint `name` in the tests' Envoy ([`route`]), named as local mode
/// and Istio name the Service's.
pub fn virtual_host(name: &str) -> String {
    format!("{name}.default.svc.cluster.local:80")
}

/// A filter config (contract JSON) for one endpoint `name` on its virtual host
/// ([`virtual_host`]), sticky on `x-user-id`, with the given allocation. Tests patch the
/// returned value.
pub fn filter_config(
    name: &str,
    variants: &[(&str, u32)],
    allocation: &mlep_contract::Allocation,
) -> serde_json::Value {
    let vs: Vec<serde_json::Value> = variants
        .iter()
        .map(|(n, w)| serde_json::json!({"name": n, "model": format!("model-{n}"), "weight": w}))
        .collect();
    serde_json::json!({
        "version": 1,
        "endpoints": [{
            "name": name,
            "namespace": "default",
            "virtualHosts": [virtual_host(name)],
            "routeKey": ROUTE_KEY,
            "variants": vs,
            "allocation": allocation,
            "routing": {"sticky": {"header": "x-user-id"}}
        }]
    })
}

/// A running Envoy with the filter, configured through the ECDS file.
pub struct Env {
    pub envoy: Option<EnvoyProcess>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub spec: BootstrapSpec,
    version: u64,
    /// Fields merged into the Wasm `PluginConfig` of every ECDS update (e.g. `failure_policy`).
    plugin: serde_json::Value,
}

impl Env {
    /// Start Envoy routing `endpoints` with the filter configured by `config`.
    pub fn start(endpoints: Vec<RouteEndpoint>, config: &serde_json::Value) -> Self {
        Self::start_with(endpoints, config, wasm_path(), serde_json::json!({}))
    }

    /// Endpoint `titanic` on `host`: variants `a` and `b` at 50/50, served by `a` and `b`.
    pub fn titanic_half_and_half(host: &str, a: &Upstream, b: &Upstream) -> Self {
        let weights = [("a", 50), ("b", 50)];
        let alloc = mlep_contract::Allocation::initial(&weights).expect("a valid 50/50 allocation");
        let cfg = filter_config("titanic", &weights, &alloc);
        Self::start(
            vec![route("titanic", &[host], &[(a, 50), (b, 50)], None)],
            &cfg,
        )
    }

    /// [`Env::start`] with another build of the filter and extra `PluginConfig` fields.
    pub fn start_with(
        endpoints: Vec<RouteEndpoint>,
        config: &serde_json::Value,
        wasm: PathBuf,
        plugin: serde_json::Value,
    ) -> Self {
        Self::start_builds(endpoints, config, wasm, None, plugin)
    }

    /// [`Env::start`] with the native build beside the Wasm one, as local mode runs: each
    /// config on the build `mlep_contract::build_for` picks.
    pub fn start_native(endpoints: Vec<RouteEndpoint>, config: &serde_json::Value) -> Self {
        let plugin = serde_json::json!({});
        Self::start_builds(endpoints, config, wasm_path(), Some(native_path()), plugin)
    }

    fn start_builds(
        endpoints: Vec<RouteEndpoint>,
        config: &serde_json::Value,
        wasm: PathBuf,
        native: Option<PathBuf>,
        plugin: serde_json::Value,
    ) -> Self {
        let dir = temp_dir("envoy");
        let config_path = dir.join("ecds").join("filter.json");
        std::fs::create_dir_all(config_path.parent().unwrap()).unwrap();
        let spec = BootstrapSpec {
            listener_port: 0,
            admin_port: 0,
            filter: Some(FilterBuilds {
                wasm,
                native,
                config_path,
            }),
            endpoints,
        };
        let mut env = Self {
            envoy: None,
            addr: dead_addr(),
            dir,
            spec,
            version: 0,
            plugin,
        };
        env.write_config(config);
        env.boot();
        env
    }

    fn boot(&mut self) {
        let bootstrap = envoy::render_bootstrap(&self.spec).unwrap();
        let p = EnvoyProcess::start(
            &envoy_bin(),
            &bootstrap,
            &self.dir,
            &StartOptions::default(),
        )
        .unwrap();
        self.addr = p.listener_addr().unwrap();
        self.envoy = Some(p);
    }

    fn write_config(&mut self, config: &serde_json::Value) {
        self.version += 1;
        let f = self.spec.filter.as_ref().unwrap();
        let mut ecds =
            envoy::render_filter_config(f, &config.to_string(), &self.version.to_string());
        for (k, v) in self.plugin.as_object().unwrap() {
            ecds["resources"][0]["typed_config"]["config"][k] = v.clone();
        }
        self.write_ecds(&ecds);
    }

    /// Atomic replace, as `envoy::write_filter_config` does: the rename is what Envoy sees.
    fn write_ecds(&self, ecds: &serde_json::Value) {
        let f = self.spec.filter.as_ref().unwrap();
        let tmp = f.config_path.with_extension("tmp");
        std::fs::write(&tmp, ecds.to_string()).unwrap();
        std::fs::rename(&tmp, &f.config_path).unwrap();
    }

    /// Hand Envoy this filter config as the `typed_config` of the filter's ECDS resource,
    /// whatever the renderer would choose, and wait until Envoy has processed it.
    pub fn reload_typed(&mut self, typed_config: serde_json::Value) {
        let before = self.ecds_updates();
        self.version += 1;
        let mut ecds = envoy::render_filter_config(
            self.spec.filter.as_ref().unwrap(),
            "{}",
            &self.version.to_string(),
        );
        ecds["resources"][0]["typed_config"] = typed_config;
        self.write_ecds(&ecds);
        assert!(
            poll_until(Duration::from_secs(15), || self.ecds_updates() > before),
            "Envoy did not process the config update:\n{}",
            self.log()
        );
    }

    /// Swap the filter config live (atomic rename into the watched directory) and wait until
    /// Envoy has processed the update (accepted or rejected).
    pub fn reload(&mut self, config: &serde_json::Value) {
        let before = self.ecds_updates();
        self.write_config(config);
        assert!(
            poll_until(Duration::from_secs(15), || self.ecds_updates() > before),
            "Envoy did not process the config update:\n{}",
            self.log()
        );
    }

    /// ECDS updates of the filter processed so far (accepted, rejected or failed).
    pub fn ecds_updates(&self) -> f64 {
        let text = self.prometheus();
        ["update_success", "update_rejected", "update_failure"]
            .iter()
            .map(|s| envoy::prometheus_value(&text, &ecds_stat(s), &[]))
            .sum()
    }

    /// The `@type` of the filter config Envoy runs now (the Wasm or the native build).
    pub fn filter_type(&self) -> String {
        let admin = self.envoy().admin_addr();
        let r = Client::new(admin).send(
            "GET",
            "admin",
            "/config_dump?resource=ecds_filters",
            &[],
            b"",
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        v["configs"][0]["ecds_filter"]["typed_config"]["@type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// ECDS updates of the filter Envoy rejected (its config failed `on_configure`).
    pub fn rejected_updates(&self) -> f64 {
        self.metric(&ecds_stat("update_rejected"), &[])
    }

    /// A Prometheus sample (summed over series matching `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        envoy::prometheus_value(&self.prometheus(), name, labels)
    }

    /// Stop and start Envoy again (same bootstrap, same config file).
    pub fn restart(&mut self) {
        if let Some(p) = self.envoy.take() {
            p.stop();
        }
        self.boot();
    }

    pub fn envoy(&self) -> &EnvoyProcess {
        self.envoy.as_ref().unwrap()
    }

    pub fn prometheus(&self) -> String {
        self.envoy().prometheus().unwrap()
    }

    pub fn log(&self) -> String {
        self.envoy().log()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(p) = self.envoy.take() {
            p.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Route endpoint `name` on `hosts` to `upstreams` (one per variant, weights as given).
pub fn route(
    name: &str,
    hosts: &[&str],
    upstreams: &[(&Upstream, u32)],
    shadow: Option<(&str, SocketAddr)>,
) -> RouteEndpoint {
    RouteEndpoint {
        name: name.to_owned(),
        virtual_host: virtual_host(name),
        route_key: ROUTE_KEY.to_owned(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        variants: upstreams
            .iter()
            .map(|(u, w)| RouteVariant {
                name: u.name.clone(),
                weight: *w,
                upstream: u.addr,
                rollout_upstream: None,
            })
            .collect(),
        shadow: shadow.map(|(c, a)| ClusterUpstream {
            cluster: c.to_owned(),
            upstream: a,
        }),
        mirror: None,
        capture: None,
    }
}

/// The variant an upstream reported in its `{"variant": ...}` body.
pub fn served_by(r: &Response) -> String {
    serde_json::from_str::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["variant"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not an upstream answer: {} {}", r.status, r.body))
}
