//! Shared by the integration tests and the benchmark: the CRDs to install into the test API
//! server (ours and Istio's), with `x-kubernetes-validations` stripped. The test API server
//! (the bed's v1.37 build) evaluates CEL, but these tests exercise the operator's own repeat of
//! every check (an invalid spec must reach it to get its condition); CEL rejecting at admission
//! is tested with the shipped CRDs on the cluster bed (scripts/test-cluster-e2e.sh).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::Value;
use std::future::Future;
use std::time::Duration;

/// How long [`eventually`] waits.
pub const TIMEOUT: Duration = Duration::from_secs(60);

static CRDS: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

/// The test API server's client, with our CRDs and Istio's installed once per test binary.
#[allow(dead_code)] // the benchmark, which shares this file, connects its own way
pub async fn client() -> Client {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at the test API server (scripts/test-operator.sh)");
    let mut done = CRDS.lock().await;
    if !*done {
        install_crds(&client, "mlep-test").await;
        *done = true;
    }
    client
}

/// A path of the repository.
#[allow(dead_code)] // not every file sharing this one reads the repository
pub fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The YAML documents of a repository file.
#[allow(dead_code)] // not every file sharing this one reads the repository
pub fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Poll `f` until it yields `Some`, or fail naming `what` after [`TIMEOUT`].
#[allow(dead_code)] // the benchmark, which shares this file, waits its own way
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn strip_cel(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("x-kubernetes-validations");
            m.values_mut().for_each(strip_cel);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_cel),
        _ => {}
    }
}

/// Our CRDs and Istio's (`../shared/istio/crd-all.gen.yaml`), CEL stripped, ready for
/// server-side apply.
pub fn test_crds() -> Vec<Value> {
    let mut crds: Vec<Value> = mlep_core::render::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let path = format!(
        "{}/../../shared/istio/crd-all.gen.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let istio = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for doc in serde_yaml::Deserializer::from_str(&istio) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "CustomResourceDefinition" {
            crds.push(v);
        }
    }
    crds.iter_mut().for_each(strip_cel);
    crds
}

/// Install [`test_crds`] with server-side apply under `manager` and wait until every one is
/// `Established` (or panic after 60 s naming the CRD). Server-side apply, because create/replace
/// of k8s-openapi's typed CRD trips 1.20's "per-version schemas may not all be set to identical
/// values" check.
pub async fn install_crds(client: &Client, manager: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for v in test_crds() {
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        api.patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&v),
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|conds| {
                    conds
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "CRD {name} not established within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An operator running in the test: stop it by sending, then await its task.
#[allow(dead_code)] // not every test binary starts one this way
pub type RunningOperator = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Stop an operator started by a test; a task that does not end within 20 s is aborted.
#[allow(dead_code)] // not every test binary starts one this way
pub async fn stop_operator(op: RunningOperator) {
    let (tx, mut task) = op;
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), &mut task).await;
    task.abort();
}

/// Settings for an operator under test whose shared filters go to namespace `filters`
/// (a module URL nothing serves: proxies are not part of these tests).
#[allow(dead_code)] // not every test binary starts one this way
pub fn operator_settings(filters: &str) -> mlep_core::render::RenderSettings {
    mlep_core::render::RenderSettings {
        wasm_url: "http://127.0.0.1:9/mlep_filter.wasm".into(),
        wasm_sha256: "ab".repeat(32),
        gateway_namespace: filters.to_owned(),
        mesh_root_namespace: filters.to_owned(),
        ..Default::default()
    }
}

/// The operator with `settings` on `scope`, running until [`stop_operator`].
#[allow(dead_code)] // not every test binary starts one this way
pub fn start_operator_with(
    client: &Client,
    settings: mlep_core::render::RenderSettings,
    scope: mlep_operator::scope::Scope,
) -> RunningOperator {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let c = client.clone();
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.await;
        };
        let metrics = std::sync::Arc::new(mlep_operator::metrics::Metrics::default());
        mlep_operator::reconcile::run(c, settings, metrics, &scope, stop).await
    });
    (tx, task)
}
