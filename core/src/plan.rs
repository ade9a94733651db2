//! Planning: which Deployments must exist and which weights route *now*, given the spec, what
//! is ready and the last configuration that served. Pure: no API access.
//!
//! Rules (each has a test below):
//! - never route to a variant with no ready pod; its share goes to the ready variants, in
//!   proportion to their spec weights, until it is ready; a sleeping variant (scaled to zero,
//!   its requests held by the proxies) counts as ready;
//! - a variant whose model changes keeps serving its previous model (and that Deployment
//!   stays) until the new model's Deployment has a ready pod, then switches;
//! - while nothing is ready, keep the last routed weights (or the spec's on a first rollout);
//! - the shadow gets copies only once its Deployment has a ready pod (`Plan::shadow_ready`);
//! - the bucket allocation is derived from the previous one (see `mlep_contract::carry_allocation`);
//! - a variant removed from the spec stops being assigned at once but keeps its route, subset
//!   and Deployment for a grace period (see [`retiring`]).

use crate::crd::{ModelEndpointSpec, ModelEndpointStatus, RetiringVariant, ShadowSpec};
use mlep_contract::metrics::SHADOW_VARIANT_LABEL;
use std::collections::BTreeMap;

/// Readiness of one Deployment as observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    pub replicas: i32,
    pub ready_replicas: i32,
    /// The last wake-up of a variant scaled to zero (`crate::autoscale::sleep`), Unix seconds.
    pub woken_at: Option<i64>,
}

/// What the endpoint looks like now: Deployment readiness by (variant, model).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub deployments: BTreeMap<(String, String), Readiness>,
}

impl Observed {
    fn ready(&self, variant: &str, model: &str) -> bool {
        self.deployments
            .get(&(variant.to_owned(), model.to_owned()))
            .is_some_and(|r| r.ready_replicas > 0)
    }
}

/// The plan for one variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantPlan {
    pub name: String,
    /// Model the spec asks for; its Deployment always exists.
    pub desired_model: String,
    /// Model traffic goes to now (equal to `desired_model` unless a swap waits for readiness).
    pub serving_model: String,
    /// Weight routed now.
    pub weight: u32,
    /// Whether the serving Deployment has a ready pod.
    pub ready: bool,
}

impl VariantPlan {
    /// Models whose Deployments must exist for this variant: the desired one and, during a
    /// swap, the one still serving.
    pub fn models(&self) -> Vec<&str> {
        if self.serving_model == self.desired_model {
            vec![&self.desired_model]
        } else {
            vec![&self.serving_model, &self.desired_model]
        }
    }

    pub fn swapping(&self) -> bool {
        self.serving_model != self.desired_model
    }
}

/// The plan for an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub variants: Vec<VariantPlan>,
    /// A Canary, Linear or BlueGreen rollout's part (see `crate::rollout::apply`).
    pub rollout: Option<crate::filter_config::RolloutPlan>,
    /// Removed variants whose route stays a while (see [`retiring`]); none in a fresh plan.
    pub retiring: Vec<RetiringVariant>,
    /// Replicas the operator's request-rate autoscaler decided, by (variant, model)
    /// (`crate::autoscale::apply`); a Deployment of such a variant not in it runs
    /// `minReplicas`. Empty in a fresh plan.
    pub scaled: BTreeMap<(String, String), i32>,
    /// Whether the shadow's Deployment has a ready pod (false without a shadow). Copies go to
    /// the shadow only then: before, every copy would end in a 503 from a Service with no
    /// endpoints, counted against the shadow's agreement and error rate.
    pub shadow_ready: bool,
}

impl Plan {
    /// The shadow that gets copies now: the spec's, once its pod is ready ([`Plan::shadow_ready`]).
    pub fn copied_shadow<'s>(&self, spec: &'s ModelEndpointSpec) -> Option<&'s ShadowSpec> {
        spec.shadow.as_ref().filter(|_| self.shadow_ready)
    }

    /// Whether a shadow waits for its pod (its copies start at the reconcile that sees it).
    pub fn shadow_waiting(&self, spec: &ModelEndpointSpec) -> bool {
        spec.shadow.is_some() && !self.shadow_ready
    }

    /// Routed weights, in variant order.
    pub fn weights(&self) -> Vec<(&str, u32)> {
        self.variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect()
    }

    /// Whether every variant serves its desired model, is ready and routes its spec weight.
    pub fn settled(&self, spec: &ModelEndpointSpec) -> bool {
        self.variants
            .iter()
            .zip(&spec.variants)
            .all(|(p, s)| !p.swapping() && p.ready && p.weight == s.weight)
    }

    /// The plan for rendering without a cluster (`mlep render`, first sight): every variant
    /// serves its spec model at its spec weight.
    pub fn assume_ready(spec: &ModelEndpointSpec) -> Self {
        Plan {
            variants: spec
                .variants
                .iter()
                .map(|v| VariantPlan {
                    name: v.name.clone(),
                    desired_model: v.model.clone(),
                    serving_model: v.model.clone(),
                    weight: v.weight,
                    ready: true,
                })
                .collect(),
            rollout: None,
            retiring: Vec::new(),
            scaled: BTreeMap::new(),
            shadow_ready: spec.shadow.is_some(),
        }
    }

    /// Models whose Deployments run for `variant`: a rollout's pair while one moves its
    /// traffic, else the variant's own ([`VariantPlan::models`]).
    pub fn running_models<'a>(&'a self, variant: &'a VariantPlan) -> Vec<&'a str> {
        match self.rollout.as_ref().filter(|r| r.variant == variant.name) {
            Some(crate::filter_config::RolloutPlan {
                models: Some(m), ..
            }) => m.iter().map(String::as_str).collect(),
            _ => variant.models(),
        }
    }

    /// Whether `variant` is retiring: its running objects stay until its deadline.
    pub fn is_retiring(&self, variant: &str) -> bool {
        self.retiring.iter().any(|r| r.name == variant)
    }

    /// Seconds until the next retiring variant's route may go, if any is left.
    pub fn next_retirement_in(&self, now_unix: i64) -> Option<i64> {
        self.retiring
            .iter()
            .map(|r| (r.until_unix - now_unix).max(0))
            .min()
    }
}

/// Removing a variant in one step would race the proxies: the filter config that stops
/// assigning it and the VirtualService/DestinationRule without its route reach each proxy
/// independently (and the Deployment's pods go with the prune), so a proxy still on the old
/// filter config could send a request marked for a route or subset that no longer exists. So
/// removal is ordered: the reconcile that sees a variant gone from the spec drops it from the
/// filter config and the weighted route at once, but keeps its header route, its subset and
/// its Deployment until `grace_seconds` later (recorded in status, so an operator restart
/// keeps the deadline); a later reconcile prunes them. A variant that comes back in the spec
/// stops retiring. Istio has no per-proxy acknowledgement an operator can read with its own
/// RBAC (istiod's sync status is a debug endpoint), hence a period rather than an ack.
pub fn retiring(
    spec: &ModelEndpointSpec,
    last: Option<&ModelEndpointStatus>,
    now_unix: i64,
    grace_seconds: i64,
) -> Vec<RetiringVariant> {
    let Some(last) = last else {
        return Vec::new();
    };
    let in_spec = |name: &str| spec.variants.iter().any(|v| v.name == name);
    let mut out: Vec<RetiringVariant> = last
        .retiring
        .iter()
        .filter(|r| !in_spec(&r.name) && r.until_unix > now_unix)
        .cloned()
        .collect();
    for v in &last.variants {
        if !in_spec(&v.name) && !out.iter().any(|r| r.name == v.name) {
            out.push(RetiringVariant {
                name: v.name.clone(),
                model: v.model.clone(),
                until_unix: now_unix + grace_seconds,
            });
        }
    }
    out
}

/// Plan an endpoint. `last` is the status written after the last good reconcile.
pub fn plan(
    spec: &ModelEndpointSpec,
    last: Option<&ModelEndpointStatus>,
    observed: &Observed,
) -> Plan {
    let last_variant = |name: &str| last.and_then(|s| s.variants.iter().find(|v| v.name == name));
    let mut variants: Vec<VariantPlan> = spec
        .variants
        .iter()
        .map(|v| {
            let desired_ready = observed.ready(&v.name, &v.model);
            // The model that served before: keep it while the new one is not ready yet.
            let previous = last_variant(&v.name)
                .map(|s| s.model.as_str())
                .filter(|m| *m != v.model);
            let serving = match previous {
                Some(prev) if !desired_ready && observed.ready(&v.name, prev) => prev.to_owned(),
                _ => v.model.clone(),
            };
            // A sleeping variant (scaled to zero) serves: the proxies hold its requests while a
            // pod starts (`crate::autoscale::sleep`), so it keeps its route and its users.
            let asleep = last_variant(&v.name)
                .and_then(|s| s.autoscaling.as_ref())
                .is_some_and(|a| a.asleep_since_unix.is_some());
            let ready = observed.ready(&v.name, &serving) || asleep;
            VariantPlan {
                name: v.name.clone(),
                desired_model: v.model.clone(),
                serving_model: serving,
                weight: 0,
                ready,
            }
        })
        .collect();

    let spec_weights: Vec<u32> = spec.variants.iter().map(|s| s.weight).collect();
    let weights = if variants.iter().any(|p| p.ready) {
        // Ready variants share the traffic in proportion to their spec weights (evenly when
        // only zero-weight variants are ready); unready ones get none.
        let even = variants
            .iter()
            .zip(&spec_weights)
            .all(|(p, w)| !p.ready || *w == 0);
        let shares: Vec<u32> = variants
            .iter()
            .zip(&spec_weights)
            .map(|(p, w)| match (p.ready, even) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => *w,
            })
            .collect();
        spread(&shares)
    } else {
        unready_weights(spec, last)
    };
    for (p, w) in variants.iter_mut().zip(weights) {
        p.weight = w;
    }
    Plan {
        variants,
        rollout: None,
        retiring: Vec::new(),
        scaled: BTreeMap::new(),
        shadow_ready: shadow_ready(spec, observed),
    }
}

/// Nothing can serve: keep what routed last (nothing changes for clients), else the spec.
fn unready_weights(spec: &ModelEndpointSpec, last: Option<&ModelEndpointStatus>) -> Vec<u32> {
    let last_weights: Vec<u32> = spec
        .variants
        .iter()
        .map(|s| {
            last.and_then(|l| l.variants.iter().find(|v| v.name == s.name))
                .map(|l| l.current_weight)
                .unwrap_or(s.weight)
        })
        .collect();
    if last_weights.iter().sum::<u32>() == 100 {
        last_weights
    } else {
        spec.variants.iter().map(|s| s.weight).collect()
    }
}

/// Whether the spec's shadow model has a ready pod in the shadow's Deployment.
fn shadow_ready(spec: &ModelEndpointSpec, observed: &Observed) -> bool {
    spec.shadow
        .as_ref()
        .is_some_and(|s| observed.ready(SHADOW_VARIANT_LABEL, &s.model))
}

/// Scale `shares` to percentages summing to exactly 100 (largest remainder, ties to the first).
fn spread(shares: &[u32]) -> Vec<u32> {
    let total: u64 = shares.iter().map(|&s| u64::from(s)).sum();
    if total == 0 {
        return shares.to_vec();
    }
    let mut out: Vec<u32> = shares
        .iter()
        .map(|&s| (u64::from(s) * 100 / total) as u32)
        .collect();
    let mut rest = 100 - out.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(u64::from(shares[i]) * 100 % total));
    for i in order {
        if rest == 0 {
            break;
        }
        out[i] += 1;
        rest -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{VariantSpec, VariantStatus};

    fn spec(v: &[(&str, &str, u32)]) -> ModelEndpointSpec {
        ModelEndpointSpec::new(
            vec!["h.example.com".into()],
            v.iter()
                .map(|(n, m, w)| VariantSpec::new(*n, *m, *w))
                .collect(),
        )
    }

    fn observed(ready: &[(&str, &str, i32)]) -> Observed {
        Observed {
            deployments: ready
                .iter()
                .map(|(v, m, r)| {
                    (
                        ((*v).into(), (*m).into()),
                        Readiness {
                            replicas: 1,
                            ready_replicas: *r,
                            woken_at: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn status(v: &[(&str, &str, u32)]) -> ModelEndpointStatus {
        ModelEndpointStatus {
            variants: v
                .iter()
                .map(|(n, m, w)| VariantStatus {
                    name: (*n).into(),
                    model: (*m).into(),
                    current_weight: *w,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_sleeping_variant_keeps_its_weight_without_a_ready_pod() {
        let s = spec(&[("a", "m1", 50), ("b", "m2", 50)]);
        let mut last = status(&[("a", "m1", 50), ("b", "m2", 50)]);
        last.variants[1].autoscaling = Some(crate::crd::VariantAutoscalingStatus {
            asleep_since_unix: Some(100),
            ..Default::default()
        });
        let now = observed(&[("a", "m1", 1), ("b", "m2", 0)]);
        assert_eq!(
            plan(&s, Some(&last), &now).weights(),
            vec![("a", 50), ("b", 50)]
        );
        // Awake again (no mark) and not ready: its share goes to `a` as for any variant.
        last.variants[1].autoscaling = None;
        assert_eq!(
            plan(&s, Some(&last), &now).weights(),
            vec![("a", 100), ("b", 0)]
        );
    }

    #[test]
    fn all_ready_routes_the_spec_weights() {
        let s = spec(&[("a", "m1", 80), ("b", "m2", 20)]);
        let p = plan(&s, None, &observed(&[("a", "m1", 1), ("b", "m2", 1)]));
        assert_eq!(p.weights(), vec![("a", 80), ("b", 20)]);
        assert!(p.settled(&s));
    }

    #[test]
    fn a_variant_without_ready_pods_gets_no_traffic_and_its_share_goes_to_the_ready_ones() {
        let s = spec(&[("a", "m1", 60), ("b", "m2", 20), ("c", "m3", 20)]);
        let p = plan(
            &s,
            None,
            &observed(&[("a", "m1", 1), ("b", "m2", 1), ("c", "m3", 0)]),
        );
        assert_eq!(p.weights(), vec![("a", 75), ("b", 25), ("c", 0)]);
        assert!(!p.settled(&s));
    }

    #[test]
    fn a_model_swap_keeps_serving_the_old_model_until_the_new_one_is_ready() {
        let s = spec(&[("a", "m1", 80), ("b", "m3", 20)]);
        let last = status(&[("a", "m1", 80), ("b", "m2", 20)]);
        let p = plan(
            &s,
            Some(&last),
            &observed(&[("a", "m1", 1), ("b", "m2", 1), ("b", "m3", 0)]),
        );
        assert_eq!(p.variants[1].serving_model, "m2");
        assert_eq!(p.variants[1].models(), vec!["m2", "m3"]);
        assert_eq!(p.weights(), vec![("a", 80), ("b", 20)]);
        let p = plan(
            &s,
            Some(&last),
            &observed(&[("a", "m1", 1), ("b", "m2", 1), ("b", "m3", 1)]),
        );
        assert_eq!(p.variants[1].serving_model, "m3");
        assert_eq!(p.variants[1].models(), vec!["m3"]);
        assert!(p.settled(&s));
    }

    #[test]
    fn nothing_ready_keeps_the_last_routed_weights_or_the_spec_on_first_rollout() {
        let s = spec(&[("a", "m1", 50), ("b", "m2", 50)]);
        assert_eq!(
            plan(&s, None, &Observed::default()).weights(),
            vec![("a", 50), ("b", 50)]
        );
        let last = status(&[("a", "m1", 90), ("b", "m2", 10)]);
        assert_eq!(
            plan(&s, Some(&last), &Observed::default()).weights(),
            vec![("a", 90), ("b", 10)]
        );
        assert!(plan(&s, Some(&last), &Observed::default())
            .variants
            .iter()
            .all(|v| !v.ready));
    }

    #[test]
    fn only_zero_weight_variants_ready_share_evenly() {
        let s = spec(&[("a", "m1", 100), ("b", "m2", 0), ("c", "m3", 0)]);
        let p = plan(&s, None, &observed(&[("b", "m2", 1), ("c", "m3", 1)]));
        assert_eq!(p.weights(), vec![("a", 0), ("b", 50), ("c", 50)]);
    }

    #[test]
    fn spread_sums_to_100_for_awkward_shares() {
        for shares in [
            vec![1, 1, 1],
            vec![33, 33, 1],
            vec![7],
            vec![1, 2, 3, 4, 5, 6, 7],
        ] {
            assert_eq!(spread(&shares).iter().sum::<u32>(), 100, "{shares:?}");
        }
        assert_eq!(spread(&[1, 1, 1]), vec![34, 33, 33]);
    }

    #[test]
    fn a_removed_variant_retires_for_the_grace_period_then_goes() {
        let s = spec(&[("a", "m1", 100)]);
        let mut last = status(&[("a", "m1", 80), ("b", "m2", 20)]);
        // The reconcile that sees b gone starts its grace period.
        let r = retiring(&s, Some(&last), 1_000, 30);
        assert_eq!(
            r,
            [RetiringVariant {
                name: "b".into(),
                model: "m2".into(),
                until_unix: 1_030
            }]
        );
        // Later reconciles keep the deadline they find in status (an operator restart too).
        last = status(&[("a", "m1", 100)]);
        last.retiring = r;
        assert_eq!(retiring(&s, Some(&last), 1_020, 30)[0].until_unix, 1_030);
        let mut p = plan(&s, Some(&last), &observed(&[("a", "m1", 1)]));
        p.retiring = retiring(&s, Some(&last), 1_020, 30);
        assert_eq!(p.next_retirement_in(1_020), Some(10));
        assert!(p.is_retiring("b") && !p.is_retiring("a"));
        // At the deadline it is gone.
        assert!(retiring(&s, Some(&last), 1_030, 30).is_empty());
    }

    #[test]
    fn a_variant_back_in_the_spec_stops_retiring() {
        let s = spec(&[("a", "m1", 50), ("b", "m3", 50)]);
        let mut last = status(&[("a", "m1", 100)]);
        last.retiring = vec![RetiringVariant {
            name: "b".into(),
            model: "m2".into(),
            until_unix: 2_000,
        }];
        assert!(retiring(&s, Some(&last), 1_000, 30).is_empty());
        assert!(retiring(&s, None, 1_000, 30).is_empty());
    }

    #[test]
    fn the_shadow_gets_copies_only_once_its_own_model_has_a_ready_pod() {
        let mut s = spec(&[("a", "m1", 100)]);
        assert!(!plan(&s, None, &observed(&[("a", "m1", 1)])).shadow_ready);
        s.shadow = Some(crate::crd::ShadowSpec::new("m3", 100.0));
        let ready = |pods: &[(&str, &str, i32)]| plan(&s, None, &observed(pods)).shadow_ready;
        assert!(!ready(&[("a", "m1", 1)]), "no shadow Deployment yet");
        assert!(
            !ready(&[("a", "m1", 1), ("shadow", "m3", 0)]),
            "not ready yet"
        );
        assert!(
            !ready(&[("a", "m1", 1), ("shadow", "m2", 1)]),
            "the previous shadow model's pod is not this one"
        );
        assert!(
            !ready(&[("shadow", "m1", 0), ("a", "m3", 1)]),
            "a variant serving the same model is not the shadow"
        );
        assert!(ready(&[("a", "m1", 1), ("shadow", "m3", 1)]));
        assert!(Plan::assume_ready(&s).shadow_ready);
    }
}
