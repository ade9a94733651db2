//! Why a model's pods do not serve, named: crash-looping, OOM-killed, an artifact that cannot
//! be fetched or verified (the init container that fetches it fails), or a server that runs
//! but never passes its readiness probe. The operator lists the pods of each variant-model's
//! Deployment and hands [`failure_of`]'s summary to the decision, which puts its reason and
//! message on the endpoint's conditions instead of a generic `WaitingForReplicas`.
//!
//! Termination messages are written by the tenant's container: they are clipped
//! ([`MESSAGE_MAX_BYTES`], control characters replaced) before they reach a status or an Event.

use crate::crd::conditions::{
    REASON_ARTIFACT_FETCH_FAILED, REASON_MODEL_CRASH_LOOPING, REASON_MODEL_NOT_READY,
    REASON_MODEL_OOM_KILLED,
};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod};
use std::collections::BTreeMap;

/// At most this many bytes of a container's termination message are kept.
pub const MESSAGE_MAX_BYTES: usize = 256;
/// A container that runs this long without passing its readiness probe is reported.
pub const NOT_READY_AFTER_SECONDS: i64 = 60;

/// What is wrong with a model's pods, least severe first (the worst one is reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    /// Runs, but its readiness probe has not passed for [`NOT_READY_AFTER_SECONDS`] (or its
    /// image cannot be pulled).
    NotReady,
    /// The model server exits and Kubernetes restarts it with a back-off.
    CrashLooping,
    /// The model server was killed for exceeding its memory limit.
    OomKilled,
    /// The init container that fetches and verifies the artifact fails.
    ArtifactFetchFailed,
}

impl FailureKind {
    /// The condition (and Event) reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotReady => REASON_MODEL_NOT_READY,
            Self::CrashLooping => REASON_MODEL_CRASH_LOOPING,
            Self::OomKilled => REASON_MODEL_OOM_KILLED,
            Self::ArtifactFetchFailed => REASON_ARTIFACT_FETCH_FAILED,
        }
    }
}

/// A variant-model's worst failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFailure {
    pub kind: FailureKind,
    /// Which pod and container, how it ended, and its last termination message (clipped).
    pub message: String,
}

/// Failures by `(variant, model)`; a pair that is absent has none.
pub type Failures = BTreeMap<(String, String), ModelFailure>;

/// `text` on one line and at most `max` bytes (cut at a character boundary, `…` marking the
/// cut): safe to put in a condition message or an Event note whatever a container wrote.
pub fn clip(text: &str, max: usize) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() <= max {
        return line;
    }
    let mark = '…';
    let mut end = max.saturating_sub(mark.len_utf8());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &line[..end])
}

/// The worst failure among one variant-model's `pods`, if any. `now_unix` dates a readiness
/// probe that has not passed yet.
pub fn failure_of(pods: &[Pod], now_unix: i64) -> Option<ModelFailure> {
    pods.iter()
        .filter_map(|p| pod_failure(p, now_unix))
        // The worst kind; among equals the first pod by name, so the message is stable.
        .min_by(|a, b| b.0.kind.cmp(&a.0.kind).then_with(|| a.1.cmp(&b.1)))
        .map(|(f, _)| f)
}

fn pod_failure(pod: &Pod, now_unix: i64) -> Option<(ModelFailure, String)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    init.filter_map(init_failure)
        .chain(main.filter_map(|c| container_failure(c, now_unix)))
        .max_by_key(|(kind, _)| *kind)
        .map(|(kind, what)| {
            let message = format!("pod {name}: {what}");
            (ModelFailure { kind, message }, name)
        })
}

/// The init container fetches and verifies the artifact: any failure of it is the artifact's.
fn init_failure(c: &ContainerStatus) -> Option<(FailureKind, String)> {
    if let Some(what) = image_problem(c) {
        return Some((FailureKind::NotReady, what));
    }
    let ended = failed(c.state.as_ref()).or_else(|| failed(c.last_state.as_ref()))?;
    Some((
        FailureKind::ArtifactFetchFailed,
        format!("init container {} {}", c.name, ended_text(ended)),
    ))
}

fn container_failure(c: &ContainerStatus, now_unix: i64) -> Option<(FailureKind, String)> {
    if let Some(what) = image_problem(c) {
        return Some((FailureKind::NotReady, what));
    }
    let ended = failed(c.state.as_ref()).or_else(|| failed(c.last_state.as_ref()));
    if let Some(t) = ended.filter(|t| t.reason.as_deref() == Some("OOMKilled")) {
        return Some((
            FailureKind::OomKilled,
            format!("container {} {}", c.name, ended_text(t)),
        ));
    }
    if let Some(t) = ended.filter(|_| waiting_reason(c) == Some("CrashLoopBackOff") || !c.ready) {
        let backoff = if waiting_reason(c) == Some("CrashLoopBackOff") {
            ", restarted with a back-off (CrashLoopBackOff)"
        } else {
            ""
        };
        return Some((
            FailureKind::CrashLooping,
            format!("container {} {}{backoff}", c.name, ended_text(t)),
        ));
    }
    let running_since = c
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .map(|t| t.0.as_second())?;
    (!c.ready && now_unix - running_since >= NOT_READY_AFTER_SECONDS).then(|| {
        (
            FailureKind::NotReady,
            format!(
                "container {} runs but has not passed its readiness probe for {NOT_READY_AFTER_SECONDS}s",
                c.name
            ),
        )
    })
}

/// A termination that is a failure: a non-zero exit, or a kill (OOM) whatever the code.
fn failed(state: Option<&ContainerState>) -> Option<&ContainerStateTerminated> {
    state
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.exit_code != 0 || t.reason.as_deref() == Some("OOMKilled"))
}

fn waiting_reason(c: &ContainerStatus) -> Option<&str> {
    c.state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
}

/// The container's image cannot be pulled or its configuration is refused.
fn image_problem(c: &ContainerStatus) -> Option<String> {
    let reason = waiting_reason(c)?;
    let known = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
    ];
    known.contains(&reason).then(|| {
        let detail = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.message.as_deref())
            .map(|m| format!(": {}", clip(m, MESSAGE_MAX_BYTES)))
            .unwrap_or_default();
        format!("container {} waits: {reason}{detail}", c.name)
    })
}

/// `exited 3 (Error): <termination message>`.
fn ended_text(t: &ContainerStateTerminated) -> String {
    let reason = t
        .reason
        .as_deref()
        .map(|r| format!(" ({})", clip(r, 64)))
        .unwrap_or_default();
    let message = t
        .message
        .as_deref()
        .map(|m| clip(m, MESSAGE_MAX_BYTES))
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!("exited {}{reason}{message}", t.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(name: &str, status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": status,
        }))
        .unwrap()
    }

    fn container(name: &str, ready: bool, state: Value, last: Value) -> Value {
        json!({"name": name, "ready": ready, "restartCount": 3, "image": "i", "imageID": "",
               "state": state, "lastState": last})
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_crash_looping_server_is_named_with_its_exit_code_and_termination_message() {
        let p = pod(
            "m-1",
            json!({"containerStatuses": [container("model", false,
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                json!({"terminated": {"exitCode": 2, "reason": "Error", "message": "error: unknown flag --bogus"}}))]}),
        );
        let f = failure_of(&[p], NOW).unwrap();
        assert_eq!(f.kind.reason(), REASON_MODEL_CRASH_LOOPING);
        assert_eq!(
            f.message,
            "pod m-1: container model exited 2 (Error): error: unknown flag --bogus, restarted with a back-off (CrashLoopBackOff)"
        );
    }

    #[test]
    fn an_oom_killed_server_is_named_even_while_it_crash_loops() {
        let p = pod(
            "m-1",
            json!({"containerStatuses": [container("model", false,
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))]}),
        );
        let f = failure_of(&[p], NOW).unwrap();
        assert_eq!(f.kind, FailureKind::OomKilled);
        assert_eq!(f.message, "pod m-1: container model exited 137 (OOMKilled)");
    }

    #[test]
    fn a_failing_init_container_is_an_artifact_that_cannot_be_fetched() {
        let p = pod(
            "m-1",
            json!({"initContainerStatuses": [container("model-init", false,
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                json!({"terminated": {"exitCode": 4, "reason": "Error", "message": "sha256 mismatch: want aa, got bb"}}))],
              "containerStatuses": [container("model", false, json!({"waiting": {"reason": "PodInitializing"}}), json!({}))]}),
        );
        let f = failure_of(&[p], NOW).unwrap();
        assert_eq!(f.kind.reason(), REASON_ARTIFACT_FETCH_FAILED);
        assert!(
            f.message
                .contains("init container model-init exited 4 (Error): sha256 mismatch"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_server_that_never_passes_its_readiness_probe_is_named_after_a_grace() {
        let started = |ago: i64| {
            let t = k8s_openapi::jiff::Timestamp::from_second(NOW - ago).unwrap();
            pod(
                "m-1",
                json!({"containerStatuses": [container("model", false,
                    json!({"running": {"startedAt": t.to_string()}}), json!({}))]}),
            )
        };
        assert_eq!(failure_of(&[started(5)], NOW), None);
        let f = failure_of(&[started(NOT_READY_AFTER_SECONDS)], NOW).unwrap();
        assert_eq!(f.kind.reason(), REASON_MODEL_NOT_READY);
        assert!(f.message.contains("readiness probe"), "{}", f.message);
    }

    #[test]
    fn healthy_and_starting_pods_are_no_failure() {
        let ready = pod(
            "m-1",
            json!({"containerStatuses": [container("model", true,
                json!({"running": {}}),
                // A clean earlier exit (e.g. a node drain) is no failure either.
                json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))]}),
        );
        let pending = pod("m-2", json!({"phase": "Pending"}));
        assert_eq!(failure_of(&[ready, pending], NOW), None);
    }

    #[test]
    fn the_worst_failure_among_pods_wins_and_ties_go_to_the_first_pod() {
        let crash = |name: &str| {
            pod(
                name,
                json!({"containerStatuses": [container("model", false,
                    json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                    json!({"terminated": {"exitCode": 1}}))]}),
            )
        };
        let oom = pod(
            "m-9",
            json!({"containerStatuses": [container("model", false, json!({"running": {}}),
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))]}),
        );
        let f = failure_of(&[crash("m-2"), oom, crash("m-1")], NOW).unwrap();
        assert_eq!(f.kind, FailureKind::OomKilled);
        let f = failure_of(&[crash("m-2"), crash("m-1")], NOW).unwrap();
        assert!(f.message.starts_with("pod m-1:"), "{}", f.message);
    }

    #[test]
    fn a_tenants_termination_message_is_clipped_to_one_short_line() {
        let long = format!("first line\nsecond\u{7}{}", "é".repeat(400));
        let p = pod(
            "m-1",
            json!({"containerStatuses": [container("model", false,
                json!({"waiting": {"reason": "CrashLoopBackOff"}}),
                json!({"terminated": {"exitCode": 1, "message": long}}))]}),
        );
        let f = failure_of(&[p], NOW).unwrap();
        assert!(!f.message.chars().any(char::is_control), "{}", f.message);
        assert!(f.message.contains("first line second "), "{}", f.message);
        assert!(
            f.message.len() < MESSAGE_MAX_BYTES + 120,
            "{}",
            f.message.len()
        );
        let clipped = clip(&"é".repeat(400), MESSAGE_MAX_BYTES);
        assert!(clipped.len() <= MESSAGE_MAX_BYTES && clipped.ends_with('…'));
        assert_eq!(clip("short", MESSAGE_MAX_BYTES), "short");
    }
}
