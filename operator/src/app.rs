//! Wiring of the `mlep-operator` process: the command line (flags with environment
//! fallbacks), the CRD check, the HTTP server, leader election and the controller.

use crate::leader::LeaderElection;
use crate::metrics::Metrics;
use crate::reconcile;
use crate::scope::Scope;
use crate::server::{self, Timeouts, WasmModule};
use crate::server_module::{serve_module, ModuleLimits};
use kube::api::ListParams;
use kube::Client;
use mlep_core::analysis::{PrometheusPolicy, DEFAULT_PROMETHEUS_URL};
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::pod_security::PodSecurityLevel;
use mlep_core::render::{crds, RenderSettings};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the mlep.dev CRDs are not installed ({0}); install them first: kubectl apply -k manifests/ (or kubectl apply -f manifests/crds/)")]
    CrdsMissing(String),
    #[error("the operator may not read {0} (403): a namespaced install needs a RoleBinding in every namespace of --watch-namespaces (manifests/namespaced/); a cluster-wide one its ClusterRoleBinding (manifests/cluster-wide.yaml)")]
    Forbidden(String),
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The command line. Every option of the operator itself also reads the environment variable
/// shown in `--help` (flags win); the Deployment in `manifests/operator/operator.yaml` sets them there.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mlep-operator",
    version,
    about = "Reconciles Model and ModelEndpoint resources (mlep.dev/v1alpha1) into model-server \
             Deployments, Services, Istio routing and the mlep Wasm filter.",
    after_help = "Without a subcommand the operator runs until SIGTERM/SIGINT, using the \
                  kubeconfig (or the in-cluster service account). Log level: RUST_LOG \
                  (default info,kube=warn)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the CRDs, generated from the Rust types, as YAML (one file per CRD).
    Crd {
        /// Directory to write into.
        #[arg(default_value = "manifests/crds")]
        dir: String,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of a running operator.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address serving /healthz and /metrics.
    #[arg(long, env = "MLEP_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: String,
    /// Address serving the filter module to the proxies, and nothing else.
    #[arg(long, env = "MLEP_MODULE_ADDR", default_value = "0.0.0.0:8081")]
    pub module_addr: String,
    /// Connections the module port serves at once (when all are taken, a new one evicts the
    /// oldest still sending its request head).
    #[arg(long, env = "MLEP_MODULE_MAX_CONNECTIONS", default_value_t = ModuleLimits::default().max_connections)]
    pub module_max_connections: usize,
    /// Seconds a client of the module port has to send its whole request head.
    #[arg(long, env = "MLEP_MODULE_HEADER_TIMEOUT_SECONDS", default_value_t = Timeouts::default().header.as_secs())]
    pub module_header_timeout_seconds: u64,
    /// Pod Security Standard every Model's pods must meet: `restricted` or `baseline`. A Model
    /// breaking it is not deployed; its condition names the field.
    #[arg(long, env = "MLEP_POD_SECURITY_LEVEL", default_value = "restricted", value_parser = parse_level)]
    pub pod_security_level: PodSecurityLevel,
    /// Prometheus queried by rollout analysis when an endpoint names none.
    #[arg(long, env = "MLEP_PROMETHEUS_URL", default_value = DEFAULT_PROMETHEUS_URL)]
    pub prometheus_url: String,
    /// Other Prometheus URLs an endpoint may name in spec.rollout.analysis.prometheusUrl,
    /// comma-separated; any other URL is an invalid spec and is never contacted.
    #[arg(long, env = "MLEP_PROMETHEUS_ALLOWED_URLS", value_delimiter = ',')]
    pub prometheus_allowed_urls: Vec<String>,
    /// The external hosts an endpoint may claim, comma-separated patterns with `{namespace}`
    /// for its namespace, e.g. `*.{namespace}.models.example.com`; unset: any external host,
    /// first come first served (set it on a cluster shared by teams).
    #[arg(long, env = "MLEP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Where the filter's native build (libmlep_filter_native.so, an Envoy dynamic module)
    /// sits on every proxy of the mesh; unset: the Wasm build only. Endpoints that need no
    /// data capture or scale to zero then run on it at about a quarter of the Wasm build's
    /// cost. Set it only when every proxy image carries the file: a proxy that
    /// cannot load it refuses the routes naming it.
    #[arg(long, env = "MLEP_NATIVE_FILTER_PATH")]
    pub native_filter_path: Option<String>,
    /// The filter module (mlep_filter.wasm) to serve to the proxies.
    #[arg(
        long,
        env = "MLEP_WASM_PATH",
        default_value = "/usr/share/mlep/mlep_filter.wasm"
    )]
    pub wasm_path: String,
    /// URL proxies fetch the module from; it must serve exactly the bytes of --wasm-path
    /// [default: this operator, versioned by the module's sha256:
    /// http://mlep-operator.<namespace>.svc.<cluster-domain>:8080/mlep_filter/<sha256>.wasm]
    #[arg(long, env = "MLEP_WASM_URL")]
    pub wasm_url: Option<String>,
    /// Namespaces whose Models and ModelEndpoints the operator serves, comma-separated
    /// [default: every namespace]. The namespaced install (manifests/namespaced/) grants it
    /// nothing outside them.
    #[arg(long, env = "MLEP_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mlep-system")]
    pub namespace: String,
    /// This replica's identity in the Lease [default: host name + pid]
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Elect one leader among replicas; `false` reconciles without a Lease.
    #[arg(
        long,
        env = "MLEP_LEADER_ELECT",
        default_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub leader_elect: bool,
    /// Lease duration in seconds.
    #[arg(long, env = "MLEP_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Image of the init container that fetches and verifies model artifacts.
    #[arg(long, env = "MLEP_MODEL_INIT_IMAGE", default_value_t = RenderSettings::default().model_init_image)]
    pub model_init_image: String,
    /// Image of the data capture sink (`mlep-capture-sink`).
    #[arg(long, env = "MLEP_CAPTURE_SINK_IMAGE", default_value_t = RenderSettings::default().capture_sink_image)]
    pub capture_sink_image: String,
    /// Namespace of the ingress gateway pods (where gateway-side filters go).
    #[arg(long, env = "MLEP_GATEWAY_NAMESPACE", default_value_t = RenderSettings::default().gateway_namespace)]
    pub gateway_namespace: String,
    /// Istio's root namespace: the shared sidecar filter goes there (it applies to every proxy).
    #[arg(long, env = "MLEP_MESH_ROOT_NAMESPACE", default_value_t = RenderSettings::default().mesh_root_namespace)]
    pub mesh_root_namespace: String,
    /// Labels selecting the ingress gateway pods, `key=value[,key=value]`.
    #[arg(
        long,
        env = "MLEP_GATEWAY_SELECTOR",
        default_value = "istio=ingressgateway",
        value_parser = parse_labels
    )]
    pub gateway_selector: BTreeMap<String, String>,
    /// Cluster DNS domain.
    #[arg(long, env = "MLEP_CLUSTER_DOMAIN", default_value_t = RenderSettings::default().cluster_domain)]
    pub cluster_domain: String,
    /// Seconds a removed variant's route, subset and Deployment stay after the filter stops
    /// assigning it, so that no proxy still on the previous filter config loses its route.
    #[arg(long, env = "MLEP_ROUTE_GRACE_SECONDS", default_value_t = RenderSettings::default().route_grace_seconds)]
    pub route_grace_seconds: i64,
    /// Log line format.
    #[arg(long, env = "MLEP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Process configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `/healthz`, `/metrics`.
    pub http_addr: String,
    /// The Wasm module, and its limits.
    pub module_addr: String,
    pub module_limits: ModuleLimits,
    pub wasm_path: String,
    /// The namespaces served.
    pub scope: Scope,
    /// Where the Lease lives.
    pub namespace: String,
    /// This replica's identity in the Lease.
    pub identity: String,
    pub leader_elect: bool,
    pub lease: Duration,
    pub settings: RenderSettings,
    /// Overrides the URL proxies fetch the module from.
    pub wasm_url: Option<String>,
}

impl RunArgs {
    pub fn config(self) -> Config {
        let identity = self.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let settings = RenderSettings {
            model_init_image: self.model_init_image,
            capture_sink_image: self.capture_sink_image,
            gateway_namespace: self.gateway_namespace,
            mesh_root_namespace: self.mesh_root_namespace,
            gateway_selector: self.gateway_selector,
            cluster_domain: self.cluster_domain,
            route_grace_seconds: self.route_grace_seconds.max(0),
            pod_security: self.pod_security_level,
            allowed_hosts: (self.allowed_hosts.into_iter())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
            prometheus: PrometheusPolicy {
                default_url: self.prometheus_url,
                allowed: self
                    .prometheus_allowed_urls
                    .into_iter()
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect(),
            },
            native_filter: self.native_filter_path.filter(|p| !p.trim().is_empty()),
            ..RenderSettings::default()
        };
        let module_limits = ModuleLimits {
            timeouts: Timeouts {
                header: Duration::from_secs(self.module_header_timeout_seconds.max(1)),
                ..Timeouts::default()
            },
            max_connections: self.module_max_connections.max(1),
        };
        Config {
            http_addr: self.http_addr,
            module_addr: self.module_addr,
            module_limits,
            wasm_path: self.wasm_path,
            scope: Scope::new(self.watch_namespaces),
            namespace: self.namespace,
            identity,
            leader_elect: self.leader_elect,
            lease: Duration::from_secs(self.lease_seconds),
            settings,
            wasm_url: self.wasm_url,
        }
    }
}

/// Run what the command line asks for.
pub async fn main(cli: Cli) -> Result<(), AppError> {
    match cli.command {
        Some(Command::Crd { dir }) => {
            for path in write_crds(&dir)? {
                println!("wrote {path}");
            }
            Ok(())
        }
        None => {
            init_logging(cli.run.log_format);
            run(cli.run.config()).await
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
}

fn parse_level(s: &str) -> Result<PodSecurityLevel, String> {
    s.parse()
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Option<BTreeMap<_, _>>>()
        .filter(|m| !m.is_empty() && m.keys().all(|k| !k.is_empty()))
        .ok_or_else(|| format!("{s:?} must be key=value[,key=value]"))
}

/// `mlep-operator crd [DIR]`: write the CRDs as YAML, one file each.
pub fn write_crds(dir: &str) -> Result<Vec<String>, AppError> {
    std::fs::create_dir_all(dir).map_err(|e| AppError::Io(dir.into(), e))?;
    let mut written = Vec::new();
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let path = format!("{dir}/{name}.yaml");
        let yaml = format!(
            "# Generated by `mlep-operator crd` from core/src/crd.rs; do not edit.\n{}",
            serde_yaml::to_string(&crd)?
        );
        std::fs::write(&path, yaml).map_err(|e| AppError::Io(path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

/// Fail early, with a hint, when the CRDs are not installed or the operator may not read them
/// where it is told to watch.
pub async fn check_crds(client: &Client, scope: &Scope) -> Result<(), AppError> {
    let lp = ListParams::default().limit(1);
    let where_ = |ns: Option<&str>| {
        ns.map_or_else(
            || "every namespace".to_owned(),
            |n| format!("namespace {n}"),
        )
    };
    for api in scope.apis::<ModelEndpoint>(client) {
        let at = where_(api.namespace());
        listable(
            "ModelEndpoints",
            &at,
            api.list_metadata(&lp).await.map(|_| ()),
        )?;
    }
    for api in scope.apis::<Model>(client) {
        let at = where_(api.namespace());
        listable("Models", &at, api.list_metadata(&lp).await.map(|_| ()))?;
    }
    Ok(())
}

/// A list's answer as the operator's start-up verdict.
fn listable(kind: &str, at: &str, r: Result<(), kube::Error>) -> Result<(), AppError> {
    match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(AppError::CrdsMissing(format!("{kind}: 404")))
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            Err(AppError::Forbidden(format!("{kind} in {at}")))
        }
        Err(e) => Err(e.into()),
    }
}

type Served = tokio::task::JoinHandle<std::io::Result<()>>;

/// Bind the admin port (`/healthz`, `/metrics`) and the module port, and serve them.
async fn start_servers(
    config: &Config,
    metrics: &Arc<Metrics>,
    wasm: Arc<WasmModule>,
    settings: &RenderSettings,
    client: &Client,
) -> Result<(Served, Served), AppError> {
    let bind = |addr: String| async move {
        tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| AppError::Io(format!("binding {addr}"), e))
    };
    let admin = bind(config.http_addr.clone()).await?;
    let module = bind(config.module_addr.clone()).await?;
    info!(addr = %config.http_addr, "serving /healthz and /metrics");
    info!(addr = %config.module_addr, wasm_sha256 = %wasm.sha256, wasm_url = %settings.wasm_url, pod_security = %settings.pod_security, "serving the filter module");
    let waker = Arc::new(crate::wake::Waker::new(
        client.clone(),
        config.scope.clone(),
        metrics.clone(),
    ));
    let server = tokio::spawn(server::serve(
        admin,
        metrics.clone(),
        wasm.clone(),
        Some(waker),
    ));
    let module_server = tokio::spawn(serve_module(module, wasm, config.module_limits));
    Ok((server, module_server))
}

/// Run the operator until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), AppError> {
    let bytes = std::fs::read(&config.wasm_path).map_err(|e| {
        AppError::Io(
            format!(
                "reading the filter module {} (set --wasm-path or MLEP_WASM_PATH)",
                config.wasm_path
            ),
            e,
        )
    })?;
    let wasm = Arc::new(WasmModule::new(bytes));
    let mut settings = config.settings.clone();
    settings = settings.with_module(&wasm.sha256, &config.namespace);
    if let Some(url) = &config.wasm_url {
        // An override names a server of the user's; it must serve exactly these bytes.
        settings.wasm_url = url.clone();
    }

    let client = Client::try_default().await?;
    check_crds(&client, &config.scope).await?;
    info!(scope = %config.scope, "watching");
    let metrics = Arc::new(Metrics::default());

    let (server, module_server) =
        start_servers(&config, &metrics, wasm, &settings, &client).await?;
    let election = LeaderElection::new(
        client.clone(),
        &config.namespace,
        crate::leader::LEASE,
        config.identity.clone(),
        config.lease,
    );
    if config.leader_elect {
        info!(identity = %config.identity, "waiting for leadership");
        election.acquire().await;
    }

    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
                return;
            }
        }
        let _ = ctrl_c.await;
    };
    let controller = reconcile::run(client, settings, metrics, &config.scope, shutdown);
    if config.leader_elect {
        tokio::select! {
            _ = controller => info!("controller stopped"),
            _ = election.hold() => error!("lost leadership; exiting so a fresh replica can take over"),
        }
    } else {
        controller.await;
    }
    server.abort();
    module_server.abort();
    warn!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_settings_reach_the_render_settings() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "mlep-operator",
            "--pod-security-level",
            "baseline",
            "--prometheus-url",
            "http://prom.monitoring:9090",
            "--prometheus-allowed-urls",
            "http://a:9090, http://b:9090",
            "--module-max-connections",
            "7",
        ])
        .unwrap();
        let config = cli.run.config();
        assert_eq!(config.settings.pod_security, PodSecurityLevel::Baseline);
        assert_eq!(
            config.settings.prometheus,
            PrometheusPolicy {
                default_url: "http://prom.monitoring:9090".into(),
                allowed: vec!["http://a:9090".into(), "http://b:9090".into()],
            }
        );
        assert_eq!(config.module_limits.max_connections, 7);
        assert!(
            Cli::try_parse_from(["mlep-operator", "--pod-security-level", "privileged"]).is_err()
        );
        let defaults = Cli::try_parse_from(["mlep-operator"]).unwrap().run.config();
        assert_eq!(defaults.scope, Scope::All);
        assert_eq!(defaults.settings.pod_security, PodSecurityLevel::Restricted);
        assert_eq!(defaults.settings.prometheus, PrometheusPolicy::default());
        assert_eq!(defaults.module_addr, "0.0.0.0:8081");
    }

    #[test]
    fn watch_namespaces_limit_the_scope() {
        use clap::Parser;
        let cli =
            Cli::try_parse_from(["mlep-operator", "--watch-namespaces", "team-b,team-a"]).unwrap();
        assert_eq!(
            cli.run.config().scope,
            Scope::Namespaces(vec!["team-a".into(), "team-b".into()])
        );
    }

    #[test]
    fn a_forbidden_namespace_stops_the_operator_with_a_hint() {
        let forbidden = kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            message: "forbidden".into(),
            reason: "Forbidden".into(),
            ..Default::default()
        }));
        let err = listable("ModelEndpoints", "namespace team-c", Err(forbidden)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("namespace team-c") && text.contains("RoleBinding"),
            "{text}"
        );
    }

    #[test]
    fn gateway_selector_parses_and_rejects_garbage() {
        let m = parse_labels("istio=ingressgateway, app = gw").unwrap();
        assert_eq!(m.get("app").map(String::as_str), Some("gw"));
        assert!(parse_labels("istio").is_err());
        assert!(parse_labels("=x").is_err());
    }
}
