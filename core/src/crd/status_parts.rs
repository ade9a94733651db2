//! Smaller parts of `ModelEndpointStatus`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A variant on its way out: no request is assigned to it any more, but a proxy that has not
/// yet received the filter config without it may still send one, so its route stays until
/// `untilUnix`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiringVariant {
    /// Variant name.
    pub name: String,
    /// The model it served.
    pub model: String,
    /// When its route, subset and Deployment go (Unix seconds).
    pub until_unix: i64,
}

/// Printer-column text.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusSummary {
    /// e.g. `a=titanic-v1,b=titanic-v2`.
    pub variants: String,
    /// Current weights, e.g. `a=80,b=20`.
    pub weights: String,
    /// Ready replicas over desired, e.g. `3/3`.
    pub ready: String,
    /// Autoscaled variants: bounds, measured value and target, e.g. `b=1-10 4.2/5rps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<String>,
}
