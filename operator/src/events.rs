//! Publishing the Events core decided (`mlep_core::events`) with kube's recorder, on the
//! ModelEndpoint or Model they concern; `kubectl describe` lists them.
//!
//! A fresh recorder per Event: kube's recorder folds events with the same reason on the same
//! object into one series (a patch of the first) and keeps the first note, which would show a
//! rollout's first step for every step, and two variants' `Rescaled` of one reconcile as one.
//! Core emits an event only when the status changes, so there is nothing to fold; the events
//! are only created (RBAC: `events.k8s.io` `events` `create`; seen on the bed: a second
//! `FellAsleep` of one reconcile was a forbidden patch while one recorder served both). A failed publish is logged and
//! counted, never a failed reconcile.

use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use mlep_core::events::{self as decided, Event as Decided};
use mlep_core::render::FIELD_MANAGER;
use tracing::warn;

/// Who reports: the operator, and its pod (`HOSTNAME`) when it runs in one.
pub fn reporter() -> Reporter {
    Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
    }
}

/// Publish `events` on `regarding`, in order.
pub async fn publish(
    client: &Client,
    reporter: &Reporter,
    metrics: &Metrics,
    regarding: &ObjectReference,
    events: &[Decided],
) {
    if events.is_empty() {
        return;
    }
    for e in events {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        let event = Event {
            type_: match e.type_ {
                decided::EventType::Normal => EventType::Normal,
                decided::EventType::Warning => EventType::Warning,
            },
            reason: e.reason.clone(),
            note: Some(e.note.clone()),
            action: e.action.into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, regarding).await {
            warn!(%error, reason = %e.reason, "event not published");
            metrics.failure("EventNotPublished");
        }
    }
}
