//! `mlep-model-server [serve] [--port N] [--host H] [--model-dir D]`
//! (SageMaker runs `docker run <image> serve`; the leading `serve` is accepted and ignored.)
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mlep_model_server::server::{serve, spawn_loader, App};

#[derive(Parser, Debug)]
#[command(
    name = "mlep-model-server",
    version,
    about = "SageMaker-contract server for ONNX models"
)]
struct Args {
    /// Port (else MLEP_PORT, else SAGEMAKER_BIND_TO_PORT, else 8080). 0 picks a free port.
    #[arg(long, env = "MLEP_PORT")]
    port: Option<u16>,
    #[arg(long, env = "MLEP_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Directory holding metadata.json and the model file.
    #[arg(long, env = "MLEP_MODEL_DIR", default_value = "/opt/ml/model")]
    model_dir: PathBuf,
    /// Largest accepted request body (SageMaker's limit is 6 MB).
    #[arg(long, env = "MLEP_MAX_BODY_BYTES", default_value_t = 6 * 1024 * 1024)]
    max_body_bytes: usize,
    /// On SIGTERM, how long in-flight requests get to finish.
    #[arg(long, env = "MLEP_DRAIN_TIMEOUT_SECONDS", default_value_t = 30)]
    drain_timeout_seconds: u64,
    /// How often to look for metadata.json while the model directory is still empty.
    #[arg(long, env = "MLEP_LOAD_POLL_MS", default_value_t = 200)]
    load_poll_ms: u64,
    /// Log as JSON lines.
    #[arg(long, env = "MLEP_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "serve") {
        argv.remove(1);
    }
    let args = Args::parse_from(argv);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tract_linalg=warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let port = match args.port {
        Some(p) => p,
        None => match std::env::var("SAGEMAKER_BIND_TO_PORT") {
            Ok(p) => p
                .parse()
                .with_context(|| format!("SAGEMAKER_BIND_TO_PORT={p:?} is not a port"))?,
            Err(_) => 8080,
        },
    };
    let addr: SocketAddr = format!("{}:{port}", args.host)
        .parse()
        .with_context(|| format!("bad --host {:?}", args.host))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let local = listener.local_addr().context("local_addr")?;
        let app = App::new(args.max_body_bytes);
        spawn_loader(
            app.clone(),
            args.model_dir.clone(),
            Duration::from_millis(args.load_poll_ms),
        )
        .context("spawn loader")?;
        tracing::info!(addr = %local, model_dir = %args.model_dir.display(), "listening");
        serve(
            listener,
            app,
            shutdown_signal(),
            Duration::from_secs(args.drain_timeout_seconds),
        )
        .await;
        Ok(())
    })
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
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
