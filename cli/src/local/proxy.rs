//! Local mode's Envoy: rendered once per start from the desired state (routes, EDS clusters,
//! the filter through ECDS), restarted when it exits, and moved without a restart by writing
//! its watched files: EDS for upstreams, the filter config for weights and splits.

use super::{state, task_err, LocalError, RunningSet, Session};
use crate::envoy::{self, BootstrapSpec, EnvoyProcess, StartOptions, Upstreams};
use crate::plan::{self, Desired, Role};
use crate::{http, upstreams};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Envoy is restarted at once; if it exits this many times without a stable minute in
/// between, `mlep` gives up (and stops everything).
const ENVOY_MAX_CRASHES: u32 = 5;

/// How long Envoy may take to load a new filter config or new EDS hosts.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Session {
    pub(super) fn addrs_of(&self, e: &plan::EndpointPlan, role: &Role) -> Vec<SocketAddr> {
        self.running
            .get(&(e.namespace().to_owned(), e.name().to_owned(), role.clone()))
            .map(RunningSet::addrs)
            .unwrap_or_default()
    }

    /// The filter config for `d`, and its JSON.
    pub(super) fn filter_json(
        &self,
        d: &Desired,
    ) -> Result<(mlep_contract::FilterConfig, String), LocalError> {
        let mut cfg = plan::filter_config(d, &self.allocations, &self.route_key)?;
        self.put_splits(&mut cfg);
        self.put_sleep_marks(&mut cfg);
        // What Envoy's mirror on the routes copies (`plan::route_endpoints`) is not the
        // filter's: the written config leaves out a shadow that compares nothing, and marks
        // one that compares a sample (its other copies go through the twin routes).
        let mut served = cfg.clone();
        for ep in &mut served.endpoints {
            let _on_the_routes = envoy::NativeMirror::take(&mut ep.shadow);
        }
        let json = serde_json::to_string(&served).map_err(|source| LocalError::Json {
            what: "the filter configuration",
            source,
        })?;
        Ok((cfg, json))
    }

    /// `d`'s Envoy bootstrap spec (its routes and the filter).
    pub(super) fn bootstrap_spec(
        &self,
        d: &Desired,
        cfg: &mlep_contract::FilterConfig,
    ) -> Result<BootstrapSpec, LocalError> {
        let endpoints = plan::route_endpoints(d, cfg, |e, set| {
            let asleep = || match &set.role {
                // Scaled to zero: no server, and none needed (EDS clusters take their hosts
                // from files; a static one would get this address, nothing listens there).
                Role::Variant(v) => self
                    .is_asleep(e.namespace(), e.name(), v)
                    .then_some(SocketAddr::from(([127, 0, 0, 1], 0))),
                Role::Shadow => None,
            };
            self.addrs_of(e, &set.role).first().copied().or_else(asleep)
        })?;
        Ok(BootstrapSpec {
            listener_port: self.opts.port,
            admin_port: self.opts.admin_port,
            filter: Some(self.filter.clone()),
            endpoints,
        })
    }

    /// Every cluster of `d` with the addresses of its running servers.
    /// Every endpoint has a shadow cluster (empty without a shadow), so a shadow can be added
    /// or removed with an EDS update instead of an Envoy restart.
    pub(super) fn cluster_addrs(&self, d: &Desired) -> Vec<(String, Vec<SocketAddr>)> {
        let mut out = Vec::new();
        for e in &d.endpoints {
            for s in &e.variants {
                if let Role::Variant(v) = &s.role {
                    out.push((
                        envoy::variant_cluster(e.name(), v),
                        self.addrs_of(e, &s.role),
                    ));
                    out.push((
                        envoy::rollout_cluster(e.name(), v),
                        self.rollout_addrs(e.namespace(), e.name(), v),
                    ));
                }
            }
            let shadow = e
                .shadow
                .as_ref()
                .map(|s| self.addrs_of(e, &s.role))
                .unwrap_or_else(|| self.mirror_addrs(e.namespace(), e.name()));
            out.push((plan::shadow_cluster(e.namespace(), e.name()), shadow));
            out.push((
                plan::capture_cluster(e.namespace(), e.name()),
                self.sink_addr(e.namespace(), e.name())
                    .into_iter()
                    .collect(),
            ));
        }
        out
    }

    pub(super) fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    pub(super) fn remember(&mut self, cfg: &mlep_contract::FilterConfig) -> Result<(), LocalError> {
        for ep in &cfg.endpoints {
            let key = format!("{}/{}", ep.namespace, ep.name);
            state::save_allocation(&self.opts.state_dir, &key, &ep.allocation)?;
            self.allocations.insert(key, ep.allocation.clone());
        }
        Ok(())
    }

    /// (Re)start Envoy for `d` (its servers must be running).
    pub(super) async fn start_envoy(&mut self, d: &Desired) -> Result<(), LocalError> {
        let (cfg, json) = self.filter_json(d)?;
        let spec = self.bootstrap_spec(d, &cfg)?;
        // Every cluster from EDS files; an endpoint without a shadow keeps its shadow cluster
        // on standby (empty), so a shadow can be added with an EDS update.
        // Every endpoint's capture cluster too (empty while capture is off).
        let standby = d
            .endpoints
            .iter()
            .filter(|e| e.shadow.is_none())
            .map(|e| plan::shadow_cluster(e.namespace(), e.name()))
            .chain(
                d.endpoints
                    .iter()
                    .map(|e| plan::capture_cluster(e.namespace(), e.name())),
            )
            .collect();
        let upstreams = Upstreams::Eds {
            dir: self.eds_dir.clone(),
            standby,
        };
        let mut bootstrap = envoy::render_bootstrap_with(&spec, &upstreams)?;
        if let Some(addr) = self.wake_addr {
            let wake = mlep_core::envoy::CallTarget::wake_local();
            envoy::add_static_cluster(&mut bootstrap, &wake.cluster, addr)?;
        }
        let version = self.next_version();
        for (cluster, addrs) in self.cluster_addrs(d) {
            upstreams::write_eds(&self.eds_dir, &cluster, &addrs, &version)?;
        }
        self.settle_build(&json);
        envoy::write_filter_config(&self.filter, &json, &version)?;
        if let Some(old) = self.envoy.take() {
            tokio::task::spawn_blocking(move || old.stop())
                .await
                .map_err(task_err("stopping Envoy"))?;
        }
        // Free the port only now, for Envoy to bind (see `reserve_port`).
        drop(self.port_hold.take());
        self.envoy = Some(self.spawn_envoy(bootstrap.clone()).await?);
        self.envoy_bootstrap = Some(bootstrap);
        self.remember(&cfg)?;
        Ok(())
    }

    /// Start Envoy with `bootstrap` and wait until it is ready.
    pub(super) async fn spawn_envoy(&self, bootstrap: Value) -> Result<EnvoyProcess, LocalError> {
        let pb = self.ui.spinner("starting Envoy");
        let bin = self.envoy_bin.clone();
        let workdir = self.run_dir.join("envoy");
        let opts = StartOptions {
            concurrency: 1,
            log_level: "warning".into(),
            ready_timeout: self.opts.ready_timeout,
            own_process_group: true,
        };
        let started = tokio::task::spawn_blocking(move || {
            EnvoyProcess::start(&bin, &bootstrap, &workdir, &opts)
        })
        .await
        .map_err(task_err("starting Envoy"));
        pb.finish_and_clear();
        Ok(started??)
    }

    /// Restart Envoy if it exited: the same bootstrap, and the filter config and EDS files
    /// it watches are still in place, so users keep their variants. An error (it cannot
    /// start, or keeps exiting) ends `mlep local up`.
    pub(super) async fn supervise_envoy(&mut self) -> Result<(), LocalError> {
        let Some(status) = self.envoy.as_mut().and_then(EnvoyProcess::exited) else {
            return Ok(());
        };
        let now = Instant::now();
        let log = self
            .envoy
            .take()
            .map(|dead| dead.log_path().to_owned())
            .unwrap_or_default();
        self.envoy_restarts.exited(now);
        // Keep the dead Envoy's log (the new one starts a fresh envoy.log).
        let kept = log.with_file_name(format!("envoy.{}.log", self.envoy_restarts.total() + 1));
        let kept = std::fs::rename(&log, &kept).map(|_| kept).unwrap_or(log);
        let lost = |reason: String| LocalError::EnvoyLost {
            status: status.to_string(),
            reason,
        };
        if self.envoy_restarts.series() > ENVOY_MAX_CRASHES {
            return Err(lost(format!(
                "it exited {} times without running a minute; its log: {}",
                self.envoy_restarts.series(),
                kept.display()
            )));
        }
        self.ui.say(format!(
            "warning: Envoy exited ({status}); restarting it with the same configuration (its log: {})",
            kept.display()
        ));
        let bootstrap = self
            .envoy_bootstrap
            .clone()
            .ok_or_else(|| lost("no configuration to restart it with".into()))?;
        let envoy = self
            .spawn_envoy(bootstrap)
            .await
            .map_err(|e| lost(e.to_string()))?;
        self.envoy_restarts.restarted(Instant::now());
        self.ui.say(format!(
            "  Envoy is back after {:.1}s (admin: http://{})",
            now.elapsed().as_secs_f64(),
            envoy.admin_addr()
        ));
        self.envoy = Some(envoy);
        Ok(())
    }

    pub(super) fn admin_port(&self) -> Option<u16> {
        self.envoy.as_ref().map(|e| e.admin_addr().port())
    }

    pub(super) async fn admin_get(&self, path: &str) -> Result<String, LocalError> {
        let port = self.admin_port().ok_or(LocalError::EnvoyNotRunning)?;
        let r = http::get(port, path, Duration::from_secs(5))
            .await
            .map_err(|source| LocalError::Admin {
                path: path.to_owned(),
                source,
            })?;
        Ok(r.text())
    }

    /// `(config_reload, config_fail)` of the filter's ECDS subscription.
    pub(super) async fn ecds_counters(&self) -> (u64, u64) {
        let text = self
            .admin_get("/stats?filter=extension_config_discovery")
            .await
            .unwrap_or_default();
        let value = |suffix: &str| {
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .filter(|(k, _)| k.ends_with(&format!(".{}.{suffix}", envoy::FILTER_NAME)))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        };
        (value("config_reload"), value("config_fail"))
    }

    /// The filter's build for `json` (`envoy::FilterBuilds::stay_on_wasm_if_needed`), saying
    /// so when the session moves to the Wasm build.
    fn settle_build(&mut self, json: &str) {
        if let Some(why) = self.filter.stay_on_wasm_if_needed(json) {
            self.ui.say(format!(
                "note: the filter runs its Wasm build from now on: {why}"
            ));
        }
    }

    /// Swap the filter config and wait until Envoy took it (or refused it).
    pub(super) async fn reload_filter(&mut self, d: &Desired) -> Result<(), LocalError> {
        let (cfg, json) = self.filter_json(d)?;
        let (reloads, fails) = self.ecds_counters().await;
        let version = self.next_version();
        self.settle_build(&json);
        envoy::write_filter_config(&self.filter, &json, &version)?;
        let start = Instant::now();
        loop {
            let (r, f) = self.ecds_counters().await;
            if f > fails {
                return Err(LocalError::FilterConfigRefused);
            }
            if r > reloads {
                break;
            }
            if start.elapsed() > MOVE_TIMEOUT {
                return Err(LocalError::FilterConfigNotLoaded(MOVE_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.remember(&cfg)
    }

    /// Point clusters at new addresses and wait until Envoy lists exactly them.
    pub(super) async fn move_upstreams(
        &mut self,
        d: &Desired,
        clusters: &[String],
    ) -> Result<(), LocalError> {
        let version = self.next_version();
        let all = self.cluster_addrs(d);
        for (cluster, addrs) in all.iter().filter(|(c, _)| clusters.contains(c)) {
            upstreams::write_eds(&self.eds_dir, cluster, addrs, &version)?;
        }
        let start = Instant::now();
        loop {
            let text = self.admin_get("/clusters").await.unwrap_or_default();
            let done = all
                .iter()
                .filter(|(c, _)| clusters.contains(c))
                .all(|(c, addrs)| {
                    let mut want = addrs.clone();
                    want.sort();
                    upstreams::cluster_hosts(&text, c) == want
                });
            if done {
                return Ok(());
            }
            if start.elapsed() > MOVE_TIMEOUT {
                return Err(LocalError::UpstreamsNotMoved {
                    clusters: clusters.join(", "),
                    waited: MOVE_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
