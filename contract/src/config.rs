//! The JSON configuration of the filter (the `configuration` of the Envoy Wasm filter).
//! Written by the operator and local mode, read by the filter; defined only here.
//!
//! ```json
//! {"version": 1, "endpoints": [{"name": "titanic", "namespace": "default",
//!   "virtualHosts": ["titanic.example.com:80"], "routeKey": "k3y0f16ormorechars",
//!   "variants": [{"name": "a", "model": "titanic-v1", "weight": 80},
//!                {"name": "b", "model": "titanic-v2", "weight": 20}],
//!   "allocation": [{"variant": "a", "start": 0, "end": 8000},
//!                  {"variant": "b", "start": 8000, "end": 10000}],
//!   "routing": {"sticky": {"header": "x-user-id"}}}]}
//! ```
//! See `examples/filter-config.json` for every field.

use crate::allocation::{Allocation, AllocationError};
use crate::metrics::{COOKIE_PREFIX, DEFAULT_TARGET_HEADER};
use crate::rollout::RolloutSplit;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The only configuration version this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// Most variants one endpoint may have (the filter's bucket table stores a `u8` index).
pub const MAX_VARIANTS: usize = 64;

/// A configuration error, naming the field (`endpoints[0].variants[1].name`) and the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfig {
    /// Must be [`CONFIG_VERSION`].
    pub version: u32,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// The ModelEndpoint's name (metric label `endpoint`).
    pub name: String,
    /// The ModelEndpoint's namespace (metric label `namespace`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The Envoy virtual hosts serving this endpoint, by name (`xds.virtual_host_name`, in
    /// Istio `<host>:<port>`): the filter knows a request's endpoint by the route Envoy chose
    /// for it, never by a client-sent `:authority`, so every name and address the route
    /// answers to (FQDN, `name.ns`, ClusterIP, with or without port) gets the same assignment,
    /// and a same-named host elsewhere gets none.
    pub virtual_hosts: Vec<String>,
    /// A capability only the control plane and the filter know: the value of
    /// [`VARIANT_HEADER`](crate::metrics::VARIANT_HEADER) the routes match is
    /// [`routed_value`]`(variant, route_key)`, so a client that sends the header cannot
    /// pick a variant or model, whatever the filter's state (docs/filter.md).
    pub route_key: String,
    pub variants: Vec<VariantConfig>,
    /// Bucket ownership; must match the weights exactly (see [`Allocation`]).
    pub allocation: Allocation,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureConfig>,
}

/// Data capture: a sampled share of the endpoint's invocations (request and/or response) sent,
/// after the response, to the capture sink (`crate::capture`), never delaying or failing the
/// request: a full queue or a failing sink drops the record and counts it
/// ([`crate::metrics::CAPTURE_RECORDS_TOTAL`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureConfig {
    /// Envoy cluster of the sink.
    pub cluster: String,
    /// `:authority` of the calls (defaults to the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Share of invocations captured, 0..=100 (fractions allowed).
    pub percent: f64,
    /// Capture the request body.
    #[serde(default = "default_true")]
    pub request: bool,
    /// Capture the response body.
    #[serde(default = "default_true")]
    pub response: bool,
    /// Largest body captured; a larger one is recorded as skipped (`too_large`).
    #[serde(default = "default_capture_max_payload_bytes")]
    pub max_payload_bytes: u32,
    /// Content types captured (media type essences); others are recorded as skipped
    /// (`content_type`). Empty: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// Timeout of a call to the sink.
    #[serde(default = "default_capture_timeout_ms")]
    pub timeout_ms: u32,
}

/// Default largest captured body (`CaptureConfig::max_payload_bytes`).
pub const DEFAULT_CAPTURE_MAX_PAYLOAD_BYTES: u32 = 256 * 1024;
/// Default sink call timeout (`CaptureConfig::timeout_ms`).
pub const DEFAULT_CAPTURE_TIMEOUT_MS: u32 = 2000;
/// Largest `maxPayloadBytes` accepted: the filter holds up to two such bodies per captured
/// invocation in the VM until the sink has them.
pub const MAX_CAPTURE_PAYLOAD_BYTES: u32 = 4 * 1024 * 1024;

fn default_capture_max_payload_bytes() -> u32 {
    DEFAULT_CAPTURE_MAX_PAYLOAD_BYTES
}
fn default_capture_timeout_ms() -> u32 {
    DEFAULT_CAPTURE_TIMEOUT_MS
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariantConfig {
    /// Variant name: the value of `x-mlep-variant` and the DestinationRule subset.
    pub name: String,
    /// The Model serving this variant (metric label `model`).
    pub model: String,
    /// Percent of traffic, 0..=100; the weights of an endpoint sum to 100.
    pub weight: u32,
    /// During a rollout: the variant's buckets already moved to another model. On requests of
    /// this variant the filter sets [`MODEL_HEADER`](crate::metrics::MODEL_HEADER) to the new
    /// model for moved buckets and removes it otherwise (routes send marked requests to the new
    /// model), and counts moved requests under the new model's `model` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSplit>,
    /// The variant is scaled to zero (or about to be): the filter holds its requests, asks for
    /// a wake-up and lets each one go once the variant's servers answer (see [`WakeConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asleep: Option<crate::wake::WakeConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingConfig {
    /// Header clients use to pick a variant.
    #[serde(default = "default_target_header")]
    pub target_header: String,
    /// Whether clients may pick a variant at all.
    #[serde(default = "default_true")]
    pub allow_targeting: bool,
    /// What to do with a target naming no variant: reject with 400 (default) or ignore it.
    #[serde(default)]
    pub unknown_target: UnknownTarget,
    #[serde(default)]
    pub sticky: StickyConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            target_header: default_target_header(),
            allow_targeting: true,
            unknown_target: UnknownTarget::default(),
            sticky: StickyConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UnknownTarget {
    #[default]
    Reject,
    Ignore,
}

impl UnknownTarget {
    /// Every value (the CRD's schema lists them; see `mlep-core`'s `api_enum`).
    pub const ALL: [Self; 2] = [Self::Reject, Self::Ignore];
}

/// Where the user key comes from. The same type is the CRD's `spec.routing.sticky` (its doc
/// comments are what `kubectl explain` shows) and the filter's, so the operator copies it as is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyConfig {
    /// Header carrying the user key, e.g. `x-user-id`. Requests without it use the cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie the filter sets when a request has no key (default `mlep-<endpoint>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Cookie lifetime in seconds (default 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_max_age_seconds: Option<u64>,
}

/// Default sticky cookie lifetime: 30 days.
pub const DEFAULT_COOKIE_MAX_AGE_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowConfig {
    /// Envoy cluster the copies go to.
    pub cluster: String,
    /// `:authority` of the copies (defaults to the cluster name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The shadow Model (metric label `model`).
    pub model: String,
    /// Share of requests mirrored, 0..=100 (fractions allowed).
    pub percent: f64,
    /// Mirror only requests this variant's own model serves (a BlueGreen bake mirrors one
    /// variant's traffic to its green model and compares); default: every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Largest request body copied; larger bodies are not mirrored (counted as `outcome=skipped`).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
    /// Shadow call timeout.
    #[serde(default = "default_shadow_timeout_ms")]
    pub timeout_ms: u32,
    /// Copy `Authorization` and `Cookie` to the shadow (off by default).
    #[serde(default)]
    pub forward_credentials: bool,
    #[serde(default)]
    pub compare: CompareConfig,
    /// Each header route of the endpoint has a mirroring twin (matching
    /// [`mirror_twin`]`(routed value)`, copying every request it serves with Envoy's own
    /// mirror): a copy not drawn for comparison goes that way, the filter sends only the
    /// compared ones. The shadow's Envoy cluster then counts every copy's outcome (its stats
    /// are read under this shadow's metric names), so the filter counts only the copies it
    /// skips. Set by the wiring that renders the twins (`mlep_core::mirror`), never by users.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror_routes: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompareConfig {
    #[serde(default)]
    pub mode: CompareMode,
    /// Absolute numeric tolerance for `json` mode.
    #[serde(default)]
    pub tolerance: f64,
    /// Share of the mirrored copies compared, 0..=100 (fractions allowed; default 100). The
    /// others are sent and their outcome counted, but neither the primary's answer nor the
    /// shadow's is read. Left out of the JSON at 100, so a config that does not sample reads
    /// as it did before the field existed.
    #[serde(default = "every", skip_serializing_if = "is_every")]
    pub percent: f64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            mode: CompareMode::default(),
            tolerance: 0.0,
            percent: every(),
        }
    }
}

fn every() -> f64 {
    100.0
}

fn is_every(percent: &f64) -> bool {
    *percent == 100.0
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CompareMode {
    /// Only count shadow outcomes.
    #[default]
    Off,
    /// Responses agree when their bodies are byte-identical.
    Exact,
    /// Responses agree when they parse to the same JSON, numbers within `tolerance`.
    Json,
}

impl CompareMode {
    /// Every value (the CRD's schema lists them; see `mlep-core`'s `api_enum`).
    pub const ALL: [Self; 3] = [Self::Off, Self::Exact, Self::Json];
}

fn default_namespace() -> String {
    "default".into()
}
fn default_target_header() -> String {
    DEFAULT_TARGET_HEADER.into()
}
fn default_true() -> bool {
    true
}

/// Default largest request body mirrored to a shadow (`ShadowConfig::max_body_bytes`).
pub const DEFAULT_MAX_BODY_BYTES: u32 = 64 * 1024;
/// Most shadow copies queued or in flight: the filter's bound per VM (one per worker), and
/// on a cluster the circuit breakers (`max_requests`, `max_pending_requests`) of the shadow's
/// cluster, which count per proxy (all workers) and bound Envoy's native mirror and the
/// filter's copies alike.
pub const MAX_SHADOW_COPIES_IN_FLIGHT: u32 = 1024;
/// Default shadow call timeout (`ShadowConfig::timeout_ms`).
pub const DEFAULT_SHADOW_TIMEOUT_MS: u32 = 1000;
/// Most body bytes a filter VM (one per worker; the native build: one per config, shared by
/// the workers) holds for shadowing at a time: request copies not yet taken by Envoy, primary
/// answers and shadow answers awaiting their comparison.
/// Beyond it a copy is `skipped` or its comparison dropped (the filter's `shadow::Hub`).
pub const MAX_SHADOW_HUB_BYTES: u32 = 16 * 1024 * 1024;
/// Largest `maxBodyBytes` accepted. The cap applies to each of a compared copy's three
/// bodies (the request copied, the primary's answer, the shadow's answer), and the filter
/// holds all three in the VM until the comparison runs: at 4 MiB one copy of the largest
/// bodies needs 12 MiB, so it still fits the VM's [`MAX_SHADOW_HUB_BYTES`] whole, while a
/// larger cap would let a single sampled stream buffer up to 4 GiB (`u32::MAX`) and exhaust
/// the VM's memory. The same bound as data capture's ([`MAX_CAPTURE_PAYLOAD_BYTES`]).
pub const MAX_SHADOW_BODY_BYTES: u32 = 4 * 1024 * 1024;
const _: () = assert!(3 * MAX_SHADOW_BODY_BYTES as u64 <= MAX_SHADOW_HUB_BYTES as u64);

fn default_max_body_bytes() -> u32 {
    DEFAULT_MAX_BODY_BYTES
}
fn default_shadow_timeout_ms() -> u32 {
    DEFAULT_SHADOW_TIMEOUT_MS
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric, at
/// most 63 bytes. Variant names are subset names, label values and header values, so they
/// must be all three.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The punctuation RFC 7230 allows in a token (header names, and cookie names per RFC 6265).
const TOKEN_PUNCTUATION: &[u8] = b"!#$%&'*+-.^_`|~";

/// An HTTP header name as Envoy accepts it in lowercase: RFC 7230 token characters.
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || TOKEN_PUNCTUATION.contains(&c))
}

/// Shortest and longest [`EndpointConfig::route_key`]: at least 96 bits when random.
pub const ROUTE_KEY_MIN_LEN: usize = 16;
pub const ROUTE_KEY_MAX_LEN: usize = 128;

/// A route key: letters, digits, `-` and `_` (a header value and part of a route match).
pub fn is_route_key(s: &str) -> bool {
    (ROUTE_KEY_MIN_LEN..=ROUTE_KEY_MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The value of [`VARIANT_HEADER`](crate::metrics::VARIANT_HEADER) (or, for a rollout's moved
/// users, [`MODEL_HEADER`](crate::metrics::MODEL_HEADER)) on a request the filter assigned,
/// which the routes match: `<name>.<route_key>`. A route key has no `.`, so the value splits
/// unambiguously. The route puts the plain name back before the request leaves the proxy,
/// so a model never sees the key.
pub fn routed_value(name: &str, route_key: &str) -> String {
    format!("{name}.{route_key}")
}

/// Suffix of a mirroring twin's routed value and route name ([`mirror_twin`]).
pub const MIRROR_TWIN_SUFFIX: &str = ".mirror";

/// The routed value (or route name) of a header route's mirroring twin: the same route, plus
/// Envoy's mirror of every request it serves (see [`ShadowConfig::mirror_routes`]). A route
/// key has no `.`, so a twin's value matches no plain route's and no client can write either.
pub fn mirror_twin(routed: &str) -> String {
    format!("{routed}{MIRROR_TWIN_SUFFIX}")
}

/// A cookie name: RFC 6265 token characters (letters of either case, digits, token punctuation).
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || TOKEN_PUNCTUATION.contains(&c))
}

impl FilterConfig {
    /// Parse and validate; the error names the offending field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: FilterConfig = serde_json::from_slice(bytes).map_err(|e| {
            ConfigError::new(
                format!("line {} column {}", e.line(), e.column()),
                e.to_string(),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::new(
                "version",
                format!(
                    "unsupported version {}, this filter reads {CONFIG_VERSION}",
                    self.version
                ),
            ));
        }
        let mut vhosts = BTreeSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            ep.validate(&at)?;
            for h in &ep.virtual_hosts {
                if !vhosts.insert(h.as_str()) {
                    return Err(ConfigError::new(
                        format!("{at}.virtualHosts"),
                        format!("virtual host {h:?} is claimed by more than one endpoint"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl EndpointConfig {
    /// The sticky cookie name in effect.
    pub fn cookie_name(&self) -> String {
        self.routing
            .sticky
            .cookie
            .clone()
            .unwrap_or_else(|| format!("{COOKIE_PREFIX}{}", self.name))
    }

    /// The salt of the sticky hash: `namespace/name`.
    pub fn salt(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `(name, weight)` pairs in order, as the allocation functions take them.
    pub fn weights(&self) -> Vec<(&str, u32)> {
        self.variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect()
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
        }
        self.validate_hosts(at)?;
        self.validate_variants(at)?;
        self.allocation
            .validate(&self.weights())
            .map_err(|e: AllocationError| {
                ConfigError::new(format!("{at}.allocation"), e.to_string())
            })?;
        self.validate_rollouts(at)?;
        for (j, v) in self.variants.iter().enumerate() {
            if let Some(w) = &v.asleep {
                w.validate(&format!("{at}.variants[{j}].asleep"))?;
            }
        }
        self.validate_routing(at)?;
        if let Some(c) = &self.capture {
            c.validate(&format!("{at}.capture"))?;
        }
        if let Some(s) = &self.shadow {
            s.validate(&format!("{at}.shadow"))?;
            if let Some(v) = &s.variant {
                if !self.variants.iter().any(|x| x.name == *v) {
                    return Err(ConfigError::new(
                        format!("{at}.shadow.variant"),
                        format!("{v:?} is not a variant of this endpoint"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A rollout names another model and only buckets its variant owns.
    fn validate_rollouts(&self, at: &str) -> Result<(), ConfigError> {
        for (j, v) in self.variants.iter().enumerate() {
            let Some(r) = &v.rollout else { continue };
            let field = format!("{at}.variants[{j}].rollout");
            if r.model.is_empty() || r.model == v.model {
                return Err(ConfigError::new(
                    format!("{field}.model"),
                    format!("must name a model other than the variant's ({:?})", v.model),
                ));
            }
            crate::rollout::validate(&self.allocation, &v.name, &r.buckets)
                .map_err(|e| ConfigError::new(format!("{field}.buckets"), e.to_string()))?;
        }
        Ok(())
    }

    fn validate_hosts(&self, at: &str) -> Result<(), ConfigError> {
        if self.virtual_hosts.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.virtualHosts"),
                "must name at least one virtual host",
            ));
        }
        for (j, h) in self.virtual_hosts.iter().enumerate() {
            if h.is_empty()
                || h.bytes()
                    .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            {
                return Err(ConfigError::new(
                    format!("{at}.virtualHosts[{j}]"),
                    format!("{h:?} is not a virtual host name"),
                ));
            }
        }
        if !is_route_key(&self.route_key) {
            return Err(ConfigError::new(
                format!("{at}.routeKey"),
                format!(
                    "must be {ROUTE_KEY_MIN_LEN} to {ROUTE_KEY_MAX_LEN} letters, digits, `-` or `_`"
                ),
            ));
        }
        Ok(())
    }

    /// Names, models and weights (summing to 100).
    fn validate_variants(&self, at: &str) -> Result<(), ConfigError> {
        if self.variants.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.variants"),
                "must have at least one variant",
            ));
        }
        if self.variants.len() > MAX_VARIANTS {
            return Err(ConfigError::new(
                format!("{at}.variants"),
                format!("at most {MAX_VARIANTS} variants"),
            ));
        }
        let mut names = BTreeSet::new();
        let mut sum = 0u64;
        for (j, v) in self.variants.iter().enumerate() {
            if !is_dns_label(&v.name) {
                return Err(ConfigError::new(
                    format!("{at}.variants[{j}].name"),
                    format!(
                        "{:?} must be a DNS label (lowercase letters, digits, '-', at most 63)",
                        v.name
                    ),
                ));
            }
            if !names.insert(v.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.variants[{j}].name"),
                    format!("duplicate variant name {:?}", v.name),
                ));
            }
            if v.model.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.variants[{j}].model"),
                    "must not be empty",
                ));
            }
            if v.weight > 100 {
                return Err(ConfigError::new(
                    format!("{at}.variants[{j}].weight"),
                    format!("{} is over 100", v.weight),
                ));
            }
            sum += u64::from(v.weight);
        }
        if sum != 100 {
            return Err(ConfigError::new(
                format!("{at}.variants"),
                format!("weights sum to {sum}, must be 100"),
            ));
        }
        Ok(())
    }

    fn validate_routing(&self, at: &str) -> Result<(), ConfigError> {
        let r = &self.routing;
        if !is_header_name(&r.target_header) {
            return Err(ConfigError::new(
                format!("{at}.routing.targetHeader"),
                format!("{:?} is not a lowercase header name", r.target_header),
            ));
        }
        if let Some(h) = &r.sticky.header {
            if !is_header_name(h) {
                return Err(ConfigError::new(
                    format!("{at}.routing.sticky.header"),
                    format!("{h:?} is not a lowercase header name"),
                ));
            }
        }
        if !is_cookie_name(&self.cookie_name()) {
            return Err(ConfigError::new(
                format!("{at}.routing.sticky.cookie"),
                format!("{:?} is not a cookie name", self.cookie_name()),
            ));
        }
        Ok(())
    }
}

impl CaptureConfig {
    /// `at` is this capture's path, e.g. `endpoints[0].capture`.
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.cluster.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.cluster"),
                "must not be empty",
            ));
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(ConfigError::new(
                format!("{at}.percent"),
                format!("{} must be within 0..=100", self.percent),
            ));
        }
        if !(self.request || self.response) {
            return Err(ConfigError::new(
                format!("{at}.request"),
                "capture the request, the response or both",
            ));
        }
        if self.max_payload_bytes > MAX_CAPTURE_PAYLOAD_BYTES {
            return Err(ConfigError::new(
                format!("{at}.maxPayloadBytes"),
                format!(
                    "{} is over the limit of {MAX_CAPTURE_PAYLOAD_BYTES}",
                    self.max_payload_bytes
                ),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new(
                format!("{at}.timeoutMs"),
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl ShadowConfig {
    /// `at` is this shadow's path, e.g. `endpoints[0].shadow`.
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let s = self;
        if s.cluster.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.cluster"),
                "must not be empty",
            ));
        }
        if s.model.is_empty() {
            return Err(ConfigError::new(format!("{at}.model"), "must not be empty"));
        }
        if !(0.0..=100.0).contains(&s.percent) {
            return Err(ConfigError::new(
                format!("{at}.percent"),
                format!("{} must be within 0..=100", s.percent),
            ));
        }
        if s.max_body_bytes > MAX_SHADOW_BODY_BYTES {
            return Err(ConfigError::new(
                format!("{at}.maxBodyBytes"),
                format!(
                    "{} is over the limit of {MAX_SHADOW_BODY_BYTES}",
                    s.max_body_bytes
                ),
            ));
        }
        if s.timeout_ms == 0 {
            return Err(ConfigError::new(
                format!("{at}.timeoutMs"),
                "must be positive",
            ));
        }
        if !(s.compare.tolerance >= 0.0 && s.compare.tolerance.is_finite()) {
            return Err(ConfigError::new(
                format!("{at}.compare.tolerance"),
                "must be a finite number >= 0",
            ));
        }
        if !(0.0..=100.0).contains(&s.compare.percent) {
            return Err(ConfigError::new(
                format!("{at}.compare.percent"),
                format!("{} must be within 0..=100", s.compare.percent),
            ));
        }
        Ok(())
    }
}

/// The allocation for `weights`: carried forward from `previous` (only the buckets the weight
/// change demands move, see [`Allocation::rebalance`]) or laid out fresh
/// ([`Allocation::initial`]), so every writer of filter config derives allocations the same way.
pub fn carry_allocation(
    previous: Option<&Allocation>,
    weights: &[(&str, u32)],
) -> Result<Allocation, AllocationError> {
    match previous {
        Some(prev) => prev.rebalance(weights),
        None => Allocation::initial(weights),
    }
}

#[cfg(test)]
mod tests;
