//! The namespaced install's RBAC against a real kube-apiserver (RBAC authorization on;
//! `scripts/test-operator.sh` provisions it): the shipped rules (`manifests/operator/rbac.yaml`)
//! and a RoleBinding per watched namespace (`manifests/namespaced/watched-namespaces.yaml`), the
//! operator in-process as its ServiceAccount (impersonated) watching two namespaces. It serves
//! both, including the shared filter objects in istio-system, which its Role grants by name only
//! (created by server-side apply, deleted with the last endpoint), and leaves a third namespace
//! alone. This server has no kubelet: Deployment readiness is patched (see `cluster.rs`).

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use mlep_core::aggregate::SIDECAR_FILTER;
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::render::{RenderSettings, LABEL_ENDPOINT};
use mlep_operator::app::check_crds;
use mlep_operator::metrics::Metrics;
use mlep_operator::reconcile;
use mlep_operator::scope::Scope;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::oneshot;

mod support;

use support::{client, eventually, yaml_docs};

const SA: &str = "system:serviceaccount:mlep-system:mlep-operator";
const MESH_ROOT: &str = "istio-system";

fn ns(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

async fn apply<K>(api: Api<K>, doc: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = doc["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(doc),
    )
    .await
    .unwrap();
}

/// The namespaces, the shipped RBAC, and a RoleBinding in each of `watched`.
async fn install(admin: &Client, namespaces: &[&str], watched: &[&str]) {
    let api: Api<Namespace> = Api::all(admin.clone());
    for n in namespaces.iter().chain(&[MESH_ROOT, "mlep-system"]) {
        apply(
            api.clone(),
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}),
        )
        .await;
    }
    for doc in yaml_docs("manifests/operator/rbac.yaml") {
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let c = admin.clone();
        match doc["kind"].as_str().unwrap() {
            "ServiceAccount" => apply(Api::<ServiceAccount>::namespaced(c, &ns), &doc).await,
            "ClusterRole" => apply(Api::<ClusterRole>::all(c), &doc).await,
            "Role" => apply(Api::<Role>::namespaced(c, &ns), &doc).await,
            "RoleBinding" => apply(Api::<RoleBinding>::namespaced(c, &ns), &doc).await,
            other => panic!("unexpected {other} in rbac.yaml"),
        }
    }
    let binding = yaml_docs("manifests/namespaced/watched-namespaces.yaml").remove(0);
    for n in watched {
        let mut b = binding.clone();
        b["metadata"]["namespace"] = json!(n);
        apply(Api::<RoleBinding>::namespaced(admin.clone(), n), &b).await;
    }
}

/// A client that is the operator's ServiceAccount (impersonated by the admin).
async fn as_operator() -> Client {
    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(SA.into());
    Client::try_from(config).unwrap()
}

async fn apply_example(admin: &Client, ns: &str) {
    for mut m in yaml_docs("manifests/example/models.yaml") {
        m["metadata"]["namespace"] = json!(ns);
        apply(Api::<Model>::namespaced(admin.clone(), ns), &m).await;
    }
    let mut ep = yaml_docs("manifests/example/endpoint.yaml").remove(0);
    ep["metadata"]["namespace"] = json!(ns);
    ep["spec"]["hosts"] = json!([format!("{ns}.example.com")]);
    apply(Api::<ModelEndpoint>::namespaced(admin.clone(), ns), &ep).await;
}

async fn deployments(client: &Client, ns: &str) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(LABEL_ENDPOINT))
        .await
        .unwrap()
        .items
}

async fn all_ready(admin: &Client, ns: &str) {
    let ds = eventually(&format!("Deployments in {ns}"), || async {
        let d = deployments(admin, ns).await;
        (d.len() == 2).then_some(d)
    })
    .await;
    let api: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let status = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}});
    for d in ds {
        api.patch_status(
            &d.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    }
}

fn sidecar_filter(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1alpha3", "EnvoyFilter");
    Api::namespaced_with(client.clone(), MESH_ROOT, &ApiResource::from_gvk(&gvk))
}

/// The `namespace/name` of every endpoint the shared sidecar filter carries, if it exists.
async fn carried(admin: &Client) -> Option<Vec<String>> {
    let ef = sidecar_filter(admin)
        .get_opt(SIDECAR_FILTER)
        .await
        .unwrap()?;
    let text = ef.data["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()?;
    let config: Value = serde_json::from_str(text).ok()?;
    let mut out: Vec<String> = config["endpoints"]
        .as_array()?
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["namespace"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    Some(out)
}

#[tokio::test]
async fn the_namespaced_operator_serves_its_namespaces_under_the_shipped_rbac_and_no_other() {
    let admin = client().await;
    let (a, b, off) = (ns("nsd-a"), ns("nsd-b"), ns("nsd-off"));
    install(&admin, &[&a, &b, &off], &[&a, &b]).await;
    let operator = as_operator().await;

    // Start-up: it may read both watched namespaces; a namespace without its RoleBinding, or
    // every namespace, stops it with a hint naming where.
    check_crds(&operator, &Scope::new([&a, &b])).await.unwrap();
    for (scope, named) in [
        (Scope::new([&a, &off]), format!("namespace {off}")),
        (Scope::All, "every namespace".into()),
    ] {
        let err = check_crds(&operator, &scope).await.unwrap_err().to_string();
        assert!(err.contains(&named) && err.contains("RoleBinding"), "{err}");
    }

    // A leftover of an interrupted run must not hold the shared filter.
    let _ = sidecar_filter(&admin)
        .delete(SIDECAR_FILTER, &DeleteParams::default())
        .await;
    let settings = RenderSettings {
        wasm_url: "http://127.0.0.1:9/mlep_filter.wasm".into(),
        wasm_sha256: "ab".repeat(32),
        ..Default::default()
    };
    let (stop, rx) = oneshot::channel::<()>();
    let scope = Scope::new([&a, &b]);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        reconcile::run(
            operator,
            settings,
            Arc::new(Metrics::default()),
            &scope,
            shutdown,
        )
        .await
    });

    apply_example(&admin, &off).await;
    apply_example(&admin, &a).await;
    apply_example(&admin, &b).await;
    all_ready(&admin, &a).await;
    all_ready(&admin, &b).await;
    // Both watched endpoints in the shared filter: created by name under the Role.
    let want = vec![format!("{a}/titanic"), format!("{b}/titanic")];
    eventually(
        "the shared filter carries both watched endpoints",
        || async { (carried(&admin).await? == want).then_some(()) },
    )
    .await;

    // The unwatched namespace: nothing written.
    let stranger = Api::<ModelEndpoint>::namespaced(admin.clone(), &off)
        .get("titanic")
        .await
        .unwrap();
    assert!(
        stranger.status.is_none() && stranger.finalizers().is_empty(),
        "{stranger:?}"
    );
    assert!(deployments(&admin, &off).await.is_empty());
    for m in Api::<Model>::namespaced(admin.clone(), &off)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        assert!(m.status.is_none(), "{m:?}");
    }

    // Deleting the endpoints: the filter loses one entry (patch by name), then goes (delete).
    for (n, left) in [(&a, Some(vec![format!("{b}/titanic")])), (&b, None)] {
        Api::<ModelEndpoint>::namespaced(admin.clone(), n)
            .delete("titanic", &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            &format!("the shared filter after {n}'s endpoint went"),
            || async { (carried(&admin).await == left).then_some(()) },
        )
        .await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), task).await;
}
