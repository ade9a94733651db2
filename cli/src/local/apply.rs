//! Applying an edited input (see `plan::Change`): new server sets start and must answer
//! `/ping` before anything else happens; then the proxy moves to them; then the replaced
//! servers stop. On error the previous configuration keeps serving.

use super::{addrs_text, set_cluster, weights_summary, LocalError, RunningSet, Session};
use crate::plan::{self, Desired, ServerSet};

impl Session {
    /// Apply an edited input. On error the previous configuration keeps serving.
    pub(super) async fn apply(&mut self, new: Desired) -> Result<(), LocalError> {
        let new = self.hold_back_model_changes(new);
        // Capture sinks the new input needs are up before the filter sends to them; the ones
        // it no longer needs stop once the filter has stopped sending (or the apply failed).
        let retired = self.start_sinks(&new).await?;
        let result = self.apply_started(new).await;
        self.stop_sinks(retired).await;
        result
    }

    async fn apply_started(&mut self, new: Desired) -> Result<(), LocalError> {
        let change = plan::diff(&self.desired, &new);
        if change.is_empty() {
            // Nothing to start, stop or reload; annotations (e.g. mlep.dev/rollout) may differ.
            self.desired = new;
            return Ok(());
        }
        if change.is_config_only() {
            self.reload_filter(&new).await?;
            self.ui.say(format!("applied: {}", weights_summary(&new)));
            self.desired = new;
            return Ok(());
        }
        // 1. New servers first, ready before any traffic moves.
        let mut retired: Vec<ServerSet> = change.stop.clone();
        let mut to_start: Vec<ServerSet> = change.start.clone();
        for (old, new_set) in &change.rescale {
            retired.push(old.clone());
            to_start.push(new_set.clone());
        }
        let started = self.start_all(&to_start).await?;
        let old_running = self.swap_in(started, &retired);
        // 2. Move the proxy.
        let touched: Vec<&ServerSet> = to_start.iter().chain(retired.iter()).collect();
        if let Err(e) = self.move_proxy(&new, &change, &touched).await {
            self.roll_back(old_running, change.routes_changed).await;
            return Err(e);
        }
        // 3. Stop what was replaced.
        for r in old_running {
            self.ui.say(format!(
                "  stopping {} on {}",
                r.set.label(),
                addrs_text(&r.addrs())
            ));
            self.stop_set(r).await;
        }
        self.ui.say(format!("applied: {}", weights_summary(&new)));
        self.desired = new;
        Ok(())
    }

    /// The started sets take their keys; returns what they displace and the `retired` sets
    /// that nothing replaces (still running, to be stopped once the proxy has moved).
    pub(super) fn swap_in(
        &mut self,
        started: Vec<RunningSet>,
        retired: &[ServerSet],
    ) -> Vec<RunningSet> {
        let started_keys: Vec<_> = started.iter().map(|r| r.set.key()).collect();
        let mut old_running = Vec::new();
        for r in started {
            // New servers: a variant that slept is awake (its mark goes with the reload).
            self.forget_sleep(&r.set.key());
            if let Some(old) = self.running.insert(r.set.key(), r) {
                old_running.push(old);
            }
        }
        for s in retired {
            if !started_keys.contains(&s.key()) {
                if let Some(old) = self.running.remove(&s.key()) {
                    old_running.push(old);
                }
            }
        }
        old_running
    }

    /// Point Envoy at the running servers of `new`: a restart when routes change, else the
    /// EDS files of the `touched` sets' clusters (a removed shadow's cluster empties), then the
    /// filter config when it changed.
    pub(super) async fn move_proxy(
        &mut self,
        new: &Desired,
        change: &plan::Change,
        touched: &[&ServerSet],
    ) -> Result<(), LocalError> {
        if change.routes_changed {
            self.ui.say(
                "routes changed (variants, hosts, or a shadow Envoy mirrors): restarting Envoy",
            );
            return self.start_envoy(new).await;
        }
        let mut clusters: Vec<String> = touched.iter().map(|s| set_cluster(s)).collect();
        clusters.sort();
        clusters.dedup();
        self.move_upstreams(new, &clusters).await?;
        if change.config_changed {
            self.reload_filter(new).await?;
        }
        Ok(())
    }

    /// Undo a failed move: the displaced servers back in place, the new ones stopped, the
    /// proxy pointed at the old configuration again.
    pub(super) async fn roll_back(&mut self, old_running: Vec<RunningSet>, routes_changed: bool) {
        let mut new_ones = Vec::new();
        for old in old_running {
            if let Some(n) = self.running.insert(old.set.key(), old) {
                new_ones.push(n);
            }
        }
        for r in new_ones {
            self.stop_set(r).await;
        }
        let old = self.desired.clone();
        if routes_changed {
            let _ = self.start_envoy(&old).await;
        } else {
            let keys: Vec<String> = self
                .cluster_addrs(&old)
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            let _ = self.move_upstreams(&old, &keys).await;
        }
    }
}
