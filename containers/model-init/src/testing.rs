//! Test support (feature `testing`): a real S3-protocol server for the object storage tests of
//! model-init, local mode and the cluster bed. Versity's gateway (`versitygw`, built by
//! `scripts/cluster.sh build-s3`, found through `MLEP_S3_SERVER`) serves a directory: each
//! top-level directory is a bucket, each file below it an object, so a test publishes an
//! artifact by writing a file. Failures here are test failures: it panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Credentials;

/// Environment variable naming the `versitygw` binary.
pub const SERVER_ENV: &str = "MLEP_S3_SERVER";

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
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (access_key, secret_key) =
            ("mlep-test".to_string(), "mlep-test-secret-key".to_string());
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(&bin)
            .args(["--access", &access_key, "--secret", &secret_key, "--quiet"])
            .args(["--port", &format!("127.0.0.1:{port}")])
            .args(["posix", "--nometa"])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{bin} did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
