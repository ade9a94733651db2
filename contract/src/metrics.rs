//! Names users and dashboards depend on: headers, cookies, metrics. One place, used by the
//! filter, the operator and local mode.

/// Set by the filter on the request (the routing key) and on the response.
pub const VARIANT_HEADER: &str = "x-mlep-variant";
/// Default header clients use to target a variant.
pub const DEFAULT_TARGET_HEADER: &str = "x-mlep-target-variant";
/// Prefix of the filter's sticky cookie; the full name is `mlep-<endpoint>`.
pub const COOKIE_PREFIX: &str = "mlep-";

/// Prometheus metric names (labels `endpoint, namespace, variant, model` plus the ones noted).
pub const REQUESTS_TOTAL: &str = "mlep_requests_total"; // + code_class
pub const REQUEST_DURATION_MS: &str = "mlep_request_duration_ms"; // histogram
pub const ASSIGNMENTS_TOTAL: &str = "mlep_assignments_total"; // + reason=sticky|target|random
pub const SHADOW_REQUESTS_TOTAL: &str = "mlep_shadow_requests_total"; // + outcome
pub const SHADOW_AGREEMENT_TOTAL: &str = "mlep_shadow_agreement_total"; // + result=match|mismatch
pub const CONFIG_ERRORS_TOTAL: &str = "mlep_config_errors_total";
