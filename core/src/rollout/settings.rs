//! `spec.rollout` with every default filled in.

use crate::crd::{RolloutSpec, RolloutStrategy};

use super::DEFAULT_PROMETHEUS_URL;

/// `spec.rollout` with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub strategy: RolloutStrategy,
    pub step_seconds: i64,
    pub max_step_seconds: i64,
    pub canary_percent: u32,
    pub linear_step_percent: u32,
    pub shadow_percent: f64,
    pub bake_seconds: i64,
    pub termination_wait_seconds: i64,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_latency_ms: Option<f64>,
    pub min_agreement: Option<f64>,
    pub auto_rollback: bool,
    pub prometheus_url: String,
}

impl Settings {
    pub const DEFAULT_STEP_SECONDS: u32 = 60;
    pub const DEFAULT_CANARY_PERCENT: u32 = 10;
    pub const DEFAULT_LINEAR_STEP_PERCENT: u32 = 20;
    pub const DEFAULT_BAKE_SECONDS: u32 = 300;
    pub const DEFAULT_TERMINATION_WAIT_SECONDS: u32 = 300;
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;
    pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;

    pub fn of(spec: Option<&RolloutSpec>) -> Self {
        let d = RolloutSpec::default();
        let r = spec.unwrap_or(&d);
        let a = r.analysis.clone().unwrap_or_default();
        let bg = r.blue_green.clone().unwrap_or_default();
        let step = r.step_seconds.unwrap_or(Self::DEFAULT_STEP_SECONDS);
        Self {
            strategy: r.strategy.unwrap_or(RolloutStrategy::AllAtOnce),
            step_seconds: i64::from(step),
            max_step_seconds: i64::from(r.max_step_seconds.unwrap_or(step.saturating_mul(10))),
            canary_percent: r
                .canary
                .as_ref()
                .and_then(|c| c.percent)
                .unwrap_or(Self::DEFAULT_CANARY_PERCENT),
            linear_step_percent: r
                .linear
                .as_ref()
                .and_then(|l| l.step_percent)
                .unwrap_or(Self::DEFAULT_LINEAR_STEP_PERCENT),
            shadow_percent: bg.shadow_percent.unwrap_or(100.0),
            bake_seconds: i64::from(bg.bake_seconds.unwrap_or(Self::DEFAULT_BAKE_SECONDS)),
            termination_wait_seconds: i64::from(
                bg.termination_wait_seconds
                    .unwrap_or(Self::DEFAULT_TERMINATION_WAIT_SECONDS),
            ),
            min_requests: a.min_requests.unwrap_or(Self::DEFAULT_MIN_REQUESTS),
            max_error_rate: a.max_error_rate.unwrap_or(Self::DEFAULT_MAX_ERROR_RATE),
            max_p99_latency_ms: a.max_p99_latency_ms,
            min_agreement: a.min_agreement,
            auto_rollback: r.auto_rollback.unwrap_or(true),
            prometheus_url: a
                .prometheus_url
                .unwrap_or_else(|| DEFAULT_PROMETHEUS_URL.to_owned()),
        }
    }

    /// Percent of the variant's users on the new model after `step` steps (100: promote).
    pub(super) fn percent_at(&self, step: u32) -> u32 {
        match self.strategy {
            RolloutStrategy::AllAtOnce => 100,
            RolloutStrategy::Canary => {
                if step <= 1 {
                    self.canary_percent.min(100)
                } else {
                    100
                }
            }
            RolloutStrategy::Linear => self.linear_step_percent.saturating_mul(step).min(100),
            RolloutStrategy::BlueGreen => {
                if step <= 1 {
                    0
                } else {
                    100
                }
            }
        }
    }
}
