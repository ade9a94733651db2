//! Autoscaling as rendered: an HPA for a CPU target, the operator's replicas for a request-rate
//! target.

use super::*;
use crate::crd::AutoscalingSpec;

fn autoscaling(cpu: Option<i32>, rps: Option<f64>, window: Option<i32>) -> AutoscalingSpec {
    AutoscalingSpec {
        min_replicas: 2,
        max_replicas: 5,
        target_cpu_utilization_percentage: cpu,
        target_requests_per_second: rps,
        scale_down_stabilization_seconds: window,
        scale_to_zero_after_seconds: None,
    }
}

#[test]
fn a_cpu_target_renders_an_hpa_and_leaves_replicas_to_it() {
    let mut ep = endpoint();
    ep.spec.variants[0].autoscaling = Some(autoscaling(Some(60), None, None));
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let hpa = find(&objs, "HorizontalPodAutoscaler", "titanic-a-m1");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "titanic-a-m1");
    assert_eq!(
        (&hpa["spec"]["minReplicas"], &hpa["spec"]["maxReplicas"]),
        (&json!(2), &json!(5))
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        60
    );
    assert!(find(&objs, "Deployment", "titanic-a-m1")["spec"]
        .get("replicas")
        .is_none());
    assert_eq!(
        find(&objs, "Deployment", "titanic-b-m2")["spec"]["replicas"],
        2
    );
}

#[test]
fn an_hpa_stabilizes_scale_down_over_the_window_and_leaves_scale_up_at_its_defaults() {
    let mut ep = endpoint();
    ep.spec.variants[0].autoscaling = Some(autoscaling(None, None, None));
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let hpa = find(&objs, "HorizontalPodAutoscaler", "titanic-a-m1");
    assert_eq!(
        hpa["spec"]["behavior"],
        json!({"scaleDown": {"stabilizationWindowSeconds": 300}}),
        "the HPA's own default, explicit"
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    ep.spec.variants[0].autoscaling = Some(autoscaling(Some(70), None, Some(30)));
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let hpa = find(&objs, "HorizontalPodAutoscaler", "titanic-a-m1");
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        30
    );
}

#[test]
fn a_request_rate_target_renders_no_hpa_and_the_operators_replicas() {
    let mut ep = endpoint();
    ep.spec.variants[1].autoscaling = Some(autoscaling(None, Some(5.0), None));
    let mut plan = Plan::assume_ready(&ep.spec);
    let objs = render(&ep, &plan);
    assert!(
        !objs.iter().any(|o| o["kind"] == "HorizontalPodAutoscaler"),
        "the operator scales it, no HPA"
    );
    assert_eq!(
        find(&objs, "Deployment", "titanic-b-m2")["spec"]["replicas"],
        2,
        "minReplicas before the operator decided"
    );
    plan.scaled.insert(("b".into(), "m2".into()), 4);
    let objs = render(&ep, &plan);
    assert_eq!(
        find(&objs, "Deployment", "titanic-b-m2")["spec"]["replicas"],
        4
    );
    // Fixed replicas elsewhere stay as they are.
    assert_eq!(
        find(&objs, "Deployment", "titanic-a-m1")["spec"]["replicas"],
        2
    );
}

/// The plan of `ep` while variant b moves from m2 to m3 (both running).
fn b_rolling_out(ep: &ModelEndpoint) -> Plan {
    let mut plan = Plan::assume_ready(&ep.spec);
    plan.rollout = Some(RolloutPlan {
        variant: "b".into(),
        models: Some(vec!["m2".into(), "m3".into()]),
        split: None,
        mirror: None,
        route_model: None,
    });
    plan
}

#[test]
fn during_a_rollout_each_deployment_of_the_variant_renders_its_own_decision() {
    let mut ep = endpoint();
    ep.spec.variants[1].model = "m3".into();
    ep.spec.variants[1].autoscaling = Some(autoscaling(None, Some(5.0), None));
    let mut plan = b_rolling_out(&ep);
    plan.scaled.insert(("b".into(), "m2".into()), 5);
    plan.scaled.insert(("b".into(), "m3".into()), 3);
    let objs = render(&ep, &plan);
    let replicas = |name: &str| find(&objs, "Deployment", name)["spec"]["replicas"].clone();
    assert_eq!(
        (replicas("titanic-b-m2"), replicas("titanic-b-m3")),
        (json!(5), json!(3))
    );
}

#[test]
fn during_a_rollout_each_deployment_of_a_cpu_scaled_variant_has_its_own_hpa() {
    let mut ep = endpoint();
    ep.spec.variants[1].model = "m3".into();
    ep.spec.variants[1].autoscaling = Some(autoscaling(Some(50), None, None));
    let plan = b_rolling_out(&ep);
    let objs = render(&ep, &plan);
    for d in ["titanic-b-m2", "titanic-b-m3"] {
        let hpa = find(&objs, "HorizontalPodAutoscaler", d);
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], d);
        assert!(find(&objs, "Deployment", d)["spec"]
            .get("replicas")
            .is_none());
    }
    // Once the rollout is over, only the serving model's.
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let hpas: Vec<_> = objs
        .iter()
        .filter(|o| o["kind"] == "HorizontalPodAutoscaler")
        .map(|o| o["metadata"]["name"].clone())
        .collect();
    assert_eq!(hpas, vec![json!("titanic-b-m3")]);
}
