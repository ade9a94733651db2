//! The request-rate autoscaler's I/O: for each Deployment of a variant scaling on
//! `targetRequestsPerSecond`, ask Prometheus its request rate (once per sync period, at the URL
//! the rollout analysis uses, `PrometheusPolicy::url_for`), let `mlep_core::autoscale` decide,
//! and put the decision on the reconcile's plan (the Deployment renders with it) and status.
//! The current count is the live Deployment's `spec.replicas` as the reconcile observed it
//! (`minReplicas` before the Deployment exists). A query that fails or finds no data keeps the
//! count: logged every time, an Event once per outage (the core decides which).

use crate::reconcile::Context;
use kube::ResourceExt;
use mlep_core::autoscale::sleep::{self, sleeping_at_zero, Sleeper};
use mlep_core::autoscale::{
    apply, rps_deployments, Autoscaler, Observation, RpsRule, ScaleKey, Scaled,
};
use mlep_core::crd::ModelEndpoint;
use mlep_core::plan::{Observed, Plan, Readiness};
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
/// on `d` (plan, status, events). `observed` holds the live Deployments' replicas. A variant
/// with `minReplicas: 0` also goes to sleep and wakes (`mlep_core::autoscale::sleep`) while it
/// runs one model and no rollout.
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
    let mut asleep = BTreeMap::new();
    for (key, rule) in targets {
        let live = observed
            .deployments
            .get(&(key.variant.clone(), key.model.clone()))
            .copied();
        let current = live.map_or(rule.min, |r| r.replicas);
        let sleeps = sleep_of(ep, &d.plan, &key, &rule, live, now.unix);
        if let Some(s) = sleeps.filter(|s| sleeping_at_zero(s.since, current, s.woken_at, now.unix))
        {
            let zero = Scaled {
                replicas: 0,
                per_replica: None,
            };
            asleep.extend(s.since.map(|t| (key.variant.clone(), t)));
            scaled.insert(key, zero);
            continue;
        }
        let due = lock(ctx).due(&key, &rule, now.unix);
        let observation = match (&url, due) {
            (_, false) => None,
            (Some(url), true) => Some(measure(url, key.promql(), now.unix).await),
            (None, true) => Some(Observation::Failed("no Prometheus allowed".into())),
        };
        let step = lock(ctx).step(&key, &rule, current.max(1), observation, now.unix);
        if let Some(w) = &step.warning {
            warn!(variant = %key.variant, model = %key.model, warning = %w, "autoscaler keeps the replicas");
        }
        d.events.extend(step.events);
        let mut decided = step.scaled;
        if let Some(s) = sleeps {
            let idle = match (&url, due) {
                (Some(url), true) => idle(url, &key, s.idle_seconds, now.unix).await,
                _ => None,
            };
            let sleeper = Sleeper {
                scaled: decided.replicas,
                current,
                ready: live.map_or(0, |r| r.ready_replicas),
                idle,
                asleep_since: s.since,
                woken_at: s.woken_at,
                now: now.unix,
            };
            let what = format!("variant {}, model {}", key.variant, key.model);
            let step = sleep::decide(&sleeper, &what, s.idle_seconds);
            decided.replicas = step.replicas;
            asleep.extend(step.asleep_since.map(|t| (key.variant.clone(), t)));
            d.events.extend(step.event);
        }
        if decided.replicas != current {
            info!(variant = %key.variant, model = %key.model, from = current, to = decided.replicas, "rescaled");
        }
        scaled.insert(key, decided);
    }
    apply(&ep.spec, &mut d.plan, &mut d.status, &scaled, &asleep);
}

/// What the sleep of one Deployment of a variant with `minReplicas: 0` depends on.
#[derive(Clone, Copy)]
struct SleepOf {
    since: Option<i64>,
    woken_at: Option<i64>,
    idle_seconds: i32,
}

/// The sleep inputs of `key`'s Deployment, `None` when it neither sleeps nor may sleep now.
fn sleep_of(
    ep: &ModelEndpoint,
    plan: &Plan,
    key: &ScaleKey,
    rule: &RpsRule,
    live: Option<Readiness>,
    now: i64,
) -> Option<SleepOf> {
    let since = asleep_since(ep, &key.variant);
    let allowed = may_sleep(plan, &key.variant);
    let woken_at = live.and_then(|r| r.woken_at);
    sleep_inputs(since, allowed, rule.zero_after_seconds, woken_at, now)
}

/// [`sleep_of`] on its inputs: since when the status says the variant sleeps, whether it may
/// sleep now, its `scaleToZeroAfterSeconds` (`None`: `minReplicas` is no longer 0), the
/// Deployment's last wake stamp.
fn sleep_inputs(
    since: Option<i64>,
    allowed: bool,
    zero_after: Option<i32>,
    stamped: Option<i64>,
    now: i64,
) -> Option<SleepOf> {
    match (zero_after, since) {
        (Some(idle_seconds), _) if allowed => Some(SleepOf {
            since,
            woken_at: stamped,
            idle_seconds,
        }),
        // A sleeping variant that may not sleep now (a rollout or a model swap began, or an
        // edit took `minReplicas: 0` away) wakes as if a request had asked: its mark stays
        // until a pod is ready, so nothing meets an empty subset, and a rollout's analysis
        // never sees a cold start.
        (zero_after, Some(_)) => Some(SleepOf {
            since,
            woken_at: Some(now),
            idle_seconds: zero_after
                .unwrap_or(mlep_core::autoscale::sleep::WAKE_FLOOR_SECONDS as i32),
        }),
        _ => None,
    }
}

/// Whether `variant` may sleep now: it runs one model, with no rollout under way.
fn may_sleep(plan: &Plan, variant: &str) -> bool {
    plan.rollout.as_ref().is_none_or(|r| r.variant != variant)
        && plan
            .variants
            .iter()
            .find(|v| v.name == variant)
            .is_some_and(|v| plan.running_models(v).len() == 1)
}

/// Since when the last status says `variant` sleeps.
fn asleep_since(ep: &ModelEndpoint, variant: &str) -> Option<i64> {
    ep.status
        .as_ref()?
        .variants
        .iter()
        .find(|v| v.name == variant)?
        .autoscaling
        .as_ref()?
        .asleep_since_unix
}

/// A measurement of `promql` now.
async fn measure(url: &str, promql: String, now_unix: i64) -> Observation {
    match crate::rollout::query_value(url.to_owned(), promql, now_unix).await {
        Ok(Some(rps)) => Observation::Rate(rps),
        Ok(None) => Observation::NoData,
        Err(failure) => Observation::Failed(failure),
    }
}

/// Whether `key`'s Deployment served no request in the last `seconds` (`None`: unknown).
async fn idle(url: &str, key: &ScaleKey, seconds: i32, now_unix: i64) -> Option<bool> {
    match measure(url, key.idle_promql(seconds), now_unix).await {
        // `increase` extrapolates: one request can read 0.9 or 1.4, none reads 0.
        Observation::Rate(n) => Some(n < 0.5),
        Observation::NoData | Observation::Failed(_) => None,
    }
}

/// Forget endpoint `ns/name` (deleted).
pub(crate) fn forget(ctx: &Context, ns: &str, name: &str) {
    lock(ctx).retain(ns, name, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn woken(s: Option<SleepOf>) -> Option<(Option<i64>, Option<i64>)> {
        s.map(|s| (s.since, s.woken_at))
    }

    #[test]
    fn a_sleeping_variant_that_may_no_longer_sleep_is_woken_and_keeps_its_mark() {
        // May sleep: the Deployment's stamp decides.
        assert_eq!(
            woken(sleep_inputs(Some(50), true, Some(300), Some(40), 100)),
            Some((Some(50), Some(40)))
        );
        assert_eq!(
            woken(sleep_inputs(None, true, Some(300), None, 100)),
            Some((None, None))
        );
        // A rollout began on it, or an edit took minReplicas 0 away: woken now, mark kept.
        for (allowed, zero_after) in [(false, Some(300)), (true, None), (false, None)] {
            assert_eq!(
                woken(sleep_inputs(Some(50), allowed, zero_after, None, 100)),
                Some((Some(50), Some(100))),
                "allowed {allowed}, zero after {zero_after:?}"
            );
        }
        // Awake and not allowed to sleep (or not asked to): nothing to decide.
        assert_eq!(woken(sleep_inputs(None, false, Some(300), None, 100)), None);
        assert_eq!(woken(sleep_inputs(None, true, None, None, 100)), None);
    }
}
