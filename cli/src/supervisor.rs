//! Child processes of local mode (model servers, Envoy): spawn each in its own process group
//! with its output in a log file, poll readiness, and stop them: SIGTERM to the whole group,
//! then SIGKILL after a grace period.
//!
//! No orphans: every child is stopped by [`Supervisor::shutdown`] (Ctrl-C, SIGTERM), and
//! [`Supervisor`]'s `Drop` kills what is left (an early return or a panic unwinding through
//! its owner). Each child leads its own process group, so Ctrl-C in the terminal reaches only
//! `mlep` (which then stops the children in order) and killing the group also kills anything
//! a child started itself (a shell wrapper of `mlep.dev/local-command`, for instance).

use crate::http;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("could not start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{name}: cannot open log file {}: {source}", .log.display())]
    Log {
        name: String,
        log: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before it was ready; last lines of {}:\n{tail}", .log.display())]
    ExitedEarly {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} did not answer GET {path} with 200 on port {port} within {timeout:?} (last: {last}); log: {}", .log.display())]
    NotReady {
        name: String,
        port: u16,
        path: String,
        timeout: Duration,
        last: String,
        log: PathBuf,
    },
}

/// Handle of a supervised process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcId(u64);

struct Proc {
    id: ProcId,
    name: String,
    child: Child,
    log: PathBuf,
}

/// Owns the child processes. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    procs: Vec<Proc>,
}

/// How long a child gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawn `cmd` in its own process group, stdout and stderr appended to `log`.
fn launch(name: &str, mut cmd: Command, log: &Path) -> Result<Child, SupervisorError> {
    let log_err = |source| SupervisorError::Log {
        name: name.to_owned(),
        log: log.to_owned(),
        source,
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(log_err)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    cmd.spawn().map_err(|source| SupervisorError::Spawn {
        name: name.to_owned(),
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked while holding it; the process
        // list itself is still consistent (every mutation is a single push or remove).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start `cmd` as `name`, in its own process group, stdout and stderr appended to `log`.
    pub fn spawn(&self, name: &str, cmd: Command, log: &Path) -> Result<ProcId, SupervisorError> {
        let child = launch(name, cmd, log)?;
        let mut inner = self.lock();
        inner.next += 1;
        let id = ProcId(inner.next);
        inner.procs.push(Proc {
            id,
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        });
        Ok(id)
    }

    /// Start `cmd` in place of process `id`, which has exited: same id, name and log (appended
    /// to). What is left of the old process group is killed first. `Ok(false)` when `id` is
    /// not supervised (stopped meanwhile) or still running.
    pub fn respawn(&self, id: ProcId, cmd: Command) -> Result<bool, SupervisorError> {
        let (name, log) = {
            let mut inner = self.lock();
            let Some(p) = inner.procs.iter_mut().find(|p| p.id == id) else {
                return Ok(false);
            };
            if p.child.try_wait().ok().flatten().is_none() {
                return Ok(false);
            }
            signal_group(p, Signal::SIGKILL);
            (p.name.clone(), p.log.clone())
        };
        let child = launch(&name, cmd, &log)?;
        let mut inner = self.lock();
        match inner.procs.iter_mut().find(|p| p.id == id) {
            Some(p) => {
                p.child = child;
                Ok(true)
            }
            None => {
                // Stopped while we were starting it: do not leave it running.
                let mut orphan = Proc {
                    id,
                    name,
                    child,
                    log,
                };
                signal_group(&orphan, Signal::SIGKILL);
                let _ = orphan.child.wait();
                Ok(false)
            }
        }
    }

    pub fn pid(&self, id: ProcId) -> Option<u32> {
        self.lock()
            .procs
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.child.id())
    }

    pub fn log(&self, id: ProcId) -> Option<PathBuf> {
        self.lock()
            .procs
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.log.clone())
    }

    /// The exit status if the process has exited (it stays in the list until stopped).
    pub fn exited(&self, id: ProcId) -> Option<ExitStatus> {
        let mut inner = self.lock();
        let p = inner.procs.iter_mut().find(|p| p.id == id)?;
        p.child.try_wait().ok().flatten()
    }

    /// Poll `GET path` on `port` until it answers 200, failing early when the process exits.
    pub async fn wait_ready(
        &self,
        id: ProcId,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<(), SupervisorError> {
        let start = Instant::now();
        let (name, log) = {
            let inner = self.lock();
            match inner.procs.iter().find(|p| p.id == id) {
                Some(p) => (p.name.clone(), p.log.clone()),
                None => return Ok(()),
            }
        };
        let mut last;
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(status) = self.exited(id) {
                return Err(SupervisorError::ExitedEarly {
                    name,
                    status: status.to_string(),
                    tail: tail(&log, 15),
                    log,
                });
            }
            match http::get(port, path, Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status),
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() >= timeout {
                return Err(SupervisorError::NotReady {
                    name,
                    port,
                    path: path.to_owned(),
                    timeout,
                    last,
                    log,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Stop one process: SIGTERM to its group, SIGKILL after [`GRACE`]. Returns once it is reaped.
    pub async fn stop(&self, id: ProcId) {
        let proc = {
            let mut inner = self.lock();
            let Some(i) = inner.procs.iter().position(|p| p.id == id) else {
                return;
            };
            inner.procs.remove(i)
        };
        stop_all(
            vec![proc],
            GRACE,
            |d| async move { tokio::time::sleep(d).await },
        )
        .await;
    }

    /// Stop every process (children started last are signalled first, all together).
    pub async fn shutdown(&self) {
        let procs: Vec<Proc> = std::mem::take(&mut self.lock().procs)
            .into_iter()
            .rev()
            .collect();
        stop_all(procs, GRACE, |d| async move { tokio::time::sleep(d).await }).await;
    }

    pub fn len(&self) -> usize {
        self.lock().procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn signal_group(p: &Proc, sig: Signal) {
    // The child leads its own group (process_group(0)), so its pid is the group id.
    if let Ok(pid) = i32::try_from(p.child.id()) {
        let _ = killpg(Pid::from_raw(pid), sig);
    }
}

async fn stop_all<F, Fut>(mut procs: Vec<Proc>, grace: Duration, sleep: F)
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for p in &mut procs {
        if p.child.try_wait().ok().flatten().is_none() {
            signal_group(p, Signal::SIGTERM);
        } else {
            // The leader is gone; its group may still have members.
            signal_group(p, Signal::SIGKILL);
        }
    }
    let start = Instant::now();
    while !procs.is_empty() {
        procs.retain_mut(|p| p.child.try_wait().ok().flatten().is_none());
        if procs.is_empty() {
            break;
        }
        if start.elapsed() >= grace {
            for p in &mut procs {
                signal_group(p, Signal::SIGKILL);
                let _ = p.child.wait();
            }
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last owner gone (normal exit, early return or panic): kill what is left, at once.
        for p in &mut self.procs {
            signal_group(p, Signal::SIGKILL);
            let _ = p.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is gone within a few seconds. A SIGKILL is delivered asynchronously and a
    /// grandchild is not ours to wait for, so poll.
    fn gone(pid: i32) -> bool {
        let start = std::time::Instant::now();
        while alive(pid) {
            if start.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    fn log(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mlep-sup-{}-{name}.log", std::process::id()))
    }

    /// A shell that starts a grandchild and records its pid.
    fn family(pidfile: &Path) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidfile.display()));
        c
    }

    async fn read_pid(p: &Path) -> i32 {
        for _ in 0..200 {
            if let Ok(s) = std::fs::read_to_string(p) {
                if let Ok(n) = s.trim().parse() {
                    return n;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid file {}", p.display());
    }

    #[tokio::test]
    async fn shutdown_kills_children_and_their_children() {
        let sup = Supervisor::new();
        let pf = log("family.pid");
        let id = sup.spawn("family", family(&pf), &log("family")).unwrap();
        let leader = sup.pid(id).unwrap() as i32;
        let grandchild = read_pid(&pf).await;
        assert!(alive(leader) && alive(grandchild));
        sup.shutdown().await;
        assert!(gone(leader), "leader survived");
        assert!(gone(grandchild), "grandchild survived");
        assert!(sup.is_empty());
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_after_the_grace_period() {
        let sup = Supervisor::new();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("trap '' TERM; echo ready; while true; do sleep 0.05; done");
        let id = sup.spawn("stubborn", c, &log("stubborn")).unwrap();
        let pid = sup.pid(id).unwrap() as i32;
        let procs: Vec<Proc> = std::mem::take(&mut sup.lock().procs);
        for _ in 0..100 {
            if tail(&log("stubborn"), 1) == "ready" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_all(procs, Duration::from_millis(300), |d| async move {
            tokio::time::sleep(d).await
        })
        .await;
        assert!(gone(pid));
    }

    #[test]
    fn dropping_the_supervisor_kills_what_is_left() {
        let pf = log("drop.pid");
        let (leader, grandchild) = {
            let sup = Supervisor::new();
            let id = sup.spawn("family", family(&pf), &log("drop")).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            (sup.pid(id).unwrap() as i32, rt.block_on(read_pid(&pf)))
        };
        assert!(gone(leader) && gone(grandchild));
    }

    #[test]
    fn a_panic_unwinding_through_the_owner_kills_the_children() {
        let pf = log("panic.pid");
        let pids = std::sync::Mutex::new((0, 0));
        let r = std::panic::catch_unwind(|| {
            let sup = Supervisor::new();
            let id = sup.spawn("family", family(&pf), &log("panic")).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            *pids.lock().unwrap() = (sup.pid(id).unwrap() as i32, rt.block_on(read_pid(&pf)));
            panic!("boom");
        });
        assert!(r.is_err());
        let (leader, grandchild) = *pids.lock().unwrap();
        assert!(gone(leader) && gone(grandchild));
    }

    #[tokio::test]
    async fn wait_ready_fails_early_with_the_log_tail_when_the_process_exits() {
        let sup = Supervisor::new();
        let mut c = Command::new("sh");
        c.arg("-c").arg("echo 'model file missing' >&2; exit 3");
        let id = sup.spawn("bad-server", c, &log("bad")).unwrap();
        let port = free_port().unwrap();
        let err = sup
            .wait_ready(id, port, "/ping", Duration::from_secs(30))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad-server exited") && err.contains("model file missing"),
            "{err}"
        );
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn respawn_restarts_an_exited_process_under_the_same_id_and_log() {
        let sup = Supervisor::new();
        let sh = |script: &str| {
            let mut c = Command::new("sh");
            c.arg("-c").arg(script);
            c
        };
        let until_exited = |id| {
            let sup = sup.clone();
            async move {
                for _ in 0..500 {
                    if let Some(s) = sup.exited(id) {
                        return s;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("did not exit");
            }
        };
        let l = log("respawn");
        let _ = std::fs::remove_file(&l);
        let id = sup.spawn("crasher", sh("echo first; exit 3"), &l).unwrap();
        assert_eq!(until_exited(id).await.code(), Some(3));
        assert!(sup.respawn(id, sh("echo second; exec sleep 30")).unwrap());
        assert!(
            !sup.respawn(id, sh("echo third")).unwrap(),
            "a running process is left alone"
        );
        assert_eq!(sup.len(), 1, "the same entry, not a new one");
        for _ in 0..500 {
            if tail(&l, 1) == "second" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_to_string(&l).unwrap(), "first\nsecond\n");
        let pid = sup.pid(id).unwrap() as i32;
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        until_exited(id).await;
        sup.stop(id).await;
        assert!(
            !sup.respawn(id, sh("echo fourth")).unwrap(),
            "a stopped process stays stopped"
        );
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let sup = Supervisor::new();
        let err = sup
            .spawn(
                "x",
                Command::new("/nonexistent/mlep-model-server"),
                &log("x"),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("could not start x (/nonexistent/mlep-model-server)"),
            "{err}"
        );
    }
}
