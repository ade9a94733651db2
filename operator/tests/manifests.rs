//! What `manifests/` installs agrees with the operator: its own pod meets Pod Security
//! "restricted" (and its namespace enforces it), and the module port the proxies are told
//! (`mlep_core::module::MODULE_PORT`) is the Service's and the container's.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use mlep_core::module::MODULE_PORT;
use mlep_core::pod_security::{pod_spec_violations, PodSecurityLevel};
use serde_json::Value;

fn docs(path: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(path: &str, kind: &str) -> T {
    let doc = docs(path).into_iter().find(|d| d["kind"] == kind).unwrap();
    serde_json::from_value(doc).unwrap()
}

#[test]
fn the_operators_pod_meets_restricted_and_its_namespace_enforces_it() {
    let d: Deployment = of_kind("manifests/operator/operator.yaml", "Deployment");
    let pod = d.spec.unwrap().template.spec.unwrap();
    let found = pod_spec_violations(&pod, PodSecurityLevel::Restricted);
    assert!(found.is_empty(), "{found:?}");
    let ns: Namespace = of_kind("manifests/operator/namespace.yaml", "Namespace");
    let labels = ns.metadata.labels.unwrap();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
}

#[test]
fn the_module_port_is_the_services_and_the_containers() {
    let svc: Service = of_kind("manifests/operator/operator.yaml", "Service");
    let ports = svc.spec.unwrap().ports.unwrap();
    let module = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("module"))
        .unwrap();
    assert_eq!(module.port, i32::from(MODULE_PORT));
    let d: Deployment = of_kind("manifests/operator/operator.yaml", "Deployment");
    let c = d.spec.unwrap().template.spec.unwrap().containers.remove(0);
    let container_port = c
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("module"))
        .unwrap()
        .container_port;
    let addr = c
        .env
        .unwrap()
        .into_iter()
        .find(|e| e.name == "MLEP_MODULE_ADDR")
        .and_then(|e| e.value)
        .unwrap();
    assert!(addr.ends_with(&format!(":{container_port}")), "{addr}");
    // The admin port (metrics, health) is not the module's.
    assert!(ports
        .iter()
        .all(|p| p.name.as_deref() == Some("module") || p.port != module.port));
}
