//! Local mode's model servers: each server set (a variant's or the shadow's model) runs as
//! supervised processes on 127.0.0.1, started and ready (`GET /ping`) before traffic moves to
//! them, stopped (SIGTERM: they drain) once it has moved away, and restarted with back-off when
//! they exit, like a kubelet.

use super::{
    addrs_text, check_port_free, find_model_server, io_err, set_cluster, task_err, LocalError,
    Session, Ui,
};
use crate::artifacts::{BarProgress, Origin};
use crate::plan::{Runtime, ServerSet};
use crate::restart::{Policy as RestartPolicy, Restarts};
use crate::supervisor::{free_port, tail, ProcId, Supervisor};
use crate::table::Health;
use crate::{http, upstreams};
use mlep_core::failure::FailureKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running server set: its model directory and replicas.
pub(super) struct RunningSet {
    pub(super) set: ServerSet,
    model_dir: PathBuf,
    replicas: Vec<Replica>,
}

impl RunningSet {
    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// What the table shows about these servers at `now`.
    pub(super) fn health(&self, now: Instant) -> Health {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Health {
            ready: count(
                self.replicas
                    .iter()
                    .filter(|r| r.state == ReplicaState::Ready)
                    .count(),
            ),
            replicas: count(self.replicas.len()),
            restarts: self.replicas.iter().map(|r| r.restarts.total()).sum(),
            back_off: self
                .replicas
                .iter()
                .filter_map(|r| match r.state {
                    ReplicaState::BackOff { until } => Some(until.saturating_duration_since(now)),
                    _ => None,
                })
                .min(),
            asleep: false,
        }
    }

    /// Take every server out of the set (scaled to zero: nothing left to supervise or route
    /// to); their processes are still running, to be stopped with the supervisor.
    pub(super) fn take_servers(&mut self) -> Vec<ProcId> {
        std::mem::take(&mut self.replicas)
            .into_iter()
            .map(|r| r.id)
            .collect()
    }
}

/// One supervised model server.
struct Replica {
    id: ProcId,
    /// Its address in the cluster's EDS file.
    addr: SocketAddr,
    restarts: Restarts,
    state: ReplicaState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplicaState {
    /// Answered `/ping` since it was last started.
    Ready,
    /// Restarted, not answering `/ping` yet.
    Starting,
    /// Exited; to be started again at `until`.
    BackOff { until: Instant },
}

impl Session {
    pub(super) fn set_name(set: &ServerSet, replica: u32) -> String {
        format!("{}/{}/{}#{replica}", set.endpoint, set.role, set.model)
    }

    /// The model directory of `set`: its artifact, fetched (or found) and unpacked; an empty
    /// directory for a model without one.
    pub(super) async fn model_dir(&mut self, set: &ServerSet) -> Result<PathBuf, LocalError> {
        let Some(a) = &set.artifact else {
            let d = self.run_dir.join("empty-model");
            std::fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
            return Ok(d);
        };
        let pb = self.ui.bytes(format!("artifact {}", set.model));
        let store = self.store.clone();
        let (model, art, bar) = (set.model.clone(), a.clone(), pb.clone());
        let res =
            tokio::task::spawn_blocking(move || store.ensure(&model, &art, &BarProgress(bar)))
                .await
                .map_err(task_err("fetching the artifact"))?;
        pb.finish_and_clear();
        let (dir, origin) = res?;
        let from = match origin {
            Origin::Cache => "cache".to_owned(),
            Origin::LocalFile(f) => f.display().to_string(),
            Origin::Uri(u) => u,
        };
        self.ui.say(format!(
            "  artifact {} ({}…) from {from}",
            set.model,
            &a.sha256[..12.min(a.sha256.len())]
        ));
        Ok(dir)
    }

    /// Fetch the artifact, start the replicas, wait until each answers `/ping`.
    pub(super) async fn start_set(&mut self, set: &ServerSet) -> Result<RunningSet, LocalError> {
        let model_dir = self.model_dir(set).await?;
        self.generation += 1;
        let mut running = RunningSet {
            set: set.clone(),
            model_dir,
            replicas: Vec::new(),
        };
        let pb = self
            .ui
            .counter(format!("start {}", set.label()), u64::from(set.replicas));
        let result = async {
            for i in 0..set.replicas {
                let port = free_port().map_err(io_err("find a free port"))?;
                let cmd =
                    server_command(self.model_server.as_deref(), set, port, &running.model_dir)?;
                let log = self.run_dir.join("logs").join(format!(
                    "{}-{}-{}-{}-g{}-{i}.log",
                    set.namespace, set.endpoint, set.role, set.model, self.generation
                ));
                let id = self.sup.spawn(&Self::set_name(set, i), cmd, &log)?;
                running.replicas.push(Replica {
                    id,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    restarts: Restarts::new(RestartPolicy::default(), Instant::now()),
                    state: ReplicaState::Ready,
                });
                self.sup
                    .wait_ready(id, port, "/ping", self.opts.ready_timeout)
                    .await?;
                pb.inc(1);
            }
            Ok::<(), LocalError>(())
        }
        .await;
        pb.finish_and_clear();
        match result {
            Ok(()) => {
                self.ui.say(format!(
                    "  ready: {} on {}",
                    set.label(),
                    addrs_text(&running.addrs())
                ));
                Ok(running)
            }
            Err(e) => {
                self.stop_set(running).await;
                Err(e)
            }
        }
    }

    pub(super) async fn stop_set(&self, r: RunningSet) {
        for replica in r.replicas {
            self.sup.stop(replica.id).await;
        }
    }

    /// Start every set, each ready; on a failure stop those already started.
    pub(super) async fn start_all(
        &mut self,
        sets: &[ServerSet],
    ) -> Result<Vec<RunningSet>, LocalError> {
        let mut started = Vec::new();
        for s in sets {
            match self.start_set(s).await {
                Ok(r) => started.push(r),
                Err(e) => {
                    for r in started {
                        self.stop_set(r).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    /// Restart what crashed, like a kubelet: model servers with back-off (see
    /// [`crate::restart`]), on the same port when it is still free (else on a new one, written
    /// to the cluster's EDS file); Envoy at once, with the same bootstrap and files.
    pub(super) async fn supervise(&mut self) -> Result<(), LocalError> {
        self.supervise_envoy().await?;
        self.supervise_sinks().await;
        let now = Instant::now();
        let mut moved: Vec<String> = Vec::new();
        for r in self.running.values_mut() {
            for (i, replica) in r.replicas.iter_mut().enumerate() {
                let name = Self::set_name(&r.set, u32::try_from(i).unwrap_or(u32::MAX));
                let command =
                    |port| server_command(self.model_server.as_deref(), &r.set, port, &r.model_dir);
                if supervise_replica(&self.sup, &self.ui, &name, replica, now, command).await {
                    moved.push(set_cluster(&r.set));
                }
            }
        }
        if !moved.is_empty() {
            let version = self.next_version();
            for (cluster, addrs) in self.cluster_addrs(&self.desired) {
                if moved.contains(&cluster) {
                    upstreams::write_eds(&self.eds_dir, &cluster, &addrs, &version)?;
                }
            }
        }
        Ok(())
    }
}

/// How often crashed processes are looked for (and restarted ones asked `/ping`).
pub(super) const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);

/// One supervision step of a model server at `now`: notice an exit (say so once, with the
/// last lines of its log, and wait as [`Restarts`] says), restart it when the wait is over,
/// see it answer `/ping` again. Returns whether it was restarted on a new port (its port was
/// taken meanwhile), so that its cluster's EDS file must be rewritten.
async fn supervise_replica(
    sup: &Supervisor,
    ui: &Ui,
    name: &str,
    r: &mut Replica,
    now: Instant,
    command: impl Fn(u16) -> Result<Command, LocalError>,
) -> bool {
    match r.state {
        ReplicaState::Ready | ReplicaState::Starting => {
            if let Some(status) = sup.exited(r.id) {
                let delay = r.restarts.exited(now);
                r.state = ReplicaState::BackOff { until: now + delay };
                let log = sup.log(r.id).unwrap_or_default();
                let last = tail(&log, 5)
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                // The cluster's condition reason for a server that exits and is restarted.
                ui.say(format!(
                    "warning: {name} exited ({status}); restart {} in {}s ({}); last lines of {}:\n{last}",
                    r.restarts.total() + 1,
                    delay.as_secs_f64(),
                    FailureKind::CrashLooping.reason(),
                    log.display()
                ));
            } else if r.state == ReplicaState::Starting {
                let ping = http::get(r.addr.port(), "/ping", Duration::from_millis(500)).await;
                if ping.is_ok_and(|p| p.status == 200) {
                    r.state = ReplicaState::Ready;
                    ui.say(format!(
                        "  ready again: {name} on {} (restarts: {})",
                        r.addr,
                        r.restarts.total()
                    ));
                }
            }
            false
        }
        ReplicaState::BackOff { until } if now >= until => {
            let mut moved = false;
            if check_port_free(r.addr.port()).is_err() {
                if let Ok(port) = free_port() {
                    r.addr = SocketAddr::from(([127, 0, 0, 1], port));
                    moved = true;
                }
            }
            let started = command(r.addr.port()).and_then(|cmd| Ok(sup.respawn(r.id, cmd)?));
            match started {
                Ok(_) => {
                    r.restarts.restarted(now);
                    r.state = ReplicaState::Starting;
                }
                Err(e) => {
                    let delay = r.restarts.exited(now);
                    r.state = ReplicaState::BackOff { until: now + delay };
                    ui.say(format!(
                        "warning: could not restart {name} ({e}); next try in {}s",
                        delay.as_secs_f64()
                    ));
                }
            }
            moved
        }
        ReplicaState::BackOff { .. } => false,
    }
}

/// The command line of one model server of `set` listening on `port`.
fn server_command(
    model_server: Option<&Path>,
    set: &ServerSet,
    port: u16,
    model_dir: &Path,
) -> Result<Command, LocalError> {
    let mut cmd = match &set.runtime {
        Runtime::ModelServer => {
            let bin = match model_server {
                Some(b) => b.to_owned(),
                None => find_model_server(None)?,
            };
            let mut c = Command::new(bin);
            c.args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--drain-timeout-seconds",
                "4",
                "--model-dir",
            ]);
            c.arg(model_dir);
            c
        }
        Runtime::Command(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
    };
    cmd.envs(set.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.env("PORT", port.to_string())
        .env("MODEL_DIR", model_dir);
    Ok(cmd)
}
