//! The request-rate autoscaler's I/O: for each Deployment of a variant scaling on
//! `targetRequestsPerSecond`, ask Prometheus its request rate (once per sync period, at the URL
//! the rollout analysis uses, `PrometheusPolicy::url_for`), let `mlep_core::autoscale` decide,
//! and put the decision on the reconcile's plan (the Deployment renders with it) and status.
//! The current count is the live Deployment's `spec.replicas` as the reconcile observed it
//! (`minReplicas` before the Deployment exists). A query that fails or finds no data keeps the
//! count: logged every time, an Event once per outage (the core decides which).

use crate::reconcile::Context;
use kube::ResourceExt;
use mlep_core::autoscale::{apply, rps_deployments, Autoscaler, Observation, ScaleKey};
use mlep_core::crd::ModelEndpoint;
use mlep_core::plan::Observed;
use mlep_core::reconcile::Decision;
use mlep_core::rollout::Now;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tracing::{info, warn};

/// The operator's autoscaler, in memory (its histories are lost with the process: see
/// `mlep_core::autoscale`).
pub type Shared = Mutex<Autoscaler>;

fn lock(ctx: &Context) -> MutexGuard<'_, Autoscaler> {
    // A panic elsewhere while holding it leaves histories that are still consistent values.
    ctx.autoscaler
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Decide the replicas of every Deployment of `ep` scaling on its request rate, and put them
/// on `d` (plan, status, events). `observed` holds the live Deployments' replicas.
pub(crate) async fn scale(
    ctx: &Context,
    ep: &ModelEndpoint,
    ns: &str,
    observed: &Observed,
    d: &mut Decision,
    now: &Now,
) {
    let name = ep.name_any();
    let targets = rps_deployments(ns, &name, &ep.spec, &d.plan);
    let keys: Vec<ScaleKey> = targets.iter().map(|(k, _)| k.clone()).collect();
    lock(ctx).retain(ns, &name, &keys);
    if targets.is_empty() {
        return;
    }
    // Validated by the decision already (a URL the operator does not allow rejects the spec).
    let url = ctx.settings.prometheus.url_for(&ep.spec).ok();
    let mut scaled = BTreeMap::new();
    for (key, rule) in targets {
        let current = observed
            .deployments
            .get(&(key.variant.clone(), key.model.clone()))
            .map_or(rule.min, |r| r.replicas);
        let due = lock(ctx).due(&key, &rule, now.unix);
        let observation = match (&url, due) {
            (_, false) => None,
            (Some(url), true) => Some(measure(url, &key, now.unix).await),
            (None, true) => Some(Observation::Failed("no Prometheus allowed".into())),
        };
        let step = lock(ctx).step(&key, &rule, current, observation, now.unix);
        if let Some(w) = &step.warning {
            warn!(variant = %key.variant, model = %key.model, warning = %w, "autoscaler keeps the replicas");
        }
        if step.scaled.replicas != current {
            info!(variant = %key.variant, model = %key.model, from = current, to = step.scaled.replicas, "rescaled");
        }
        d.events.extend(step.events);
        scaled.insert(key, step.scaled);
    }
    apply(&ep.spec, &mut d.plan, &mut d.status, &scaled);
}

/// The request rate of `key`'s Deployment now.
async fn measure(url: &str, key: &ScaleKey, now_unix: i64) -> Observation {
    match crate::rollout::query_value(url.to_owned(), key.promql(), now_unix).await {
        Ok(Some(rps)) => Observation::Rate(rps),
        Ok(None) => Observation::NoData,
        Err(failure) => Observation::Failed(failure),
    }
}

/// Forget endpoint `ns/name` (deleted).
pub(crate) fn forget(ctx: &Context, ns: &str, name: &str) {
    lock(ctx).retain(ns, name, &[]);
}
