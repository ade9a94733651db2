//! Kubernetes Events, decided: what changed between the last status and the next one, as
//! typed events the operator publishes on the ModelEndpoint or Model (`kubectl describe` lists
//! them) and local mode prints, one line each.
//!
//! Events come from the difference alone, so a reconcile that changes nothing emits nothing:
//! a new rollout, each step, a promotion, a rollback (its note has the measured value and the
//! limit), an abort, a pause; a `Degraded` condition with a new reason or message (an invalid
//! spec, a missing Model, a failing model); the endpoint becoming ready again.

use crate::crd::conditions::{
    DEGRADED, READY, REASON_ABORTED, REASON_AVAILABLE, REASON_ROLLED_BACK,
};
use crate::crd::{Condition, ModelEndpointStatus, ModelStatus, Phase, RolloutStatus};
use crate::failure::clip;
use std::fmt;

/// Kubernetes caps an Event's note at 1 kB.
pub const NOTE_MAX_BYTES: usize = 1024;

/// Event reasons of rollouts (the other events carry their condition's reason:
/// `crate::crd::conditions`).
pub mod reasons {
    pub const ROLLOUT_STARTED: &str = "RolloutStarted";
    pub const ROLLOUT_STEP: &str = "RolloutStep";
    pub const ROLLOUT_BAKING: &str = "RolloutBaking";
    pub const ROLLOUT_PROMOTED: &str = "RolloutPromoted";
    pub const ROLLOUT_PAUSED: &str = "RolloutPaused";
    pub const ROLLOUT_RESUMED: &str = "RolloutResumed";
    /// The request-rate autoscaler changed a Deployment's replicas (the HPA's
    /// `SuccessfulRescale`).
    pub const RESCALED: &str = "Rescaled";
    /// The request-rate autoscaler has no measurement (a failed query, no data): the
    /// Deployment keeps its replicas. Once per outage.
    pub const AUTOSCALE_METRICS_UNAVAILABLE: &str = "AutoscaleMetricsUnavailable";
    /// Measurements came back after [`AUTOSCALE_METRICS_UNAVAILABLE`].
    pub const AUTOSCALE_METRICS_AVAILABLE: &str = "AutoscaleMetricsAvailable";
    /// An idle variant with `minReplicas: 0` fell asleep: the proxies hold its requests, its
    /// pods go shortly after.
    pub const FELL_ASLEEP: &str = "FellAsleep";
    /// A sleeping variant's pods are gone.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// A sleeping variant was woken by a held request and has a ready pod again.
    pub const WOKE: &str = "Woke";
    pub use crate::crd::conditions::{REASON_ABORTED, REASON_ROLLED_BACK};
}

/// What the controller did, the Event's `action` (not shown by `kubectl describe`).
pub mod actions {
    pub const ROLLOUT: &str = "Rollout";
    pub const RECONCILE: &str = "Reconcile";
    pub const AUTOSCALE: &str = "Autoscale";
}

/// `Normal` or `Warning`, as Kubernetes spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        })
    }
}

/// One Event to publish on the object whose status changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    /// CamelCase, the condition reason where there is one.
    pub reason: String,
    pub action: &'static str,
    /// At most [`NOTE_MAX_BYTES`], one line.
    pub note: String,
}

impl Event {
    pub(crate) fn new(type_: EventType, reason: &str, action: &'static str, note: &str) -> Self {
        Self {
            type_,
            reason: reason.to_owned(),
            action,
            note: clip(note, NOTE_MAX_BYTES),
        }
    }
}

impl fmt::Display for Event {
    /// `<note> (<type> <reason>)`: local mode's log line after the endpoint's name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {})", self.note, self.type_, self.reason)
    }
}

/// The Events an endpoint's status change from `last` to `next` is worth.
pub fn endpoint_events(
    last: Option<&ModelEndpointStatus>,
    next: &ModelEndpointStatus,
) -> Vec<Event> {
    let mut out = rollout_events(last.and_then(|l| l.rollout.as_ref()), next.rollout.as_ref());
    let before = last.map(|l| l.conditions.as_slice()).unwrap_or_default();
    for e in condition_events(before, &next.conditions) {
        // A rollback also degrades the variant with the rollout's message: one Event says it.
        if !out.iter().any(|o| o.reason == e.reason && o.note == e.note) {
            out.push(e);
        }
    }
    out
}

/// The Events a Model's status change is worth: an invalid spec, once per new message.
pub fn model_events(last: Option<&ModelStatus>, next: &ModelStatus) -> Vec<Event> {
    let before = last.map(|l| l.conditions.as_slice()).unwrap_or_default();
    let Some(ready) = find(&next.conditions, READY).filter(|c| c.status == "False") else {
        return Vec::new();
    };
    if find(before, READY).is_some_and(|b| same(b, ready)) {
        return Vec::new();
    }
    vec![Event::new(
        EventType::Warning,
        &ready.reason,
        actions::RECONCILE,
        &ready.message,
    )]
}

/// The Events of a rollout's change: a new rollout, a new step, its end, a pause. Local mode
/// calls it with the rollout state it keeps.
pub fn rollout_events(last: Option<&RolloutStatus>, next: Option<&RolloutStatus>) -> Vec<Event> {
    use reasons::*;
    let Some(r) = next else {
        return Vec::new();
    };
    let ev = |type_, reason: &str| Event::new(type_, reason, actions::ROLLOUT, &r.message);
    let same_rollout = last.filter(|l| {
        (&l.variant, &l.from_model, &l.to_model, &l.started_at)
            == (&r.variant, &r.from_model, &r.to_model, &r.started_at)
    });
    let Some(l) = same_rollout else {
        let started = format!(
            "{}: {} -> {}; {}",
            r.variant, r.from_model, r.to_model, r.message
        );
        return match r.phase {
            Phase::Idle => Vec::new(),
            Phase::Progressing | Phase::Baking => vec![Event::new(
                EventType::Normal,
                ROLLOUT_STARTED,
                actions::ROLLOUT,
                &started,
            )],
            _ => ended(r).into_iter().collect(),
        };
    };
    if l.phase != r.phase && !matches!(r.phase, Phase::Progressing | Phase::Baking) {
        return ended(r).into_iter().collect();
    }
    if (l.phase, l.step, l.moved_percent) != (r.phase, r.step, r.moved_percent) {
        let reason = match r.phase {
            Phase::Baking => ROLLOUT_BAKING,
            _ => ROLLOUT_STEP,
        };
        return vec![ev(EventType::Normal, reason)];
    }
    match (l.paused, r.paused) {
        (false, true) => vec![ev(EventType::Warning, ROLLOUT_PAUSED)],
        (true, false) => vec![ev(EventType::Normal, ROLLOUT_RESUMED)],
        _ => Vec::new(),
    }
}

/// The Event of a rollout that reached an end phase.
fn ended(r: &RolloutStatus) -> Option<Event> {
    let (type_, reason) = match r.phase {
        Phase::Promoted => (EventType::Normal, reasons::ROLLOUT_PROMOTED),
        Phase::RolledBack => (EventType::Warning, REASON_ROLLED_BACK),
        Phase::Aborted => (EventType::Warning, REASON_ABORTED),
        Phase::Idle | Phase::Progressing | Phase::Baking => return None,
    };
    Some(Event::new(type_, reason, actions::ROLLOUT, &r.message))
}

/// `Degraded=True` with a reason or message not reported before: a Warning; `Ready` turning
/// `True`: the endpoint is available (again).
fn condition_events(before: &[Condition], next: &[Condition]) -> Vec<Event> {
    let mut out = Vec::new();
    if let Some(d) = find(next, DEGRADED).filter(|c| c.status == "True") {
        if !find(before, DEGRADED).is_some_and(|b| same(b, d)) {
            out.push(Event::new(
                EventType::Warning,
                &d.reason,
                actions::RECONCILE,
                &d.message,
            ));
        }
    }
    if let Some(r) = find(next, READY).filter(|c| c.status == "True") {
        if find(before, READY).is_none_or(|b| b.status != "True") {
            out.push(Event::new(
                EventType::Normal,
                REASON_AVAILABLE,
                actions::RECONCILE,
                &r.message,
            ));
        }
    }
    out
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn same(a: &Condition, b: &Condition) -> bool {
    (&a.status, &a.reason, &a.message) == (&b.status, &b.reason, &b.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::conditions::{REASON_INVALID_SPEC, REASON_MODEL_CRASH_LOOPING};
    use crate::crd::AnalysisResult;

    fn rollout(phase: Phase, step: u32, moved: u32, message: &str) -> RolloutStatus {
        RolloutStatus {
            phase,
            variant: "b".into(),
            from_model: "m2".into(),
            to_model: "m3".into(),
            step,
            moved_percent: moved,
            started_at: "t0".into(),
            message: message.into(),
            ..RolloutStatus::default()
        }
    }

    fn reasons(events: &[Event]) -> Vec<(EventType, &str)> {
        events
            .iter()
            .map(|e| (e.type_, e.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_rollout_reports_its_start_each_step_and_its_promotion_once() {
        let waiting = rollout(
            Phase::Progressing,
            0,
            0,
            "waiting for m3 to have a ready pod",
        );
        let step1 = rollout(Phase::Progressing, 1, 10, "step 1: 10% of b's users on m3");
        let step2 = rollout(Phase::Progressing, 2, 20, "step 2: 20% of b's users on m3");
        let done = rollout(Phase::Promoted, 2, 100, "step 2 passed: every user on m3");
        let started = rollout_events(None, Some(&waiting));
        assert_eq!(
            reasons(&started),
            [(EventType::Normal, reasons::ROLLOUT_STARTED)]
        );
        assert_eq!(
            started[0].note,
            "b: m2 -> m3; waiting for m3 to have a ready pod"
        );
        let e = rollout_events(Some(&waiting), Some(&step1));
        assert_eq!(reasons(&e), [(EventType::Normal, reasons::ROLLOUT_STEP)]);
        assert_eq!(e[0].note, "step 1: 10% of b's users on m3");
        assert_eq!(
            reasons(&rollout_events(Some(&step1), Some(&step2))),
            [(EventType::Normal, reasons::ROLLOUT_STEP)]
        );
        assert_eq!(
            reasons(&rollout_events(Some(&step2), Some(&done))),
            [(EventType::Normal, reasons::ROLLOUT_PROMOTED)]
        );
        // Nothing changed, nothing to say: no Event per reconcile.
        for r in [&waiting, &step1, &step2, &done] {
            assert_eq!(rollout_events(Some(r), Some(r)), []);
        }
        assert_eq!(rollout_events(Some(&done), None), []);
    }

    #[test]
    fn a_rollback_is_a_warning_with_the_measured_value_against_its_limit() {
        let step1 = rollout(Phase::Progressing, 1, 50, "step 1: 50% of b's users on m3");
        let mut back = rollout(
            Phase::RolledBack,
            1,
            0,
            "rolled back b from m3 to m2: maxErrorRate: measured 0.5 against a limit of 0.05 over 40 requests; every user is on m2",
        );
        back.last_analysis = Some(AnalysisResult {
            check: "maxErrorRate".into(),
            value: 0.5,
            limit: 0.05,
            passed: false,
        });
        let e = rollout_events(Some(&step1), Some(&back));
        assert_eq!(reasons(&e), [(EventType::Warning, REASON_ROLLED_BACK)]);
        assert!(e[0].note.contains("measured 0.5 against a limit of 0.05"));
        let aborted = Phase::Aborted;
        assert_eq!(
            reasons(&rollout_events(
                Some(&step1),
                Some(&rollout(aborted, 1, 0, "aborted"))
            )),
            [(EventType::Warning, REASON_ABORTED)]
        );
        // The rollback also degrades the variant with the same message: one Event.
        let degraded = Condition {
            type_: DEGRADED.into(),
            status: "True".into(),
            reason: REASON_ROLLED_BACK.into(),
            message: back.message.clone(),
            ..Condition::default()
        };
        let last = ModelEndpointStatus {
            rollout: Some(step1),
            ..ModelEndpointStatus::default()
        };
        let next = ModelEndpointStatus {
            rollout: Some(back),
            conditions: vec![degraded],
            ..ModelEndpointStatus::default()
        };
        assert_eq!(endpoint_events(Some(&last), &next).len(), 1);
    }

    #[test]
    fn a_pause_and_a_resume_are_reported() {
        let running = rollout(Phase::Progressing, 1, 50, "step 1");
        let paused = RolloutStatus {
            paused: true,
            ..running.clone()
        };
        assert_eq!(
            reasons(&rollout_events(Some(&running), Some(&paused))),
            [(EventType::Warning, reasons::ROLLOUT_PAUSED)]
        );
        assert_eq!(
            reasons(&rollout_events(Some(&paused), Some(&running))),
            [(EventType::Normal, reasons::ROLLOUT_RESUMED)]
        );
    }

    fn status(conditions: &[(&str, &str, &str, &str)]) -> ModelEndpointStatus {
        ModelEndpointStatus {
            conditions: conditions
                .iter()
                .map(|(t, s, r, m)| Condition {
                    type_: (*t).into(),
                    status: (*s).into(),
                    reason: (*r).into(),
                    message: (*m).into(),
                    ..Condition::default()
                })
                .collect(),
            ..ModelEndpointStatus::default()
        }
    }

    #[test]
    fn a_degraded_endpoint_is_a_warning_once_per_new_message() {
        let invalid = status(&[
            (
                READY,
                "False",
                REASON_INVALID_SPEC,
                "spec.variants: weights",
            ),
            (
                DEGRADED,
                "True",
                REASON_INVALID_SPEC,
                "spec.variants: weights",
            ),
        ]);
        let e = endpoint_events(None, &invalid);
        assert_eq!(reasons(&e), [(EventType::Warning, REASON_INVALID_SPEC)]);
        assert_eq!(e[0].note, "spec.variants: weights");
        assert_eq!(endpoint_events(Some(&invalid), &invalid), []);
        let crashing = status(&[
            (READY, "False", REASON_MODEL_CRASH_LOOPING, "b/m3: pod p"),
            (DEGRADED, "True", REASON_MODEL_CRASH_LOOPING, "b/m3: pod p"),
        ]);
        assert_eq!(
            reasons(&endpoint_events(Some(&invalid), &crashing)),
            [(EventType::Warning, REASON_MODEL_CRASH_LOOPING)]
        );
        // Fixed: available again, once.
        let ready = status(&[
            (READY, "True", REASON_AVAILABLE, "every variant serves"),
            (DEGRADED, "False", "Reconciled", "spec is valid and applied"),
        ]);
        assert_eq!(
            reasons(&endpoint_events(Some(&crashing), &ready)),
            [(EventType::Normal, REASON_AVAILABLE)]
        );
        assert_eq!(endpoint_events(Some(&ready), &ready), []);
    }

    #[test]
    fn an_invalid_model_is_a_warning_once() {
        let bad = ModelStatus {
            observed_generation: None,
            conditions: status(&[(READY, "False", REASON_INVALID_SPEC, "spec.image: empty")])
                .conditions,
        };
        let e = model_events(None, &bad);
        assert_eq!(reasons(&e), [(EventType::Warning, REASON_INVALID_SPEC)]);
        assert_eq!(model_events(Some(&bad), &bad), []);
        let good = ModelStatus {
            observed_generation: None,
            conditions: status(&[(READY, "True", REASON_AVAILABLE, "spec is valid")]).conditions,
        };
        assert_eq!(model_events(Some(&bad), &good), []);
    }

    #[test]
    fn a_note_is_one_line_of_at_most_a_kilobyte() {
        let long = format!("line one\n{}", "x".repeat(4000));
        let e = Event::new(EventType::Warning, "R", actions::RECONCILE, &long);
        assert!(e.note.len() <= NOTE_MAX_BYTES && !e.note.contains('\n'));
        assert_eq!(
            e.to_string(),
            format!("{} (Warning R)", e.note),
            "local mode's line"
        );
    }
}
