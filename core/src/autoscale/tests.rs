use super::*;
use crate::crd::{ModelEndpointSpec, VariantSpec};
use crate::events::EventType;

const WINDOW: i64 = 60;

fn rule() -> RpsRule {
    RpsRule {
        target: 10.0,
        min: 1,
        max: 20,
        window_seconds: WINDOW,
        zero_after_seconds: None,
    }
}

fn key() -> ScaleKey {
    ScaleKey {
        namespace: "ml".into(),
        endpoint: "titanic".into(),
        variant: "b".into(),
        model: "m2".into(),
    }
}

fn reasons(step: &Step) -> Vec<&str> {
    step.events.iter().map(|e| e.reason.as_str()).collect()
}

/// Feed `rate` every sync period from `from` to `to` (inclusive), each step on the replicas
/// the last one decided; the replicas decided at each time.
fn run(s: &mut Autoscaler, current: &mut i32, rate: f64, from: i64, to: i64) -> Vec<(i64, i32)> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= to {
        let step = s.step(&key(), &rule(), *current, Some(Observation::Rate(rate)), t);
        *current = step.scaled.replicas;
        out.push((t, *current));
        t += SYNC_PERIOD_SECONDS as i64;
    }
    out
}

#[test]
fn the_recommendation_is_the_rate_over_the_target_rounded_up() {
    assert_eq!(recommend(41.0, &rule(), 2), 5);
    assert_eq!(recommend(10.0, &rule(), 5), 1);
    assert_eq!(recommend(0.5, &rule(), 3), 1);
}

#[test]
fn within_the_tolerance_band_the_current_count_stays() {
    let r = RpsRule {
        target: 1.0,
        ..rule()
    };
    // 10 replicas at 1 rps each: 10.9 rps is 9 % over their capacity, so no 11th replica.
    assert_eq!(recommend(10.9, &r, 10), 10);
    assert_eq!(recommend(9.05, &r, 10), 10);
    // Outside the band it scales, both ways.
    assert_eq!(recommend(11.2, &r, 10), 12);
    assert_eq!(recommend(8.95, &r, 10), 9);
    // No replica yet: no capacity to be near.
    assert_eq!(recommend(3.0, &r, 0), 3);
}

#[test]
fn the_recommendation_is_clamped_to_the_bounds() {
    let r = RpsRule {
        min: 2,
        max: 6,
        ..rule()
    };
    assert_eq!(recommend(0.0, &r, 4), 2);
    assert_eq!(recommend(1000.0, &r, 4), 6);
    assert_eq!(recommend(1e300, &r, 4), 6, "a huge rate is the maximum");
    assert_eq!(recommend(-5.0, &r, 4), 2, "a negative rate is none");
}

#[test]
fn scaling_up_applies_at_once_and_says_why() {
    let mut s = Autoscaler::new();
    let mut current = 2;
    run(&mut s, &mut current, 20.0, 0, 300);
    assert_eq!(current, 2);
    let step = s.step(&key(), &rule(), 2, Some(Observation::Rate(80.0)), 315);
    assert_eq!(step.scaled.replicas, 8);
    assert_eq!(step.scaled.per_replica, Some(40.0));
    assert_eq!(reasons(&step), [reasons::RESCALED]);
    assert_eq!(
        step.events[0].note,
        "variant b, model m2: 2 -> 8 replicas (40 rps/replica measured, target 10 rps/replica)"
    );
    assert_eq!(step.events[0].type_, EventType::Normal);
    assert_eq!(step.warning, None);
}

#[test]
fn scaling_down_waits_until_the_higher_recommendations_leave_the_window() {
    let mut s = Autoscaler::new();
    let mut current = 1;
    // Busy long enough to cover a window: 8 replicas.
    run(&mut s, &mut current, 80.0, 0, 45);
    assert_eq!(current, 8);
    // Quiet from t=60: the last recommendation of 8 (t=45) stays in the window until t=105.
    let quiet = run(&mut s, &mut current, 20.0, 60, 120);
    assert_eq!(
        quiet,
        [(60, 8), (75, 8), (90, 8), (105, 2), (120, 2)],
        "down to the highest recommendation of the last {WINDOW} s"
    );
}

#[test]
fn scaling_down_goes_to_the_highest_recommendation_of_the_window() {
    let mut s = Autoscaler::new();
    let mut current = 1;
    run(&mut s, &mut current, 80.0, 0, 60);
    run(&mut s, &mut current, 50.0, 75, 75);
    assert_eq!(current, 8, "5 recommended, 8 still in the window");
    // Quiet: 8 while t=60's recommendation is in the window, 5 while t=75's is, then 2.
    let later = run(&mut s, &mut current, 20.0, 90, 135);
    assert_eq!(later, [(90, 8), (105, 8), (120, 5), (135, 2)]);
}

#[test]
fn a_zero_window_scales_down_at_once() {
    let mut s = Autoscaler::new();
    let r = RpsRule {
        window_seconds: 0,
        ..rule()
    };
    let step = s.step(&key(), &r, 8, Some(Observation::Rate(20.0)), 0);
    assert_eq!(step.scaled.replicas, 2);
}

#[test]
fn without_history_nothing_goes_down_until_a_window_of_fresh_recommendations_exists() {
    // An operator restart: 8 replicas running, the load is gone, no history.
    let mut s = Autoscaler::new();
    let mut current = 8;
    let seen = run(&mut s, &mut current, 20.0, 0, 75);
    assert_eq!(
        seen,
        [(0, 8), (15, 8), (30, 8), (45, 8), (60, 2), (75, 2)],
        "held for one window ({WINDOW} s) of recommendations, then down"
    );
    // Up needs no history.
    let mut fresh = Autoscaler::new();
    let step = fresh.step(&key(), &rule(), 2, Some(Observation::Rate(80.0)), 0);
    assert_eq!(step.scaled.replicas, 8);
}

#[test]
fn a_long_pause_in_the_recommendations_counts_as_no_history() {
    let mut s = Autoscaler::new();
    let mut current = 8;
    run(&mut s, &mut current, 80.0, 0, 120);
    // Nothing recommended for five minutes (e.g. Prometheus was away), then a quiet reading.
    let after = run(&mut s, &mut current, 20.0, 420, 480);
    assert_eq!(
        after,
        [(420, 8), (435, 8), (450, 8), (465, 8), (480, 2)],
        "a fresh window first"
    );
}

#[test]
fn missing_data_keeps_the_count_and_is_reported_once_per_outage() {
    let mut s = Autoscaler::new();
    let k = key();
    let none = s.step(&k, &rule(), 6, Some(Observation::NoData), 0);
    assert_eq!(
        none.scaled,
        Scaled {
            replicas: 6,
            per_replica: None
        }
    );
    assert_eq!(reasons(&none), [reasons::AUTOSCALE_METRICS_UNAVAILABLE]);
    assert_eq!(none.events[0].type_, EventType::Warning);
    assert!(
        none.events[0].note.contains("variant b, model m2")
            && none.events[0].note.contains("keeping 6 replicas"),
        "{:?}",
        none.events
    );
    // Still missing: logged every time, told once.
    let failed = Observation::Failed("prometheus query failed: HTTP 500".into());
    let again = s.step(&k, &rule(), 6, Some(failed), 15);
    assert_eq!(again.scaled.replicas, 6);
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert!(again
        .warning
        .as_deref()
        .is_some_and(|w| w.contains("HTTP 500")));
    // Back: said once, and it scales again.
    let back = s.step(&k, &rule(), 6, Some(Observation::Rate(120.0)), 30);
    assert_eq!(back.scaled.replicas, 12);
    assert_eq!(
        reasons(&back),
        [reasons::AUTOSCALE_METRICS_AVAILABLE, reasons::RESCALED]
    );
    assert_eq!(back.warning, None);
}

#[test]
fn missing_data_is_no_recommendation_for_the_window() {
    let mut s = Autoscaler::new();
    let mut current = 8;
    run(&mut s, &mut current, 80.0, 0, 45);
    // Missing for a while: no lower recommendations pile up meanwhile...
    for t in [60, 75, 90] {
        let step = s.step(&key(), &rule(), current, Some(Observation::NoData), t);
        assert_eq!(step.scaled.replicas, 8);
    }
    // ...so the first quiet reading goes down once the last real 8 (t=45) has left the window
    // (45, 105]: the missing readings were no recommendation to keep the count.
    let quiet = run(&mut s, &mut current, 20.0, 105, 105);
    assert_eq!(quiet, [(105, 2)]);
}

#[test]
fn bounds_apply_even_without_data() {
    let mut s = Autoscaler::new();
    let r = RpsRule { max: 10, ..rule() };
    let step = s.step(&key(), &r, 12, Some(Observation::NoData), 0);
    assert_eq!(step.scaled.replicas, 10);
    assert!(reasons(&step).contains(&reasons::RESCALED));
}

#[test]
fn between_sync_periods_the_last_decision_stands() {
    let mut s = Autoscaler::new();
    let (k, r) = (key(), rule());
    assert!(s.due(&k, &r, 0), "never measured");
    let first = s.step(&k, &r, 2, Some(Observation::Rate(41.0)), 0);
    assert_eq!(first.scaled.replicas, 5);
    assert!(!s.due(&k, &r, 14));
    let between = s.step(&k, &r, 5, None, 14);
    assert_eq!(between.scaled, first.scaled);
    assert!(between.events.is_empty(), "nothing new to tell");
    assert!(s.due(&k, &r, 15));
    // A changed rule is measured at once, and its bounds apply meanwhile.
    let tighter = RpsRule { max: 3, ..r };
    assert!(s.due(&k, &tighter, 1));
    assert_eq!(s.step(&k, &tighter, 5, None, 1).scaled.replicas, 3);
    // Nothing decided yet: the current count, within the bounds.
    let mut fresh = Autoscaler::new();
    assert_eq!(fresh.step(&k, &r, 0, None, 0).scaled.replicas, 1);
}

#[test]
fn forgotten_deployments_lose_their_history() {
    let mut s = Autoscaler::new();
    let other = ScaleKey {
        endpoint: "iris".into(),
        ..key()
    };
    let swapped = ScaleKey {
        model: "m1".into(),
        ..key()
    };
    for k in [key(), other.clone(), swapped] {
        s.step(&k, &rule(), 1, Some(Observation::Rate(1.0)), 0);
    }
    s.retain("ml", "titanic", &[key()]);
    assert_eq!(s.len(), 2);
    assert!(!s.due(&key(), &rule(), 1) && !s.due(&other, &rule(), 1));
    s.retain("ml", "titanic", &[]);
    assert_eq!(s.len(), 1);
}

#[test]
fn the_request_rate_is_the_filters_counter_of_that_deployment_by_label() {
    assert_eq!(
        key().promql(),
        "sum(rate({__name__=~\"(envoy_)?mlep_requests_total\",endpoint=\"titanic\",namespace=\"ml\",variant=\"b\",model=\"m2\"}[60s]))"
    );
    // Idle for scale to zero: no request counted over the idle time.
    assert_eq!(
        key().idle_promql(30),
        "sum(increase({__name__=~\"(envoy_)?mlep_requests_total\",endpoint=\"titanic\",namespace=\"ml\",variant=\"b\",model=\"m2\"}[30s]))"
    );
}

fn autoscaling(rps: Option<f64>, cpu: Option<i32>) -> AutoscalingSpec {
    AutoscalingSpec {
        min_replicas: 1,
        max_replicas: 10,
        target_cpu_utilization_percentage: cpu,
        target_requests_per_second: rps,
        scale_down_stabilization_seconds: None,
        scale_to_zero_after_seconds: None,
    }
}

#[test]
fn the_target_is_the_request_rate_when_given_else_cpu_at_80_percent() {
    assert_eq!(
        autoscaling(None, None).target(),
        ScaleTarget::CpuPercent(80)
    );
    assert_eq!(target_text(autoscaling(None, Some(60)).target()), "cpu 60%");
    let rps = autoscaling(Some(2.5), None);
    assert_eq!(target_text(rps.target()), "2.5 rps/replica");
    assert_eq!(rps.scale_down_stabilization_seconds(), 300);
    let r = RpsRule::of(&rps).unwrap();
    assert_eq!(
        (r.target, r.min, r.max, r.window_seconds),
        (2.5, 1, 10, 300)
    );
    assert_eq!(RpsRule::of(&autoscaling(None, Some(60))), None);
    assert_eq!(
        [number(5.0), number(4.25), number(1.0 / 3.0), number(0.0)],
        ["5", "4.25", "0.33", "0"]
    );
}

fn endpoint() -> ModelEndpointSpec {
    let mut b = VariantSpec::new("b", "m2", 20);
    b.autoscaling = Some(autoscaling(Some(5.0), None));
    let mut a = VariantSpec::new("a", "m1", 80);
    a.autoscaling = Some(autoscaling(None, None));
    ModelEndpointSpec::new(vec!["t.example.com".into()], vec![a, b])
}

#[test]
fn each_running_deployment_of_a_request_rate_variant_is_scaled_and_requeued_every_sync_period() {
    let spec = endpoint();
    let mut plan = Plan::assume_ready(&spec);
    let keys = |plan: &Plan| -> Vec<(String, String)> {
        rps_deployments("ml", "titanic", &spec, plan)
            .into_iter()
            .map(|(k, _)| (k.variant, k.model))
            .collect()
    };
    assert_eq!(keys(&plan), [("b".to_owned(), "m2".to_owned())]);
    // A model swap runs two Deployments: each scales on the requests it serves.
    plan.variants[1].serving_model = "m1".into();
    assert_eq!(
        keys(&plan),
        [
            ("b".to_owned(), "m1".to_owned()),
            ("b".to_owned(), "m2".to_owned())
        ]
    );
    assert_eq!(
        requeue_after_seconds(&spec),
        Some(SYNC_PERIOD_SECONDS as i64)
    );
    let mut cpu_only = spec.clone();
    cpu_only.variants.truncate(1);
    assert_eq!(requeue_after_seconds(&cpu_only), None);
}

#[test]
fn decisions_reach_the_plan_and_the_serving_models_measurement_reaches_status() {
    let spec = endpoint();
    let mut plan = Plan::assume_ready(&spec);
    let mut status = ModelEndpointStatus {
        variants: spec
            .variants
            .iter()
            .map(|v| crate::crd::VariantStatus {
                name: v.name.clone(),
                model: v.model.clone(),
                autoscaling: v.autoscaling.as_ref().map(variant_status),
                ..Default::default()
            })
            .collect(),
        summary: Some(Default::default()),
        ..Default::default()
    };
    let scaled: BTreeMap<ScaleKey, Scaled> = [
        (
            ScaleKey {
                model: "m2".into(),
                ..key()
            },
            Scaled {
                replicas: 3,
                per_replica: Some(4.2),
            },
        ),
        (
            ScaleKey {
                model: "m0".into(),
                ..key()
            },
            Scaled {
                replicas: 1,
                per_replica: Some(9.0),
            },
        ),
    ]
    .into();
    apply(&spec, &mut plan, &mut status, &scaled, &BTreeMap::new());
    assert_eq!(plan.scaled.get(&("b".into(), "m2".into())), Some(&3));
    assert_eq!(plan.scaled.get(&("b".into(), "m0".into())), Some(&1));
    let b = status.variants[1].autoscaling.as_ref().unwrap();
    assert_eq!(
        (
            b.min_replicas,
            b.max_replicas,
            b.target.as_str(),
            b.current.as_deref()
        ),
        (1, 10, "5 rps/replica", Some("4.2 rps/replica"))
    );
    let a = status.variants[0].autoscaling.as_ref().unwrap();
    assert_eq!((a.target.as_str(), a.current.as_deref()), ("cpu 80%", None));
    assert_eq!(
        status.summary.unwrap().scaling.as_deref(),
        Some("a=1-10 cpu80%,b=1-10 4.2/5rps")
    );
}
