//! `mlep-model-init`: fetch the model artifact into the model directory, then exit.
//! Exit codes: 0 ok, 1 local I/O error, 2 bad input, 3 transient failures exhausted,
//! 4 artifact failed verification (checksum, unsafe archive, size limit).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mlep_contract::names::{
    ENV_ARTIFACT_SHA256, ENV_ARTIFACT_URI, ENV_MODEL_DIR, ENV_TERMINATION_LOG, MODEL_DIR,
};
use mlep_model_init::{fetch, Credentials, FetchRequest, Limits, LogProgress, RetryPolicy};

#[derive(Parser, Debug)]
#[command(
    name = "mlep-model-init",
    version,
    about = "Fetch, verify, unpack and publish a model artifact"
)]
struct Args {
    /// Artifact URI: http(s)://..., s3://bucket/key, gs://bucket/object, pvc://claim/path or
    /// file:///absolute/path. Object storage credentials come from the environment
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
    /// AWS_ENDPOINT_URL, GOOGLE_SERVICE_ACCOUNT_KEY), else the ambient identity.
    #[arg(long, env = ENV_ARTIFACT_URI)]
    uri: String,
    /// Expected sha256 of the artifact (64 hex digits, optional `sha256:` prefix).
    #[arg(long, env = ENV_ARTIFACT_SHA256)]
    sha256: String,
    /// Model directory to publish into.
    #[arg(long, env = ENV_MODEL_DIR, default_value = MODEL_DIR)]
    dest: PathBuf,
    #[arg(long, env = "MLEP_MAX_DOWNLOAD_BYTES", default_value_t = Limits::default().max_download_bytes)]
    max_download_bytes: u64,
    #[arg(long, env = "MLEP_MAX_UNPACKED_BYTES", default_value_t = Limits::default().max_unpacked_bytes)]
    max_unpacked_bytes: u64,
    #[arg(long, env = "MLEP_MAX_ENTRIES", default_value_t = Limits::default().max_entries)]
    max_entries: u64,
    /// Attempts in all for transient failures (connect errors, 5xx, truncated bodies).
    #[arg(long, env = "MLEP_RETRY_ATTEMPTS", default_value_t = RetryPolicy::default().attempts)]
    retry_attempts: u32,
    /// First backoff delay in milliseconds (doubles each retry, capped by --retry-max-backoff-ms).
    #[arg(long, env = "MLEP_RETRY_BACKOFF_MS", default_value_t = 500)]
    retry_backoff_ms: u64,
    #[arg(long, env = "MLEP_RETRY_MAX_BACKOFF_MS", default_value_t = 30_000)]
    retry_max_backoff_ms: u64,
    /// HTTP connect/response/per-read timeout in seconds.
    #[arg(long, env = "MLEP_HTTP_TIMEOUT_SECONDS", default_value_t = 30)]
    http_timeout_seconds: u64,
    /// A lock not refreshed for this many seconds is considered stale and taken over.
    #[arg(long, env = "MLEP_LOCK_STALE_SECONDS", default_value_t = 120)]
    lock_stale_seconds: u64,
    /// How long to wait for another replica's fetch before giving up (exit 3).
    #[arg(long, env = "MLEP_LOCK_WAIT_SECONDS", default_value_t = 3600)]
    lock_wait_seconds: u64,
    /// Log as JSON lines.
    #[arg(long, env = "MLEP_LOG_JSON")]
    log_json: bool,
    /// Write the error here when the fetch fails (in a pod: the kubelet's termination log).
    #[arg(long, env = ENV_TERMINATION_LOG)]
    termination_log: Option<PathBuf>,
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
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut req = FetchRequest::new(args.uri, args.sha256, args.dest);
    req.limits = Limits {
        max_download_bytes: args.max_download_bytes,
        max_unpacked_bytes: args.max_unpacked_bytes,
        max_entries: args.max_entries,
    };
    req.retry = RetryPolicy {
        attempts: args.retry_attempts,
        initial_backoff: Duration::from_millis(args.retry_backoff_ms),
        max_backoff: Duration::from_millis(args.retry_max_backoff_ms),
    };
    req.http_timeout = Duration::from_secs(args.http_timeout_seconds);
    req.credentials = Credentials::from_env();
    req.lock_stale_after = Duration::from_secs(args.lock_stale_seconds);
    req.lock_wait = Duration::from_secs(args.lock_wait_seconds);
    match fetch(&req, &LogProgress::default()) {
        Ok(dir) => {
            tracing::info!(dir = %dir.display(), "model ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            tracing::error!(error = %e, exit_code = code, "fetch failed");
            // The kubelet's termination message (the operator points this at
            // /dev/termination-log): the endpoint's condition then says why, naming the URI.
            if let Some(path) = &args.termination_log {
                let _ = std::fs::write(path, e.to_string());
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}
