//! One reconcile, decided: `(spec, last status, observed children, metric sample, now) ->
//! (plan, status, requeue)`. The operator lists the endpoint's children, asks Prometheus for the
//! sample [`query`] names, calls [`decide`], renders the plan and applies it; local mode builds
//! the same input from its running servers and Envoy's stats and applies the rollout part of
//! the decision to its processes. Every rollout decision, annotations included, is made here.

use crate::analysis::{AnalysisSource, Query, Sample};
use crate::crd::conditions::{REASON_HOST_CONFLICT, REASON_MODEL_NOT_FOUND, REASON_NAME_CONFLICT};
use crate::crd::{ModelEndpoint, ModelEndpointStatus, ModelSpec};
use crate::events::{endpoint_events, Event};
use crate::failure::Failures;
use crate::host_claims::{Claimant, HostClaims};
use crate::plan::{plan, retiring, Observed, Plan};
use crate::rollout::{self, Command, Now, Outcome, Settings};
use crate::status::{endpoint_status, hold_while_propagating, invalid_status, routed_since};
use crate::validate::{host_conflict, validate_endpoint, validate_hosts, SpecError};
use kube_core::ResourceExt;
use mlep_contract::{carry_allocation, Allocation};
use std::collections::BTreeMap;

/// Seconds before a settled endpoint is looked at again (a safety net: every change of the
/// endpoint, its Models or its Deployments requeues it at once).
pub const SETTLED_REQUEUE_SECONDS: u64 = 600;
/// Seconds before an endpoint still converging is looked at again.
pub const CONVERGING_REQUEUE_SECONDS: u64 = 30;
/// Seconds before a spec naming a Model not seen yet is looked at again (the Model cache may
/// lag, and its watch event may have come before the endpoint existed).
pub const MISSING_MODEL_REQUEUE_SECONDS: u64 = 5;
/// Seconds before an endpoint in `HostConflict` is looked at again: the operator also
/// reconciles it when an endpoint sharing its host changes or goes; this is the safety net.
pub const HOST_CONFLICT_REQUEUE_SECONDS: u64 = 30;
/// Seconds before an endpoint in `NameConflict` is looked at again: the other owner's object
/// may go (its endpoint deleted or renamed) without any event of this endpoint's.
pub const NAME_CONFLICT_REQUEUE_SECONDS: u64 = 30;

/// Everything a reconcile reads.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    /// The endpoint: spec, annotations (`mlep.dev/rollout`), generation.
    pub endpoint: &'a ModelEndpoint,
    pub namespace: &'a str,
    /// The status written by the last reconcile (local mode: what its servers serve, its
    /// allocation and its saved rollout).
    pub last: Option<&'a ModelEndpointStatus>,
    /// The Models of the endpoint's namespace, to validate the spec against; `None` when the
    /// caller validated it already (local mode checks while loading).
    pub models: Option<&'a BTreeMap<String, ModelSpec>>,
    /// Every endpoint's external hosts and who keeps each (`crate::host_claims::host_owners`),
    /// to check this endpoint's hosts against; `None` when the caller checked them already.
    pub claims: Option<&'a HostClaims>,
    /// Readiness of the endpoint's Deployments (local mode: its running servers).
    pub observed: &'a Observed,
    /// Why a variant-model's pods do not serve (`crate::failure::failure_of` over its pods;
    /// empty in local mode, whose supervisor names a server that exits).
    pub failures: &'a Failures,
    /// The one clock read of this reconcile.
    pub now: &'a Now,
    /// How long a removed variant's route outlives it (`RenderSettings::route_grace_seconds`).
    pub route_grace_seconds: i64,
    /// A fresh random route key ([`crate::envoy::new_route_key`]), used only if the last
    /// status has none (first sight, or a user removed it to rotate).
    pub fresh_route_key: &'a str,
}

/// The endpoint's route key: the one in its last status, else the fresh one.
pub fn route_key(input: &Input) -> String {
    input
        .last
        .and_then(|s| s.route_key.as_deref())
        .filter(|k| mlep_contract::is_route_key(k))
        .unwrap_or(input.fresh_route_key)
        .to_owned()
}

/// When to reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    After(u64),
    /// Only when something changes.
    AwaitChange,
}

/// What a reconcile does.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What to run and route now, the rollout put on it (render it for the objects).
    pub plan: Plan,
    /// The status to write.
    pub status: ModelEndpointStatus,
    pub requeue: Requeue,
    /// The spec is rejected: render and apply nothing, the last good configuration keeps
    /// serving, `status` names the field.
    pub rejected: Option<SpecError>,
    /// The bucket allocation routing from now on (`None` when rejected).
    pub allocation: Option<Allocation>,
    /// The rollout machine's step (local mode applies it to its processes).
    pub rollout: Outcome,
    /// Problems to report that do not reject the spec (e.g. an unknown `mlep.dev/rollout`
    /// value, which is ignored).
    pub warnings: Vec<String>,
    /// The Kubernetes Events this reconcile's change of status is worth (none when nothing
    /// changed): publish them once the status is written.
    pub events: Vec<Event>,
}

/// The intervention `mlep.dev/rollout` asks for, or the warning for a value that is not one
/// (ignored). One reading for the operator and local mode.
pub fn command(annotations: &BTreeMap<String, String>) -> (Option<Command>, Option<String>) {
    match annotations
        .get(rollout::ANNOTATION)
        .map(|v| Command::parse(v))
    {
        None => (None, None),
        Some(Ok(c)) => (Some(c), None),
        Some(Err(e)) => (None, Some(e)),
    }
}

/// Planning before the rollout: what is ready routes, retiring variants stay a while, and the
/// allocation routing with it.
fn planned(input: &Input) -> (Plan, Result<Allocation, SpecError>) {
    let spec = &input.endpoint.spec;
    let mut p = plan(spec, input.last, input.observed);
    p.retiring = retiring(spec, input.last, input.now.unix, input.route_grace_seconds);
    let previous = input.last.and_then(|s| s.allocation.as_ref());
    let allocation = carry_allocation(previous, &p.weights())
        .map_err(|e| SpecError::invalid("spec.variants", e.to_string()));
    (p, allocation)
}

/// The rollout machine's input for this reconcile.
fn machine_input<'a>(
    input: &Input<'a>,
    settings: &'a Settings,
    allocation: &'a Allocation,
    command: Option<Command>,
) -> rollout::Input<'a> {
    let spec = &input.endpoint.spec;
    rollout::Input {
        endpoint: input.endpoint.metadata.name.as_deref().unwrap_or_default(),
        namespace: input.namespace,
        settings,
        variants: spec
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.model.as_str()))
            .collect(),
        serving: input
            .last
            .map(|s| {
                s.variants
                    .iter()
                    .map(|v| (v.name.as_str(), v.model.as_str()))
                    .collect()
            })
            .unwrap_or_default(),
        ready: input
            .observed
            .deployments
            .iter()
            .filter(|(_, r)| r.ready_replicas > 0)
            .map(|((v, m), _)| (v.as_str(), m.as_str()))
            .collect(),
        allocation,
        last: input.last.and_then(|s| s.rollout.as_ref()),
        command,
        now: input.now.clone(),
        route_grace_seconds: input.route_grace_seconds,
    }
}

/// The metric sample [`decide`] needs for `input`, if any (a running step's analysis).
pub fn query(input: &Input) -> Option<Query> {
    if validity(input).is_err() {
        return None;
    }
    let (_, allocation) = planned(input);
    let allocation = allocation.ok()?;
    let settings = Settings::of(input.endpoint.spec.rollout.as_ref());
    let (command, _) = command(input.endpoint.annotations());
    rollout::query(&machine_input(input, &settings, &allocation, command))
}

/// [`query`], ask `source`, [`decide`].
pub fn drive(input: &Input, source: &mut dyn AnalysisSource) -> Decision {
    let sample = query(input).map(|q| source.sample(&q));
    decide(input, sample)
}

fn validity(input: &Input) -> Result<(), SpecError> {
    if let Some(models) = input.models {
        validate_endpoint(&input.endpoint.spec, |n| models.get(n))?;
    }
    if let Some(claims) = input.claims {
        let name = input.endpoint.name_any();
        let who = Claimant {
            namespace: input.namespace,
            name: &name,
            cluster_domain: claims.cluster_domain(),
        };
        validate_hosts(&input.endpoint.spec, &who)?;
        if let Some((i, why)) = claims.not_permitted(input.endpoint) {
            return Err(SpecError::invalid(format!("spec.hosts[{i}]"), why));
        }
        host_conflict(input.endpoint, claims)?;
    }
    Ok(())
}

/// Decide one reconcile. `sample` answers [`query`] (`None` when it named none).
pub fn decide(input: &Input, sample: Option<Result<Sample, String>>) -> Decision {
    let (command, warning) = command(input.endpoint.annotations());
    let warnings: Vec<String> = warning.into_iter().collect();
    if let Err(e) = validity(input) {
        return rejected(input, e, warnings);
    }
    let (mut p, allocation) = planned(input);
    let allocation = match allocation {
        Ok(a) => a,
        Err(e) => return rejected(input, e, warnings),
    };
    let settings = Settings::of(input.endpoint.spec.rollout.as_ref());
    let outcome = rollout::advance(
        &machine_input(input, &settings, &allocation, command),
        sample,
    );
    rollout::apply(&mut p, &outcome, input.observed);
    let mut status = endpoint_status(
        input.endpoint,
        &p,
        input.observed,
        input.failures,
        allocation.clone(),
        input.last,
        input.now.text.clone(),
    );
    rollout::record(&mut status, &outcome, input.last, &input.now.text);
    status.route_key = Some(route_key(input));
    // Ready once the routing has reached the proxies (none to wait for in local mode).
    let since = routed_since(&status, input.last, input.now.unix);
    status.routed_since_unix = Some(since);
    let warmup = input
        .route_grace_seconds
        .clamp(0, rollout::ROUTE_WARMUP_SECONDS);
    let propagating = since + warmup - input.now.unix;
    hold_while_propagating(&mut status, input.last, propagating, &input.now.text);
    // A rollout comes back at its next step (or its next look at the analysis), a retiring
    // variant when its routes may go, a variant scaling on its request rate every sync period.
    let next = [
        outcome.requeue_after_seconds,
        p.next_retirement_in(input.now.unix).map(|s| s + 1),
        (propagating > 0).then_some(propagating),
        crate::autoscale::requeue_after_seconds(&input.endpoint.spec),
    ];
    let requeue = match next.into_iter().flatten().min() {
        Some(s) => Requeue::After(s.clamp(1, 30) as u64),
        // A shadow waiting for its pod keeps the converging pace too.
        None if p.settled(&input.endpoint.spec) && !p.shadow_waiting(&input.endpoint.spec) => {
            Requeue::After(SETTLED_REQUEUE_SECONDS)
        }
        None => Requeue::After(CONVERGING_REQUEUE_SECONDS),
    };
    Decision {
        plan: p,
        events: endpoint_events(input.last, &status),
        status,
        requeue,
        rejected: None,
        allocation: Some(allocation),
        rollout: outcome,
        warnings,
    }
}

/// The decision for a rejected spec: the status names the field; nothing else changes.
/// Also what the operator writes when rendering the plan fails.
pub fn rejected(input: &Input, error: SpecError, warnings: Vec<String>) -> Decision {
    let status = invalid_status(input.endpoint, input.last, &error, input.now.text.clone());
    let requeue = match error.reason {
        REASON_MODEL_NOT_FOUND => Requeue::After(MISSING_MODEL_REQUEUE_SECONDS),
        REASON_HOST_CONFLICT => Requeue::After(HOST_CONFLICT_REQUEUE_SECONDS),
        REASON_NAME_CONFLICT => Requeue::After(NAME_CONFLICT_REQUEUE_SECONDS),
        _ => Requeue::AwaitChange,
    };
    Decision {
        plan: Plan::assume_ready(&input.endpoint.spec),
        events: endpoint_events(input.last, &status),
        status,
        requeue,
        rejected: Some(error),
        allocation: None,
        rollout: Outcome::default(),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        ModelEndpointSpec, Phase, RolloutSpec, RolloutStrategy, VariantSpec, VariantStatus,
    };
    use crate::plan::Readiness;

    fn endpoint(model_b: &str, annotation: Option<&str>) -> ModelEndpoint {
        let mut spec = ModelEndpointSpec::new(
            vec!["t.example.com".into()],
            vec![
                VariantSpec::new("a", "m1", 80),
                VariantSpec::new("b", model_b, 20),
            ],
        );
        spec.rollout = Some(RolloutSpec {
            strategy: Some(RolloutStrategy::Canary),
            ..RolloutSpec::default()
        });
        let mut ep = ModelEndpoint::new("t", spec);
        ep.metadata.namespace = Some("ns".into());
        if let Some(v) = annotation {
            ep.metadata.annotations = Some([(rollout::ANNOTATION.to_owned(), v.to_owned())].into());
        }
        ep
    }

    fn serving(b: &str) -> ModelEndpointStatus {
        let v = |name: &str, model: &str| VariantStatus {
            name: name.into(),
            model: model.into(),
            ..VariantStatus::default()
        };
        ModelEndpointStatus {
            variants: vec![v("a", "m1"), v("b", b)],
            allocation: Allocation::initial(&[("a", 80), ("b", 20)]).ok(),
            ..ModelEndpointStatus::default()
        }
    }

    fn observed(pairs: &[(&str, &str)]) -> Observed {
        let ready = Readiness {
            replicas: 1,
            ready_replicas: 1,
            woken_at: None,
        };
        Observed {
            deployments: pairs
                .iter()
                .map(|(v, m)| (((*v).to_owned(), (*m).to_owned()), ready))
                .collect(),
        }
    }

    static NO_FAILURES: Failures = Failures::new();

    fn now() -> Now {
        Now {
            unix: 1_000,
            text: "2026-01-01T00:16:40Z".into(),
        }
    }

    fn input<'a>(
        ep: &'a ModelEndpoint,
        last: &'a ModelEndpointStatus,
        observed: &'a Observed,
        now: &'a Now,
    ) -> Input<'a> {
        Input {
            endpoint: ep,
            namespace: "ns",
            last: Some(last),
            models: None,
            claims: None,
            observed,
            failures: &NO_FAILURES,
            now,
            route_grace_seconds: 30,
            fresh_route_key: "fresh-route-key-0001",
        }
    }

    #[test]
    fn a_model_change_under_canary_starts_a_rollout_and_keeps_serving_the_old_model() {
        let ep = endpoint("m3", None);
        let (last, obs, now) = (serving("m2"), observed(&[("a", "m1"), ("b", "m2")]), now());
        let d = decide(&input(&ep, &last, &obs, &now), None);
        let r = d.status.rollout.as_ref().unwrap();
        assert_eq!((r.phase, r.to_model.as_str()), (Phase::Progressing, "m3"));
        assert_eq!(d.plan.variants[1].serving_model, "m2");
        assert_eq!(d.status.variants[1].model, "m2");
        assert!(d.rejected.is_none() && d.warnings.is_empty());
        let started: Vec<&str> = d.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(started, [crate::events::reasons::ROLLOUT_STARTED]);
        // The same reconcile again, from the status it wrote: nothing new to report.
        let again = decide(&input(&ep, &d.status, &obs, &now), None);
        assert_eq!(again.events, []);
        // The machine comes back soon to see whether m3 is ready.
        assert!(
            matches!(d.requeue, Requeue::After(s) if s <= 10),
            "{:?}",
            d.requeue
        );
    }

    #[test]
    fn ready_waits_until_a_routing_change_has_reached_the_proxies() {
        use crate::crd::conditions::{READY, REASON_AVAILABLE, REASON_PROPAGATING};
        let mut ep = endpoint("m2", None);
        ep.spec.rollout = None;
        let obs = observed(&[("a", "m1"), ("b", "m2")]);
        let ready = |d: &Decision| {
            let c = d
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .cloned();
            c.map(|c| (c.status, c.reason)).unwrap_or_default()
        };
        // b just became ready: its weight and buckets route to it from now on.
        let mut last = serving("m2");
        last.variants[1].current_weight = 0;
        last.allocation = Allocation::initial(&[("a", 100), ("b", 0)]).ok();
        let t0 = now();
        let d = decide(&input(&ep, &last, &obs, &t0), None);
        let warm = rollout::ROUTE_WARMUP_SECONDS;
        assert_eq!(ready(&d), ("False".into(), REASON_PROPAGATING.into()));
        assert_eq!(d.status.routed_since_unix, Some(t0.unix));
        assert_eq!(d.requeue, Requeue::After(warm as u64));
        // Before the warm-up is over (the status write itself triggers a reconcile): still held.
        let t1 = Now {
            unix: t0.unix + warm - 1,
            text: "t1".into(),
        };
        let d1 = decide(&input(&ep, &d.status, &obs, &t1), None);
        assert_eq!(ready(&d1).1, REASON_PROPAGATING);
        assert_eq!(
            d1.status.routed_since_unix,
            Some(t0.unix),
            "the routing did not change"
        );
        let t2 = Now {
            unix: t0.unix + warm,
            text: "t2".into(),
        };
        let d2 = decide(&input(&ep, &d1.status, &obs, &t2), None);
        assert_eq!(ready(&d2), ("True".into(), REASON_AVAILABLE.into()));
        let available: Vec<&str> = d2.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(available, [REASON_AVAILABLE], "Available once, when it is");
    }

    #[test]
    fn the_route_key_is_chosen_once_and_kept() {
        let ep = endpoint("m2", None);
        let (mut last, obs, now) = (serving("m2"), observed(&[("a", "m1"), ("b", "m2")]), now());
        let first = decide(&input(&ep, &last, &obs, &now), None);
        assert_eq!(
            first.status.route_key.as_deref(),
            Some("fresh-route-key-0001")
        );
        last.route_key = Some("kept-route-key-00001".into());
        let again = decide(&input(&ep, &last, &obs, &now), None);
        assert_eq!(
            again.status.route_key.as_deref(),
            Some("kept-route-key-00001")
        );
        // A key the contract would refuse (edited by hand) is replaced, not served.
        last.route_key = Some("short".into());
        let fixed = decide(&input(&ep, &last, &obs, &now), None);
        assert_eq!(
            fixed.status.route_key.as_deref(),
            Some("fresh-route-key-0001")
        );
    }

    #[test]
    fn an_unknown_rollout_annotation_is_reported_and_ignored() {
        let ep = endpoint("m3", Some("abrot"));
        let (last, obs, now) = (serving("m2"), observed(&[("a", "m1"), ("b", "m2")]), now());
        let d = decide(&input(&ep, &last, &obs, &now), None);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains(rollout::ANNOTATION) && d.warnings[0].contains("abrot"));
        // Ignored: the rollout runs as without it.
        let plain = endpoint("m3", None);
        let without = decide(&input(&plain, &last, &obs, &now), None);
        assert_eq!(d.status.rollout, without.status.rollout);
        // A known value is no warning, and it acts.
        let abort = endpoint("m3", Some("abort"));
        assert_eq!(command(abort.annotations()), (Some(Command::Abort), None));
    }

    #[test]
    fn a_spec_naming_a_missing_model_is_rejected_and_looked_at_again_soon() {
        let ep = endpoint("m3", None);
        let (last, obs, now) = (serving("m2"), observed(&[]), now());
        let models: BTreeMap<String, ModelSpec> = BTreeMap::new();
        let d = decide(
            &Input {
                models: Some(&models),
                ..input(&ep, &last, &obs, &now)
            },
            None,
        );
        assert_eq!(d.rejected.as_ref().unwrap().reason, REASON_MODEL_NOT_FOUND);
        assert_eq!(d.requeue, Requeue::After(MISSING_MODEL_REQUEUE_SECONDS));
        assert_eq!(d.status.phase.as_deref(), Some("Degraded"));
        let warned: Vec<_> = d
            .events
            .iter()
            .map(|e| (e.type_, e.reason.as_str()))
            .collect();
        assert_eq!(
            warned,
            [(crate::events::EventType::Warning, REASON_MODEL_NOT_FOUND)]
        );
        assert!(
            d.events[0].note.starts_with("spec.variants[0].model"),
            "{:?}",
            d.events
        );
        // What served stays in status.
        assert_eq!(d.status.variants, last.variants);
        assert!(query(&Input {
            models: Some(&models),
            ..input(&ep, &last, &obs, &now)
        })
        .is_none());
    }

    #[test]
    fn a_held_host_or_another_namespaces_service_rejects_the_spec_and_keeps_what_serves() {
        use crate::crd::conditions::{READY, REASON_INVALID_SPEC};
        use crate::host_claims::host_owners;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut ep = endpoint("m2", None);
        ep.spec.rollout = None;
        ep.metadata.creation_timestamp = Some(Time("2026-01-01T00:01:00Z".parse().unwrap()));
        let mut holder = ep.clone();
        holder.metadata.namespace = Some("other".into());
        holder.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let (last, obs, now) = (serving("m2"), observed(&[("a", "m1"), ("b", "m2")]), now());
        let claims = host_owners(&[ep.clone(), holder.clone()], "cluster.local");
        let with = |ep| Input {
            claims: Some(&claims),
            ..input(ep, &last, &obs, &now)
        };
        let d = decide(&with(&ep), None);
        let e = d.rejected.as_ref().unwrap();
        assert_eq!(
            (e.field.as_str(), e.reason),
            ("spec.hosts[0]", REASON_HOST_CONFLICT)
        );
        assert_eq!(d.requeue, Requeue::After(HOST_CONFLICT_REQUEUE_SECONDS));
        let ready = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert!(
            ready.status == "False" && ready.message.contains("other/t"),
            "{ready:?}"
        );
        assert_eq!(d.status.variants, last.variants, "what served stays");
        // The holder itself is fine.
        assert!(decide(&with(&holder), None).rejected.is_none());
        // Another namespace's in-mesh name: InvalidSpec, whoever holds what.
        ep.spec.hosts.push("t.other.svc.cluster.local".into());
        holder.spec.hosts = vec!["x.example.com".into()];
        let claims2 = host_owners(&[ep.clone(), holder], "cluster.local");
        let d = decide(
            &Input {
                claims: Some(&claims2),
                ..input(&ep, &last, &obs, &now)
            },
            None,
        );
        let e = d.rejected.unwrap();
        assert_eq!(
            (e.field.as_str(), e.reason),
            ("spec.hosts[1]", REASON_INVALID_SPEC)
        );
        assert_eq!(d.requeue, Requeue::AwaitChange);
    }

    #[test]
    fn a_host_outside_the_operators_patterns_is_an_invalid_spec_naming_it() {
        use crate::crd::conditions::REASON_INVALID_SPEC;
        use crate::host_claims::host_owners_under;
        let mut ep = endpoint("m2", None);
        ep.spec.rollout = None;
        let (last, obs, now) = (serving("m2"), observed(&[("a", "m1"), ("b", "m2")]), now());
        let ns = input(&ep, &last, &obs, &now).namespace.to_owned();
        let patterns = ["*.{namespace}.models.example.com".to_owned()];
        let claims = host_owners_under(&[ep.clone()], "cluster.local", &patterns);
        let d = decide(
            &Input {
                claims: Some(&claims),
                ..input(&ep, &last, &obs, &now)
            },
            None,
        );
        let e = d.rejected.unwrap();
        assert_eq!(
            (e.field.as_str(), e.reason),
            ("spec.hosts[0]", REASON_INVALID_SPEC)
        );
        assert!(e.message.contains("t.example.com") && e.message.contains("MLEP_ALLOWED_HOSTS"));
        assert_eq!(d.status.variants, last.variants, "what served stays");
        // A host in the namespace's part of the DNS is accepted.
        ep.spec.hosts = vec![format!("t.{ns}.models.example.com")];
        let claims = host_owners_under(&[ep.clone()], "cluster.local", &patterns);
        let d = decide(
            &Input {
                claims: Some(&claims),
                ..input(&ep, &last, &obs, &now)
            },
            None,
        );
        assert!(d.rejected.is_none(), "{:?}", d.rejected);
    }

    #[test]
    fn a_name_held_by_another_owner_rejects_the_endpoint_keeps_what_serves_and_looks_again() {
        use crate::crd::conditions::READY;
        use crate::ownership::{check_owner, Applier};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let ep = endpoint("m2", None);
        let (last, obs, now) = (serving("m2"), observed(&[("a", "m1"), ("b", "m2")]), now());
        let held = ObjectMeta {
            name: Some("t-a-m1".into()),
            labels: Some([(crate::meta::LABEL_ENDPOINT.to_owned(), "t-a".to_owned())].into()),
            ..ObjectMeta::default()
        };
        let ours = Applier {
            name: "t",
            uid: "uid-t",
        };
        let e = check_owner(&ours, "Deployment", &held).unwrap_err();
        let d = rejected(&input(&ep, &last, &obs, &now), e, Vec::new());
        assert_eq!(d.requeue, Requeue::After(NAME_CONFLICT_REQUEUE_SECONDS));
        let ready = d
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", REASON_NAME_CONFLICT)
        );
        assert!(
            ready.message.contains("Deployment \"t-a-m1\"")
                && ready.message.contains("ModelEndpoint \"t-a\""),
            "{ready:?}"
        );
        assert_eq!(d.status.variants, last.variants, "what served stays");
        assert!(d.allocation.is_none());
    }

    #[test]
    fn a_settled_endpoint_is_looked_at_again_only_as_a_safety_net() {
        let mut ep = endpoint("m2", None);
        ep.spec.rollout = None;
        let last = serving("m2");
        let (obs, now) = (observed(&[("a", "m1"), ("b", "m2")]), now());
        // Its routing settled (written by a reconcile, the proxies' warm-up over).
        let first = decide(&input(&ep, &last, &obs, &now), None);
        let later = Now {
            unix: now.unix + rollout::ROUTE_WARMUP_SECONDS,
            text: "later".into(),
        };
        let d = decide(&input(&ep, &first.status, &obs, &later), None);
        assert_eq!(d.requeue, Requeue::After(SETTLED_REQUEUE_SECONDS));
        assert_eq!(d.status.phase.as_deref(), Some("Ready"));
    }

    #[test]
    fn an_endpoint_scaling_on_its_request_rate_is_looked_at_every_sync_period() {
        use crate::autoscale::SYNC_PERIOD_SECONDS;
        use crate::crd::AutoscalingSpec;
        let mut ep = endpoint("m2", None);
        ep.spec.rollout = None;
        ep.spec.variants[1].autoscaling = Some(AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 4,
            target_cpu_utilization_percentage: None,
            target_requests_per_second: Some(5.0),
            scale_down_stabilization_seconds: None,
            scale_to_zero_after_seconds: None,
        });
        let (obs, now) = (observed(&[("a", "m1"), ("b", "m2")]), now());
        let first = decide(&input(&ep, &serving("m2"), &obs, &now), None);
        let later = Now {
            unix: now.unix + rollout::ROUTE_WARMUP_SECONDS,
            text: "later".into(),
        };
        let d = decide(&input(&ep, &first.status, &obs, &later), None);
        assert_eq!(d.status.phase.as_deref(), Some("Ready"));
        assert_eq!(d.requeue, Requeue::After(SYNC_PERIOD_SECONDS));
        let b = d.status.variants[1].autoscaling.as_ref().unwrap();
        assert_eq!(
            (b.min_replicas, b.max_replicas, b.target.as_str()),
            (1, 4, "5 rps/replica")
        );
        // The same endpoint on CPU: the HPA scales, a settled endpoint waits.
        let a = ep.spec.variants[1].autoscaling.as_mut().unwrap();
        a.target_requests_per_second = None;
        let d = decide(&input(&ep, &first.status, &obs, &later), None);
        assert_eq!(d.requeue, Requeue::After(SETTLED_REQUEUE_SECONDS));
        assert_eq!(
            d.status.summary.unwrap().scaling.as_deref(),
            Some("b=1-4 cpu80%")
        );
    }

    #[test]
    fn a_crash_looping_new_model_is_named_in_the_conditions_and_an_event() {
        use crate::crd::conditions::{DEGRADED, READY, REASON_MODEL_CRASH_LOOPING};
        use crate::failure::{FailureKind, ModelFailure};
        let mut ep = endpoint("m3", None);
        ep.spec.rollout = None;
        let last = serving("m2");
        let (obs, now) = (observed(&[("a", "m1"), ("b", "m2")]), now());
        let failures: Failures = [(
            ("b".to_owned(), "m3".to_owned()),
            ModelFailure {
                kind: FailureKind::CrashLooping,
                message: "pod b-m3-1: container model exited 2 (Error): bad flag".into(),
            },
        )]
        .into();
        let d = decide(
            &Input {
                failures: &failures,
                ..input(&ep, &last, &obs, &now)
            },
            None,
        );
        for t in [READY, DEGRADED] {
            let c = d.status.conditions.iter().find(|c| c.type_ == t).unwrap();
            assert_eq!(c.reason, REASON_MODEL_CRASH_LOOPING, "{c:?}");
            assert!(c.message.contains("model m3: pod b-m3-1"), "{c:?}");
        }
        let e: Vec<_> = d.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(e, [REASON_MODEL_CRASH_LOOPING]);
    }
}
