use super::*;
use crate::crd::conditions::{REASON_ABORTED, REASON_ROLLED_BACK};
use crate::crd::ModelEndpointSpec;
use crate::crd::{
    AnalysisSpec, BlueGreenSpec, CanarySpec, LinearSpec, RolloutSpec, RolloutStrategy,
};
use crate::plan::Observed;
use crate::validate::validate_rollout as validate;
use mlep_contract::rollout::{self as split, Span};
use mlep_contract::Allocation;
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
    route_grace_seconds: i64,
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
            route_grace_seconds: 0,
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
            route_grace_seconds: self.route_grace_seconds,
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
fn on_a_mesh_the_route_and_the_first_users_wait_until_the_ready_model_is_warm() {
    let mut w = World::new(rollout(RolloutStrategy::Canary));
    w.route_grace_seconds = 30;
    w.tick();
    assert_eq!(
        w.models(),
        vec!["m2", "m3"],
        "the new model runs from the start"
    );
    w.make_ready("m3");
    let out = w.tick().clone();
    let warm = ROUTE_WARMUP_SECONDS;
    assert_eq!(
        (out.route.clone(), out.split.clone(), w.percent()),
        (None, None, 0),
        "no route names the new subset, and nobody moves, right after its first ready pod"
    );
    assert_eq!(out.requeue_after_seconds, Some(warm));
    assert!(w.metrics.asked.is_empty(), "no step runs yet");
    w.tick_at(warm - 1, Ok(Sample::default()));
    assert_eq!((w.last.route.clone(), w.percent()), (None, 0));
    w.tick_at(1, Ok(Sample::default()));
    assert_eq!(w.last.route, Some(("b".into(), "m3".into())));
    assert_eq!((w.percent(), split::count(&w.moved())), (10, 200));
    let started = w.status.as_ref().and_then(|s| s.step_started_unix);
    assert_eq!(
        started,
        Some(w.now),
        "the step's clock starts with the route"
    );
    // A model that loses its pods warms again before its route comes back.
    w.ready.retain(|(_, m)| m != "m3");
    w.tick_at(10, Ok(Sample::default()));
    assert_eq!((w.last.route.clone(), w.last.split.clone()), (None, None));
    w.make_ready("m3");
    w.tick_at(1, Ok(Sample::default()));
    assert_eq!(w.last.route, None, "back, but not warm yet");
    w.tick_at(warm, Ok(Sample::default()));
    assert_eq!(w.last.route, Some(("b".into(), "m3".into())));
    assert_eq!(split::count(&w.moved()), 200, "the same users move again");
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
fn a_promotion_keeps_the_old_model_for_the_route_grace_period_then_removes_it() {
    let mut w = World::started(RolloutStrategy::Linear);
    w.route_grace_seconds = 30;
    while w.phase() == Phase::Progressing {
        w.tick_at(61, healthy(100));
    }
    assert_eq!(w.phase(), Phase::Promoted);
    assert_eq!(w.last.serving, Some(("b".into(), "m3".into())));
    assert_eq!(w.last.split, None, "every user is on the new model");
    assert_eq!(
        w.models(),
        vec!["m3", "m2"],
        "proxies still holding the last step's config reach m2"
    );
    let route = Some(("b".to_owned(), "m3".to_owned()));
    assert_eq!(
        w.last.route, route,
        "proxies with the new clusters but the old routes still reach m3 by the rollout's route"
    );
    w.tick_at(29, healthy(100));
    assert_eq!(w.models(), vec!["m3", "m2"]);
    assert_eq!(w.last.route, route);
    w.tick_at(1, healthy(100));
    assert_eq!(w.models(), vec!["m3"], "the old model goes after the grace");
    assert_eq!(w.last.route, None, "and the rollout's route with it");
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
    let shown = w.status.clone().unwrap().last_analysis.unwrap();
    assert!(
        shown.passed,
        "the promotion shows the bake's passed check: {shown:?}"
    );
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

fn rolls_back_on(strategy: RolloutStrategy, sample: Sample, check: &str, value: f64, limit: f64) {
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
    // 60 of 100: at most 0.6769 (the 95 % upper bound), under 0.9.
    rolls_back_on(
        RolloutStrategy::BlueGreen,
        s,
        checks::AGREEMENT,
        0.6769,
        0.9,
    );
}

fn copies(compared: u64, agreed: u64) -> Result<Sample, String> {
    Ok(Sample {
        requests: 200,
        compared,
        agreed,
        ..Sample::default()
    })
}

#[test]
fn wilson_bounds_are_those_of_the_textbook() {
    use super::judge::wilson;
    assert_eq!(wilson(0, 0), (0.0, 1.0), "nothing compared: nothing known");
    // All n agreeing: the lower bound is n / (n + z^2).
    let (low, high) = wilson(20, 20);
    assert!((low - 20.0 / (20.0 + 1.645 * 1.645)).abs() < 1e-9 && high == 1.0);
    // 60 of 100 (z = 1.645): 0.5178 .. 0.6769.
    let (low, high) = wilson(60, 100);
    assert!(
        (low - 0.5178).abs() < 1e-4 && (high - 0.6769).abs() < 1e-4,
        "{low} {high}"
    );
    let (low, high) = wilson(0, 50);
    assert!(low == 0.0 && high > 0.0 && high < 0.06, "{high}");
}

#[test]
fn a_bake_passes_on_the_agreement_lower_bound_and_never_on_zero_compared_copies() {
    let mut w = World::started(RolloutStrategy::BlueGreen);
    // Past bakeSeconds with enough requests but no compared copy: no evidence, it waits.
    w.tick_at(130, copies(0, 0));
    assert_eq!(w.phase(), Phase::Baking);
    let message = w.status.as_ref().unwrap().message.clone();
    assert!(
        message.contains("waiting for more compared copies") && message.contains("0 of 0"),
        "{message}"
    );
    // 20 of 20 agreeing: a raw ratio of 1, but at least 0.8808, not yet 0.9.
    w.tick_at(10, copies(20, 20));
    assert_eq!(w.phase(), Phase::Baking);
    let shown = w.status.clone().unwrap().last_analysis.unwrap();
    assert_eq!(
        (shown.check.as_str(), shown.value, shown.limit, shown.passed),
        (checks::AGREEMENT, 0.8808, 0.9, false)
    );
    // 100 of 100: at least 0.9737.
    w.tick_at(10, copies(100, 100));
    assert_eq!(w.phase(), Phase::Promoted);
}

#[test]
fn an_inconclusive_agreement_waits_and_fails_when_the_step_is_overdue() {
    let mut w = World::started(RolloutStrategy::BlueGreen);
    // 45 of 50 (0.9): bounds 0.8085..0.9505 around the limit.
    w.tick_at(130, copies(50, 45));
    assert_eq!(w.phase(), Phase::Baking);
    w.tick_at(200, copies(50, 45));
    let st = w.status.clone().unwrap();
    assert_eq!(st.phase, Phase::RolledBack);
    assert!(st.message.contains("inconclusive"), "{}", st.message);
    assert_eq!(st.last_analysis.unwrap().check, checks::AGREEMENT);
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
        serde_json::Value::String(s) => mlep_contract::FilterConfig::from_json(s.as_bytes()).ok(),
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
                        woken_at: None,
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
        "rollout-test-route-key",
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
            Some("Deployment") if o["metadata"]["name"] == "titanic-b-m3" => r.deployment = Some(i),
            Some("DestinationRule") if text.contains(&format!("\"{subset}\"")) => {
                r.subset = Some(i)
            }
            Some("VirtualService") if text.contains(&format!("\"{subset}\"")) => r.route = Some(i),
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
