//! The capture sink: takes the invocations the filter captures (`POST /v1/capture`, the
//! contract in `mlep_contract::capture`), turns each into a SageMaker-style capture record and
//! writes them, batched per endpoint, variant and hour, as JSON Lines files to object storage
//! (`s3://`, `gs://`) or a directory (`file://`). See docs/capture.md.
//!
//! Pure decisions live apart from I/O: [`record`] (headers and body to a record line),
//! [`batch`] (which records go in which file, when a file is due, what the memory bound
//! refuses or gives up; the clock is a parameter), [`destination`]'s parse and
//! [`metrics`]'s rendering. [`server`] (HTTP) and [`writer`] (the object store) are the
//! shells, sharing a [`sink::Sink`]; [`app::run`] starts both and orders the shutdown.
#![forbid(unsafe_code)]

pub mod app;
pub mod batch;
pub mod destination;
pub mod metrics;
pub mod record;
pub mod server;
pub mod sink;
pub mod writer;

/// Errors of the sink: a bad destination (exit 2 at start), a bad ingest request (400), a
/// store that cannot be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    #[error("bad destination {value:?}: {reason} (accepted: s3://<bucket>[/<prefix>], gs://<bucket>[/<prefix>], file:///<absolute dir>)")]
    BadDestination { value: String, reason: String },
    #[error("cannot open the destination: {reason}")]
    Store { reason: String },
    #[error("missing header {header}")]
    MissingHeader { header: &'static str },
    #[error("bad header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    #[error("the body has {body} bytes, fewer than the {input_len} of the request ({header})")]
    ShortBody {
        header: &'static str,
        body: usize,
        input_len: usize,
    },
}

impl SinkError {
    /// The ingest header a bad request names, if any.
    pub fn header(&self) -> Option<&'static str> {
        match self {
            SinkError::MissingHeader { header }
            | SinkError::BadHeader { header, .. }
            | SinkError::ShortBody { header, .. } => Some(header),
            SinkError::BadDestination { .. } | SinkError::Store { .. } => None,
        }
    }
}

/// Does `name` fit in one segment of an object key, as the contract's names (Kubernetes
/// names, hostnames) do: 1 to 253 of `A-Z a-z 0-9 . _ -`, and not `.` or `..`?
pub fn is_key_segment(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name != "."
        && name != ".."
}

/// `2 × N` random hex digits: event ids the filter did not send, an instance name when there
/// is no hostname. Should the system's generator fail, the clock, the process id and a
/// counter stand in (unique, not unpredictable, which is all these ids need).
pub fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_ok() {
        return bytes.iter().map(|b| format!("{b:02x}")).collect();
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{nanos:x}{:x}{n:x}", std::process::id())
}
