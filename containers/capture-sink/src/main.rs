//! `mlep-capture-sink --destination <s3://bucket/prefix | gs://bucket/prefix | file:///dir>`:
//! takes the invocations the filter captures and writes them as JSON Lines files
//! (docs/capture.md). Exit codes: 0 stopped by SIGTERM/SIGINT after flushing, 1 cannot
//! listen or start, 2 bad input.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mlep_capture_sink::app::{run, Settings};
use mlep_capture_sink::batch::Limits;
use mlep_capture_sink::destination;
use mlep_capture_sink::is_key_segment;
use mlep_contract::names::{ENV_CAPTURE_DESTINATION, ENV_CAPTURE_INSTANCE, ENV_CAPTURE_LISTEN};
use mlep_model_init::Credentials;

const MIB: u64 = 1024 * 1024;

#[derive(Parser, Debug)]
#[command(
    name = "mlep-capture-sink",
    version,
    about = "Write captured invocations as JSON Lines files to object storage"
)]
struct Args {
    /// Where files go: s3://<bucket>[/<prefix>], gs://<bucket>[/<prefix>] or
    /// file:///<absolute dir>. Object storage credentials come from the environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    /// AWS_ENDPOINT_URL, GOOGLE_SERVICE_ACCOUNT_KEY), else the ambient identity.
    #[arg(long, env = ENV_CAPTURE_DESTINATION)]
    destination: String,
    /// Address to serve POST /v1/capture, /metrics, /healthz and /readyz on (port 0: any).
    #[arg(long, env = ENV_CAPTURE_LISTEN, default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    /// A file is written once its batch holds this many bytes...
    #[arg(long, env = "MLEP_CAPTURE_MAX_FILE_BYTES", default_value_t = 8 * MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_file_bytes: u64,
    /// ...or its first record arrived this long ago. While the destination fails, a file
    /// unwritten 10 times this long after is given up.
    #[arg(long, env = "MLEP_CAPTURE_MAX_FILE_AGE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_file_age_ms: u64,
    /// Bytes of records held in memory at most; past it, requests are refused with 503.
    #[arg(long, env = "MLEP_CAPTURE_MAX_BUFFER_BYTES", default_value_t = 64 * MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_buffer_bytes: u64,
    /// Largest ingest body (request and response together); larger ones get 413.
    #[arg(long, env = "MLEP_CAPTURE_MAX_BODY_BYTES", default_value_t = 32 * MIB as usize)]
    max_body_bytes: usize,
    /// This sink's name in file names, unique among sinks writing to one destination
    /// (default: the hostname, i.e. the pod name; else a random id).
    #[arg(long, env = ENV_CAPTURE_INSTANCE)]
    instance: Option<String>,
    /// From SIGTERM to exit, at most (requests in flight, then the flush).
    #[arg(
        long,
        env = "MLEP_CAPTURE_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    shutdown_timeout_ms: u64,
    /// Connecting to the store must take less than this.
    #[arg(long, env = "MLEP_CAPTURE_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    connect_timeout_ms: u64,
    /// A put with no answer within this has failed (and is retried).
    #[arg(long, env = "MLEP_CAPTURE_PUT_TIMEOUT_MS", default_value_t = 30_000)]
    put_timeout_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "MLEP_LOG_JSON")]
    log_json: bool,
}

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process, whatever features the build unified
    // (see the workspace Cargo.toml's rustls entry); an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logs(args.log_json);
    match start(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => {
            tracing::error!(%error, "cannot start");
            ExitCode::from(code)
        }
    }
}

/// Check the input (exit 2), open the store, listen (exit 1), serve until SIGTERM/SIGINT.
fn start(args: &Args) -> Result<(), (u8, String)> {
    let bad = |e: &dyn std::fmt::Display| (2, e.to_string());
    let dest = destination::parse(&args.destination).map_err(|e| bad(&e))?;
    let instance = match args.instance.clone().or_else(hostname) {
        Some(i) if is_key_segment(&i) => i,
        Some(i) => {
            return Err(bad(&format!(
                "--instance {i:?} is not a name (1 to 253 of A-Z, a-z, 0-9, `.`, `_`, `-`)"
            )))
        }
        None => mlep_capture_sink::random_hex::<8>(),
    };
    let connect_timeout = Duration::from_millis(args.connect_timeout_ms);
    let store =
        destination::open(&dest, &Credentials::from_env(), connect_timeout).map_err(|e| bad(&e))?;
    let settings = Settings {
        limits: Limits::new(
            args.max_file_bytes,
            args.max_file_age_ms,
            args.max_buffer_bytes,
        ),
        prefix: dest.prefix().to_owned(),
        instance,
        max_body_bytes: args.max_body_bytes,
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
        put_timeout: Duration::from_millis(args.put_timeout_ms),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("tokio runtime: {e}")))?;
    runtime.block_on(async {
        let cannot_listen =
            |e: std::io::Error| (1, format!("cannot listen on {}: {e}", args.listen));
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(cannot_listen)?;
        let addr = listener.local_addr().map_err(cannot_listen)?;
        tracing::info!(
            %addr,
            destination = %args.destination,
            instance = %settings.instance,
            "listening"
        );
        run(listener, store, settings, shutdown_signal()).await;
        Ok(())
    })
}

fn init_logs(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The pod name in Kubernetes (HOSTNAME is set in every container).
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty())
}

/// SIGTERM (Kubernetes, docker stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the sink");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
