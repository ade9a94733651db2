//! Local mode drives rollouts with the same state machine as the operator
//! (`mlep_core::rollout`), analysing its own Envoy's stats (`crate::rollout::EnvoyStats`).
//!
//! - An edit changing a variant's model under a Canary, Linear or BlueGreen strategy does not
//!   swap it: [`Session::hold_back_model_changes`] keeps the variant on its running model and
//!   remembers the new one as the rollout's target.
//! - Every watch tick, [`Session::drive_rollouts`] scrapes Envoy, advances the machine, and
//!   applies its outcome in a safe order: the new model's servers start and must answer
//!   `/ping`; the variant's rollout cluster (`mlep|<endpoint>|<variant>|rollout`, EDS) gets
//!   them; only then does the filter config carry the split. A rollback drops the split first,
//!   then points the rollout cluster back at the variant's own servers, then stops the new
//!   ones. A promotion moves the variant's own cluster to the new servers, drops the split,
//!   then stops the old ones. No Envoy restart in any of them.
//! - The machine's status is saved whenever it changes, and a restart of `mlep` resumes from
//!   it (`local/resume.rs`).

use super::{addrs_text, resume, LocalError, RunningSet, Session};
use crate::envoy;
use crate::plan::{Desired, Role, ServerSet};
use crate::rollout::EnvoyStats;
use mlep_contract::RolloutSplit;
use mlep_core::crd::{ModelEndpoint, ModelEndpointStatus, VariantStatus};
use mlep_core::plan::{Observed, Readiness};
use mlep_core::reconcile::{self, Decision};
use mlep_core::rollout::{self as machine, Now, Phase, RolloutStatus, Settings};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// `(namespace, endpoint, variant)`.
type Key = (String, String, String);

/// `(namespace, endpoint, variant, model)`: the servers of one variant on one model, as the
/// cluster runs a Deployment per variant and model (a rollout's new model, or one draining
/// after a rollback while the next rollout starts another).
type ModelKey = (String, String, String, String);

fn model_key((ns, ep, variant): &Key, model: &str) -> ModelKey {
    (ns.clone(), ep.clone(), variant.clone(), model.to_owned())
}

/// Rollout state of the session.
#[derive(Default)]
pub(super) struct Rollouts {
    pub(super) stats: EnvoyStats,
    /// Target server set of a variant whose model change is held back.
    pub(super) targets: BTreeMap<Key, ServerSet>,
    /// Running servers of rollouts' new models (and of rolled-back ones while they drain), per
    /// variant and model: a variant's readiness on a model is its own servers' on that model.
    pub(super) sets: BTreeMap<ModelKey, RunningSet>,
    /// BlueGreen after the switch: the old model's servers, kept for an instant rollback.
    pub(super) blue: BTreeMap<Key, RunningSet>,
    /// The split the filter config carries now.
    pub(super) splits: BTreeMap<Key, RolloutSplit>,
    /// A BlueGreen bake's mirror, per `(namespace, endpoint)`: the endpoint's shadow cluster
    /// gets the new model's servers and the filter mirrors the variant's requests there.
    pub(super) mirrors: BTreeMap<(String, String), machine::Mirror>,
    /// Per endpoint (`namespace/name`): the machine's status.
    pub(super) status: BTreeMap<String, RolloutStatus>,
    /// Per endpoint (`namespace/name`): the annotation problem last reported.
    pub(super) warned: BTreeMap<String, String>,
}

impl Rollouts {
    /// The line to show for an endpoint's `mlep.dev/rollout` problem (read as the operator reads
    /// it, `mlep_core::reconcile::command`): once when it appears or changes, not on every
    /// look; a fixed annotation clears it.
    pub(super) fn annotation_warning(
        &mut self,
        key: &str,
        problem: Option<String>,
    ) -> Option<String> {
        match problem {
            None => {
                self.warned.remove(key);
                None
            }
            Some(p) if self.warned.get(key) == Some(&p) => None,
            Some(p) => {
                self.warned.insert(key.to_owned(), p.clone());
                Some(format!("warning: {key}: {p}"))
            }
        }
    }

    /// The servers of `key`'s variant on `model`, if they run.
    fn set_of(&self, key: &Key, model: &str) -> Option<&RunningSet> {
        self.sets.get(&model_key(key, model))
    }

    /// Add the servers of a rollout's model for `key`'s variant.
    pub(super) fn put_set(&mut self, key: &Key, r: RunningSet) {
        self.sets.insert(model_key(key, &r.set.model), r);
    }

    /// The models of `ns/ep` whose servers run for a rollout: `(variant, model)`.
    fn set_models<'a>(
        &'a self,
        ns: &'a str,
        ep: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.sets
            .keys()
            .filter(move |(n, e, _, _)| n == ns && e == ep)
            .map(|(_, _, v, m)| (v.as_str(), m.as_str()))
    }

    /// The status of an endpoint's rollout, for the table.
    pub(super) fn summary(&self, namespace: &str, endpoint: &str, variant: &str) -> Option<String> {
        let s = self.status.get(&format!("{namespace}/{endpoint}"))?;
        (s.variant == variant && s.phase != Phase::Idle).then(|| {
            format!(
                "{:?} {}->{} {}%",
                s.phase, s.from_model, s.to_model, s.moved_percent
            )
        })
    }
}

impl Session {
    /// Keep variants whose model changes under a staged strategy on their running model; the
    /// new model becomes the rollout's target.
    pub(super) fn hold_back_model_changes(&mut self, mut new: Desired) -> Desired {
        for e in &mut new.endpoints {
            let settings = Settings::of(e.endpoint.spec.rollout.as_ref());
            if settings.strategy == mlep_core::crd::RolloutStrategy::AllAtOnce {
                continue;
            }
            let (ns, name) = (e.namespace().to_owned(), e.name().to_owned());
            let Some(old) = self.desired.endpoint(&ns, &name) else {
                continue;
            };
            for (i, set) in e.variants.iter_mut().enumerate() {
                let Some(prev) = old.variants.iter().find(|p| p.role == set.role) else {
                    continue;
                };
                let Role::Variant(variant) = set.role.clone() else {
                    continue;
                };
                let key = (ns.clone(), name.clone(), variant);
                if prev.model == set.model {
                    // Back to the running model: no target any more.
                    self.rollouts.targets.remove(&key);
                    continue;
                }
                self.rollouts.targets.insert(key, set.clone());
                *set = ServerSet {
                    replicas: set.replicas,
                    ..prev.clone()
                };
                if let Some(v) = e.endpoint.spec.variants.get_mut(i) {
                    v.model = prev.model.clone();
                }
            }
        }
        new
    }

    /// The rollout cluster's servers of a variant: the new model's while a rollout runs, else
    /// the variant's own.
    pub(super) fn rollout_addrs(&self, ns: &str, ep: &str, variant: &str) -> Vec<SocketAddr> {
        let key = (ns.to_owned(), ep.to_owned(), variant.to_owned());
        // The model the endpoint's rollout moves this variant's users to, else (a rolled-back
        // model draining while the next one starts) whatever model of the variant runs.
        let target = self
            .rollouts
            .status
            .get(&format!("{ns}/{ep}"))
            .filter(|s| s.variant == variant)
            .and_then(|s| self.rollouts.set_of(&key, &s.to_model));
        let any = || {
            self.rollouts
                .sets
                .iter()
                .find(|((n, e, v, _), _)| n == ns && e == ep && v == variant)
                .map(|(_, r)| r)
        };
        match target.or_else(any) {
            Some(r) => r.addrs(),
            None => self
                .running
                .get(&(
                    ns.to_owned(),
                    ep.to_owned(),
                    Role::Variant(variant.to_owned()),
                ))
                .map(RunningSet::addrs)
                .unwrap_or_default(),
        }
    }

    /// The endpoint's shadow cluster during a BlueGreen bake: the new model's servers.
    pub(super) fn mirror_addrs(&self, ns: &str, ep: &str) -> Vec<SocketAddr> {
        self.rollouts
            .mirrors
            .get(&(ns.to_owned(), ep.to_owned()))
            .and_then(|m| {
                let key = (ns.to_owned(), ep.to_owned(), m.variant.clone());
                self.rollouts.set_of(&key, &m.model)
            })
            .map(RunningSet::addrs)
            .unwrap_or_default()
    }

    /// Put the current splits and bake mirrors on a filter config built from the desired state.
    pub(super) fn put_splits(&self, cfg: &mut mlep_contract::FilterConfig) {
        for ep in &mut cfg.endpoints {
            if let Some(m) = self
                .rollouts
                .mirrors
                .get(&(ep.namespace.clone(), ep.name.clone()))
            {
                let cluster = crate::plan::shadow_cluster(&ep.namespace, &ep.name);
                ep.shadow = Some(m.shadow_config(cluster, format!("{}-shadow.local", ep.name)));
            }
            for v in &mut ep.variants {
                let key = (ep.namespace.clone(), ep.name.clone(), v.name.clone());
                v.rollout = self.rollouts.splits.get(&key).cloned();
            }
        }
    }

    /// Make the desired state say that `variant` of `ns/name` runs `set` (when given) and serves
    /// `model`, so later edits and restarts start from what now serves.
    fn desire_variant(
        &mut self,
        ns: &str,
        name: &str,
        variant: &str,
        set: Option<ServerSet>,
        model: &str,
    ) {
        let Some(e) = self.desired.endpoint_mut(ns, name) else {
            return;
        };
        let role = Role::Variant(variant.to_owned());
        for (s, v) in e
            .variants
            .iter_mut()
            .zip(e.endpoint.spec.variants.iter_mut())
        {
            if s.role == role {
                if let Some(set) = &set {
                    *s = set.clone();
                }
                v.model = model.to_owned();
            }
        }
    }

    /// One look at every endpoint's rollout: scrape, advance, apply.
    pub(super) async fn drive_rollouts(&mut self) -> Result<(), LocalError> {
        let problems: Vec<(String, Option<String>)> = self
            .desired
            .endpoints
            .iter()
            .map(|e| {
                let (_, problem) = reconcile::command(&e.endpoint.annotations);
                (format!("{}/{}", e.namespace(), e.name()), problem)
            })
            .collect();
        for (key, problem) in problems {
            if let Some(line) = self.rollouts.annotation_warning(&key, problem) {
                self.ui.say(line);
            }
        }
        // Busy: a held-back model change, a rollout in progress, or servers only the machine
        // stops (a new model draining after a rollback, blue after a switch). An edit of the
        // spec (e.g. the annotation) may drop the held-back target meanwhile.
        let busy = self.desired.endpoints.iter().any(|e| {
            let ours = |(ns, n, _): &Key| ns == e.namespace() && n == e.name();
            self.rollouts.targets.keys().any(ours)
                || self
                    .rollouts
                    .set_models(e.namespace(), e.name())
                    .next()
                    .is_some()
                || self.rollouts.blue.keys().any(ours)
                || self
                    .rollouts
                    .status
                    .get(&format!("{}/{}", e.namespace(), e.name()))
                    .is_some_and(|s| {
                        matches!(s.phase, Phase::Progressing | Phase::Baking)
                            || s.old_model_until_unix.is_some()
                    })
        });
        if !busy {
            return Ok(());
        }
        let t = jiff::Timestamp::now();
        let now = Now {
            unix: t.as_second(),
            text: t
                .round(jiff::Unit::Second)
                .map(|r| r.to_string())
                .unwrap_or_default(),
        };
        if let Ok(text) = self.admin_get("/stats/prometheus").await {
            self.rollouts.stats.observe(now.unix, &text);
        }
        let endpoints: Vec<(String, String)> = self
            .desired
            .endpoints
            .iter()
            .map(|e| (e.namespace().to_owned(), e.name().to_owned()))
            .collect();
        for (ns, name) in endpoints {
            self.drive_one(&ns, &name, &now).await?;
        }
        Ok(())
    }

    /// The rollout strategy of `ns/name`'s spec.
    fn strategy_of(&self, ns: &str, name: &str) -> Option<mlep_core::crd::RolloutStrategy> {
        self.desired
            .endpoint(ns, name)
            .map(|e| Settings::of(e.endpoint.spec.rollout.as_ref()).strategy)
    }

    /// The reconcile decision for one endpoint (`None` before it has an allocation): the spec
    /// as written (held-back targets included) against what serves, its running servers
    /// (ready: they answered `/ping` before they joined), the saved rollout and Envoy's stats.
    fn decide_one(&mut self, ns: &str, name: &str, now: &Now) -> Option<Decision> {
        let ep_key = format!("{ns}/{name}");
        let e = self.desired.endpoint(ns, name)?;
        let allocation = self.allocations.get(&ep_key)?;
        let key = |v: &str| (ns.to_owned(), name.to_owned(), v.to_owned());
        let mut spec = e.endpoint.spec.clone();
        for v in &mut spec.variants {
            if let Some(target) = self.rollouts.targets.get(&key(&v.name)) {
                v.model = target.model.clone();
            }
        }
        let mut endpoint = ModelEndpoint::new(name, spec);
        endpoint.metadata.namespace = Some(ns.to_owned());
        endpoint.metadata.annotations = Some(e.endpoint.annotations.clone());
        let last = ModelEndpointStatus {
            variants: e
                .endpoint
                .spec
                .variants
                .iter()
                .map(|v| VariantStatus {
                    name: v.name.clone(),
                    model: v.model.clone(),
                    ..VariantStatus::default()
                })
                .collect(),
            allocation: Some(allocation.clone()),
            rollout: self.rollouts.status.get(&ep_key).cloned(),
            ..ModelEndpointStatus::default()
        };
        let running = Readiness {
            replicas: 1,
            ready_replicas: 1,
            woken_at: None,
        };
        let blue = self
            .rollouts
            .blue
            .iter()
            .filter(|((n, ep, _), _)| n == ns && ep == name)
            .map(|((_, _, v), r)| (v.clone(), r.set.model.clone()));
        let rolling = self
            .rollouts
            .sets
            .keys()
            .filter(|(n, ep, _, _)| n == ns && ep == name)
            .map(|(_, _, v, m)| (v.clone(), m.clone()))
            .chain(blue);
        let observed = Observed {
            deployments: last
                .variants
                .iter()
                .map(|v| (v.name.clone(), v.model.clone()))
                .chain(rolling)
                .map(|pair| (pair, running))
                .collect(),
        };
        let input = reconcile::Input {
            endpoint: &endpoint,
            namespace: ns,
            last: Some(&last),
            models: None,
            claims: None,
            observed: &observed,
            failures: &Default::default(),
            now,
            route_grace_seconds: 0,
            fresh_route_key: &self.route_key,
        };
        Some(reconcile::drive(&input, &mut self.rollouts.stats))
    }

    /// Advance one endpoint's rollout and apply the outcome in a safe order.
    async fn drive_one(&mut self, ns: &str, name: &str, now: &Now) -> Result<(), LocalError> {
        let ep_key = format!("{ns}/{name}");
        let last = self.rollouts.status.get(&ep_key).cloned();
        let Some(out) = self.decide_one(ns, name, now).map(|d| d.rollout) else {
            return Ok(());
        };
        let Some(status) = out.status.clone() else {
            return Ok(());
        };
        self.record_status(ns, name, last.as_ref(), &status)?;
        let key = (ns.to_owned(), name.to_owned(), status.variant.clone());
        let wanted: Vec<String> = out
            .models
            .as_ref()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        // 1. The new model's servers, ready, and in the rollout cluster.
        self.start_new_model(&key, &status, &wanted).await?;
        // 2. Promotion, or a rollback while blue still runs.
        self.hand_over_variant(&key, &status, &out, &wanted).await?;
        // 3. The split and the bake's mirror.
        self.apply_split_and_mirror(&key, &out).await?;
        // 4. Servers the machine no longer wants.
        self.stop_unwanted(&key, &status, &wanted).await?;
        if status.phase == Phase::Promoted && !self.rollouts.blue.contains_key(&key) {
            self.rollouts.targets.remove(&key);
        }
        Ok(())
    }

    /// Say a new phase, step or share; save a changed status, then route by it.
    ///
    /// Saved before it is applied: a restart resumes with at least the users Envoy may have
    /// moved (the moved set only grows), never with fewer (they would move back and again).
    fn record_status(
        &mut self,
        ns: &str,
        name: &str,
        last: Option<&RolloutStatus>,
        status: &RolloutStatus,
    ) -> Result<(), LocalError> {
        let ep_key = format!("{ns}/{name}");
        // The operator's Events, one line each (`<note> (<type> <reason>)`).
        for e in mlep_core::events::rollout_events(last, Some(status)) {
            self.ui.say(format!("rollout {name}: {e}"));
        }
        if last != Some(status) {
            let saved = resume::Saved {
                strategy: self.strategy_of(ns, name),
                status: status.clone(),
            };
            resume::save(&self.opts.state_dir, &ep_key, &saved)?;
        }
        // The status routes by now (the rollout cluster follows its target model).
        self.rollouts.status.insert(ep_key, status.clone());
        Ok(())
    }

    /// Start the rollout's new model (the held-back target) when the machine wants it and it
    /// does not run yet; once ready, its servers join the variant's rollout cluster.
    async fn start_new_model(
        &mut self,
        key: &Key,
        status: &RolloutStatus,
        wanted: &[String],
    ) -> Result<(), LocalError> {
        if !wanted.contains(&status.to_model)
            || status.phase == Phase::Promoted
            || self.rollouts.set_of(key, &status.to_model).is_some()
        {
            return Ok(());
        }
        let Some(set) = self.rollouts.targets.get(key).cloned() else {
            return Ok(());
        };
        if set.model != status.to_model {
            return Ok(());
        }
        let r = self.start_set(&set).await?;
        self.rollouts.put_set(key, r);
        self.point_rollout_cluster(&key.0, &key.1, &key.2).await
    }

    /// Promotion: the variant's own cluster moves to the new servers (blue kept if the machine
    /// still wants the old model). A rollback while blue still runs: blue takes the variant
    /// back at once.
    async fn hand_over_variant(
        &mut self,
        key: &Key,
        status: &RolloutStatus,
        out: &machine::Outcome,
        wanted: &[String],
    ) -> Result<(), LocalError> {
        let serves = |model: &str| out.serving.as_ref().is_some_and(|(_, m)| m == model);
        if serves(&status.to_model) && self.rollouts.set_of(key, &status.to_model).is_some() {
            let keep_blue = wanted.contains(&status.from_model);
            self.promote_locally(key, &status.to_model, keep_blue)
                .await?;
        }
        if serves(&status.from_model) && self.rollouts.blue.contains_key(key) {
            self.demote_locally(&key.0, &key.1, &key.2, &status.from_model)
                .await?;
        }
        Ok(())
    }

    /// Carry the machine's split and bake mirror: a new mirror's cluster gets its servers
    /// first, then the filter config changes; a mirror that ends leaves the filter config
    /// before its cluster is emptied.
    async fn apply_split_and_mirror(
        &mut self,
        key: &Key,
        out: &machine::Outcome,
    ) -> Result<(), LocalError> {
        let (ns, name) = (key.0.as_str(), key.1.as_str());
        let split = out.split.as_ref().map(|(_, s)| s.clone());
        let ep_pair = (ns.to_owned(), name.to_owned());
        let mirror_changed = self.rollouts.mirrors.get(&ep_pair) != out.mirror.as_ref();
        if mirror_changed {
            if let Some(m) = &out.mirror {
                self.rollouts.mirrors.insert(ep_pair.clone(), m.clone());
                self.point_shadow_cluster(ns, name).await?;
            }
        }
        if self.rollouts.splits.get(key) == split.as_ref() && !mirror_changed {
            return Ok(());
        }
        match split {
            Some(s) => self.rollouts.splits.insert(key.clone(), s),
            None => self.rollouts.splits.remove(key),
        };
        if out.mirror.is_none() {
            self.rollouts.mirrors.remove(&ep_pair);
        }
        let d = self.desired.clone();
        self.reload_filter(&d).await?;
        if out.mirror.is_none() && mirror_changed {
            self.point_shadow_cluster(ns, name).await?;
        }
        Ok(())
    }

    /// A rolled-back model's servers go once nothing routes there, and so do those of any
    /// model the machine no longer wants (another variant's, or an earlier rollout's); blue
    /// goes once the machine no longer keeps the old model.
    async fn stop_unwanted(
        &mut self,
        key: &Key,
        status: &RolloutStatus,
        wanted: &[String],
    ) -> Result<(), LocalError> {
        let (ns, name, variant) = (key.0.as_str(), key.1.as_str(), key.2.as_str());
        let unwanted: Vec<ModelKey> = self
            .rollouts
            .sets
            .keys()
            .filter(|(n, e, v, m)| n == ns && e == name && (v != variant || !wanted.contains(m)))
            .cloned()
            .collect();
        for k in unwanted {
            if let Some(r) = self.rollouts.sets.remove(&k) {
                self.point_rollout_cluster(ns, name, &k.2).await?;
                self.stop_saying(r).await;
            }
        }
        if !wanted.contains(&status.from_model) {
            if let Some(r) = self.rollouts.blue.remove(key) {
                self.stop_saying(r).await;
            }
        }
        Ok(())
    }

    /// Stop `r`'s servers, saying so.
    async fn stop_saying(&self, r: RunningSet) {
        self.ui.say(format!(
            "  stopping {} on {}",
            r.set.label(),
            addrs_text(&r.addrs())
        ));
        self.stop_set(r).await;
    }

    /// Write the rollout cluster's EDS (new servers, or the variant's own) and wait for Envoy.
    async fn point_rollout_cluster(
        &mut self,
        ns: &str,
        ep: &str,
        variant: &str,
    ) -> Result<(), LocalError> {
        let d = self.desired.clone();
        self.move_upstreams(&d, &[envoy::rollout_cluster(ep, variant)])
            .await?;
        let _ = ns;
        Ok(())
    }

    /// Write the endpoint's shadow cluster (the bake's new servers, its own shadow's, or none).
    async fn point_shadow_cluster(&mut self, ns: &str, ep: &str) -> Result<(), LocalError> {
        let d = self.desired.clone();
        self.move_upstreams(&d, &[crate::plan::shadow_cluster(ns, ep)])
            .await
    }

    /// The new model takes the variant: its servers become the variant's, the desired state
    /// names it, the variant's cluster moves to it, the old servers stop.
    async fn promote_locally(
        &mut self,
        key: &Key,
        model: &str,
        keep_blue: bool,
    ) -> Result<(), LocalError> {
        let (ns, name, variant) = (key.0.as_str(), key.1.as_str(), key.2.as_str());
        let Some(new_set) = self.rollouts.sets.remove(&model_key(key, model)) else {
            return Ok(());
        };
        let role_key = (
            ns.to_owned(),
            name.to_owned(),
            Role::Variant(variant.to_owned()),
        );
        let old = self.running.insert(role_key, new_set);
        let target = self.rollouts.targets.get(key).cloned();
        self.desire_variant(ns, name, variant, target, model);
        let d = self.desired.clone();
        let clusters = [
            envoy::variant_cluster(name, variant),
            envoy::rollout_cluster(name, variant),
        ];
        self.move_upstreams(&d, &clusters).await?;
        if let Some(r) = old {
            if keep_blue {
                self.rollouts.blue.insert(key.clone(), r);
            } else {
                self.stop_saying(r).await;
            }
        }
        Ok(())
    }

    /// Undo a switch while blue still runs: blue's servers take the variant again, the new
    /// model's go back to the rollout cluster (stopped once the rollback has drained).
    async fn demote_locally(
        &mut self,
        ns: &str,
        name: &str,
        variant: &str,
        blue_model: &str,
    ) -> Result<(), LocalError> {
        let key = (ns.to_owned(), name.to_owned(), variant.to_owned());
        let Some(blue) = self.rollouts.blue.remove(&key) else {
            return Ok(());
        };
        let blue_set = blue.set.clone();
        let role_key = (
            ns.to_owned(),
            name.to_owned(),
            Role::Variant(variant.to_owned()),
        );
        if let Some(green) = self.running.insert(role_key, blue) {
            self.rollouts.put_set(&key, green);
        }
        self.desire_variant(ns, name, variant, Some(blue_set), blue_model);
        let d = self.desired.clone();
        let clusters = [
            envoy::variant_cluster(name, variant),
            envoy::rollout_cluster(name, variant),
        ];
        self.move_upstreams(&d, &clusters).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_rollout_annotation_is_shown_once_naming_the_value_until_it_is_fixed() {
        let mut r = Rollouts::default();
        let read = |v: &str| {
            let annotations = [(machine::ANNOTATION.to_owned(), v.to_owned())].into();
            reconcile::command(&annotations).1
        };
        let line = r.annotation_warning("ns/t", read("abrot")).unwrap();
        assert!(
            line.contains("ns/t") && line.contains(machine::ANNOTATION) && line.contains("abrot"),
            "{line}"
        );
        // The same problem at the next look: already shown.
        assert_eq!(r.annotation_warning("ns/t", read("abrot")), None);
        // Another bad value is shown; a good one clears, so the bad one shows again later.
        assert!(r.annotation_warning("ns/t", read("stop")).is_some());
        assert_eq!(r.annotation_warning("ns/t", read("abort")), None);
        assert!(r.annotation_warning("ns/t", read("stop")).is_some());
    }
}
