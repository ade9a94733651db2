//! The `mlep-operator` command line, run as a process: usage, settings from flags or the
//! environment, and errors as one line for a user (no debug chain, no backtrace).

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn operator(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlep-operator"));
    c.args(args)
        .env("RUST_BACKTRACE", "1")
        .env("KUBECONFIG", "/nonexistent/kubeconfig");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn help_prints_usage_with_every_setting_and_its_environment_variable() {
    let out = operator(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("Usage: mlep-operator [OPTIONS] [COMMAND]"),
        "{help}"
    );
    assert!(help.contains("crd"), "{help}");
    for env in [
        "MLEP_HTTP_ADDR",
        "MLEP_MODULE_ADDR",
        "MLEP_MODULE_MAX_CONNECTIONS",
        "MLEP_MODULE_HEADER_TIMEOUT_SECONDS",
        "MLEP_POD_SECURITY_LEVEL",
        "MLEP_PROMETHEUS_URL",
        "MLEP_PROMETHEUS_ALLOWED_URLS",
        "MLEP_WASM_PATH",
        "MLEP_WASM_URL",
        "MLEP_NATIVE_FILTER_PATH",
        "POD_NAMESPACE",
        "POD_NAME",
        "MLEP_LEADER_ELECT",
        "MLEP_LEASE_SECONDS",
        "MLEP_MODEL_INIT_IMAGE",
        "MLEP_GATEWAY_NAMESPACE",
        "MLEP_GATEWAY_SELECTOR",
        "MLEP_CLUSTER_DOMAIN",
        "MLEP_LOG_FORMAT",
    ] {
        assert!(
            help.contains(&format!("[env: {env}=")),
            "{env} missing in\n{help}"
        );
    }
}

#[test]
fn a_bad_setting_from_the_environment_is_named_in_one_clear_error() {
    let out = operator(&[], &[("MLEP_GATEWAY_SELECTOR", "istio")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("invalid value 'istio' for '--gateway-selector")
            && err.contains("must be key=value[,key=value]"),
        "{err}"
    );
}

#[test]
fn a_runtime_failure_is_one_line_without_debug_chain_or_backtrace() {
    let out = operator(&["--wasm-path", "/nonexistent/mlep_filter.wasm"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "mlep-operator: reading the filter module /nonexistent/mlep_filter.wasm \
             (set --wasm-path or MLEP_WASM_PATH): "
        ),
        "{err}"
    );
    assert!(
        !err.contains("backtrace") && !err.contains("Caused by"),
        "{err}"
    );
}

#[test]
fn the_crd_subcommand_writes_both_crds_into_the_directory_given() {
    let dir = std::env::temp_dir().join(format!("mlep-operator-cli-{}", std::process::id()));
    let out = operator(&["crd", dir.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{out:?}");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["modelendpoints.mlep.dev.yaml", "models.mlep.dev.yaml"]
    );
    let _ = std::fs::remove_dir_all(dir);
}
