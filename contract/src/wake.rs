//! Waking a variant scaled to zero: what the filter needs to hold a request and know when to
//! let it go. The control plane renders it on a sleeping variant (`VariantConfig::asleep`).

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};

/// How the filter wakes a variant scaled to zero and knows it is awake. A held request waits
/// for: `POST <path>` to `cluster` (the control plane starts a server and answers once one is
/// ready), then `GET /ping` to `probeCluster` (the variant's own servers, through the proxy's
/// own view of them) answering 200; a probe that fails asks again, until `timeoutMs` has passed
/// since the request arrived (then a 503 names the variant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WakeConfig {
    /// Envoy cluster of the wake call (the operator's Service, local mode's control server).
    pub cluster: String,
    /// `:authority` of the wake call.
    pub authority: String,
    /// `:path` of the wake call, e.g. `/wake/<namespace>/<endpoint>/<variant>`.
    pub path: String,
    /// Envoy cluster of the variant's servers.
    pub probe_cluster: String,
    /// `:authority` of the probe.
    pub probe_authority: String,
    /// Longest a request is held, in milliseconds.
    #[serde(default = "default_wake_timeout_ms")]
    pub timeout_ms: u32,
}

/// Default longest hold of a request for a sleeping variant (`WakeConfig::timeout_ms`).
pub const DEFAULT_WAKE_TIMEOUT_MS: u32 = 120_000;
/// Largest `WakeConfig::timeout_ms` accepted.
pub const MAX_WAKE_TIMEOUT_MS: u32 = 600_000;

fn default_wake_timeout_ms() -> u32 {
    DEFAULT_WAKE_TIMEOUT_MS
}

impl WakeConfig {
    /// `at` is this wake's path, e.g. `endpoints[0].variants[1].asleep`.
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (field, value) in [
            ("cluster", &self.cluster),
            ("authority", &self.authority),
            ("probeCluster", &self.probe_cluster),
            ("probeAuthority", &self.probe_authority),
        ] {
            if value.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.{field}"),
                    "must not be empty",
                ));
            }
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError::new(
                format!("{at}.path"),
                format!("{:?} must start with /", self.path),
            ));
        }
        if !(1..=MAX_WAKE_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(ConfigError::new(
                format!("{at}.timeoutMs"),
                format!(
                    "{} must be within 1..={MAX_WAKE_TIMEOUT_MS}",
                    self.timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

/// The path prefix of wake calls, on the operator and on `mlep local up`'s wake server alike.
pub const WAKE_PATH_PREFIX: &str = "/wake/";
/// How long the control plane waits for a ready server before it answers 504 (below
/// [`DEFAULT_WAKE_TIMEOUT_MS`], so the filter gets the answer before its own deadline).
pub const CONTROL_PLANE_WAIT_MS: u64 = 110_000;
/// How late the control plane answers a retried call (`?retry=1`) when the variant is ready
/// already, so the filter's loop of wake call and probe does not spin.
pub const RETRY_PAUSE_MS: u64 = 250;

/// `/wake/<namespace>/<endpoint>/<variant>`: the path a sleeping variant's filter entry calls.
pub fn wake_path(namespace: &str, endpoint: &str, variant: &str) -> String {
    format!("{WAKE_PATH_PREFIX}{namespace}/{endpoint}/{variant}")
}

/// What a wake call names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeCall<'a> {
    pub namespace: &'a str,
    pub endpoint: &'a str,
    pub variant: &'a str,
    /// `retry=1`: the filter asks again after a failed probe.
    pub retry: bool,
}

/// Parse `/wake/<namespace>/<endpoint>/<variant>[?retry=1]` (three DNS labels); `Err` says what
/// is wrong.
pub fn parse_wake_path(path: &str) -> Result<WakeCall<'_>, String> {
    let rest = path
        .strip_prefix(WAKE_PATH_PREFIX)
        .ok_or_else(|| format!("not a wake path: {path:?}"))?;
    let (names, query) = rest.split_once('?').unwrap_or((rest, ""));
    let parts: Vec<&str> = names.split('/').collect();
    let [namespace, endpoint, variant] = parts[..] else {
        return Err("expected /wake/<namespace>/<endpoint>/<variant>".to_owned());
    };
    for (what, name) in [
        ("namespace", namespace),
        ("endpoint", endpoint),
        ("variant", variant),
    ] {
        if !crate::is_dns_label(name) {
            return Err(format!("{what} {name:?} is not a DNS label"));
        }
    }
    Ok(WakeCall {
        namespace,
        endpoint,
        variant,
        retry: query.split('&').any(|q| q == "retry=1"),
    })
}
