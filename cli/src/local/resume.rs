//! Local mode resumes a rollout after its own restart, as the operator does from
//! `status.rollout`.
//!
//! Each endpoint's rollout status is kept in `<state-dir>/endpoints/<ns>/<name>.rollout.json`
//! (beside the endpoint's allocation, `<name>.json`), written atomically (temporary file, then
//! rename) whenever it changes, before the change is applied (so the file never has fewer
//! moved users than Envoy), together with the strategy it runs under. On start,
//! [`Session::resume_plan`] reads it and [`decide`]s:
//!
//! - a rollout in progress whose spec still names its target model **continues**: the variant
//!   starts on the model it served (`fromModel`; after a BlueGreen switch, `toModel` with the
//!   old model kept for the rest of `terminationWaitSeconds`), the new model's servers start
//!   and answer `/ping` before Envoy starts, and Envoy's first filter config carries exactly
//!   the persisted moved buckets ([`served_plan`]): no user moves twice. The step's clock
//!   restarts once the new model is ready (the analysis window too: local Envoy's counters
//!   restarted with Envoy), so a step never passes on the downtime;
//! - a spec now naming another model **aborts** it (the machine's own abort: every user on the
//!   old model), then the machine starts the new rollout from the old model;
//! - a changed strategy aborts it too: every user starts on the old model and the new strategy
//!   starts over from there (`AllAtOnce`: the spec's model serves everyone at once);
//! - a finished rollout (Promoted, RolledBack, Aborted) is shown and starts nothing (a rollout
//!   that ended short of its target keeps the variant on its old model, as before the restart);
//! - an unreadable state file is reported, naming the file and the problem, and ignored.

use super::{io_err, LocalError, Session};
use crate::load::Input;
use crate::plan::{self, Desired, EndpointPlan, ServerSet};
use mlep_core::crd::{RolloutSpec, RolloutStrategy};
use mlep_core::rollout::{served_plan, Phase, RolloutStatus, Settings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What local mode keeps of an endpoint's rollout: the machine's status and the strategy it
/// ran under (absent in files written before the strategy was kept: then it counts as
/// unchanged).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub(super) struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RolloutStrategy>,
    #[serde(flatten)]
    pub status: RolloutStatus,
}

/// `<state-dir>/endpoints/<namespace>/<name>.rollout.json` for `key` = `namespace/name`.
pub(super) fn state_file(state_dir: &Path, key: &str) -> PathBuf {
    state_dir
        .join("endpoints")
        .join(format!("{key}.rollout.json"))
}

/// Write `saved` atomically: a reader (or a crash) sees the old file or the new one.
pub(super) fn save(state_dir: &Path, key: &str, saved: &Saved) -> Result<(), LocalError> {
    let path = state_file(state_dir, key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let body = serde_json::to_vec_pretty(saved).map_err(|source| LocalError::Json {
        what: "the rollout state",
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))
}

/// The saved rollout of `key`: `None` without a file; an error naming the file and the problem
/// when it cannot be read or parsed.
pub(super) fn load(state_dir: &Path, key: &str) -> Result<Option<Saved>, String> {
    let path = state_file(state_dir, key);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{} is not a rollout state file: {e}", path.display()))
}

/// The saved rollout of `key` (`namespace/name`); for an unreadable file, none and the warning
/// to show (naming the file and the problem): the endpoint starts as if no rollout was in
/// progress.
pub(super) fn load_or_warn(state_dir: &Path, key: &str) -> (Option<Saved>, Option<String>) {
    match load(state_dir, key) {
        Ok(saved) => (saved, None),
        Err(problem) => (
            None,
            Some(format!(
                "warning: {problem}; starting {key} as if no rollout was in progress"
            )),
        ),
    }
}

/// What a restart does with a saved rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Resume {
    /// No rollout ran, or its variant is gone from the spec.
    Nothing,
    /// In progress, same target and strategy: carry on from the saved status.
    Continue,
    /// The spec names another model: the machine aborts the saved rollout first.
    Superseded,
    /// The strategy changed (or is now `AllAtOnce`): users start on the old model, the new
    /// strategy starts over.
    Restarted,
    /// Promoted, rolled back or aborted: shown, starts nothing.
    Finished,
}

/// The decision for `saved` given the spec now: its `strategy` and the model it names for the
/// rollout's variant (`None`: the variant is gone).
pub(super) fn decide(saved: &Saved, strategy: RolloutStrategy, spec_model: Option<&str>) -> Resume {
    let r = &saved.status;
    let Some(spec_model) = spec_model.filter(|_| r.phase != Phase::Idle) else {
        return Resume::Nothing;
    };
    if !r.active() {
        return Resume::Finished;
    }
    let switched = r.phase == Phase::Promoted;
    let changed =
        saved.strategy.is_some_and(|was| was != strategy) || strategy == RolloutStrategy::AllAtOnce;
    // After a BlueGreen switch only the wait is left; the strategy no longer matters.
    if changed && !switched {
        Resume::Restarted
    } else if spec_model != r.to_model {
        Resume::Superseded
    } else {
        Resume::Continue
    }
}

/// The model the variant served to users not moved when mlep stopped.
fn serving_at_stop(r: &RolloutStatus) -> &str {
    if r.phase == Phase::Promoted {
        &r.to_model
    } else {
        &r.from_model
    }
}

/// A resumed rollout's servers to start before Envoy starts.
pub(super) struct Pending {
    variant: String,
    set: ServerSet,
    /// The old model kept after a BlueGreen switch (else: the new model, taking the split).
    blue: bool,
    /// The saved status (its split and mirror are what Envoy's first config carries).
    saved: RolloutStatus,
    rollout: Option<RolloutSpec>,
}

/// What the restart says about a saved rollout of endpoint `name`.
fn describe(
    decision: &Resume,
    name: &str,
    r: &RolloutStatus,
    strategy: RolloutStrategy,
    spec_model: &str,
) -> String {
    let what = format!("{} ({} -> {})", r.variant, r.from_model, r.to_model);
    let said = match decision {
        Resume::Nothing => String::new(),
        Resume::Finished => format!("{:?} {what} (finished before the restart)", r.phase),
        Resume::Superseded => {
            format!("the spec now names {spec_model}: aborting the rollout of {what} first")
        }
        Resume::Restarted if strategy == RolloutStrategy::AllAtOnce => format!(
            "aborted the rollout of {what}: the strategy is now AllAtOnce; \
             every user moves to {spec_model} at once"
        ),
        Resume::Restarted => format!(
            "aborted the rollout of {what}: the strategy is now {strategy:?}; \
             every user starts on {} and the rollout starts over",
            r.from_model
        ),
        Resume::Continue if r.phase == Phase::Promoted => format!(
            "resuming {what} after the switch: every user on {}, \
             {} runs again until the end of terminationWaitSeconds",
            r.to_model, r.from_model
        ),
        Resume::Continue => format!(
            "resuming {what} at step {}, {}% of {}'s users on {} \
             (the step starts over once {} is ready)",
            r.step, r.moved_percent, r.variant, r.to_model, r.to_model
        ),
    };
    format!("rollout {name}: {said}")
}

impl Session {
    /// Before the first start: shape `desired` by each endpoint's saved rollout (see the module
    /// documentation). Returns the desired state to start and the servers of resumed rollouts.
    pub(super) fn resume_plan(
        &mut self,
        desired: Desired,
        input: &Input,
    ) -> (Desired, Vec<Pending>) {
        // What each variant served when mlep stopped.
        let mut before = desired.clone();
        let mut pending = Vec::new();
        for e in &mut before.endpoints {
            pending.extend(self.resume_endpoint(e, input));
        }
        // A variant whose spec model differs from what it served is held back on it, with
        // the spec's model as the rollout's target (as for an edit while running).
        self.desired = before;
        let desired = self.hold_back_model_changes(desired);
        self.desired = Desired::default();
        // After a BlueGreen switch the new model stays the rollout's target while blue runs
        // (as without a restart): a rollback in the wait holds the variant on blue.
        for p in pending.iter().filter(|p| p.blue) {
            if let Some(green) = desired.sets().find(|s| s.key() == p.set.key()) {
                let key = (
                    p.set.namespace.clone(),
                    p.set.endpoint.clone(),
                    p.variant.clone(),
                );
                self.rollouts.targets.insert(key, green.clone());
            }
        }
        (desired, pending)
    }

    /// Read `e`'s saved rollout and decide: `e` becomes what it served when mlep stopped, the
    /// machine gets the status to carry on from, and a continued rollout's other model is
    /// returned to start.
    fn resume_endpoint(&mut self, e: &mut EndpointPlan, input: &Input) -> Option<Pending> {
        let key = format!("{}/{}", e.namespace(), e.name());
        let (saved, warning) = load_or_warn(&self.opts.state_dir, &key);
        if let Some(w) = warning {
            self.ui.say(w);
        }
        let saved = saved?;
        let r = &saved.status;
        let i = e
            .endpoint
            .spec
            .variants
            .iter()
            .position(|v| v.name == r.variant)?;
        let strategy = Settings::of(e.endpoint.spec.rollout.as_ref()).strategy;
        let spec_model = e.endpoint.spec.variants[i].model.clone();
        let decision = decide(&saved, strategy, Some(&spec_model));
        if decision == Resume::Nothing {
            return None;
        }
        let set_of = |model: &str| {
            plan::variant_set(input, &e.endpoint, &e.endpoint.spec.variants[i], model)
        };
        let serving = serving_at_stop(r).to_owned();
        let kept = match set_of(&serving) {
            Ok(set) => set,
            Err(err) => {
                self.ui.say(format!(
                    "warning: rollout {}: cannot resume the rollout of {}: {err}; starting {spec_model}",
                    e.name(),
                    r.variant
                ));
                return None;
            }
        };
        self.ui
            .say(describe(&decision, e.name(), r, strategy, &spec_model));
        let mut pending = None;
        if decision == Resume::Continue {
            let (other, blue) = if r.phase == Phase::Promoted {
                (r.from_model.as_str(), true)
            } else {
                (r.to_model.as_str(), false)
            };
            match set_of(other) {
                Ok(set) => {
                    pending = Some(Pending {
                        variant: r.variant.clone(),
                        set,
                        blue,
                        saved: r.clone(),
                        rollout: e.endpoint.spec.rollout.clone(),
                    })
                }
                Err(err) => self.ui.say(format!(
                    "warning: rollout {}: {err}; {other} does not start",
                    e.name()
                )),
            }
        }
        e.variants[i] = ServerSet {
            replicas: e.variants[i].replicas,
            ..kept
        };
        e.endpoint.spec.variants[i].model = serving;
        let mut status = saved.status;
        if decision == Resume::Continue && status.phase != Phase::Promoted {
            // The step's clock (and analysis window) starts again once the new model is
            // ready: Envoy's counters restart with it.
            status.step_started_unix = None;
        }
        if decision != Resume::Restarted {
            self.rollouts.status.insert(key, status);
        }
        pending
    }

    /// Start the servers of resumed rollouts (before Envoy): the new model takes the saved
    /// split (and a bake's mirror) only once it answers `/ping`; a model that cannot start gets
    /// no users (the machine waits for it, as for any unready new model).
    pub(super) async fn start_resumed(&mut self, pending: Vec<Pending>) {
        for p in pending {
            let started = match self.start_set(&p.set).await {
                Ok(r) => r,
                Err(e) => {
                    self.ui.say(format!(
                        "warning: could not start {} for the resumed rollout: {e}",
                        p.set.label()
                    ));
                    continue;
                }
            };
            let (ns, name) = (p.set.namespace.clone(), p.set.endpoint.clone());
            let key = (ns.clone(), name.clone(), p.variant.clone());
            if p.blue {
                self.rollouts.blue.insert(key, started);
                continue;
            }
            self.rollouts.put_set(&key, started);
            if let Some((plan, _)) = served_plan(p.rollout.as_ref(), &p.saved) {
                if let Some(split) = plan.split {
                    self.rollouts.splits.insert(key, split);
                }
                if let Some(m) = plan.mirror {
                    self.rollouts.mirrors.insert((ns, name), m);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(phase: Phase) -> Saved {
        Saved {
            strategy: Some(RolloutStrategy::Canary),
            status: RolloutStatus {
                phase,
                variant: "b".into(),
                from_model: "m2".into(),
                to_model: "m3".into(),
                step: 1,
                moved_percent: 50,
                moved: "50%".into(),
                moved_buckets: vec![mlep_contract::rollout::Span {
                    start: 8000,
                    end: 9000,
                }],
                started_at: "2026-11-27T16:00:00Z".into(),
                step_started_unix: Some(1_800_000_000),
                paused: true,
                message: "paused by mlep.dev/rollout=pause at step 1".into(),
                ..RolloutStatus::default()
            },
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlep-resume-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_state_file_round_trips_and_a_missing_one_is_no_rollout() {
        let d = dir("round-trip");
        assert_eq!(load(&d, "ns/ep"), Ok(None));
        let saved = canary(Phase::Progressing);
        save(&d, "ns/ep", &saved).unwrap();
        assert_eq!(load(&d, "ns/ep"), Ok(Some(saved.clone())));
        assert!(state_file(&d, "ns/ep").ends_with("endpoints/ns/ep.rollout.json"));
        // Written through a temporary file that does not stay behind.
        assert!(!state_file(&d, "ns/ep").with_extension("json.tmp").exists());
        // A file of a bare status (no strategy kept) still reads.
        let bare = serde_json::to_string(&saved.status).unwrap();
        std::fs::write(state_file(&d, "ns/ep"), bare).unwrap();
        let read = load(&d, "ns/ep").unwrap().unwrap();
        assert_eq!((read.strategy, read.status), (None, saved.status));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_a_warning_naming_the_file_and_the_problem_and_no_rollout() {
        let d = dir("corrupt");
        let path = state_file(&d, "ns/ep");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"phase\": \"Progressing\", \"step\": \"one\"").unwrap();
        let err = load(&d, "ns/ep").unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("EOF while parsing"), "{err}");
        std::fs::write(&path, "{\"phase\": \"Sideways\"}").unwrap();
        let err = load(&d, "ns/ep").unwrap_err();
        assert!(err.contains("unknown variant `Sideways`"), "{err}");
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        let err = load(&d, "ns/ep").unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        // What a start makes of it: no rollout, and a warning naming the file and the problem.
        let (saved, warning) = load_or_warn(&d, "ns/ep");
        let warning = warning.unwrap();
        assert_eq!(saved, None);
        assert!(
            warning.starts_with("warning: ")
                && warning.contains(&path.display().to_string())
                && warning.contains("as if no rollout was in progress"),
            "{warning}"
        );
        save(&d, "ns/ep", &canary(Phase::Progressing)).unwrap();
        assert_eq!(
            load_or_warn(&d, "ns/ep"),
            (Some(canary(Phase::Progressing)), None)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_rollout_in_progress_continues_only_with_the_same_target_and_strategy() {
        let s = canary(Phase::Progressing);
        let c = RolloutStrategy::Canary;
        assert_eq!(decide(&s, c, Some("m3")), Resume::Continue);
        assert_eq!(decide(&s, c, Some("m4")), Resume::Superseded);
        assert_eq!(decide(&s, c, Some("m2")), Resume::Superseded);
        assert_eq!(decide(&s, c, None), Resume::Nothing);
        assert_eq!(
            decide(&s, RolloutStrategy::Linear, Some("m3")),
            Resume::Restarted
        );
        assert_eq!(
            decide(&s, RolloutStrategy::AllAtOnce, Some("m4")),
            Resume::Restarted
        );
        // A file without the strategy: only AllAtOnce counts as a change.
        let unknown = Saved {
            strategy: None,
            ..s.clone()
        };
        assert_eq!(
            decide(&unknown, RolloutStrategy::Linear, Some("m3")),
            Resume::Continue
        );
        assert_eq!(
            decide(&unknown, RolloutStrategy::AllAtOnce, Some("m3")),
            Resume::Restarted
        );
    }

    #[test]
    fn a_finished_rollout_starts_nothing_and_a_blue_green_wait_carries_on() {
        for phase in [Phase::Promoted, Phase::RolledBack, Phase::Aborted] {
            let s = canary(phase);
            assert_eq!(
                decide(&s, RolloutStrategy::Canary, Some("m3")),
                Resume::Finished
            );
            assert_eq!(
                decide(&s, RolloutStrategy::Canary, Some("m4")),
                Resume::Finished
            );
        }
        assert_eq!(
            decide(&Saved::default(), RolloutStrategy::Canary, Some("m3")),
            Resume::Nothing
        );
        let mut wait = canary(Phase::Promoted);
        wait.strategy = Some(RolloutStrategy::BlueGreen);
        wait.status.old_model_until_unix = Some(1_800_000_100);
        assert_eq!(
            decide(&wait, RolloutStrategy::Canary, Some("m3")),
            Resume::Continue
        );
        assert_eq!(
            decide(&wait, RolloutStrategy::BlueGreen, Some("m4")),
            Resume::Superseded
        );
        assert_eq!(serving_at_stop(&wait.status), "m3");
        assert_eq!(serving_at_stop(&canary(Phase::Progressing).status), "m2");
    }
}
