//! A persisted rollout put on a plan and a status: what the filter, the renderer and the
//! endpoint's conditions carry of it.

use super::machine::Outcome;
use super::Settings;
use crate::crd::{Phase, RolloutSpec, RolloutStatus};
use crate::filter_config::{Mirror, RolloutPlan};
use crate::plan::{Observed, Plan};
use mlep_contract::rollout::RolloutSplit;

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
