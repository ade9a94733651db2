//! Fetch a model artifact into a model directory: download (with retries), verify sha256,
//! unpack safely, publish atomically, and share one result between replicas on one volume.
//!
//! Used by the `mlep-model-init` init container and by local mode (`mlep local up`), which
//! fetches into a cache with the same code:
//!
//! ```no_run
//! use mlep_model_init::{fetch, FetchRequest, LogProgress};
//! let req = FetchRequest::new("https://example.com/titanic-v1.tar.gz", "ab12...", "/opt/ml/model");
//! let dir = fetch(&req, &LogProgress::default())?;
//! # Ok::<(), mlep_model_init::InitError>(())
//! ```
//!
//! Exit codes of the binary come from [`InitError::exit_code`]: 0 ok, 1 local I/O error,
//! 2 bad input, 3 transient failures exhausted, 4 artifact failed verification.
#![forbid(unsafe_code)]

pub mod publish;
pub mod source;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unpack;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use publish::MARKER_FILE;
pub use source::{destination_store, object_store_for, source_for, Credentials, Download, Source};

/// Errors of a fetch. Grouped by [`InitError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    // --- bad input (exit 2) ---
    #[error("bad artifact URI {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("unsupported artifact URI scheme {scheme:?} (supported: {supported})")]
    UnsupportedScheme {
        scheme: String,
        supported: &'static str,
    },
    #[error("bad sha256 {value:?}: expected 64 hex digits (optionally prefixed `sha256:`)")]
    BadSha256 { value: String },
    #[error("bad destination {path:?}: {reason}")]
    BadDest { path: PathBuf, reason: String },
    #[error("artifact {uri} not available: {reason}")]
    NotFound { uri: String, reason: String },
    #[error("artifact {uri} refused: {reason} (check the Model's credentialsSecret)")]
    Denied { uri: String, reason: String },
    // --- transient (exit 3 once retries are exhausted) ---
    #[error("{what}: {reason}")]
    Transient { what: String, reason: String },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: Box<InitError> },
    #[error("timed out after {waited:?} waiting for the lock {lock:?} held by {holder}")]
    LockTimeout {
        lock: PathBuf,
        holder: String,
        waited: Duration,
    },
    // --- verification (exit 4) ---
    #[error("sha256 mismatch for {uri}: expected {expected}, got {actual}; nothing was published")]
    ChecksumMismatch {
        uri: String,
        expected: String,
        actual: String,
    },
    #[error("{what} over the limit of {limit} bytes ({detail})")]
    TooLarge {
        what: &'static str,
        limit: u64,
        detail: String,
    },
    #[error("unsafe archive entry {entry:?}: {reason}")]
    UnsafeArchive { entry: String, reason: String },
    #[error("corrupt archive: {reason}")]
    CorruptArchive { reason: String },
    // --- local (exit 1) ---
    #[error("local I/O error at {path:?}: {source}")]
    Local { path: PathBuf, source: io::Error },
}

impl InitError {
    pub(crate) fn local(path: &Path, source: io::Error) -> Self {
        InitError::Local {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Worth retrying (connect error, 5xx, truncated body, ...).
    pub fn is_transient(&self) -> bool {
        matches!(self, InitError::Transient { .. })
    }

    /// Process exit code: 2 bad input, 3 transient failures exhausted, 4 verification failed,
    /// 1 local I/O.
    pub fn exit_code(&self) -> i32 {
        match self {
            InitError::BadUri { .. }
            | InitError::UnsupportedScheme { .. }
            | InitError::BadSha256 { .. }
            | InitError::BadDest { .. }
            | InitError::NotFound { .. }
            | InitError::Denied { .. } => 2,
            InitError::Transient { .. }
            | InitError::RetriesExhausted { .. }
            | InitError::LockTimeout { .. } => 3,
            InitError::ChecksumMismatch { .. }
            | InitError::TooLarge { .. }
            | InitError::UnsafeArchive { .. }
            | InitError::CorruptArchive { .. } => 4,
            InitError::Local { .. } => 1,
        }
    }
}

/// Size limits (bytes). Defaults: 4 GiB download, 16 GiB unpacked, 100,000 entries.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_download_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_download_bytes: 4 << 30,
            max_unpacked_bytes: 16 << 30,
            max_entries: 100_000,
        }
    }
}

/// Exponential backoff: `initial`, `2*initial`, ... capped at `max`, `attempts` tries in all.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next` (2-based: the delay after the first failure is `initial`).
    pub fn delay(&self, next: u32) -> Duration {
        let factor = 1u32.checked_shl(next.saturating_sub(2)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// What to fetch and where.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub uri: String,
    /// Expected sha256 of the downloaded bytes (the archive, not its contents).
    pub sha256: String,
    /// Directory that will hold the model files (`/opt/ml/model`).
    pub dest: PathBuf,
    pub limits: Limits,
    pub retry: RetryPolicy,
    /// Connect / response / per-read timeout for HTTP and object storage.
    pub http_timeout: Duration,
    /// Object storage credentials and settings (`s3://`, `gs://`); empty: the ambient identity.
    pub credentials: Credentials,
    /// A lock whose holder has not refreshed it for this long is stale and taken over.
    pub lock_stale_after: Duration,
    /// How long a second replica waits for the first one before giving up (exit 3).
    pub lock_wait: Duration,
}

impl FetchRequest {
    pub fn new(
        uri: impl Into<String>,
        sha256: impl Into<String>,
        dest: impl Into<PathBuf>,
    ) -> Self {
        Self {
            uri: uri.into(),
            sha256: sha256.into(),
            dest: dest.into(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            http_timeout: Duration::from_secs(30),
            credentials: Credentials::default(),
            lock_stale_after: Duration::from_secs(120),
            lock_wait: Duration::from_secs(3600),
        }
    }
}

/// Progress of a fetch, for logs or a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Another process holds the lock; waiting for it.
    Waiting {
        holder: String,
    },
    Attempt {
        attempt: u32,
        of: u32,
    },
    Bytes {
        done: u64,
        total: Option<u64>,
    },
    Retrying {
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    Verified {
        sha256: String,
    },
    Unpacked {
        bytes: u64,
    },
    Published {
        path: PathBuf,
    },
    /// A complete copy with the same sha256 was already there.
    Reused {
        path: PathBuf,
    },
}

pub trait Progress: Sync {
    fn event(&self, event: &Event);
}

/// Ignores progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _: &Event) {}
}

/// Logs progress with `tracing`; byte progress at most every `every`.
pub struct LogProgress {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Default for LogProgress {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(2),
            last: Mutex::new(None),
        }
    }
}

impl Progress for LogProgress {
    fn event(&self, event: &Event) {
        match event {
            Event::Bytes { done, total } => {
                let Ok(mut last) = self.last.lock() else {
                    return;
                };
                let finished = Some(*done) == *total;
                if finished || last.is_none_or(|t| t.elapsed() >= self.every) {
                    *last = Some(Instant::now());
                    tracing::info!(done, total = ?total, "downloading");
                }
            }
            Event::Retrying {
                attempt,
                delay,
                reason,
            } => tracing::warn!(attempt, ?delay, %reason, "transient failure, retrying"),
            Event::Waiting { holder } => {
                tracing::info!(%holder, "another fetch holds the lock, waiting")
            }
            other => tracing::info!(event = ?other, "fetch"),
        }
    }
}

/// Lower-case 64-hex sha256, accepting an optional `sha256:` prefix.
pub fn normalize_sha256(value: &str) -> Result<String, InitError> {
    let v = value.trim();
    let v = v.strip_prefix("sha256:").unwrap_or(v).to_ascii_lowercase();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v)
    } else {
        Err(InitError::BadSha256 {
            value: value.to_string(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a non-archive artifact gets: the last path segment of the URI.
fn single_file_name(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or(uri);
    let last = path.rsplit('/').next().unwrap_or("");
    if last.is_empty() || last == "." || last == ".." {
        "model".to_string()
    } else {
        last.to_string()
    }
}

/// Fetch `req.uri` into `req.dest` and return `req.dest`. Blocking.
pub fn fetch(req: &FetchRequest, progress: &dyn Progress) -> Result<PathBuf, InitError> {
    let sha = normalize_sha256(&req.sha256)?;
    let source = source_for(&req.uri, req.http_timeout, &req.credentials)?;
    fetch_with(req, &sha, source.as_ref(), progress)
}

/// [`fetch`] with an explicit source (tests, future schemes).
pub fn fetch_with(
    req: &FetchRequest,
    sha: &str,
    source: &dyn Source,
    progress: &dyn Progress,
) -> Result<PathBuf, InitError> {
    let dest = req.dest.clone();
    if publish::is_complete(&dest, sha) {
        progress.event(&Event::Reused { path: dest.clone() });
        return Ok(dest);
    }
    let layout = publish::Layout::for_dest(&dest)?;
    let lock = publish::acquire(&layout, sha, req.lock_stale_after, req.lock_wait, progress)?;
    let Some(lock) = lock else {
        // Another process published the same artifact while we waited.
        progress.event(&Event::Reused { path: dest.clone() });
        return Ok(dest);
    };
    let staging = publish::staging_dir(&layout)?;
    let result = download_verify_unpack(req, sha, source, progress, &staging, &lock)
        .and_then(|model| publish::publish(&model, &layout, sha, &req.uri));
    // Whatever happened, the staging area goes; the lock is released by its guard.
    if let Err(e) = fs::remove_dir_all(&staging) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %staging.display(), error = %e, "could not remove staging directory");
        }
    }
    result?;
    drop(lock);
    progress.event(&Event::Published { path: dest.clone() });
    Ok(dest)
}

fn download_verify_unpack(
    req: &FetchRequest,
    sha: &str,
    source: &dyn Source,
    progress: &dyn Progress,
    staging: &Path,
    lock: &publish::LockGuard,
) -> Result<PathBuf, InitError> {
    let download = staging.join("artifact.download");
    let actual = download_with_retries(req, source, progress, &download, lock)?;
    if actual != sha {
        return Err(InitError::ChecksumMismatch {
            uri: req.uri.clone(),
            expected: sha.to_string(),
            actual,
        });
    }
    progress.event(&Event::Verified { sha256: actual });
    let model = staging.join("model");
    fs::create_dir(&model).map_err(|e| InitError::local(&model, e))?;
    let limits = unpack::UnpackLimits {
        max_unpacked_bytes: req.limits.max_unpacked_bytes,
        max_entries: req.limits.max_entries,
    };
    let bytes = unpack::unpack(&download, &model, &single_file_name(&req.uri), limits)?;
    progress.event(&Event::Unpacked { bytes });
    Ok(model)
}

fn download_with_retries(
    req: &FetchRequest,
    source: &dyn Source,
    progress: &dyn Progress,
    to: &Path,
    lock: &publish::LockGuard,
) -> Result<String, InitError> {
    let attempts = req.retry.attempts.max(1);
    let mut attempt = 1;
    loop {
        progress.event(&Event::Attempt {
            attempt,
            of: attempts,
        });
        match download_once(req, source, progress, to, lock) {
            Ok(sha) => return Ok(sha),
            Err(e) if e.is_transient() && attempt < attempts => {
                let delay = req.retry.delay(attempt + 1);
                progress.event(&Event::Retrying {
                    attempt,
                    delay,
                    reason: e.to_string(),
                });
                std::thread::sleep(delay);
                attempt += 1;
            }
            Err(e) if e.is_transient() => {
                return Err(InitError::RetriesExhausted {
                    attempts,
                    last: Box::new(e),
                })
            }
            Err(e) => return Err(e),
        }
    }
}

/// One download attempt into `to`; returns the sha256 of what was received.
fn download_once(
    req: &FetchRequest,
    source: &dyn Source,
    progress: &dyn Progress,
    to: &Path,
    lock: &publish::LockGuard,
) -> Result<String, InitError> {
    let max = req.limits.max_download_bytes;
    let Download { mut reader, total } = source.open(&req.uri)?;
    if let Some(total) = total.filter(|t| *t > max) {
        return Err(InitError::TooLarge {
            what: "download",
            limit: max,
            detail: format!("announced size {total}"),
        });
    }
    let mut out = File::create(to).map_err(|e| InitError::local(to, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut done: u64 = 0;
    progress.event(&Event::Bytes { done, total });
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let reason = match total {
                    Some(total) => format!("truncated body: got {done} of {total} bytes ({e})"),
                    None => format!("after {done} bytes: {e}"),
                };
                return Err(InitError::Transient {
                    what: format!("reading {}", req.uri),
                    reason,
                });
            }
        };
        done += n as u64;
        if done > max {
            return Err(InitError::TooLarge {
                what: "download",
                limit: max,
                detail: format!("received {done} bytes so far"),
            });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| InitError::local(to, e))?;
        progress.event(&Event::Bytes { done, total });
        lock.heartbeat();
    }
    if let Some(total) = total {
        if done != total {
            return Err(InitError::Transient {
                what: format!("reading {}", req.uri),
                reason: format!("truncated body: got {done} of {total} bytes"),
            });
        }
    }
    out.sync_all().map_err(|e| InitError::local(to, e))?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_normalized_and_validated() {
        let h = "AB".repeat(32);
        assert_eq!(
            normalize_sha256(&format!("sha256:{h}")).unwrap(),
            "ab".repeat(32)
        );
        assert!(matches!(
            normalize_sha256("abc"),
            Err(InitError::BadSha256 { .. })
        ));
        assert!(matches!(
            normalize_sha256(&"zz".repeat(32)),
            Err(InitError::BadSha256 { .. })
        ));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.delay(2), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(200));
        assert_eq!(p.delay(4), Duration::from_millis(350));
        assert_eq!(p.delay(60), Duration::from_millis(350));
    }

    #[test]
    fn single_files_are_named_after_the_last_uri_segment() {
        assert_eq!(
            single_file_name("https://h/a/model.onnx?sig=1"),
            "model.onnx"
        );
        assert_eq!(single_file_name("https://h/a/"), "model");
    }

    #[test]
    fn exit_codes_separate_bad_input_transient_and_verification() {
        assert_eq!(InitError::BadSha256 { value: "x".into() }.exit_code(), 2);
        let t = InitError::Transient {
            what: "GET".into(),
            reason: "HTTP 503".into(),
        };
        assert_eq!(
            InitError::RetriesExhausted {
                attempts: 3,
                last: Box::new(t)
            }
            .exit_code(),
            3
        );
        let m = InitError::ChecksumMismatch {
            uri: "u".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(m.exit_code(), 4);
    }
}
