//! `mlep capture`: list and print an endpoint's captured invocations, read from the
//! destination its `spec.dataCapture` names (the same object storage client the sink writes
//! with, `mlep_model_init::destination_store`; credentials from the environment), so a user
//! can look at what was captured without another tool.

use futures::TryStreamExt;
use mlep_contract::capture::{CaptureRecord, Destination};
use mlep_model_init::{destination_store, Credentials};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use std::io::Write;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error("{0}")]
    Input(String),
    #[error("destination {destination}: {reason}")]
    Store { destination: String, reason: String },
    #[error("{file}: line {line} is not a capture record: {reason}")]
    Record {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// What to show.
#[derive(Clone, Debug)]
pub struct Query {
    pub destination: String,
    pub endpoint: String,
    pub variant: Option<String>,
    /// `yyyy`, `yyyy/mm`, `yyyy/mm/dd` or `yyyy/mm/dd/hh` (needs `variant`).
    pub period: Option<String>,
    /// At most this many records (files with `files`).
    pub limit: usize,
    /// List the files (path, size) instead of printing records.
    pub files: bool,
}

/// The endpoint's capture destination from the input: the endpoint named `endpoint`, else the
/// only one with `dataCapture`.
pub fn destination_from_input(
    input: &std::path::Path,
    endpoint: Option<&str>,
) -> Result<(String, String), CaptureError> {
    let loaded = crate::load::load(input)?;
    let with: Vec<_> = loaded
        .endpoints
        .iter()
        .filter(|e| endpoint.is_none_or(|n| e.name == n))
        .filter_map(|e| Some((e.name.clone(), e.spec.data_capture.as_ref()?)))
        .collect();
    match with.as_slice() {
        [(name, d)] => Ok((name.clone(), d.destination_uri.clone())),
        [] => Err(CaptureError::Input(format!(
            "no ModelEndpoint{} with spec.dataCapture in {}",
            endpoint.map(|n| format!(" {n:?}")).unwrap_or_default(),
            input.display()
        ))),
        more => Err(CaptureError::Input(format!(
            "{} endpoints capture ({}); name one with --endpoint",
            more.len(),
            more.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Print the records (JSON Lines, oldest file first) or the files of `q` to `out`.
pub async fn show(q: &Query, out: &mut impl Write) -> Result<usize, CaptureError> {
    let failed = |reason: String| CaptureError::Store {
        destination: q.destination.clone(),
        reason,
    };
    let dest = Destination::parse(&q.destination).map_err(failed)?;
    let store = destination_store(&dest, &Credentials::from_env(), Duration::from_secs(10))
        .map_err(failed)?;
    let mut prefix: Vec<&str> = Vec::new();
    if !dest.prefix().is_empty() {
        prefix.push(dest.prefix());
    }
    prefix.push(&q.endpoint);
    if let Some(v) = &q.variant {
        prefix.push(v);
        if let Some(p) = &q.period {
            prefix.push(p);
        }
    } else if q.period.is_some() {
        return Err(CaptureError::Input("--period needs --variant".into()));
    }
    let prefix = ObjectPath::from(prefix.join("/"));
    let mut files: Vec<_> = store
        .list(Some(&prefix))
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| failed(e.to_string()))?;
    // Names start with the file's first record time: path order is time order per variant.
    files.retain(|m| m.location.as_ref().ends_with(".jsonl"));
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let mut shown = 0;
    for f in files {
        if shown >= q.limit {
            break;
        }
        if q.files {
            writeln!(out, "{}\t{}", f.location, f.size)?;
            shown += 1;
            continue;
        }
        let bytes = store
            .get(&f.location)
            .await
            .map_err(|e| failed(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| failed(e.to_string()))?;
        for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if shown >= q.limit {
                break;
            }
            // Only well-formed records are printed, so a pipe into jq sees the contract's shape.
            serde_json::from_str::<CaptureRecord>(line).map_err(|e| CaptureError::Record {
                file: f.location.to_string(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            writeln!(out, "{line}")?;
            shown += 1;
        }
    }
    Ok(shown)
}
