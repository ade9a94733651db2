//! Progressive delivery of a variant's model change: one pure state machine, driven by the
//! operator (reconcile, requeued at the next step) and by local mode (its watch loop).
//!
//! `(settings, spec variants, last rollout status, readiness, allocation, command, now,
//! analysis sample) -> (new status, split, mirror, models to run, requeue)`. No clock, no
//! metrics client: the caller passes `now` and asks an [`AnalysisSource`] for the sample
//! [`query`] names, then calls [`advance`] ([`drive`] does both).
//!
//! Rules (each has a test below):
//! - a rollout starts when a variant's spec model differs from the model it serves and the
//!   strategy is not `AllAtOnce`; nothing moves until the new model is ready, and moved users
//!   are withheld from it whenever it is not;
//! - the moved set only grows (see `mlep_contract::rollout::grow`) and is persisted in the
//!   status, so a restart resumes without moving anyone twice; a rollback or abort empties it;
//! - a step is judged once `minRequests` requests of the new model were seen in it: a failed
//!   check rolls back at once (or holds, without `autoRollback`); a step passes after
//!   `stepSeconds` (`bakeSeconds` for a BlueGreen bake); too few requests wait, up to
//!   `maxStepSeconds`, then fail;
//! - a spec edit naming another model aborts the running rollout first (one call), the next
//!   call starts the new one;
//! - `mlep.dev/rollout: abort|promote|pause|resume` act while present.

use crate::crd::{ModelEndpointSpec, RolloutSpec, RolloutStrategy};
use crate::plan::{Observed, Plan};
use crate::validate::SpecError;
use mlep_contract::rollout::{self as split, RolloutSplit, Span};
use mlep_contract::Allocation;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation an operator of the service intervenes with.
pub const ANNOTATION: &str = "mlep.dev/rollout";
/// How long the route to a rolled-back model (and its pods) outlives the split that used it:
/// filter config reaches proxies asynchronously (istiod's push, local mode's ECDS reload), and a
/// proxy still marking users must find a route and a pod.
pub const DRAIN_SECONDS: i64 = 15;
/// Where the operator finds Prometheus unless `analysis.prometheusUrl` says otherwise: the
/// Service of Istio's Prometheus add-on (`samples/addons/prometheus.yaml`).
pub const DEFAULT_PROMETHEUS_URL: &str = "http://prometheus.istio-system.svc:9090";

/// Check names, as `lastAnalysis.check` and in messages.
pub mod checks {
    pub const ERROR_RATE: &str = "maxErrorRate";
    pub const P99_LATENCY: &str = "maxP99LatencyMs";
    pub const AGREEMENT: &str = "minAgreement";
    pub const MIN_REQUESTS: &str = "minRequests";
    pub const ANALYSIS: &str = "analysis";
}

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
    fn active(&self) -> bool {
        matches!(self.phase, Phase::Progressing | Phase::Baking)
            || (self.phase == Phase::Promoted && self.old_model_until_unix.is_some())
    }
}

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
    fn percent_at(&self, step: u32) -> u32 {
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

/// An intervention, from the [`ANNOTATION`] value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Return every user to the old model and stop.
    Abort,
    /// Move everyone to the new model now, skipping the remaining steps.
    Promote,
    /// Hold the current step (checks still run and still roll back).
    Pause,
    /// Continue (the same as no annotation).
    Resume,
}

impl Command {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "abort" => Ok(Self::Abort),
            "promote" => Ok(Self::Promote),
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume),
            other => Err(format!(
                "{ANNOTATION}: {other:?} is not one of abort, promote, pause, resume (ignored)"
            )),
        }
    }
}

/// The clock, injected: Unix seconds and the same instant as RFC 3339 text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Now {
    pub unix: i64,
    pub text: String,
}

/// Which traffic of the new model a step judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Requests it served (`mlep_requests_total`, `mlep_request_duration_ms`).
    Served,
    /// Mirrored copies (`mlep_shadow_requests_total`, `mlep_shadow_agreement_total`).
    Mirrored,
}

/// What to measure: the new model's traffic on one variant since the step started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub endpoint: String,
    pub namespace: String,
    pub variant: String,
    pub model: String,
    pub traffic: Traffic,
    pub since_unix: i64,
    pub now_unix: i64,
}

/// What was measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    /// 5xx answers (mirrored: errors and timeouts).
    pub errors: u64,
    pub p99_ms: Option<f64>,
    /// Mirrored answers compared with the primary's, and how many agreed.
    pub compared: u64,
    pub agreed: u64,
}

/// Where samples come from: local mode's Envoy stats, the operator's Prometheus, a fake in
/// tests.
pub trait AnalysisSource {
    fn sample(&mut self, query: &Query) -> Result<Sample, String>;
}

/// Everything the machine reads.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub endpoint: &'a str,
    pub namespace: &'a str,
    pub settings: &'a Settings,
    /// `(variant, spec model)` in spec order.
    pub variants: Vec<(&'a str, &'a str)>,
    /// `(variant, model it served at the last reconcile)`; empty for a new endpoint.
    pub serving: Vec<(&'a str, &'a str)>,
    /// `(variant, model)` pairs with a ready replica.
    pub ready: Vec<(&'a str, &'a str)>,
    /// The bucket allocation routing now.
    pub allocation: &'a Allocation,
    pub last: Option<&'a RolloutStatus>,
    pub command: Option<Command>,
    pub now: Now,
}

impl Input<'_> {
    fn desired(&self, variant: &str) -> Option<&str> {
        self.variants
            .iter()
            .find(|(v, _)| *v == variant)
            .map(|(_, m)| *m)
    }

    fn serving_of(&self, variant: &str) -> Option<&str> {
        self.serving
            .iter()
            .find(|(v, _)| *v == variant)
            .map(|(_, m)| *m)
    }

    fn is_ready(&self, variant: &str, model: &str) -> bool {
        self.ready.iter().any(|(v, m)| *v == variant && *m == model)
    }
}

/// A mirror of one variant's traffic to its new model (BlueGreen bake).
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub variant: String,
    pub model: String,
    pub percent: f64,
}

impl Mirror {
    /// The filter's shadow entry for this bake: copies of the variant's traffic to `cluster`
    /// (the new model's servers), compared as JSON with the default tolerance. Local mode and
    /// the operator differ only in the cluster and authority.
    pub fn shadow_config(&self, cluster: String, authority: String) -> mlep_contract::ShadowConfig {
        use crate::filter_config::DEFAULT_TOLERANCE;
        use mlep_contract::config::{DEFAULT_MAX_BODY_BYTES, DEFAULT_SHADOW_TIMEOUT_MS};
        mlep_contract::ShadowConfig {
            cluster,
            authority: Some(authority),
            model: self.model.clone(),
            percent: self.percent,
            variant: Some(self.variant.clone()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            timeout_ms: DEFAULT_SHADOW_TIMEOUT_MS,
            forward_credentials: false,
            compare: mlep_contract::CompareConfig {
                mode: mlep_contract::CompareMode::Json,
                tolerance: DEFAULT_TOLERANCE,
            },
        }
    }
}

/// What the driver applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The status to persist (`None`: no rollout ever ran and no strategy asks for one).
    pub status: Option<RolloutStatus>,
    /// `(variant, model)`: the model the variant's own route serves, overriding planning's
    /// ready-then-switch for that variant.
    pub serving: Option<(String, String)>,
    /// `(variant, split)` for the filter config.
    pub split: Option<(String, RolloutSplit)>,
    pub mirror: Option<Mirror>,
    /// `(variant, models)`: exactly the models that must run for the rollout's variant.
    pub models: Option<(String, Vec<String>)>,
    /// Call again after this many seconds (the next step, or the next look at the analysis).
    pub requeue_after_seconds: Option<i64>,
    /// `(reason, message)` for a `Degraded=True` condition: the spec's model does not serve.
    pub degraded: Option<(&'static str, String)>,
    /// `(variant, model)` that needs its own route and subset now: the rollout's new model
    /// while a split or mirror names it or while a rollback drains.
    pub route: Option<(String, String)>,
}

/// The sample a call of [`advance`] with `input` needs, if any.
pub fn query(input: &Input) -> Option<Query> {
    let r = input.last.filter(|r| r.active())?;
    let since = r.step_started_unix?;
    Some(Query {
        endpoint: input.endpoint.to_owned(),
        namespace: input.namespace.to_owned(),
        variant: r.variant.clone(),
        model: r.to_model.clone(),
        traffic: if r.phase == Phase::Baking {
            Traffic::Mirrored
        } else {
            Traffic::Served
        },
        since_unix: since,
        now_unix: input.now.unix,
    })
}

/// [`query`], ask `source`, [`advance`].
pub fn drive(input: &Input, source: &mut dyn AnalysisSource) -> Outcome {
    let sample = query(input).map(|q| source.sample(&q));
    advance(input, sample)
}

/// One step of the machine.
pub fn advance(input: &Input, sample: Option<Result<Sample, String>>) -> Outcome {
    let s = input.settings;
    let last = input.last.cloned();
    let mut r = match last {
        Some(r) if r.active() => r,
        previous => match start(input, previous.as_ref()) {
            Ok(r) => r,
            Err(outcome) => return *outcome,
        },
    };
    let desired = input.desired(&r.variant).map(str::to_owned);
    // A spec edit away from the rollout's target (another model, the old one back, or the
    // variant gone) ends it first; the next call starts whatever the spec asks for now.
    if desired.as_deref() != Some(r.to_model.as_str()) {
        if r.phase == Phase::Promoted {
            // Already switched: the target serves; the old model goes now.
            r.old_model_until_unix = None;
            r.message = format!("{} serves; its old model is removed", r.to_model);
            return finish(r);
        }
        let why = match &desired {
            Some(m) => format!("spec now names {m}"),
            None => "the variant was removed".to_owned(),
        };
        return end(input, r, Phase::Aborted, why);
    }
    if input.command == Some(Command::Abort) {
        return end(input, r, Phase::Aborted, format!("{ANNOTATION}=abort"));
    }
    r.paused = input.command == Some(Command::Pause);
    if !input.is_ready(&r.variant, &r.to_model) {
        if r.phase == Phase::Promoted {
            // The new model lost its pods after the switch while the old one still runs.
            let why = format!("{} has no ready pod", r.to_model);
            return end(input, r, Phase::RolledBack, why);
        }
        // Nothing is routed to a model that is not ready: the moved users wait on the old
        // model (the split is withheld, not forgotten) and the step starts over once it is.
        r.step_started_unix = None;
        r.message = format!("waiting for {} to have a ready pod", r.to_model);
        return emit(input, r, false, Some(s.step_seconds.min(10)));
    }
    if input.command == Some(Command::Promote) && r.phase != Phase::Promoted {
        return promote(input, r, format!("{ANNOTATION}=promote"));
    }
    if r.phase != Phase::Promoted && split::owned(input.allocation, &r.variant).is_empty() {
        // Weight 0: no user to move and no traffic to judge.
        return promote(input, r, "the variant has no users (weight 0)".to_owned());
    }
    if r.step == 0 || r.step_started_unix.is_none() {
        r.step = r.step.max(1);
        r.step_started_unix = Some(input.now.unix);
        return step_to(input, r);
    }
    let since = r.step_started_unix.unwrap_or(input.now.unix);
    let elapsed = input.now.unix - since;
    if r.phase == Phase::Promoted {
        return after_switch(input, r, sample);
    }
    let judged = judge(s, r.phase, sample, elapsed);
    r.last_analysis = judged.result.clone();
    match judged.verdict {
        Verdict::Fail(message) => fail(input, r, message),
        Verdict::Wait(message) => {
            r.message = message;
            let left = (s.max_step_seconds - elapsed).max(1);
            emit(input, r, true, Some(left.min(10)))
        }
        Verdict::Pass => {
            let length = if r.phase == Phase::Baking {
                s.bake_seconds
            } else {
                s.step_seconds
            };
            if r.paused || elapsed < length {
                r.message = if r.paused {
                    format!("paused by {ANNOTATION}=pause at step {}", r.step)
                } else {
                    format!("step {}: checks pass; the step lasts {length}s", r.step)
                };
                let next = (length - elapsed).clamp(1, 10);
                return emit(input, r, true, Some(next));
            }
            r.step += 1;
            r.step_started_unix = Some(input.now.unix);
            r.last_analysis = None;
            step_to(input, r)
        }
    }
}

/// A new rollout for the first variant whose spec model differs from the one it serves, or
/// the outcome when there is none to start.
fn start(input: &Input, previous: Option<&RolloutStatus>) -> Result<RolloutStatus, Box<Outcome>> {
    let s = input.settings;
    let idle = || {
        let status = match previous {
            Some(p) => Some(p.clone()),
            None if s.strategy != RolloutStrategy::AllAtOnce => Some(RolloutStatus::default()),
            None => None,
        };
        let degraded = previous.and_then(|p| held_back(input, p));
        // A rollout that ended short of its target keeps the variant on its old model while
        // the spec still names the new one, and drains the route to the new one.
        let ended_short = previous.filter(|p| {
            matches!(p.phase, Phase::RolledBack | Phase::Aborted)
                && (degraded.is_some() || p.drain_until_unix.is_some_and(|t| input.now.unix < t))
        });
        let mut out = match ended_short {
            Some(p) => ended(input, p, degraded),
            None => Outcome::default(),
        };
        out.status = status;
        Box::new(out)
    };
    if s.strategy == RolloutStrategy::AllAtOnce {
        return Err(idle());
    }
    let changing = input.variants.iter().find_map(|(v, m)| {
        input
            .serving_of(v)
            .filter(|serving| serving != m)
            .map(|serving| (*v, serving, *m))
    });
    let Some((variant, from, to)) = changing else {
        return Err(idle());
    };
    // A rollout that ended without reaching its target is not retried by itself: the spec
    // must name another model (or name the old one, then this one again).
    if let Some(p) = previous {
        if matches!(p.phase, Phase::RolledBack | Phase::Aborted)
            && (
                p.variant.as_str(),
                p.from_model.as_str(),
                p.to_model.as_str(),
            ) == (variant, from, to)
            && input.command != Some(Command::Promote)
        {
            return Err(idle());
        }
    }
    let r = RolloutStatus {
        phase: if s.strategy == RolloutStrategy::BlueGreen {
            Phase::Baking
        } else {
            Phase::Progressing
        },
        variant: variant.to_owned(),
        from_model: from.to_owned(),
        to_model: to.to_owned(),
        started_at: input.now.text.clone(),
        message: format!("waiting for {to} to have a ready pod"),
        ..RolloutStatus::default()
    };
    Ok(r)
}

/// A rollback or abort that left the variant on its old model while the spec still names the
/// new one.
fn held_back(input: &Input, p: &RolloutStatus) -> Option<(&'static str, String)> {
    use crate::crd::conditions::{REASON_ABORTED, REASON_ROLLED_BACK};
    let reason = match p.phase {
        Phase::RolledBack => REASON_ROLLED_BACK,
        Phase::Aborted => REASON_ABORTED,
        _ => return None,
    };
    (input.desired(&p.variant) == Some(p.to_model.as_str())
        && input.serving_of(&p.variant) == Some(p.from_model.as_str()))
    .then(|| (reason, p.message.clone()))
}

/// Enter step `r.step`: grow the moved set to the step's share, or promote at 100%.
fn step_to(input: &Input, mut r: RolloutStatus) -> Outcome {
    let s = input.settings;
    let percent = s.percent_at(r.step);
    if percent >= 100 {
        let why = match r.step {
            0 | 1 => "the first step moves everyone".to_owned(),
            n => format!("step {} passed", n - 1),
        };
        return promote(input, r, why);
    }
    let target = split::target_for(input.allocation, &r.variant, percent);
    r.moved_buckets = split::grow(input.allocation, &r.variant, &r.moved_buckets, target);
    r.message = if r.phase == Phase::Baking {
        format!(
            "baking {} on {}% of {}'s traffic, mirrored",
            r.to_model, s.shadow_percent, r.variant
        )
    } else {
        format!(
            "step {}: {}% of {}'s users on {}",
            r.step, percent, r.variant, r.to_model
        )
    };
    let next = s.step_seconds.min(10);
    emit(input, r, true, Some(next))
}

/// Everyone to the new model. BlueGreen keeps the old model for `terminationWaitSeconds`.
fn promote(input: &Input, mut r: RolloutStatus, why: String) -> Outcome {
    let s = input.settings;
    r.phase = Phase::Promoted;
    r.paused = false;
    r.moved_buckets.clear();
    r.step_started_unix = Some(input.now.unix);
    if input.settings.strategy == RolloutStrategy::BlueGreen && s.termination_wait_seconds > 0 {
        r.old_model_until_unix = Some(input.now.unix + s.termination_wait_seconds);
        r.message = format!(
            "{why}: every user on {}; {} keeps running {}s for an instant rollback",
            r.to_model, r.from_model, s.termination_wait_seconds
        );
        let next = s.termination_wait_seconds.min(10);
        return emit(input, r, true, Some(next));
    }
    r.old_model_until_unix = None;
    r.message = format!("{why}: every user on {}", r.to_model);
    finish(r)
}

/// BlueGreen after the switch: the new model serves everyone; its own traffic is still judged
/// until the old model goes.
fn after_switch(
    input: &Input,
    mut r: RolloutStatus,
    sample: Option<Result<Sample, String>>,
) -> Outcome {
    let s = input.settings;
    // Only a failing check counts here: too few requests or an unreachable source simply
    // let the wait run out (the switch already happened).
    let judged = judge(s, Phase::Promoted, sample, 0);
    if let Verdict::Fail(message) = judged.verdict {
        r.last_analysis = judged.result;
        return fail(input, r, message);
    }
    let until = r.old_model_until_unix.unwrap_or(input.now.unix);
    if input.now.unix >= until {
        r.old_model_until_unix = None;
        r.message = format!("every user on {}; {} removed", r.to_model, r.from_model);
        return finish(r);
    }
    let left = until - input.now.unix;
    emit(input, r, true, Some(left.clamp(1, 10)))
}

/// A failed check: roll back, or hold without `autoRollback`.
fn fail(input: &Input, mut r: RolloutStatus, message: String) -> Outcome {
    if input.settings.auto_rollback {
        return end(input, r, Phase::RolledBack, message);
    }
    r.paused = true;
    r.message =
        format!("{message}; holding (autoRollback is off): set {ANNOTATION} to promote or abort");
    emit(input, r, true, Some(10))
}

/// Rolled back or aborted: every user back on the old model, the new model stopped.
fn end(input: &Input, mut r: RolloutStatus, phase: Phase, why: String) -> Outcome {
    r.phase = phase;
    r.paused = false;
    r.moved_buckets.clear();
    r.step_started_unix = None;
    r.old_model_until_unix = None;
    let verb = if phase == Phase::RolledBack {
        "rolled back"
    } else {
        "aborted"
    };
    r.message = format!(
        "{verb} {} from {} to {}: {why}; every user is on {}",
        r.variant, r.to_model, r.from_model, r.from_model
    );
    r.drain_until_unix = Some(input.now.unix + DRAIN_SECONDS);
    set_moved(input, &mut r);
    let degraded = held_back_after_end(input, &r);
    let mut out = ended(input, &r, degraded);
    out.requeue_after_seconds = Some(1);
    out.status = Some(r);
    out
}

/// The outcome of a rollout that ended short of its target: the variant on its old model;
/// the new model's route and pods only while the rollback drains.
fn ended(input: &Input, r: &RolloutStatus, degraded: Option<(&'static str, String)>) -> Outcome {
    let draining = r.drain_until_unix.is_some_and(|t| input.now.unix < t)
        && input.is_ready(&r.variant, &r.to_model);
    let mut models = vec![r.from_model.clone()];
    if draining {
        models.push(r.to_model.clone());
    }
    Outcome {
        serving: Some((r.variant.clone(), r.from_model.clone())),
        models: Some((r.variant.clone(), models)),
        degraded,
        route: draining.then(|| (r.variant.clone(), r.to_model.clone())),
        requeue_after_seconds: r
            .drain_until_unix
            .map(|t| t - input.now.unix)
            .filter(|left| *left > 0),
        ..Outcome::default()
    }
}

fn held_back_after_end(input: &Input, r: &RolloutStatus) -> Option<(&'static str, String)> {
    use crate::crd::conditions::{REASON_ABORTED, REASON_ROLLED_BACK};
    let reason = if r.phase == Phase::RolledBack {
        REASON_ROLLED_BACK
    } else {
        REASON_ABORTED
    };
    (input.desired(&r.variant) == Some(r.to_model.as_str())).then(|| (reason, r.message.clone()))
}

/// The rollout is over with the new model serving alone.
fn finish(mut r: RolloutStatus) -> Outcome {
    r.phase = Phase::Promoted;
    r.paused = false;
    r.moved_buckets.clear();
    r.step_started_unix = None;
    r.moved_percent = 100;
    r.moved = "100%".into();
    Outcome {
        serving: Some((r.variant.clone(), r.to_model.clone())),
        models: Some((r.variant.clone(), vec![r.to_model.clone()])),
        status: Some(r),
        ..Outcome::default()
    }
}

fn set_moved(input: &Input, r: &mut RolloutStatus) {
    r.moved_percent = if r.phase == Phase::Promoted {
        100
    } else {
        split::percent(input.allocation, &r.variant, &r.moved_buckets)
    };
    r.moved = format!("{}%", r.moved_percent);
}

/// The outcome of a running rollout. `routable`: the new model is ready (the split and the
/// mirror may name it).
fn emit(input: &Input, mut r: RolloutStatus, routable: bool, requeue: Option<i64>) -> Outcome {
    // The variant's buckets may have changed with a weight edit: keep only those it owns.
    r.moved_buckets = split::grow(input.allocation, &r.variant, &r.moved_buckets, 0);
    set_moved(input, &mut r);
    let (serving, models) = if r.phase == Phase::Promoted {
        (
            r.to_model.clone(),
            vec![r.to_model.clone(), r.from_model.clone()],
        )
    } else {
        (
            r.from_model.clone(),
            vec![r.from_model.clone(), r.to_model.clone()],
        )
    };
    let split = (routable && !r.moved_buckets.is_empty()).then(|| {
        (
            r.variant.clone(),
            RolloutSplit {
                model: r.to_model.clone(),
                buckets: r.moved_buckets.clone(),
            },
        )
    });
    let route =
        (routable && r.phase != Phase::Promoted).then(|| (r.variant.clone(), r.to_model.clone()));
    let mirror = (routable && r.phase == Phase::Baking).then(|| Mirror {
        variant: r.variant.clone(),
        model: r.to_model.clone(),
        percent: input.settings.shadow_percent,
    });
    Outcome {
        serving: Some((r.variant.clone(), serving)),
        models: Some((r.variant.clone(), models)),
        split,
        mirror,
        requeue_after_seconds: requeue,
        status: Some(r),
        degraded: None,
        route,
    }
}

enum Verdict {
    Pass,
    Wait(String),
    Fail(String),
}

struct Judged {
    verdict: Verdict,
    result: Option<AnalysisResult>,
}

fn result(check: &str, value: f64, limit: f64, passed: bool) -> Option<AnalysisResult> {
    Some(AnalysisResult {
        check: check.to_owned(),
        value,
        limit,
        passed,
    })
}

/// Judge a step's sample: the first failing check, else wait for enough requests, else pass.
fn judge(
    s: &Settings,
    phase: Phase,
    sample: Option<Result<Sample, String>>,
    elapsed: i64,
) -> Judged {
    let overdue = elapsed >= s.max_step_seconds;
    let sample = match sample {
        Some(Ok(x)) => x,
        Some(Err(e)) if overdue => {
            return Judged {
                verdict: Verdict::Fail(format!(
                    "analysis failed for {elapsed}s (maxStepSeconds {}): {e}",
                    s.max_step_seconds
                )),
                result: result(checks::ANALYSIS, 0.0, 0.0, false),
            }
        }
        Some(Err(e)) => {
            return Judged {
                verdict: Verdict::Wait(format!("analysis unavailable, retrying: {e}")),
                result: None,
            }
        }
        None => Sample::default(),
    };
    let min = s.min_requests as f64;
    if sample.requests < s.min_requests {
        let value = sample.requests as f64;
        if overdue {
            return Judged {
                verdict: Verdict::Fail(format!(
                    "{}: {} requests in {elapsed}s, below {} (maxStepSeconds {})",
                    checks::MIN_REQUESTS,
                    sample.requests,
                    s.min_requests,
                    s.max_step_seconds
                )),
                result: result(checks::MIN_REQUESTS, value, min, false),
            };
        }
        return Judged {
            verdict: Verdict::Wait(format!(
                "waiting for requests: {} of {} seen in this step",
                sample.requests, s.min_requests
            )),
            result: result(checks::MIN_REQUESTS, value, min, false),
        };
    }
    let rate = sample.errors as f64 / sample.requests.max(1) as f64;
    let mut judged = vec![(
        checks::ERROR_RATE,
        rate,
        s.max_error_rate,
        rate <= s.max_error_rate,
    )];
    if phase != Phase::Baking {
        if let (Some(limit), Some(p99)) = (s.max_p99_latency_ms, sample.p99_ms) {
            judged.push((checks::P99_LATENCY, p99, limit, p99 <= limit));
        }
    } else if let Some(limit) = s.min_agreement {
        if sample.compared > 0 {
            let agreement = sample.agreed as f64 / sample.compared as f64;
            judged.push((checks::AGREEMENT, agreement, limit, agreement >= limit));
        }
    }
    let failed = judged.iter().find(|(_, _, _, ok)| !ok);
    let shown = failed.or(judged.last()).copied();
    let result = shown.and_then(|(c, v, l, ok)| result(c, v, l, ok));
    match failed {
        Some((check, value, limit, _)) => Judged {
            verdict: Verdict::Fail(format!(
                "{check}: measured {} against a limit of {} over {} requests",
                round4(*value),
                limit,
                sample.requests
            )),
            result,
        },
        None => Judged {
            verdict: Verdict::Pass,
            result,
        },
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// What rendering needs of a rollout (carried on the [`Plan`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    pub variant: String,
    /// Models whose Deployments run for the variant (replaces planning's choice).
    pub models: Option<Vec<String>>,
    /// The filter split of the variant.
    pub split: Option<RolloutSplit>,
    /// The BlueGreen bake's mirror.
    pub mirror: Option<Mirror>,
    /// The model with its own subset and route (`x-mlep-variant` + `x-mlep-model`).
    pub route_model: Option<String>,
}

/// What a persisted rollout asks of the filter, with the model the variant's own entry serves:
/// the split while users are moved and, while a BlueGreen bakes, the mirror. The shared filter
/// objects are rebuilt from every endpoint's spec and status (see `crate::aggregate`), so they
/// carry a running rollout exactly as the reconcile that wrote the status rendered it.
pub fn served_plan(spec: Option<&RolloutSpec>, r: &RolloutStatus) -> Option<(RolloutPlan, String)> {
    if !r.active() || r.variant.is_empty() {
        return None;
    }
    let promoted = r.phase == Phase::Promoted;
    let serving = if promoted { &r.to_model } else { &r.from_model };
    // Users move (and green is mirrored) only once the new model was ready: the step clock runs.
    let routable = r.step_started_unix.is_some() || !r.moved_buckets.is_empty();
    let split = (routable && !promoted && !r.moved_buckets.is_empty()).then(|| RolloutSplit {
        model: r.to_model.clone(),
        buckets: r.moved_buckets.clone(),
    });
    let mirror = (routable && r.phase == Phase::Baking).then(|| Mirror {
        variant: r.variant.clone(),
        model: r.to_model.clone(),
        percent: Settings::of(spec).shadow_percent,
    });
    let plan = RolloutPlan {
        variant: r.variant.clone(),
        models: None,
        split,
        mirror,
        route_model: (routable && !promoted).then(|| r.to_model.clone()),
    };
    Some((plan, serving.clone()))
}

/// Put `outcome` on `plan`: the variant's serving model (and its readiness), and what the
/// renderer adds for the rollout. A no-op for an empty outcome.
pub fn apply(plan: &mut Plan, outcome: &Outcome, observed: &Observed) {
    if let Some((variant, model)) = &outcome.serving {
        if let Some(vp) = plan.variants.iter_mut().find(|v| v.name == *variant) {
            vp.serving_model = model.clone();
            vp.ready = observed
                .deployments
                .get(&(variant.clone(), model.clone()))
                .is_some_and(|r| r.ready_replicas > 0);
        }
    }
    let variant = outcome
        .models
        .as_ref()
        .map(|(v, _)| v)
        .or(outcome.split.as_ref().map(|(v, _)| v))
        .or(outcome.route.as_ref().map(|(v, _)| v))
        .or(outcome.mirror.as_ref().map(|m| &m.variant));
    plan.rollout = variant.map(|v| RolloutPlan {
        variant: v.clone(),
        models: outcome.models.as_ref().map(|(_, m)| m.clone()),
        split: outcome.split.as_ref().map(|(_, s)| s.clone()),
        mirror: outcome.mirror.clone(),
        route_model: outcome.route.as_ref().map(|(_, m)| m.clone()),
    });
}

/// Put `outcome` on the status computed for the reconcile: `status.rollout`, and
/// `Degraded=True`, `Ready=False`, `Progressing=False` (reason `RolledBack` or `Aborted`, the
/// machine's message) while the spec's model is held back. `now` stamps a condition that changes.
pub fn record(
    status: &mut crate::crd::ModelEndpointStatus,
    outcome: &Outcome,
    last: Option<&crate::crd::ModelEndpointStatus>,
    now: &str,
) {
    use crate::crd::conditions::{DEGRADED, PROGRESSING, READY};
    status.rollout = outcome.status.clone();
    let Some((reason, message)) = &outcome.degraded else {
        return;
    };
    let before = |t: &str| last.and_then(|l| l.conditions.iter().find(|c| c.type_ == t));
    for c in &mut status.conditions {
        // Nothing progresses either: the spec's model waits for a new spec.
        let value = match c.type_.as_str() {
            DEGRADED => "True",
            READY | PROGRESSING => "False",
            _ => continue,
        };
        c.last_transition_time = match before(&c.type_) {
            Some(p) if p.status == value => p.last_transition_time.clone(),
            _ => Some(now.to_owned()),
        };
        c.status = value.into();
        c.reason = (*reason).into();
        c.message = message.clone();
    }
    status.phase = Some("Degraded".into());
}

/// The DestinationRule subset of a rollout's new model: `<variant>-<model>` (dots become
/// dashes), shortened with a hash past 63 characters so it stays a DNS label.
pub fn subset_name(variant: &str, model: &str) -> String {
    let full = format!("{variant}-{}", model.replace('.', "-"));
    if full.len() <= 63 {
        return full;
    }
    let hash = mlep_contract::hash_key(variant, model);
    format!("{}-{:08x}", &full[..54].trim_end_matches('-'), hash as u32)
}

/// Check `spec.rollout`, naming the field.
pub fn validate(spec: &ModelEndpointSpec) -> Result<(), SpecError> {
    let Some(r) = &spec.rollout else {
        return Ok(());
    };
    let at = "spec.rollout";
    let positive = |field: &str, v: Option<u32>| match v {
        Some(0) => Err(SpecError::invalid(
            format!("{at}.{field}"),
            "must be at least 1",
        )),
        _ => Ok(()),
    };
    positive("stepSeconds", r.step_seconds)?;
    positive("maxStepSeconds", r.max_step_seconds)?;
    if let (Some(step), Some(max)) = (r.step_seconds, r.max_step_seconds) {
        if max < step {
            return Err(SpecError::invalid(
                format!("{at}.maxStepSeconds"),
                format!("{max} is below stepSeconds {step}"),
            ));
        }
    }
    let percent = |field: &str, v: Option<u32>| match v {
        Some(p) if !(1..=100).contains(&p) => Err(SpecError::invalid(
            format!("{at}.{field}"),
            format!("{p} must be within 1..=100"),
        )),
        _ => Ok(()),
    };
    percent("canary.percent", r.canary.as_ref().and_then(|c| c.percent))?;
    percent(
        "linear.stepPercent",
        r.linear.as_ref().and_then(|l| l.step_percent),
    )?;
    if let Some(bg) = &r.blue_green {
        if bg
            .shadow_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            return Err(SpecError::invalid(
                format!("{at}.blueGreen.shadowPercent"),
                "must be within 0..=100",
            ));
        }
        positive("blueGreen.bakeSeconds", bg.bake_seconds)?;
    }
    if r.strategy == Some(RolloutStrategy::BlueGreen) && spec.shadow.is_some() {
        return Err(SpecError::invalid(
            format!("{at}.strategy"),
            "BlueGreen bakes the new model through the endpoint's shadow; remove spec.shadow \
             or choose Canary or Linear",
        ));
    }
    if let Some(a) = &r.analysis {
        let share = |field: &str, v: Option<f64>| match v {
            Some(x) if !(0.0..=1.0).contains(&x) => Err(SpecError::invalid(
                format!("{at}.analysis.{field}"),
                format!("{x} must be a share within 0..=1 (0.05 is 5%)"),
            )),
            _ => Ok(()),
        };
        share("maxErrorRate", a.max_error_rate)?;
        share("minAgreement", a.min_agreement)?;
        if a.max_p99_latency_ms
            .is_some_and(|x| !(x > 0.0 && x.is_finite()))
        {
            return Err(SpecError::invalid(
                format!("{at}.analysis.maxP99LatencyMs"),
                "must be a positive number of milliseconds",
            ));
        }
        if let Some(u) = &a.prometheus_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(SpecError::invalid(
                    format!("{at}.analysis.prometheusUrl"),
                    format!("{u:?} must start with http:// or https://"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::{REASON_ABORTED, REASON_ROLLED_BACK};
    use crate::crd::{AnalysisSpec, BlueGreenSpec, CanarySpec, LinearSpec};
    use proptest::prelude::*;

    /// An endpoint `a=80 (m1)`, `b=20` whose model changes from `m2` to `m3`, a fake clock and
    /// a fake metrics source. `tick` runs the machine and applies its outcome the way the
    /// drivers do (serving model, persisted status).
    struct World {
        settings: Settings,
        desired_b: String,
        serving_b: String,
        ready: Vec<(String, String)>,
        allocation: Allocation,
        status: Option<RolloutStatus>,
        command: Option<Command>,
        now: i64,
        metrics: Fake,
        last: Outcome,
    }

    /// Serves whatever `next` holds and records what it was asked.
    #[derive(Default)]
    struct Fake {
        next: Option<Result<Sample, String>>,
        asked: Vec<Query>,
    }

    impl AnalysisSource for Fake {
        fn sample(&mut self, q: &Query) -> Result<Sample, String> {
            self.asked.push(q.clone());
            self.next.clone().unwrap_or_else(|| Ok(Sample::default()))
        }
    }

    fn healthy(requests: u64) -> Result<Sample, String> {
        Ok(Sample {
            requests,
            errors: 0,
            p99_ms: Some(5.0),
            compared: requests,
            agreed: requests,
        })
    }

    fn rollout(strategy: RolloutStrategy) -> RolloutSpec {
        RolloutSpec {
            strategy: Some(strategy),
            step_seconds: Some(60),
            max_step_seconds: Some(300),
            canary: Some(CanarySpec { percent: Some(10) }),
            linear: Some(LinearSpec {
                step_percent: Some(25),
            }),
            blue_green: Some(BlueGreenSpec {
                shadow_percent: Some(50.0),
                bake_seconds: Some(120),
                termination_wait_seconds: Some(100),
            }),
            analysis: Some(AnalysisSpec {
                min_requests: Some(50),
                max_error_rate: Some(0.05),
                max_p99_latency_ms: Some(100.0),
                min_agreement: Some(0.9),
                prometheus_url: None,
            }),
            auto_rollback: None,
        }
    }

    impl World {
        fn new(spec: RolloutSpec) -> Self {
            Self {
                settings: Settings::of(Some(&spec)),
                desired_b: "m3".into(),
                serving_b: "m2".into(),
                ready: vec![("a".into(), "m1".into()), ("b".into(), "m2".into())],
                allocation: Allocation::initial(&[("a", 80), ("b", 20)]).unwrap(),
                status: None,
                command: None,
                now: 1_000_000,
                metrics: Fake::default(),
                last: Outcome::default(),
            }
        }

        fn make_ready(&mut self, model: &str) {
            self.ready.push(("b".into(), model.into()));
        }

        fn tick_at(&mut self, seconds_later: i64, sample: Result<Sample, String>) -> &Outcome {
            self.now += seconds_later;
            self.metrics.next = Some(sample);
            let variants = vec![("a", "m1"), ("b", self.desired_b.as_str())];
            let serving = vec![("a", "m1"), ("b", self.serving_b.as_str())];
            let ready = self
                .ready
                .iter()
                .map(|(v, m)| (v.as_str(), m.as_str()))
                .collect();
            let input = Input {
                endpoint: "titanic",
                namespace: "default",
                settings: &self.settings,
                variants,
                serving,
                ready,
                allocation: &self.allocation,
                last: self.status.as_ref(),
                command: self.command,
                now: Now {
                    unix: self.now,
                    text: format!("t{}", self.now),
                },
            };
            let out = drive(&input, &mut self.metrics);
            if let Some((_, m)) = &out.serving {
                self.serving_b = m.clone();
            } else if self
                .ready
                .iter()
                .any(|(v, m)| v == "b" && *m == self.desired_b)
            {
                // No override: planning switches a ready variant to its spec model.
                self.serving_b = self.desired_b.clone();
            }
            self.status = out.status.clone();
            self.last = out;
            &self.last
        }

        fn tick(&mut self) -> &Outcome {
            self.tick_at(0, Ok(Sample::default()))
        }

        fn phase(&self) -> Phase {
            self.status.as_ref().map(|s| s.phase).unwrap_or_default()
        }

        fn moved(&self) -> Vec<Span> {
            self.last
                .split
                .as_ref()
                .map(|(_, s)| s.buckets.clone())
                .unwrap_or_default()
        }

        fn percent(&self) -> u32 {
            self.status.as_ref().map_or(0, |s| s.moved_percent)
        }

        fn models(&self) -> Vec<String> {
            self.last
                .models
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_default()
        }

        /// Started and ready: the first step is in place.
        fn started(strategy: RolloutStrategy) -> Self {
            let mut w = World::new(rollout(strategy));
            w.tick();
            w.make_ready("m3");
            w.tick();
            w
        }
    }

    #[test]
    fn nothing_moves_until_the_new_model_is_ready() {
        let mut w = World::new(rollout(RolloutStrategy::Canary));
        let out = w.tick().clone();
        assert_eq!(w.phase(), Phase::Progressing);
        assert_eq!(out.split, None);
        assert_eq!(out.serving, Some(("b".into(), "m2".into())));
        assert_eq!(w.models(), vec!["m2", "m3"], "both models run");
        assert!(w
            .status
            .as_ref()
            .unwrap()
            .message
            .contains("waiting for m3"));
        assert!(w.metrics.asked.is_empty(), "nothing to analyse yet");
        w.make_ready("m3");
        w.tick();
        assert_eq!(w.percent(), 10);
        assert_eq!(split::count(&w.moved()), 200, "10% of b's 2000 buckets");
    }

    #[test]
    fn canary_holds_its_share_for_a_step_then_promotes() {
        let mut w = World::started(RolloutStrategy::Canary);
        let first = w.moved();
        w.tick_at(30, healthy(80));
        assert_eq!((w.phase(), w.moved()), (Phase::Progressing, first.clone()));
        let q = w.metrics.asked.last().unwrap().clone();
        assert_eq!(
            (q.variant.as_str(), q.model.as_str(), q.traffic),
            ("b", "m3", Traffic::Served)
        );
        assert_eq!(q.now_unix - q.since_unix, 30, "the step's own window");
        assert_eq!(
            w.last.route,
            Some(("b".into(), "m3".into())),
            "moved users have a route"
        );
        let la = w.status.as_ref().unwrap().last_analysis.clone().unwrap();
        assert!(la.passed, "{la:?}");
        let out = w.tick_at(31, healthy(150)).clone();
        assert_eq!(w.phase(), Phase::Promoted);
        assert_eq!(out.split, None);
        assert_eq!(out.serving, Some(("b".into(), "m3".into())));
        assert_eq!(w.models(), vec!["m3"], "the old model goes");
        assert_eq!(out.route, None, "the variant's own route serves m3 now");
        assert_eq!(w.percent(), 100);
        // Settled: further ticks change nothing.
        let again = w.tick_at(60, healthy(10)).clone();
        assert_eq!(again.status, out.status);
    }

    #[test]
    fn linear_moves_a_growing_share_keeping_everyone_already_moved() {
        let mut w = World::started(RolloutStrategy::Linear);
        let mut shares = vec![w.percent()];
        let mut prev = w.moved();
        while w.phase() == Phase::Progressing {
            w.tick_at(61, healthy(100));
            let now = w.moved();
            if w.phase() == Phase::Progressing {
                assert_eq!(
                    split::intersect(&prev, &now),
                    prev,
                    "a moved user moved back"
                );
            }
            shares.push(w.percent());
            prev = now;
        }
        assert_eq!(shares, vec![25, 50, 75, 100]);
        assert_eq!(w.phase(), Phase::Promoted);
    }

    #[test]
    fn blue_green_bakes_on_mirrored_traffic_switches_and_removes_blue_after_the_wait() {
        let mut w = World::started(RolloutStrategy::BlueGreen);
        assert_eq!(w.phase(), Phase::Baking);
        assert_eq!(w.last.split, None, "nobody moves while baking");
        assert_eq!(
            w.last.mirror,
            Some(Mirror {
                variant: "b".into(),
                model: "m3".into(),
                percent: 50.0
            })
        );
        w.tick_at(60, healthy(100));
        assert_eq!(w.metrics.asked.last().unwrap().traffic, Traffic::Mirrored);
        assert_eq!(w.phase(), Phase::Baking);
        let out = w.tick_at(61, healthy(200)).clone();
        assert_eq!(w.phase(), Phase::Promoted);
        assert_eq!(out.serving, Some(("b".into(), "m3".into())));
        assert_eq!(out.mirror, None);
        assert_eq!(w.models(), vec!["m3", "m2"], "blue keeps running");
        w.tick_at(50, healthy(100));
        assert_eq!(w.models(), vec!["m3", "m2"]);
        w.tick_at(51, healthy(100));
        assert_eq!(
            (w.phase(), w.models()),
            (Phase::Promoted, vec!["m3".into()])
        );
    }

    #[test]
    fn blue_green_rolls_back_instantly_during_the_termination_wait() {
        let mut w = World::started(RolloutStrategy::BlueGreen);
        w.tick_at(121, healthy(200));
        assert_eq!(w.phase(), Phase::Promoted);
        let bad = Ok(Sample {
            requests: 100,
            errors: 40,
            ..Sample::default()
        });
        let out = w.tick_at(10, bad).clone();
        assert_eq!(w.phase(), Phase::RolledBack);
        assert_eq!(out.serving, Some(("b".into(), "m2".into())));
    }

    fn rolls_back_on(
        strategy: RolloutStrategy,
        sample: Sample,
        check: &str,
        value: f64,
        limit: f64,
    ) {
        let mut w = World::started(strategy);
        let out = w.tick_at(20, Ok(sample)).clone();
        let st = w.status.clone().unwrap();
        assert_eq!(st.phase, Phase::RolledBack, "{}", st.message);
        assert_eq!(
            st.last_analysis,
            Some(AnalysisResult {
                check: check.into(),
                value,
                limit,
                passed: false
            })
        );
        assert!(
            st.message.contains(check)
                && st.message.contains(&value.to_string())
                && st.message.contains(&limit.to_string()),
            "the message names check, value and limit: {}",
            st.message
        );
        assert_eq!(
            (out.split, out.mirror),
            (None, None),
            "every user back on m2"
        );
        assert_eq!(out.serving, Some(("b".into(), "m2".into())));
        // Proxies still holding the last split find the new model's route and pods for a
        // moment; then both go.
        assert_eq!(out.route, Some(("b".into(), "m3".into())));
        assert_eq!(w.models(), vec!["m2", "m3"], "drains");
        assert_eq!(out.degraded.map(|d| d.0), Some(REASON_ROLLED_BACK));
        let later = w.tick_at(DRAIN_SECONDS, healthy(1000)).clone();
        assert_eq!(later.route, None);
        assert_eq!(w.models(), vec!["m2"], "the failed model is stopped");
        // It stays rolled back (no retry by itself), and keeps saying why.
        let again = w.tick_at(600, healthy(1000)).clone();
        assert_eq!(w.phase(), Phase::RolledBack);
        assert_eq!(again.serving, Some(("b".into(), "m2".into())));
        assert_eq!(again.degraded.map(|d| d.0), Some(REASON_ROLLED_BACK));
    }

    #[test]
    fn a_rollback_marks_the_endpoint_degraded_naming_the_check_and_keeps_the_transition_time() {
        use crate::crd::conditions::{DEGRADED, READY};
        use crate::crd::{Condition, ModelEndpointStatus};
        let mut w = World::started(RolloutStrategy::Canary);
        let healthy_status = ModelEndpointStatus {
            conditions: [(READY, "True"), (DEGRADED, "False")]
                .iter()
                .map(|(t, s)| Condition {
                    type_: (*t).into(),
                    status: (*s).into(),
                    last_transition_time: Some("t0".into()),
                    ..Condition::default()
                })
                .collect(),
            ..ModelEndpointStatus::default()
        };
        let mut status = healthy_status.clone();
        record(&mut status, &w.last, None, "t1");
        assert_eq!(status.rollout, w.status, "status.rollout is the machine's");
        assert_eq!(
            status.conditions, healthy_status.conditions,
            "nothing degraded yet"
        );
        let bad = Ok(Sample {
            requests: 100,
            errors: 40,
            ..Sample::default()
        });
        w.tick_at(20, bad);
        let mut degraded = healthy_status.clone();
        record(&mut degraded, &w.last, Some(&healthy_status), "t2");
        let c = degraded
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(
            (
                c.status.as_str(),
                c.reason.as_str(),
                c.last_transition_time.as_deref()
            ),
            ("True", REASON_ROLLED_BACK, Some("t2"))
        );
        assert!(
            c.message
                .contains("maxErrorRate: measured 0.4 against a limit of 0.05"),
            "{}",
            c.message
        );
        assert_eq!(degraded.phase.as_deref(), Some("Degraded"));
        // The next reconcile keeps the time of the transition.
        let mut again = healthy_status.clone();
        record(&mut again, &w.last, Some(&degraded), "t3");
        let c = again
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(c.last_transition_time.as_deref(), Some("t2"));
    }

    #[test]
    fn a_high_error_rate_rolls_back() {
        let s = Sample {
            requests: 100,
            errors: 31,
            ..Sample::default()
        };
        rolls_back_on(RolloutStrategy::Canary, s, checks::ERROR_RATE, 0.31, 0.05);
    }

    #[test]
    fn a_slow_p99_rolls_back() {
        let s = Sample {
            requests: 100,
            p99_ms: Some(250.0),
            ..Sample::default()
        };
        rolls_back_on(
            RolloutStrategy::Linear,
            s,
            checks::P99_LATENCY,
            250.0,
            100.0,
        );
    }

    #[test]
    fn disagreeing_mirrored_answers_roll_a_blue_green_bake_back() {
        let s = Sample {
            requests: 100,
            compared: 100,
            agreed: 60,
            ..Sample::default()
        };
        rolls_back_on(RolloutStrategy::BlueGreen, s, checks::AGREEMENT, 0.6, 0.9);
    }

    #[test]
    fn too_few_requests_wait_then_fail_at_max_step_seconds() {
        let mut w = World::started(RolloutStrategy::Canary);
        w.tick_at(100, healthy(10));
        assert_eq!(w.phase(), Phase::Progressing, "waits past stepSeconds");
        assert!(w.status.as_ref().unwrap().message.contains("10 of 50"));
        w.tick_at(150, healthy(49));
        assert_eq!(w.phase(), Phase::Progressing);
        w.tick_at(50, healthy(49));
        let st = w.status.clone().unwrap();
        assert_eq!(st.phase, Phase::RolledBack);
        assert_eq!(st.last_analysis.unwrap().check, checks::MIN_REQUESTS);
    }

    #[test]
    fn an_unreachable_metrics_source_waits_and_fails_only_at_max_step_seconds() {
        let mut w = World::started(RolloutStrategy::Canary);
        w.tick_at(100, Err("connection refused".into()));
        assert_eq!(w.phase(), Phase::Progressing);
        assert!(w
            .status
            .as_ref()
            .unwrap()
            .message
            .contains("connection refused"));
        w.tick_at(200, Err("connection refused".into()));
        assert_eq!(w.phase(), Phase::RolledBack);
    }

    #[test]
    fn without_auto_rollback_a_failed_check_holds_where_it_is() {
        let mut spec = rollout(RolloutStrategy::Canary);
        spec.auto_rollback = Some(false);
        let mut w = World::new(spec);
        w.tick();
        w.make_ready("m3");
        w.tick();
        let moved = w.moved();
        let bad = Ok(Sample {
            requests: 100,
            errors: 50,
            ..Sample::default()
        });
        w.tick_at(100, bad);
        let st = w.status.clone().unwrap();
        assert_eq!((st.phase, st.paused), (Phase::Progressing, true));
        assert!(st.message.contains("autoRollback is off"), "{}", st.message);
        assert_eq!(w.moved(), moved, "holds, neither forward nor back");
    }

    #[test]
    fn pause_holds_past_the_step_and_resume_continues() {
        let mut w = World::started(RolloutStrategy::Linear);
        w.command = Some(Command::Pause);
        w.tick_at(200, healthy(100));
        assert_eq!((w.phase(), w.percent()), (Phase::Progressing, 25));
        assert!(w.status.as_ref().unwrap().paused);
        w.command = Some(Command::Resume);
        w.tick_at(1, healthy(100));
        assert_eq!(w.percent(), 50);
        assert!(!w.status.as_ref().unwrap().paused);
    }

    #[test]
    fn pause_does_not_stop_a_rollback() {
        let mut w = World::started(RolloutStrategy::Linear);
        w.command = Some(Command::Pause);
        w.tick_at(
            10,
            Ok(Sample {
                requests: 100,
                errors: 100,
                ..Sample::default()
            }),
        );
        assert_eq!(w.phase(), Phase::RolledBack);
    }

    #[test]
    fn abort_returns_every_user_and_keeps_them_there() {
        let mut w = World::started(RolloutStrategy::Linear);
        w.tick_at(61, healthy(100));
        assert_eq!(w.percent(), 50);
        w.command = Some(Command::Abort);
        let out = w.tick_at(1, healthy(100)).clone();
        assert_eq!(w.phase(), Phase::Aborted);
        assert_eq!((out.split, w.percent()), (None, 0));
        assert_eq!(out.degraded.map(|d| d.0), Some(REASON_ABORTED));
        w.command = None;
        w.tick_at(100, healthy(100));
        assert_eq!(
            w.phase(),
            Phase::Aborted,
            "an aborted rollout is not retried by itself"
        );
        assert_eq!(w.serving_b, "m2");
    }

    #[test]
    fn promote_skips_the_remaining_steps_but_never_to_an_unready_model() {
        let mut w = World::new(rollout(RolloutStrategy::Linear));
        w.command = Some(Command::Promote);
        w.tick();
        assert_eq!(w.phase(), Phase::Progressing, "m3 is not ready");
        assert_eq!(w.serving_b, "m2");
        w.make_ready("m3");
        w.tick();
        assert_eq!(w.phase(), Phase::Promoted);
        assert_eq!(w.serving_b, "m3");
    }

    #[test]
    fn a_variant_without_users_promotes_once_its_new_model_is_ready() {
        let mut w = World::new(rollout(RolloutStrategy::Linear));
        w.allocation = Allocation::initial(&[("a", 100), ("b", 0)]).unwrap();
        w.tick();
        assert_eq!(w.phase(), Phase::Progressing, "waits for m3");
        w.make_ready("m3");
        w.tick();
        assert_eq!(w.phase(), Phase::Promoted);
        assert!(w.status.as_ref().unwrap().message.contains("weight 0"));
    }

    #[test]
    fn unknown_annotation_values_are_named() {
        assert_eq!(Command::parse(" pause "), Ok(Command::Pause));
        let e = Command::parse("stop").unwrap_err();
        assert!(
            e.contains("\"stop\"") && e.contains("abort, promote, pause, resume"),
            "{e}"
        );
    }

    #[test]
    fn a_new_model_that_loses_its_pods_gets_no_users_until_it_is_ready_again() {
        let mut w = World::started(RolloutStrategy::Linear);
        let moved = w.moved();
        w.ready.retain(|(v, m)| !(v == "b" && m == "m3"));
        w.tick_at(10, healthy(100));
        assert_eq!(w.last.split, None, "withheld");
        assert_eq!(w.phase(), Phase::Progressing);
        w.make_ready("m3");
        w.tick_at(10, healthy(0));
        assert_eq!(w.moved(), moved, "the same users move again, no others");
    }

    #[test]
    fn a_restart_resumes_from_the_persisted_status_without_moving_anyone_twice() {
        let mut w = World::started(RolloutStrategy::Linear);
        w.tick_at(61, healthy(100));
        let before = w.moved();
        // Persist through JSON (the status subresource / the state file) and start over.
        let json = serde_json::to_string(&w.status).unwrap();
        w.status = serde_json::from_str(&json).unwrap();
        w.tick_at(5, healthy(100));
        assert_eq!(
            (w.moved(), w.percent()),
            (before.clone(), 50),
            "same users, same step"
        );
        w.tick_at(60, healthy(100));
        assert_eq!(split::intersect(&before, &w.moved()), before);
        assert_eq!(w.percent(), 75);
    }

    #[test]
    fn a_spec_edit_to_another_model_aborts_first_then_starts_over() {
        let mut w = World::started(RolloutStrategy::Linear);
        w.make_ready("m4");
        w.desired_b = "m4".into();
        let out = w.tick().clone();
        let st = w.status.clone().unwrap();
        assert_eq!(st.phase, Phase::Aborted);
        assert!(st.message.contains("spec now names m4"), "{}", st.message);
        assert_eq!((out.split, out.degraded), (None, None));
        assert_eq!(out.serving, Some(("b".into(), "m2".into())));
        w.tick();
        let st = w.status.clone().unwrap();
        assert_eq!(
            (st.phase, st.from_model.as_str(), st.to_model.as_str()),
            (Phase::Progressing, "m2", "m4")
        );
        assert_eq!(w.percent(), 25);
    }

    #[test]
    fn all_at_once_leaves_the_swap_to_planning() {
        let mut w = World::new(rollout(RolloutStrategy::AllAtOnce));
        let out = w.tick().clone();
        assert_eq!(out, Outcome::default());
    }

    #[test]
    fn a_weight_edit_mid_rollout_keeps_the_moved_users_the_variant_still_owns() {
        let mut w = World::started(RolloutStrategy::Linear);
        let moved = w.moved();
        w.allocation = w.allocation.rebalance(&[("a", 90), ("b", 10)]).unwrap();
        w.tick_at(5, healthy(10));
        let now = w.moved();
        split::validate(&w.allocation, "b", &now).unwrap();
        assert_eq!(
            now,
            split::intersect(&moved, &split::owned(&w.allocation, "b"))
        );
    }

    #[test]
    fn rollout_settings_are_validated_naming_the_field() {
        let mut spec = ModelEndpointSpec::new(
            vec!["h".into()],
            vec![crate::crd::VariantSpec::new("a", "m", 100)],
        );
        spec.rollout = Some(rollout(RolloutStrategy::Canary));
        validate(&spec).unwrap();
        let mut bad = spec.clone();
        bad.rollout
            .as_mut()
            .unwrap()
            .analysis
            .as_mut()
            .unwrap()
            .max_error_rate = Some(5.0);
        assert_eq!(
            validate(&bad).unwrap_err().field,
            "spec.rollout.analysis.maxErrorRate"
        );
        let mut bad = spec.clone();
        bad.rollout.as_mut().unwrap().max_step_seconds = Some(10);
        assert_eq!(
            validate(&bad).unwrap_err().field,
            "spec.rollout.maxStepSeconds"
        );
        let mut bad = spec.clone();
        bad.rollout.as_mut().unwrap().strategy = Some(RolloutStrategy::BlueGreen);
        bad.shadow = Some(crate::crd::ShadowSpec::new("m", 5.0));
        assert_eq!(validate(&bad).unwrap_err().field, "spec.rollout.strategy");
        let mut bad = spec;
        bad.rollout.as_mut().unwrap().canary = Some(CanarySpec { percent: Some(0) });
        assert_eq!(
            validate(&bad).unwrap_err().field,
            "spec.rollout.canary.percent"
        );
    }

    /// The filter config inside a rendered EnvoyFilter (a JSON string somewhere in it).
    fn filter_config_in(obj: &serde_json::Value) -> Option<mlep_contract::FilterConfig> {
        match obj {
            serde_json::Value::String(s) => {
                mlep_contract::FilterConfig::from_json(s.as_bytes()).ok()
            }
            serde_json::Value::Array(a) => a.iter().find_map(filter_config_in),
            serde_json::Value::Object(o) => o.values().find_map(filter_config_in),
            _ => None,
        }
    }

    /// What one rendering says about the rollout's model `m3`, by position in apply order.
    #[derive(Debug, Default)]
    struct Rendered {
        deployment: Option<usize>,
        subset: Option<usize>,
        route: Option<usize>,
        split: Option<usize>,
        mirror: Option<usize>,
    }

    fn render_world(w: &World) -> Rendered {
        use crate::crd::{ModelEndpoint, ModelSpec, VariantSpec};
        use crate::plan::{plan, Readiness};
        let mut ep = ModelEndpoint::new(
            "titanic",
            ModelEndpointSpec::new(
                vec!["titanic.example.com".into()],
                vec![
                    VariantSpec::new("a", "m1", 80),
                    VariantSpec::new("b", &w.desired_b, 20),
                ],
            ),
        );
        ep.metadata.namespace = Some("ml".into());
        let model = ModelSpec {
            image: "x/mlep-model-server:1".into(),
            artifact: None,
            port: None,
            env: vec![],
            resources: None,
            pod_security_context: None,
            security_context: None,
        };
        let models = ["m1", "m2", "m3", "m4"]
            .iter()
            .map(|n| ((*n).to_owned(), model.clone()))
            .collect();
        let observed = Observed {
            deployments: w
                .ready
                .iter()
                .map(|(v, m)| {
                    (
                        (v.clone(), m.clone()),
                        Readiness {
                            replicas: 1,
                            ready_replicas: 1,
                        },
                    )
                })
                .collect(),
        };
        let last = crate::crd::ModelEndpointStatus {
            variants: vec![
                crate::crd::VariantStatus {
                    name: "a".into(),
                    model: "m1".into(),
                    current_weight: 80,
                    ..Default::default()
                },
                crate::crd::VariantStatus {
                    name: "b".into(),
                    model: w.serving_b.clone(),
                    current_weight: 20,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut p = plan(&ep.spec, Some(&last), &observed);
        apply(&mut p, &w.last, &observed);
        let objs = crate::render::render_endpoint(
            &ep,
            "ml",
            &models,
            &p,
            Some(&w.allocation),
            &crate::render::RenderSettings::default(),
        )
        .unwrap();
        // The shared filter objects are applied after the endpoint's own objects (the
        // reconcile's `sync_filters` runs after its apply): the entry comes last.
        let filter = serde_json::json!({
            "kind": "EnvoyFilter",
            "config": serde_json::to_string(&mlep_contract::FilterConfig {
                version: mlep_contract::CONFIG_VERSION,
                endpoints: vec![objs.filter],
            })
            .unwrap(),
        });
        let objs: Vec<serde_json::Value> = objs.objects.into_iter().chain([filter]).collect();
        let subset = subset_name("b", "m3");
        let mut r = Rendered::default();
        for (i, o) in objs.iter().enumerate() {
            let text = o.to_string();
            match o["kind"].as_str() {
                Some("Deployment") if o["metadata"]["name"] == "titanic-b-m3" => {
                    r.deployment = Some(i)
                }
                Some("DestinationRule") if text.contains(&format!("\"{subset}\"")) => {
                    r.subset = Some(i)
                }
                Some("VirtualService") if text.contains(&format!("\"{subset}\"")) => {
                    r.route = Some(i)
                }
                Some("EnvoyFilter") => {
                    if let Some(cfg) = filter_config_in(o) {
                        let ep = &cfg.endpoints[0];
                        if ep
                            .variants
                            .iter()
                            .any(|v| v.rollout.as_ref().is_some_and(|x| x.model == "m3"))
                        {
                            r.split.get_or_insert(i);
                        }
                        if ep
                            .shadow
                            .as_ref()
                            .is_some_and(|s| s.cluster.contains(&subset))
                        {
                            r.mirror.get_or_insert(i);
                        }
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// The ordering rules on one rendering: whatever names the new model's subset comes after
    /// the subset (apply order), and the subset only selects pods that exist and are ready.
    fn check_order(w: &World, r: &Rendered) {
        let ready = w.ready.iter().any(|(v, m)| v == "b" && m == "m3");
        for (what, at) in [("route", r.route), ("split", r.split), ("mirror", r.mirror)] {
            if let Some(at) = at {
                let subset = r
                    .subset
                    .unwrap_or_else(|| panic!("{what} without a subset: {r:?}"));
                assert!(subset < at, "{what} applied before its subset: {r:?}");
                assert!(ready, "{what} names a model that is not ready");
            }
        }
        if let Some(split) = r.split {
            assert!(
                r.route.is_some_and(|route| route < split),
                "split before its route: {r:?}"
            );
        }
        if r.subset.is_some() {
            assert!(r.deployment.is_some(), "a subset without pods: {r:?}");
        }
    }

    #[test]
    fn rendered_objects_name_the_new_model_only_after_its_subset_and_drop_it_only_after_traffic() {
        for strategy in [RolloutStrategy::Canary, RolloutStrategy::BlueGreen] {
            let mut w = World::new(rollout(strategy));
            w.tick();
            let r = render_world(&w);
            check_order(&w, &r);
            assert!(
                r.route.is_none() && r.split.is_none() && r.mirror.is_none(),
                "unready: {r:?}"
            );
            assert!(r.deployment.is_some(), "the new model's pods start first");
            w.make_ready("m3");
            w.tick();
            let during = render_world(&w);
            check_order(&w, &during);
            if strategy == RolloutStrategy::Canary {
                assert!(
                    during.split.is_some() && during.route.is_some(),
                    "{during:?}"
                );
            } else {
                assert!(
                    during.mirror.is_some() && during.split.is_none(),
                    "{during:?}"
                );
            }
            // Rollback: the split/mirror goes at once; the route and pods drain, then go.
            w.tick_at(
                20,
                Ok(Sample {
                    requests: 100,
                    errors: 100,
                    ..Sample::default()
                }),
            );
            assert_eq!(w.phase(), Phase::RolledBack);
            let rolled = render_world(&w);
            check_order(&w, &rolled);
            assert!(
                rolled.split.is_none() && rolled.mirror.is_none(),
                "{rolled:?}"
            );
            assert!(
                rolled.route.is_some() && rolled.deployment.is_some(),
                "drains: {rolled:?}"
            );
            w.tick_at(DRAIN_SECONDS, healthy(0));
            let after = render_world(&w);
            check_order(&w, &after);
            assert!(
                after.route.is_none() && after.subset.is_none() && after.deployment.is_none(),
                "nothing stale is left: {after:?}"
            );
        }
    }

    #[derive(Clone, Debug)]
    enum Event {
        Tick {
            seconds: i64,
            requests: u64,
            errors: u64,
        },
        Pause,
        Resume,
        Restart,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            6 => (0i64..120, 0u64..200, 0u64..3).prop_map(|(seconds, requests, errors)| Event::Tick { seconds, requests, errors }),
            1 => Just(Event::Pause),
            1 => Just(Event::Resume),
            1 => Just(Event::Restart),
        ]
    }

    proptest! {
        /// Over random sequences of ticks, analysis results, pauses and restarts, the moved
        /// set of a Linear or Canary rollout only grows until it ends; a rollback leaves no
        /// user on the new model.
        #[test]
        fn moved_users_only_grow_and_a_rollback_returns_all_of_them(
            linear in any::<bool>(),
            events in proptest::collection::vec(event(), 1..40),
        ) {
            let strategy = if linear { RolloutStrategy::Linear } else { RolloutStrategy::Canary };
            let mut w = World::started(strategy);
            let mut prev = w.moved();
            for e in events {
                match e {
                    Event::Tick { seconds, requests, errors } => {
                        w.tick_at(seconds, Ok(Sample { requests, errors, p99_ms: Some(1.0), ..Sample::default() }));
                    }
                    Event::Pause => w.command = Some(Command::Pause),
                    Event::Resume => w.command = None,
                    Event::Restart => {
                        let json = serde_json::to_string(&w.status).unwrap();
                        w.status = serde_json::from_str(&json).unwrap();
                    }
                }
                let now = w.moved();
                match w.phase() {
                    Phase::Progressing => {
                        prop_assert_eq!(split::intersect(&prev, &now), prev.clone(), "a moved user went back");
                        prev = now;
                    }
                    Phase::RolledBack | Phase::Aborted => {
                        prop_assert!(now.is_empty());
                        prop_assert_eq!(w.serving_b.as_str(), "m2");
                        break;
                    }
                    Phase::Promoted => {
                        prop_assert!(now.is_empty());
                        prop_assert_eq!(w.serving_b.as_str(), "m3");
                        break;
                    }
                    other => prop_assert!(false, "unexpected phase {:?}", other),
                }
            }
        }
    }
}
