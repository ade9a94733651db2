//! The rollout state persisted in `status.rollout` (and local mode's state file): plain types
//! at the bottom of the crate, read by the CRD and written by the rollout machine
//! (`crate::rollout`).

use mlep_contract::rollout::Span;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rollout phases (`status.rollout.phase`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// No rollout has run since the strategy was set.
    #[default]
    Idle,
    /// Users are moving step by step (or wait for the new model to be ready).
    Progressing,
    /// BlueGreen: the new model receives mirrored traffic and is compared.
    Baking,
    /// Every user is on the new model (BlueGreen: the old one may still run for
    /// `terminationWaitSeconds`).
    Promoted,
    /// A check failed; every user is back on the old model.
    RolledBack,
    /// Stopped by `mlep.dev/rollout: abort` or superseded by another spec edit; every user is
    /// back on the old model.
    Aborted,
}

/// One judged check.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    /// `maxErrorRate`, `maxP99LatencyMs`, `minAgreement`, `minRequests` or `analysis`.
    pub check: String,
    /// The measured value.
    pub value: f64,
    /// The configured limit.
    pub limit: f64,
    pub passed: bool,
}

/// The state of a variant's rollout, persisted in the endpoint status (and local mode's state
/// file); the machine resumes from it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub phase: Phase,
    /// The variant whose model changes.
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub from_model: String,
    #[serde(default)]
    pub to_model: String,
    /// Steps taken; 0 while the new model is not ready yet.
    #[serde(default)]
    pub step: u32,
    /// Percent of the variant's users on the new model.
    #[serde(default)]
    pub moved_percent: u32,
    /// `movedPercent` as text, for `kubectl get mle` (e.g. `30%`).
    #[serde(default)]
    pub moved: String,
    /// The variant's buckets on the new model (do not edit: a restart resumes from them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_buckets: Vec<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// When the rollout started (RFC 3339).
    #[serde(default)]
    pub started_at: String,
    /// When the current step (bake, termination wait) started, in Unix seconds; absent while
    /// the new model is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_unix: Option<i64>,
    /// When the route to the new model goes live and users may move (Unix seconds): a few
    /// seconds after its first ready pod, so the proxies have its subset's cluster and
    /// endpoints before any route names them (make before break); absent while it is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_from_unix: Option<i64>,
    /// BlueGreen after the switch: when the old model is removed, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_model_until_unix: Option<i64>,
    /// After a rollback or abort: until when (Unix seconds) the route to the new model and
    /// its pods stay, so proxies still holding the previous filter config find them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until_unix: Option<i64>,
    /// Held by `mlep.dev/rollout: pause` (or a failed check without `autoRollback`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// What happens now, or why it ended.
    #[serde(default)]
    pub message: String,
}

impl RolloutStatus {
    /// Whether the rollout still runs: users moving, a bake, or a BlueGreen switch keeping the
    /// old model.
    pub fn active(&self) -> bool {
        matches!(self.phase, Phase::Progressing | Phase::Baking)
            || (self.phase == Phase::Promoted && self.old_model_until_unix.is_some())
    }
}
