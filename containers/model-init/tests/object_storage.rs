//! mlep-model-init against a real S3-protocol server (Versity's gateway, see
//! `mlep_model_init::testing`): `s3://` artifacts fetched with the credentials of the
//! environment (what the operator wires from the Model's Secret), and the failures a user
//! meets named clearly: wrong credentials and a missing object exit 2 naming the URI with
//! nothing published; an unreachable server is transient (exit 3). And `gs://` against a
//! GCS-protocol server (fake-gcs-server): fetched from the endpoint `GOOGLE_BASE_URL` names,
//! a missing object named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use mlep_model_init::testing::{GcsServer, S3Server};
use mlep_model_init::MARKER_FILE;
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_mlep-model-init");

fn titanic_v1() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/titanic/artifacts/titanic-v1.tar.gz"),
    )
    .unwrap()
}

fn sha(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The binary with only the given object storage environment (none inherited).
fn run(uri: &str, sha256: &str, dest: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["--uri", uri, "--sha256", sha256, "--dest"])
        .arg(dest)
        .args(["--retry-attempts", "2", "--retry-backoff-ms", "20"])
        .args(["--http-timeout-seconds", "5"])
        .env("RUST_LOG", "info");
    for k in mlep_contract::names::OBJECT_STORE_ENV {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run succeeded and `dest` holds the unpacked artifact `bytes`, marked with its sha256.
fn published(out: &Output, dest: &Path, bytes: &[u8]) {
    assert!(out.status.success(), "{}", stderr(out));
    assert!(dest.join("model.onnx").is_file());
    let marker = std::fs::read_to_string(dest.join(MARKER_FILE)).unwrap();
    assert!(
        marker.starts_with(&format!("sha256 {}\n", sha(bytes))),
        "{marker}"
    );
}

/// Fetching `uri`, absent from the server `env` names, exits 2 naming it; nothing published.
fn missing_object_is_named(uri: &str, env: &[(&str, String)]) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(uri, &"a".repeat(64), &dest, env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("artifact {uri} not available")),
        "{err}"
    );
    nothing_published(&dest);
}

fn nothing_published(dest: &Path) {
    assert!(!dest.exists(), "{} was published", dest.display());
    let parent: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(parent.is_empty(), "left behind: {parent:?}");
}

#[test]
fn an_s3_artifact_is_fetched_with_the_environments_credentials_and_published() {
    let s3 = S3Server::start();
    let bytes = titanic_v1();
    s3.put("models", "titanic/v1.tar.gz", &bytes);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(
        "s3://models/titanic/v1.tar.gz",
        &sha(&bytes),
        &dest,
        &s3.env(),
    );
    published(&out, &dest, &bytes);
}

#[test]
fn wrong_credentials_exit_2_naming_the_uri_and_publish_nothing() {
    let s3 = S3Server::start();
    let bytes = titanic_v1();
    s3.put("models", "v1.tar.gz", &bytes);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let mut env = s3.env();
    env[1].1 = "not-the-secret".into();
    let logs = tempfile::tempdir().unwrap();
    let term = logs.path().join("termination-log");
    env.push(("MLEP_TERMINATION_LOG", term.display().to_string()));
    let out = run("s3://models/v1.tar.gz", &sha(&bytes), &dest, &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // What the kubelet reports as the container's termination message: the error alone.
    let message = std::fs::read_to_string(&term).unwrap();
    assert!(
        message.starts_with("artifact s3://models/v1.tar.gz refused: SignatureDoesNotMatch:"),
        "{message}"
    );
    assert!(
        err.contains("artifact s3://models/v1.tar.gz refused"),
        "{err}"
    );
    assert!(err.contains("credentialsSecret"), "{err}");
    // Not retried: the user has to fix it.
    assert!(!err.contains("retrying"), "{err}");
    nothing_published(&dest);

    // No credentials at all: the same, not a hang on an instance metadata endpoint.
    let env: Vec<_> = s3
        .env()
        .into_iter()
        .filter(|(k, _)| k.ends_with("URL") || k.ends_with("REGION"))
        .collect();
    let out = run("s3://models/v1.tar.gz", &sha(&bytes), &dest, &env);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    nothing_published(&dest);
}

#[test]
fn a_missing_object_exits_2_naming_the_uri() {
    let s3 = S3Server::start();
    s3.put("models", "other.tar.gz", b"x");
    missing_object_is_named("s3://models/absent.tar.gz", &s3.env());
}

#[test]
fn a_server_that_cannot_be_reached_is_transient_and_retried() {
    let s3 = S3Server::start();
    let mut env = s3.env();
    drop(s3);
    env[3].1 = "http://127.0.0.1:9".into();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run("s3://models/v1.tar.gz", &"a".repeat(64), &dest, &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("gave up after 2 attempts"), "{err}");
    nothing_published(&dest);
}

#[test]
fn a_corrupted_object_fails_its_sha256_and_publishes_nothing() {
    let s3 = S3Server::start();
    let bytes = titanic_v1();
    let mut evil = bytes.clone();
    evil[100] ^= 0xff;
    s3.put("models", "v1.tar.gz", &evil);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run("s3://models/v1.tar.gz", &sha(&bytes), &dest, &s3.env());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("sha256 mismatch for s3://models/v1.tar.gz"),
        "{err}"
    );
    nothing_published(&dest);
}

#[test]
fn a_gs_artifact_is_fetched_from_the_named_endpoint_and_published() {
    let bytes = titanic_v1();
    let gcs = GcsServer::start(&[("models", "titanic/v1.tar.gz", &bytes)]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("model");
    let out = run(
        "gs://models/titanic/v1.tar.gz",
        &sha(&bytes),
        &dest,
        &gcs.env(),
    );
    published(&out, &dest, &bytes);
}

#[test]
fn a_missing_gs_object_exits_2_naming_the_uri() {
    let gcs = GcsServer::start(&[("models", "other.tar.gz", b"x")]);
    missing_object_is_named("gs://models/absent.tar.gz", &gcs.env());
}
