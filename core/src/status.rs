//! Status computation: pure functions from plan and observations to `ModelEndpointStatus`.

use crate::crd::conditions::*;
use crate::crd::{
    Condition, Model, ModelEndpoint, ModelEndpointSpec, ModelEndpointStatus, ModelStatus,
    StatusSummary, VariantStatus,
};
use crate::failure::Failures;
use crate::plan::{Observed, Plan};
use crate::pod_security::{check_model, PodSecurityLevel};
use crate::validate::{validate_model, SpecError};
use mlep_contract::metrics::SHADOW_VARIANT_LABEL;
use mlep_contract::Allocation;

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: None,
        observed_generation: generation,
    }
}

/// Keep `lastTransitionTime` of conditions whose status did not change; stamp `now` on the rest.
fn stamp(
    mut conditions: Vec<Condition>,
    last: Option<&ModelEndpointStatus>,
    now: &str,
) -> Vec<Condition> {
    for c in &mut conditions {
        let prev = last.and_then(|l| l.conditions.iter().find(|p| p.type_ == c.type_));
        c.last_transition_time = match prev {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Some(now.to_owned()),
        };
    }
    conditions
}

/// Status after a reconcile that rendered and applied `plan`; `failures` name why a model's
/// pods do not serve.
pub fn endpoint_status(
    ep: &ModelEndpoint,
    plan: &Plan,
    observed: &Observed,
    failures: &Failures,
    allocation: Allocation,
    last: Option<&ModelEndpointStatus>,
    now: String,
) -> ModelEndpointStatus {
    let generation = ep.metadata.generation;
    let variants = variant_statuses(ep, plan, observed);
    // Ready: every variant routes its spec weight to its spec model with all replicas ready
    // (none, for a variant scaled to zero: the proxies hold its requests while it wakes).
    let floor = |name: &str| {
        let zero =
            ep.spec.variants.iter().any(|s| {
                s.name == name && s.autoscaling.as_ref().is_some_and(|a| a.min_replicas == 0)
            });
        i32::from(!zero)
    };
    let settled = plan.settled(&ep.spec)
        && variants
            .iter()
            .all(|v| v.ready_replicas >= v.replicas.max(floor(&v.name)));
    let mut conditions = applied_conditions(plan, settled, generation);
    if !settled {
        name_failure(&mut conditions, failures);
    }
    conditions.extend(shadow_condition(ep, plan, failures, generation));
    let host = ep.spec.hosts.first().cloned().unwrap_or_default();
    ModelEndpointStatus {
        observed_generation: generation,
        conditions: stamp(conditions, last, &now),
        summary: Some(summary(&ep.spec, &variants)),
        variants,
        phase: Some(if settled { "Ready" } else { "Progressing" }.into()),
        url: Some(format!("http://{host}")),
        allocation: Some(allocation),
        rollout: last.and_then(|l| l.rollout.clone()),
        retiring: plan.retiring.clone(),
        route_key: last.and_then(|l| l.route_key.clone()),
        routed_since_unix: last.and_then(|l| l.routed_since_unix),
        shadow_model: plan.copied_shadow(&ep.spec).map(|s| s.model.clone()),
        mirror_twins: ep.spec.renders_mirror_twins(),
        served_spec: Some(ep.spec.clone()),
    }
}

/// When the routing this status reports was last changed: `now` if the allocation or a
/// variant's routed model or weight differs from `last` (or there is no `last`), else when
/// `last` says (an older status without the field counts as long settled).
pub fn routed_since(
    status: &ModelEndpointStatus,
    last: Option<&ModelEndpointStatus>,
    now: i64,
) -> i64 {
    fn routing(
        s: &ModelEndpointStatus,
    ) -> (Option<&mlep_contract::Allocation>, Vec<(&str, &str, u32)>) {
        let v = s
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.model.as_str(), v.current_weight))
            .collect();
        (s.allocation.as_ref(), v)
    }
    match last {
        Some(l) if routing(l) == routing(status) => l.routed_since_unix.unwrap_or(0),
        _ => now,
    }
}

/// Hold `Ready` (and keep `Progressing`) for `left_seconds` more while the routing reaches the
/// proxies (make before break for users: a user's first request after `Ready` gets the same
/// variant as the ones after it). Transition times follow `last`.
pub fn hold_while_propagating(
    status: &mut ModelEndpointStatus,
    last: Option<&ModelEndpointStatus>,
    left_seconds: i64,
    now: &str,
) {
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    if left_seconds <= 0 || !ready {
        return;
    }
    let message = format!(
        "every variant serves its model at its weight; the proxies receive the routing within {left_seconds}s"
    );
    for c in &mut status.conditions {
        let value = match c.type_.as_str() {
            READY => "False",
            PROGRESSING => "True",
            _ => continue,
        };
        c.status = value.into();
        c.reason = REASON_PROPAGATING.into();
        c.message.clone_from(&message);
    }
    status.conditions = stamp(std::mem::take(&mut status.conditions), last, now);
    status.phase = Some("Progressing".into());
}

/// Per variant: the model and weight routed now, what the spec asks for, and the replicas of
/// the serving Deployment.
fn variant_statuses(ep: &ModelEndpoint, plan: &Plan, observed: &Observed) -> Vec<VariantStatus> {
    plan.variants
        .iter()
        .zip(&ep.spec.variants)
        .map(|(p, s)| {
            let r = observed
                .deployments
                .get(&(p.name.clone(), p.serving_model.clone()))
                .copied()
                .unwrap_or_default();
            VariantStatus {
                name: p.name.clone(),
                model: p.serving_model.clone(),
                desired_model: p.swapping().then(|| p.desired_model.clone()),
                desired_weight: s.weight,
                current_weight: p.weight,
                replicas: r.replicas,
                ready_replicas: r.ready_replicas,
                autoscaling: s.autoscaling.as_ref().map(crate::autoscale::variant_status),
            }
        })
        .collect()
}

/// `Ready`, `Progressing` and `Degraded` of a valid, applied spec.
fn applied_conditions(plan: &Plan, settled: bool, generation: Option<i64>) -> Vec<Condition> {
    let any_ready = plan.variants.iter().any(|v| v.ready);
    let waiting: Vec<&str> = plan
        .variants
        .iter()
        .filter(|v| !v.ready)
        .map(|v| v.name.as_str())
        .collect();
    let swapping: Vec<String> = plan
        .variants
        .iter()
        .filter(|v| v.swapping())
        .map(|v| format!("{} ({} -> {})", v.name, v.serving_model, v.desired_model))
        .collect();
    let (ready_reason, ready_msg) = if settled {
        (
            REASON_AVAILABLE,
            "every variant serves its model at its weight".to_owned(),
        )
    } else if !any_ready {
        (
            REASON_NO_READY_VARIANT,
            "no variant has a ready pod yet".to_owned(),
        )
    } else {
        (
            REASON_WAITING_FOR_REPLICAS,
            format!("waiting for ready pods of: {}", waiting.join(", ")),
        )
    };
    let (progressing_reason, progressing_msg) = if settled {
        (REASON_RECONCILED, "rollout complete".to_owned())
    } else if !swapping.is_empty() {
        (
            REASON_SWAPPING_MODEL,
            format!(
                "model swap waits for the new model to be ready: {}",
                swapping.join(", ")
            ),
        )
    } else {
        (
            REASON_ROLLING_OUT,
            format!(
                "routing around variants that are not ready: {}",
                waiting.join(", ")
            ),
        )
    };
    vec![
        condition(READY, settled, ready_reason, ready_msg, generation),
        condition(
            PROGRESSING,
            !settled,
            progressing_reason,
            progressing_msg,
            generation,
        ),
        condition(
            DEGRADED,
            false,
            REASON_RECONCILED,
            "spec is valid and applied".into(),
            generation,
        ),
    ]
}

/// `ShadowReady`, with a shadow: copies start once its model has a ready pod
/// (`Plan::shadow_ready`); until then the endpoint serves without copying.
fn shadow_condition(
    ep: &ModelEndpoint,
    plan: &Plan,
    failures: &Failures,
    generation: Option<i64>,
) -> Option<Condition> {
    let shadow = ep.spec.shadow.as_ref()?;
    let failure = failures.get(&(SHADOW_VARIANT_LABEL.to_owned(), shadow.model.clone()));
    let (reason, message) = if plan.shadow_ready {
        (
            REASON_AVAILABLE,
            format!("copies go to model {}", shadow.model),
        )
    } else if let Some(f) = failure {
        // Why its pod does not serve, as `Ready` names a variant's (`MlepShadowFailing`).
        (
            f.kind.reason(),
            format!("no copies: shadow model {}: {}", shadow.model, f.message),
        )
    } else {
        (
            REASON_WAITING_FOR_REPLICAS,
            format!(
                "no copies until the shadow model {} has a ready pod",
                shadow.model
            ),
        )
    };
    Some(condition(
        SHADOW_READY,
        plan.shadow_ready,
        reason,
        message,
        generation,
    ))
}

/// A failing model names `Ready` and `Degraded` instead of a generic wait: the worst failure,
/// with its variant and model.
fn name_failure(conditions: &mut [Condition], failures: &Failures) {
    // The shadow serves no user: `ShadowReady` names its failure, not `Ready`.
    let Some(((variant, model), f)) = failures
        .iter()
        .filter(|((variant, _), _)| variant != SHADOW_VARIANT_LABEL)
        .max_by(|a, b| a.1.kind.cmp(&b.1.kind).then_with(|| b.0.cmp(a.0)))
    else {
        return;
    };
    let message = format!("variant {variant}, model {model}: {}", f.message);
    for c in conditions.iter_mut() {
        match c.type_.as_str() {
            READY => {}
            DEGRADED => c.status = "True".into(),
            _ => continue,
        }
        c.reason = f.kind.reason().into();
        c.message.clone_from(&message);
    }
}

/// Printer-column text: `a=m1,b=m2`, `a=80,b=20`, ready over desired replicas, and the
/// autoscaled variants' targets (their measurements come with `crate::autoscale::apply`).
fn summary(spec: &ModelEndpointSpec, variants: &[VariantStatus]) -> StatusSummary {
    let join =
        |f: &dyn Fn(&VariantStatus) -> String| variants.iter().map(f).collect::<Vec<_>>().join(",");
    let ready_total: i32 = variants.iter().map(|v| v.ready_replicas).sum();
    let replicas_total: i32 = variants.iter().map(|v| v.replicas).sum();
    StatusSummary {
        variants: join(&|v| format!("{}={}", v.name, v.model)),
        weights: join(&|v| format!("{}={}", v.name, v.current_weight)),
        ready: format!("{ready_total}/{replicas_total}"),
        scaling: crate::autoscale::summary(spec, &Default::default(), &[]),
    }
}

/// Status of an invalid spec: the condition names the field; everything describing what
/// serves (variants, weights, allocation) stays as it was.
pub fn invalid_status(
    ep: &ModelEndpoint,
    last: Option<&ModelEndpointStatus>,
    error: &SpecError,
    now: String,
) -> ModelEndpointStatus {
    let generation = ep.metadata.generation;
    let mut status = last.cloned().unwrap_or_default();
    let serving = if status.allocation.is_some() {
        "; the last good configuration keeps serving"
    } else {
        ""
    };
    let message = format!("{}: {}{serving}", error.field, error.message);
    let conditions = vec![
        condition(READY, false, error.reason, message.clone(), generation),
        condition(
            PROGRESSING,
            false,
            error.reason,
            "nothing is rolled out until the spec is fixed".into(),
            generation,
        ),
        Condition {
            status: "True".into(),
            ..condition(DEGRADED, true, error.reason, message, generation)
        },
    ];
    // The shadow keeps what it had too (`shadowModel` stays with the rest of the status).
    let shadow = last.and_then(|l| l.conditions.iter().find(|c| c.type_ == SHADOW_READY));
    let conditions = conditions.into_iter().chain(shadow.cloned()).collect();
    status.observed_generation = generation;
    status.conditions = stamp(conditions, last, &now);
    status.phase = Some("Degraded".into());
    status
}

/// A Model's status: `Ready` when its spec is valid and its pods meet the operator's Pod
/// Security `level` (the transition time is kept while the condition's status does not change).
pub fn model_status(m: &Model, level: PodSecurityLevel, now: String) -> ModelStatus {
    let generation = m.metadata.generation;
    let checked = validate_model(&m.spec).and_then(|()| check_model(&m.spec, level));
    let c = match checked {
        Ok(()) => condition(
            READY,
            true,
            REASON_AVAILABLE,
            "spec is valid".into(),
            generation,
        ),
        Err(e) => condition(
            READY,
            false,
            e.reason,
            format!("{}: {}", e.field, e.message),
            generation,
        ),
    };
    let last = m
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|p| p.type_ == READY));
    let c = Condition {
        last_transition_time: match last {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Some(now),
        },
        ..c
    };
    ModelStatus {
        observed_generation: generation,
        conditions: vec![c],
    }
}

/// Whether writing `b` over `a` would change nothing (plain equality, timestamps included:
/// `stamp` carries a condition's `lastTransitionTime` over while its status stays, so a
/// reconcile that changes nothing computes an equal status and writes nothing).
pub fn same_status(a: &ModelEndpointStatus, b: &ModelEndpointStatus) -> bool {
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ModelEndpointSpec, VariantSpec};
    use crate::plan::{plan, Readiness};

    fn ep() -> ModelEndpoint {
        let v = |n: &str, m: &str, w| VariantSpec {
            name: n.into(),
            model: m.into(),
            weight: w,
            replicas: Some(2),
            autoscaling: None,
            resources: None,
        };
        let mut e = ModelEndpoint::new(
            "titanic",
            ModelEndpointSpec {
                hosts: vec!["titanic.example.com".into()],
                gateway: None,
                variants: vec![v("a", "m1", 80), v("b", "m2", 20)],
                routing: Default::default(),
                shadow: None,
                filter_wiring: Default::default(),
                expose: None,
                rollout: None,
                data_capture: None,
            },
        );
        e.metadata.generation = Some(3);
        e
    }

    fn observed(b_ready: i32) -> Observed {
        let r = |ready| Readiness {
            replicas: 2,
            ready_replicas: ready,
            woken_at: None,
        };
        Observed {
            deployments: [
                (("a".into(), "m1".into()), r(2)),
                (("b".into(), "m2".into()), r(b_ready)),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn status_for(b_ready: i32, last: Option<&ModelEndpointStatus>) -> ModelEndpointStatus {
        let e = ep();
        let o = observed(b_ready);
        let p = plan(&e.spec, last, &o);
        let alloc = Allocation::initial(&p.weights()).unwrap();
        endpoint_status(
            &e,
            &p,
            &o,
            &Failures::new(),
            alloc,
            last,
            "2026-01-01T00:00:00Z".into(),
        )
    }

    fn cond<'a>(s: &'a ModelEndpointStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn shadow_ready_says_whether_copies_go_and_leaves_ready_to_the_variants() {
        let mut e = ep();
        let status = |e: &ModelEndpoint, o: &Observed| {
            let p = plan(&e.spec, None, o);
            let alloc = Allocation::initial(&p.weights()).unwrap();
            endpoint_status(e, &p, o, &Failures::new(), alloc, None, "t".into())
        };
        let s = status(&e, &observed(2));
        assert!(
            s.conditions.iter().all(|c| c.type_ != SHADOW_READY),
            "no shadow, no condition"
        );
        e.spec.shadow = Some(crate::crd::ShadowSpec::new("m3", 100.0));
        let mut o = observed(2);
        let s = status(&e, &o);
        let c = cond(&s, SHADOW_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", REASON_WAITING_FOR_REPLICAS)
        );
        assert!(c.message.contains("m3"), "{}", c.message);
        assert_eq!(
            cond(&s, READY).status,
            "True",
            "the variants serve without the shadow"
        );
        o.deployments.insert(
            ("shadow".into(), "m3".into()),
            Readiness {
                replicas: 1,
                ready_replicas: 1,
                woken_at: None,
            },
        );
        assert_eq!(s.shadow_model, None);
        let s = status(&e, &o);
        assert_eq!(cond(&s, SHADOW_READY).status, "True");
        assert_eq!(s.shadow_model.as_deref(), Some("m3"));
        assert_eq!(cond(&s, SHADOW_READY).observed_generation, Some(3));
    }

    #[test]
    fn a_variant_asleep_at_zero_keeps_the_endpoint_ready_only_if_it_may_scale_to_zero() {
        let mut e = ep();
        e.spec.variants[1].autoscaling = Some(crate::crd::AutoscalingSpec {
            min_replicas: 0,
            max_replicas: 2,
            target_cpu_utilization_percentage: None,
            target_requests_per_second: Some(5.0),
            scale_down_stabilization_seconds: None,
            scale_to_zero_after_seconds: None,
        });
        let mut o = observed(0);
        o.deployments.insert(
            ("b".into(), "m2".into()),
            Readiness {
                replicas: 0,
                ready_replicas: 0,
                woken_at: None,
            },
        );
        let mut last = status_for(2, None);
        last.variants[1].autoscaling = Some(crate::crd::VariantAutoscalingStatus {
            asleep_since_unix: Some(1),
            ..Default::default()
        });
        let status = |e: &ModelEndpoint| {
            let p = plan(&e.spec, Some(&last), &o);
            let alloc = Allocation::initial(&p.weights()).unwrap();
            endpoint_status(e, &p, &o, &Failures::new(), alloc, Some(&last), "t".into())
        };
        assert_eq!(cond(&status(&e), READY).status, "True");
        // The same 0 of 0 for a variant that may not scale to zero is not ready.
        e.spec.variants[1].autoscaling = None;
        assert_eq!(cond(&status(&e), READY).status, "False");
    }

    #[test]
    fn all_variants_ready_makes_the_endpoint_ready_with_printer_summaries() {
        let s = status_for(2, None);
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        let sum = s.summary.as_ref().unwrap();
        assert_eq!(
            (sum.weights.as_str(), sum.ready.as_str()),
            ("a=80,b=20", "4/4")
        );
        assert_eq!(s.url.as_deref(), Some("http://titanic.example.com"));
    }

    #[test]
    fn an_unready_variant_is_progressing_with_a_message_naming_it() {
        let s = status_for(0, None);
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, REASON_WAITING_FOR_REPLICAS);
        assert!(
            cond(&s, PROGRESSING).message.contains('b'),
            "{:?}",
            cond(&s, PROGRESSING)
        );
        assert_eq!(s.variants[1].current_weight, 0);
    }

    #[test]
    fn a_failing_model_names_ready_and_degraded_instead_of_a_generic_wait() {
        use crate::failure::{FailureKind, ModelFailure};
        let e = ep();
        let o = observed(0);
        let p = plan(&e.spec, None, &o);
        let alloc = Allocation::initial(&p.weights()).unwrap();
        let failing = |kind| ModelFailure {
            kind,
            message: format!("pod p: {kind:?}"),
        };
        let failures: Failures = [
            (("b".into(), "m2".into()), failing(FailureKind::NotReady)),
            (("a".into(), "m1".into()), failing(FailureKind::OomKilled)),
        ]
        .into();
        let s = endpoint_status(&e, &p, &o, &failures, alloc, None, "t".into());
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, REASON_MODEL_OOM_KILLED);
        assert_eq!(
            cond(&s, READY).message,
            "variant a, model m1: pod p: OomKilled"
        );
        assert_eq!(
            (
                cond(&s, DEGRADED).status.as_str(),
                cond(&s, DEGRADED).reason.as_str()
            ),
            ("True", REASON_MODEL_OOM_KILLED)
        );
        // Served and ready: a stale failure changes nothing.
        let o = observed(2);
        let p = plan(&e.spec, None, &o);
        let alloc = Allocation::initial(&p.weights()).unwrap();
        let s = endpoint_status(&e, &p, &o, &failures, alloc, None, "t".into());
        assert_eq!(cond(&s, READY).reason, REASON_AVAILABLE);
    }

    #[test]
    fn the_status_says_when_the_applied_routes_have_mirroring_twins() {
        let mut e = ep();
        let twins = |e: &ModelEndpoint| {
            let o = observed(2);
            let p = plan(&e.spec, None, &o);
            let alloc = Allocation::initial(&p.weights()).unwrap();
            endpoint_status(e, &p, &o, &Failures::new(), alloc, None, "t".into()).mirror_twins
        };
        e.spec.shadow = serde_json::from_value(
            serde_json::json!({"model": "m3", "percent": 50.0, "comparePercent": 10.0}),
        )
        .ok();
        assert!(twins(&e));
        e.spec.filter_wiring = crate::crd::FilterWiring::WasmPlugin;
        assert!(!twins(&e), "a WasmPlugin's routes are not patched");
        e.spec.filter_wiring = crate::crd::FilterWiring::EnvoyFilter;
        e.spec.shadow = Some(crate::crd::ShadowSpec::new("m3", 50.0));
        assert!(!twins(&e), "every copy compared");
    }

    #[test]
    fn a_failing_shadow_names_shadow_ready_and_leaves_ready_to_the_variants() {
        use crate::failure::{FailureKind, ModelFailure};
        let mut e = ep();
        e.spec.shadow = Some(crate::crd::ShadowSpec::new("m3", 100.0));
        let crash = ModelFailure {
            kind: FailureKind::CrashLooping,
            message: "pod t-shadow-m3-x: exit 1".into(),
        };
        let failures: Failures = [(("shadow".into(), "m3".into()), crash)].into();
        for (replicas, ready) in [(0, "False"), (2, "True")] {
            let o = observed(replicas);
            let p = plan(&e.spec, None, &o);
            let alloc = Allocation::initial(&p.weights()).unwrap();
            let s = endpoint_status(&e, &p, &o, &failures, alloc, None, "t".into());
            let c = cond(&s, SHADOW_READY);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", REASON_MODEL_CRASH_LOOPING)
            );
            assert_eq!(
                c.message,
                "no copies: shadow model m3: pod t-shadow-m3-x: exit 1"
            );
            assert_eq!(cond(&s, READY).status, ready, "replicas {replicas}");
            assert!(
                cond(&s, READY).reason != REASON_MODEL_CRASH_LOOPING,
                "Ready names no shadow failure: {:?}",
                cond(&s, READY)
            );
        }
    }

    #[test]
    fn transition_times_survive_when_the_status_does_not_change() {
        let first = status_for(2, None);
        let e = ep();
        let o = observed(2);
        let p = plan(&e.spec, Some(&first), &o);
        let again = endpoint_status(
            &e,
            &p,
            &o,
            &Failures::new(),
            first.allocation.clone().unwrap(),
            Some(&first),
            "2030-01-01T00:00:00Z".into(),
        );
        assert!(same_status(&first, &again));
    }

    #[test]
    fn a_model_is_ready_when_valid_and_names_the_bad_field_otherwise() {
        let mut m = Model::new(
            "m",
            crate::crd::ModelSpec {
                image: "img".into(),
                artifact: Some(crate::crd::Artifact {
                    uri: "https://x/m.tar.gz".into(),
                    sha256: "a".repeat(64),
                    credentials_secret: None,
                }),
                port: None,
                env: vec![],
                resources: None,
                pod_security_context: None,
                security_context: None,
            },
        );
        let ok = model_status(&m, PodSecurityLevel::Restricted, "t0".into());
        assert_eq!(
            (
                ok.conditions[0].status.as_str(),
                ok.conditions[0].last_transition_time.as_deref()
            ),
            ("True", Some("t0"))
        );
        m.status = Some(ok);
        assert_eq!(
            model_status(&m, PodSecurityLevel::Restricted, "t1".into()).conditions[0]
                .last_transition_time
                .as_deref(),
            Some("t0")
        );
        m.spec.artifact = Some(crate::crd::Artifact {
            uri: "ftp://x".into(),
            sha256: "a".repeat(64),
            credentials_secret: None,
        });
        let bad = model_status(&m, PodSecurityLevel::Restricted, "t2".into());
        assert_eq!(bad.conditions[0].status, "False");
        assert!(
            bad.conditions[0].message.starts_with("spec.artifact.uri"),
            "{:?}",
            bad.conditions[0]
        );
    }

    #[test]
    fn a_model_breaking_the_pod_security_level_is_not_ready_naming_the_field() {
        let spec = crate::crd::ModelSpec {
            image: "img".into(),
            artifact: None,
            port: None,
            env: vec![],
            resources: None,
            pod_security_context: None,
            security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
                allow_privilege_escalation: Some(true),
                ..Default::default()
            }),
        };
        let m = Model::new("m", spec);
        let c = &model_status(&m, PodSecurityLevel::Restricted, "t0".into()).conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "PodSecurity")
        );
        assert!(
            c.message
                .starts_with("spec.securityContext.allowPrivilegeEscalation: "),
            "{c:?}"
        );
        let c = &model_status(&m, PodSecurityLevel::Baseline, "t0".into()).conditions[0];
        assert_eq!(c.status, "True", "{c:?}");
    }

    #[test]
    fn an_invalid_spec_names_the_field_and_keeps_what_serves() {
        let good = status_for(2, None);
        let err = SpecError::invalid("spec.variants", "weights sum to 110, must be 100");
        let s = invalid_status(&ep(), Some(&good), &err, "2030-01-01T00:00:00Z".into());
        assert_eq!(cond(&s, READY).reason, REASON_INVALID_SPEC);
        assert!(cond(&s, READY)
            .message
            .starts_with("spec.variants: weights sum to 110"));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(
            (s.variants.clone(), s.allocation.clone()),
            (good.variants.clone(), good.allocation.clone())
        );
        // The shadow's copies keep going as they did, and its condition says so.
        let mut good = good;
        good.shadow_model = Some("m3".into());
        good.conditions.push(condition(
            SHADOW_READY,
            true,
            REASON_AVAILABLE,
            "copies go to model m3".into(),
            Some(2),
        ));
        let s = invalid_status(&ep(), Some(&good), &err, "t".into());
        assert_eq!(s.shadow_model.as_deref(), Some("m3"));
        assert_eq!(cond(&s, SHADOW_READY), &good.conditions[3]);
    }
}
