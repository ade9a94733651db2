//! Local mode's data capture: one `mlep-capture-sink` process per endpoint whose
//! `spec.dataCapture` is on, writing where it says (`file:///dir`, `s3://`, `gs://`; object
//! storage credentials from this process's environment, by the names of
//! `mlep_contract::names::OBJECT_STORE_ENV`). Every endpoint has a capture cluster in Envoy
//! (empty while capture is off), so turning capture on or off, or changing its destination, is
//! an EDS and filter-config update, never an Envoy restart. A sink that exits is restarted, as
//! model servers are; while it is down the filter counts its records `sink_error`.

use super::find::exe_dir_or_path;
use super::{io_err, LocalError, Session};
use crate::plan::{self, Desired};
use crate::supervisor::{free_port, ProcId};
use mlep_core::crd::DataCaptureSpec;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a sink may take to answer `/readyz`.
const SINK_READY: Duration = Duration::from_secs(20);

/// A running sink.
pub(super) struct RunningSink {
    id: ProcId,
    pub(super) addr: SocketAddr,
    /// What it was started for (a new destination or Secret needs a new sink).
    destination: String,
    name: String,
    log: PathBuf,
}

/// The sink of an endpoint: `(namespace, name)`.
pub(super) type SinkKey = (String, String);

impl Session {
    /// The capture sink address of an endpoint, if one runs.
    pub(super) fn sink_addr(&self, namespace: &str, name: &str) -> Option<SocketAddr> {
        self.sinks
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| s.addr)
    }

    /// Start the sinks `d` needs and are not running (ready before anything points at them),
    /// point the capture clusters at them once Envoy runs, and return the sinks `d` no longer
    /// needs: the caller stops them once the filter stopped sending to them
    /// ([`Session::stop_sinks`]). On error nothing changed.
    pub(super) async fn start_sinks(
        &mut self,
        d: &Desired,
    ) -> Result<Vec<RunningSink>, LocalError> {
        let mut started: Vec<(SinkKey, RunningSink)> = Vec::new();
        for e in &d.endpoints {
            let key = (e.namespace().to_owned(), e.name().to_owned());
            let Some(spec) = wanted(&e.endpoint.spec.data_capture) else {
                continue;
            };
            if self
                .sinks
                .get(&key)
                .is_some_and(|s| s.destination == spec.destination_uri)
            {
                continue;
            }
            match self.spawn_sink(&key, spec).await {
                Ok(s) => started.push((key, s)),
                Err(err) => {
                    for (_, s) in started {
                        self.sup.stop(s.id).await;
                    }
                    return Err(err);
                }
            }
        }
        let mut retired = Vec::new();
        let mut clusters = Vec::new();
        for (key, s) in started {
            self.ui.say(format!(
                "  capture sink for {}/{} on {} -> {}",
                key.0, key.1, s.addr, s.destination
            ));
            clusters.push(plan::capture_cluster(&key.0, &key.1));
            retired.extend(self.sinks.insert(key, s));
        }
        // Sinks of endpoints that no longer capture (or are gone).
        let keep: Vec<SinkKey> = d
            .endpoints
            .iter()
            .filter(|e| wanted(&e.endpoint.spec.data_capture).is_some())
            .map(|e| (e.namespace().to_owned(), e.name().to_owned()))
            .collect();
        let gone: Vec<SinkKey> = self
            .sinks
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for key in gone {
            clusters.push(plan::capture_cluster(&key.0, &key.1));
            retired.extend(self.sinks.remove(&key));
        }
        if self.envoy.is_some() && !clusters.is_empty() {
            self.move_upstreams(d, &clusters).await?;
        }
        Ok(retired)
    }

    /// Stop sinks (SIGTERM: each writes what it holds first).
    pub(super) async fn stop_sinks(&mut self, sinks: Vec<RunningSink>) {
        for s in sinks {
            self.ui.say(format!("  stopping capture sink {}", s.name));
            self.sup.stop(s.id).await;
        }
    }

    async fn spawn_sink(
        &mut self,
        key: &SinkKey,
        spec: &DataCaptureSpec,
    ) -> Result<RunningSink, LocalError> {
        let bin = exe_dir_or_path("mlep-capture-sink").ok_or_else(|| LocalError::Missing {
            what: "mlep-capture-sink".into(),
            hint:
                "the endpoint has dataCapture on; looked beside the mlep executable and on PATH; \
                   build it with `cargo build --release -p mlep-capture-sink`"
                    .into(),
        })?;
        let port = free_port().map_err(io_err("find a free port for the capture sink"))?;
        let name = format!("{}/{}/capture", key.0, key.1);
        let log = self
            .run_dir
            .join(format!("capture-{}-{}-{port}.log", key.0, key.1));
        let cmd = sink_command(&bin, &spec.destination_uri, port, &key.1);
        let id = self.sup.spawn(&name, cmd, &log)?;
        if let Err(e) = self.sup.wait_ready(id, port, "/readyz", SINK_READY).await {
            self.sup.stop(id).await;
            return Err(e.into());
        }
        Ok(RunningSink {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            destination: spec.destination_uri.clone(),
            name,
            log,
        })
    }

    /// Restart sinks that exited (on the same port, so the cluster keeps pointing at it).
    pub(super) async fn supervise_sinks(&mut self) {
        let exited: Vec<SinkKey> = self
            .sinks
            .iter()
            .filter(|(_, s)| self.sup.exited(s.id).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in exited {
            let Some(s) = self.sinks.get(&key) else {
                continue;
            };
            let (id, port) = (s.id, s.addr.port());
            self.ui.say(format!(
                "capture sink {} exited; restarting it (log {})",
                s.name,
                s.log.display()
            ));
            let Some(bin) = exe_dir_or_path("mlep-capture-sink") else {
                continue;
            };
            let cmd = sink_command(&bin, &s.destination, port, &key.1);
            if let Err(e) = self.sup.respawn(id, cmd) {
                self.ui.say(format!("  restarting {} failed: {e}", s.name));
            }
        }
    }
}

/// The sink of endpoint `name` writing to `destination`, listening on 127.0.0.1:`port`.
fn sink_command(bin: &Path, destination: &str, port: u16, name: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--destination", destination])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--instance", &format!("local-{name}")]);
    cmd
}

/// The capture settings when capture is on.
fn wanted(spec: &Option<DataCaptureSpec>) -> Option<&DataCaptureSpec> {
    spec.as_ref().filter(|c| c.enabled())
}
