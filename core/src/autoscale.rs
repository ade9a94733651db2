//! Autoscaling a variant, the pure half. A CPU target is a HorizontalPodAutoscaler's job
//! (rendered by `crate::render`); a requests-per-second target is the operator's: every 15 s
//! (the HPA's sync period) it asks Prometheus for each serving Deployment's request rate
//! ([`ScaleKey::promql`], the filter's own `mlep_requests_total`, selected as the rollout
//! analysis selects it) and sets the Deployment's replicas to what [`Autoscaler::step`]
//! decides. This is Knative's KPA approach, with the HPA's arithmetic:
//!
//! - recommendation = clamp(ceil(rate / target), minReplicas, maxReplicas), or the current count
//!   while the rate is within [`TOLERANCE`] of the current replicas' capacity;
//! - up at once; down to the highest recommendation of the last
//!   `scaleDownStabilizationSeconds` (the HPA's stabilization window);
//! - no data (a failed query, an empty answer) keeps the current count: it never scales on
//!   missing data, and says so once per outage (an Event) and every time (the operator's log).
//!
//! The recommendation history lives in memory, in the [`Autoscaler`] the operator owns. After
//! an operator restart (or a pause in the recommendations longer than [`MAX_GAP_SECONDS`]) there
//! is none: replicas then do not go down until a full window of fresh recommendations exists,
//! so a restart never scales down on a single reading.

use crate::analysis::selector;
use crate::crd::{
    AutoscalingSpec, ModelEndpointSpec, ModelEndpointStatus, ScaleTarget, VariantAutoscalingStatus,
    VariantSpec,
};
use crate::events::{actions, reasons, Event, EventType};
use crate::plan::Plan;
use mlep_contract::metrics::{
    LABEL_ENDPOINT, LABEL_MODEL, LABEL_NAMESPACE, LABEL_VARIANT, REQUESTS_TOTAL,
};
use std::collections::{BTreeMap, VecDeque};

pub mod sleep;

/// How often the operator measures and decides (the HPA's `--horizontal-pod-autoscaler-sync-period`).
pub const SYNC_PERIOD_SECONDS: u64 = 15;
/// Within this share of the current replicas' capacity the count stays (the HPA's tolerance).
pub const TOLERANCE: f64 = 0.1;
/// The window of `rate()`: four scrapes at Prometheus' usual 15 s interval (two would do, but
/// one missed scrape would then leave no rate at all).
pub const RATE_WINDOW_SECONDS: i64 = 60;
/// A pause between two recommendations longer than this ends the history: what came before no
/// longer describes the window (four sync periods missed).
pub const MAX_GAP_SECONDS: i64 = 4 * SYNC_PERIOD_SECONDS as i64;

/// `cpu 80%` or `5 rps/replica`.
pub fn target_text(target: ScaleTarget) -> String {
    match target {
        ScaleTarget::CpuPercent(p) => format!("cpu {p}%"),
        ScaleTarget::RequestsPerSecond(r) => format!("{} rps/replica", number(r)),
    }
}

/// A number as status shows it: at most two decimals, no trailing zeros (`5`, `4.2`, `0.33`).
pub fn number(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// How one Deployment scales on its request rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RpsRule {
    /// Requests per second per replica.
    pub target: f64,
    pub min: i32,
    pub max: i32,
    /// The scale-down stabilization window.
    pub window_seconds: i64,
    /// `minReplicas: 0`: seconds without a request before the variant sleeps
    /// ([`sleep`]). The request rate itself never recommends fewer than one replica.
    pub zero_after_seconds: Option<i32>,
}

impl RpsRule {
    /// The rule of a variant scaling on its request rate, `None` for a CPU target.
    pub fn of(a: &AutoscalingSpec) -> Option<Self> {
        match a.target() {
            ScaleTarget::CpuPercent(_) => None,
            ScaleTarget::RequestsPerSecond(target) => Some(Self {
                target,
                min: a.min_replicas.max(1),
                max: a.max_replicas.max(a.min_replicas).max(1),
                window_seconds: i64::from(a.scale_down_stabilization_seconds()),
                zero_after_seconds: a.scale_to_zero_after_seconds(),
            }),
        }
    }

    /// Within the bounds (`minReplicas` wins over a lower `maxReplicas`; never panics).
    fn clamp(&self, replicas: i32) -> i32 {
        replicas.min(self.max).max(self.min)
    }
}

/// Whether `v` scales on its request rate.
pub fn scales_on_requests(v: &VariantSpec) -> bool {
    v.autoscaling.as_ref().and_then(RpsRule::of).is_some()
}

/// Seconds until the endpoint must be looked at again for its request-rate autoscaling: the
/// sync period while any variant scales on its request rate.
pub fn requeue_after_seconds(spec: &ModelEndpointSpec) -> Option<i64> {
    spec.variants
        .iter()
        .any(scales_on_requests)
        .then_some(SYNC_PERIOD_SECONDS as i64)
}

/// One serving Deployment of an endpoint: its variant and model (the labels its filter
/// metrics and its pods carry).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScaleKey {
    pub namespace: String,
    pub endpoint: String,
    pub variant: String,
    pub model: String,
}

impl ScaleKey {
    /// The requests per second this Deployment's model served over the last
    /// [`RATE_WINDOW_SECONDS`], summed over every proxy reporting it.
    pub fn promql(&self) -> String {
        self.requests_over("rate", RATE_WINDOW_SECONDS)
    }

    /// The requests this Deployment's model served over the last `seconds`, summed over every
    /// proxy reporting it (0: idle).
    pub fn idle_promql(&self, seconds: i32) -> String {
        self.requests_over("increase", i64::from(seconds))
    }

    /// `sum(<function>(mlep_requests_total{<this Deployment>}[<seconds>s]))`.
    fn requests_over(&self, function: &str, seconds: i64) -> String {
        let labels = [
            (LABEL_ENDPOINT, self.endpoint.as_str()),
            (LABEL_NAMESPACE, self.namespace.as_str()),
            (LABEL_VARIANT, self.variant.as_str()),
            (LABEL_MODEL, self.model.as_str()),
        ];
        format!(
            "sum({function}({}[{seconds}s]))",
            selector(REQUESTS_TOTAL, &labels, "")
        )
    }
}

/// Every Deployment of the plan the operator scales on its request rate, with its rule: each
/// running model of each such variant (during a model swap or rollout a variant runs two, each
/// its own Deployment, each scaled on the requests it serves).
pub fn rps_deployments(
    namespace: &str,
    endpoint: &str,
    spec: &ModelEndpointSpec,
    plan: &Plan,
) -> Vec<(ScaleKey, RpsRule)> {
    let mut out = Vec::new();
    for (vp, vs) in plan.variants.iter().zip(&spec.variants) {
        let Some(rule) = vs.autoscaling.as_ref().and_then(RpsRule::of) else {
            continue;
        };
        for model in plan.running_models(vp) {
            let key = ScaleKey {
                namespace: namespace.to_owned(),
                endpoint: endpoint.to_owned(),
                variant: vp.name.clone(),
                model: model.to_owned(),
            };
            out.push((key, rule));
        }
    }
    out
}

/// The HPA's recommendation for `rps` requests per second on `current` replicas: the current
/// count while the rate is within [`TOLERANCE`] of their capacity, else ceil(rps / target);
/// within the rule's bounds either way.
pub fn recommend(rps: f64, rule: &RpsRule, current: i32) -> i32 {
    let rps = rps.max(0.0);
    let capacity = rule.target * f64::from(current);
    let raw = if current > 0 && (rps / capacity - 1.0).abs() <= TOLERANCE {
        current
    } else {
        // Bounded before the cast: a huge rate is the maximum, not an overflow.
        (rps / rule.target).ceil().min(f64::from(rule.max)) as i32
    };
    rule.clamp(raw)
}

/// What Prometheus said about one Deployment's request rate.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Requests per second.
    Rate(f64),
    /// An empty answer (no series, or NaN).
    NoData,
    /// The query failed: the fixed text of `crate::analysis::QueryFailure`.
    Failed(String),
}

/// What the autoscaler decided for one Deployment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaled {
    /// Replicas to run.
    pub replicas: i32,
    /// Requests per second per replica measured (over the replicas running when measured),
    /// `None` without data.
    pub per_replica: Option<f64>,
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub scaled: Scaled,
    /// Events worth publishing on the endpoint: a rescale, metrics going missing or coming
    /// back (each once, when it happens).
    pub events: Vec<Event>,
    /// Why this step kept the count without data (log it).
    pub warning: Option<String>,
}

/// One Deployment's memory: recommendations of the current window, and the last decision.
#[derive(Clone, Debug, Default)]
struct History {
    /// (Unix seconds, recommendation), oldest first, within the stabilization window.
    recommendations: VecDeque<(i64, i32)>,
    /// When the unbroken run of recommendations began; `None` before the first.
    since_unix: Option<i64>,
    /// When the last recommendation was made.
    last_recommended_unix: Option<i64>,
    /// The last decision, when it was made and under which rule.
    last: Option<(i64, RpsRule, Scaled)>,
    /// Whether the last measurement had no data (an Event says so once).
    missing: bool,
}

impl History {
    /// Record `rec` at `now`, forgetting what left the window.
    fn record(&mut self, rec: i32, now: i64, window: i64) {
        let unbroken = self
            .last_recommended_unix
            .is_some_and(|t| now - t <= MAX_GAP_SECONDS);
        if !unbroken {
            self.recommendations.clear();
            self.since_unix = Some(now);
        }
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| *t <= now - window)
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now, rec));
        self.last_recommended_unix = Some(now);
    }

    /// Recommend for `rps` on `current` replicas, record it, and stabilize.
    fn measured(&mut self, rps: f64, rule: &RpsRule, current: i32, now: i64) -> Scaled {
        let rec = recommend(rps, rule, current);
        self.record(rec, now, rule.window_seconds);
        let stable = self.stabilized(rec, current, now, rule.window_seconds);
        Scaled {
            replicas: rule.clamp(stable),
            per_replica: (current > 0).then(|| rps / f64::from(current)),
        }
    }

    /// The HPA's stabilization, scale-up window 0: up to `rec` at once; down only to the
    /// highest recommendation of the window, and not at all before the history covers one.
    fn stabilized(&self, rec: i32, current: i32, now: i64, window: i64) -> i32 {
        let mut down = self
            .recommendations
            .iter()
            .filter(|(t, _)| *t > now - window)
            .map(|(_, r)| *r)
            .fold(rec, i32::max);
        // No history of a full window (first sight, operator restart, a long pause): whatever
        // the missing part recommended is unknown, so nothing goes down yet.
        if self.since_unix.is_none_or(|since| now - since < window) {
            down = down.max(current);
        }
        current.max(rec).min(down)
    }
}

/// The request-rate autoscaler of every Deployment the operator scales: their recommendation
/// histories, in memory.
#[derive(Clone, Debug, Default)]
pub struct Autoscaler {
    histories: BTreeMap<ScaleKey, History>,
}

impl Autoscaler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `key` should be measured at `now`: never decided, decided under another rule,
    /// or a sync period ago.
    pub fn due(&self, key: &ScaleKey, rule: &RpsRule, now_unix: i64) -> bool {
        match self.histories.get(key).and_then(|h| h.last.as_ref()) {
            None => true,
            Some((at, last_rule, _)) => {
                last_rule != rule || now_unix - at >= SYNC_PERIOD_SECONDS as i64
            }
        }
    }

    /// Decide `key`'s replicas. `current` is the live Deployment's replicas (`minReplicas`
    /// when it does not exist yet); `observation` is a fresh measurement, or `None` when not
    /// [`due`](Self::due): the last decision stands (within the rule's bounds).
    pub fn step(
        &mut self,
        key: &ScaleKey,
        rule: &RpsRule,
        current: i32,
        observation: Option<Observation>,
        now_unix: i64,
    ) -> Step {
        let h = self.histories.entry(key.clone()).or_default();
        let Some(observation) = observation else {
            let scaled = match &h.last {
                Some((_, _, s)) => Scaled {
                    replicas: rule.clamp(s.replicas),
                    ..*s
                },
                None => Scaled {
                    replicas: rule.clamp(current),
                    per_replica: None,
                },
            };
            return Step {
                scaled,
                events: Vec::new(),
                warning: None,
            };
        };
        let what = format!("variant {}, model {}", key.variant, key.model);
        let mut events = Vec::new();
        let (scaled, warning) = match observation {
            Observation::Rate(rps) => {
                let scaled = h.measured(rps.max(0.0), rule, current, now_unix);
                if std::mem::take(&mut h.missing) {
                    let note = format!("{what}: request rate measured again");
                    events.push(event(
                        EventType::Normal,
                        reasons::AUTOSCALE_METRICS_AVAILABLE,
                        &note,
                    ));
                }
                (scaled, None)
            }
            Observation::NoData | Observation::Failed(_) => {
                let why = match observation {
                    Observation::Failed(why) => why,
                    _ => "prometheus has no request rate for it (no request counted yet, or \
                          the proxies' mlep_ stats are not scraped)"
                        .to_owned(),
                };
                // Never scale on missing data: the count stays (within the bounds, which are
                // the spec's, not a measurement's).
                let note = format!("{what}: {why}; keeping {current} replicas");
                if !std::mem::replace(&mut h.missing, true) {
                    events.push(event(
                        EventType::Warning,
                        reasons::AUTOSCALE_METRICS_UNAVAILABLE,
                        &note,
                    ));
                }
                let scaled = Scaled {
                    replicas: rule.clamp(current),
                    per_replica: None,
                };
                (scaled, Some(note))
            }
        };
        if scaled.replicas != current {
            events.push(rescaled(&what, current, &scaled, rule));
        }
        h.last = Some((now_unix, *rule, scaled));
        Step {
            scaled,
            events,
            warning,
        }
    }

    /// Forget the Deployments of endpoint `namespace/endpoint` not in `keep` (a variant no
    /// longer scaled on its request rate, a model swapped out, the endpoint deleted).
    pub fn retain(&mut self, namespace: &str, endpoint: &str, keep: &[ScaleKey]) {
        self.histories
            .retain(|k, _| k.namespace != namespace || k.endpoint != endpoint || keep.contains(k));
    }

    /// How many Deployments it remembers.
    pub fn len(&self) -> usize {
        self.histories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histories.is_empty()
    }
}

/// An Event of the autoscaler.
fn event(type_: EventType, reason: &str, note: &str) -> Event {
    Event::new(type_, reason, actions::AUTOSCALE, note)
}

/// `Rescaled`: the HPA's `SuccessfulRescale`, with the measurement behind it.
fn rescaled(what: &str, current: i32, scaled: &Scaled, rule: &RpsRule) -> Event {
    let why = match scaled.per_replica {
        Some(r) => format!(
            "{} rps/replica measured, target {}",
            number(r),
            target_text(ScaleTarget::RequestsPerSecond(rule.target))
        ),
        None => format!(
            "within minReplicas {} and maxReplicas {}",
            rule.min, rule.max
        ),
    };
    event(
        EventType::Normal,
        reasons::RESCALED,
        &format!("{what}: {current} -> {} replicas ({why})", scaled.replicas),
    )
}

/// A variant's autoscaling as status shows it before anything is measured.
pub fn variant_status(a: &AutoscalingSpec) -> VariantAutoscalingStatus {
    VariantAutoscalingStatus {
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        target: target_text(a.target()),
        current: None,
        asleep_since_unix: None,
    }
}

/// The printer column: each autoscaled variant's bounds, measured value (where known) and
/// target, e.g. `a=1-5 cpu80%,b=1-10 4.2/5rps`; `None` when no variant autoscales.
/// A sleeping variant (`asleep` names them) says so: `b=0-3 10rps asleep`.
pub fn summary(
    spec: &ModelEndpointSpec,
    per_replica: &BTreeMap<String, f64>,
    asleep: &[String],
) -> Option<String> {
    let parts: Vec<String> = spec
        .variants
        .iter()
        .filter_map(|v| {
            let a = v.autoscaling.as_ref()?;
            let asleep = if a.min_replicas == 0 && asleep.contains(&v.name) {
                " asleep"
            } else {
                ""
            };
            let target = match a.target() {
                ScaleTarget::CpuPercent(p) => format!("cpu{p}%"),
                ScaleTarget::RequestsPerSecond(t) => match per_replica.get(&v.name) {
                    Some(now) => format!("{}/{}rps", number(*now), number(t)),
                    None => format!("{}rps", number(t)),
                },
            };
            Some(format!(
                "{}={}-{} {target}{asleep}",
                v.name, a.min_replicas, a.max_replicas
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// Put the autoscaler's decisions on a reconcile's plan (the replicas each Deployment renders
/// with) and status (each variant's measurement, from its serving model's Deployment, and
/// since when a variant sleeps: `asleep`, by variant).
pub fn apply(
    spec: &ModelEndpointSpec,
    plan: &mut Plan,
    status: &mut ModelEndpointStatus,
    scaled: &BTreeMap<ScaleKey, Scaled>,
    asleep: &BTreeMap<String, i64>,
) {
    plan.scaled = scaled
        .iter()
        .map(|(k, s)| ((k.variant.clone(), k.model.clone()), s.replicas))
        .collect();
    let mut per_replica = BTreeMap::new();
    for v in &mut status.variants {
        let measured = scaled
            .iter()
            .find(|(k, _)| k.variant == v.name && k.model == v.model)
            .and_then(|(_, s)| s.per_replica);
        if let (Some(a), Some(r)) = (v.autoscaling.as_mut(), measured) {
            a.current = Some(format!("{} rps/replica", number(r)));
            per_replica.insert(v.name.clone(), r);
        }
        if let Some(a) = v.autoscaling.as_mut() {
            a.asleep_since_unix = asleep.get(&v.name).copied();
        }
    }
    let names: Vec<String> = asleep.keys().cloned().collect();
    if let Some(s) = status.summary.as_mut() {
        s.scaling = summary(spec, &per_replica, &names);
    }
}

#[cfg(test)]
mod tests;
