//! Test support (feature `testing`): a real S3-protocol server for the object storage tests of
//! model-init, local mode and the cluster bed. Versity's gateway (`versitygw`, built by
//! `scripts/cluster.sh build-s3`, found through `MLEP_S3_SERVER`) serves a directory: each
//! top-level directory is a bucket, each file below it an object, so a test publishes an
//! artifact by writing a file. And a GCS-protocol server for model-init's `gs://` tests
//! ([`GcsServer`]). Failures here are test failures: they panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Credentials;

/// Environment variable naming the `versitygw` binary.
pub const SERVER_ENV: &str = "MLEP_S3_SERVER";
/// Environment variable naming the `fake-gcs-server` binary.
pub const GCS_SERVER_ENV: &str = "MLEP_GCS_SERVER";

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `cmd` (the server `bin`) with its stderr in `log` and wait until it listens on `port`.
fn serve(bin: &str, mut cmd: Command, log: &Path, port: u16) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    wait_listening(bin, port);
    child
}

/// Wait until `port` accepts connections (20 s at most).
fn wait_listening(bin: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{bin} did not listen on {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running S3 server on 127.0.0.1, killed on drop.
pub struct S3Server {
    child: Child,
    pub root: PathBuf,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Start the server on a free port and wait until it accepts connections.
    pub fn start() -> Self {
        let bin = std::env::var(SERVER_ENV).unwrap_or_else(|_| {
            panic!("{SERVER_ENV} must name the versitygw binary (scripts/cluster.sh build-s3 prints it; the test scripts set it)")
        });
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s3");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let (access_key, secret_key) =
            ("mlep-test".to_string(), "mlep-test-secret-key".to_string());
        let mut cmd = Command::new(&bin);
        cmd.args(["--access", &access_key, "--secret", &secret_key, "--quiet"])
            .args(["--port", &format!("127.0.0.1:{port}")])
            .args(["posix", "--nometa"])
            .arg(&root);
        let child = serve(&bin, cmd, &dir.path().join("server.log"), port);
        Self {
            child,
            root,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key,
            secret_key,
            _dir: dir,
        }
    }

    /// Store `bytes` as `s3://bucket/key` (creating the bucket).
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The object's file (for tests that need to see what the server holds).
    pub fn file(&self, bucket: &str, key: &str) -> PathBuf {
        Path::new(&self.root).join(bucket).join(key)
    }

    /// Credentials reaching this server, as the environment names of the contract.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::from_pairs(self.env())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fake-gcs-server (built by `scripts/cluster.sh build-gcs`, found through `MLEP_GCS_SERVER`)
/// on 127.0.0.1 over plain HTTP, holding `objects` (bucket, key, bytes) from its start; killed
/// on drop. It checks no credentials: what the tests prove is the `gs://` path, the object
/// key and the service account key's wiring ([`GcsServer::env`]).
pub struct GcsServer {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl GcsServer {
    pub fn start(objects: &[(&str, &str, &[u8])]) -> Self {
        let bin = std::env::var(GCS_SERVER_ENV).unwrap_or_else(|_| {
            panic!("{GCS_SERVER_ENV} must name the fake-gcs-server binary (scripts/cluster.sh build-gcs prints it; the test scripts set it)")
        });
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for (bucket, key, bytes) in objects {
            let path = data.join(bucket).join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-backend",
            "memory",
        ])
        .args(["-port", &port.to_string(), "-log-level", "warn"])
        // Path-style `/<bucket>/<object>` (what object_store requests) is served for the
        // public host only.
        .args(["-public-host", &format!("127.0.0.1:{port}"), "-data"])
        .arg(&data);
        let child = serve(&bin, cmd, &dir.path().join("server.log"), port);
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// What a Secret for a GCS-compatible server carries: `GOOGLE_BASE_URL` naming it and a
    /// service account key without OAuth (the emulator has no token endpoint).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let key = r#"{"disable_oauth": true, "client_email": "tests@mlep.invalid", "private_key": "", "private_key_id": ""}"#;
        vec![
            ("GOOGLE_SERVICE_ACCOUNT_KEY", key.to_owned()),
            ("GOOGLE_BASE_URL", self.endpoint.clone()),
        ]
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
