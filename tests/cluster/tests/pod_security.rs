//! Pod Security "restricted" on the bed (issue 18, item 2): a namespace that enforces it, without
//! sidecar injection (Istio's `istio-init` needs NET_ADMIN, which "restricted" refuses), admits
//! every pod the operator renders for the example endpoint (model pods with their model-init
//! containers), the endpoint gets Ready and it is served through the gateway; a Model the level
//! refuses is rejected by the operator, naming the field, before any pod is tried. The
//! operator's own namespace (`mlep-system`) enforces "restricted" too, and its pods run there.
//!
//! ```text
//! eval "$(scripts/cluster.sh env | sed 's/^/export /')"
//! cargo test -p mlep-cluster-e2e --test pod_security -- --nocapture
//! ```

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use mlep_cluster_e2e::*;
use mlep_core::crd::Model;
use serde_json::json;
use std::time::Duration;

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Enforce "restricted" on `ns` and turn sidecar injection off (for pods created from now on).
async fn enforce_restricted(bed: &Bed, ns: &str) {
    let api: kube::Api<Namespace> = kube::Api::all(bed.client.clone());
    let labels = json!({"metadata": {"labels": {
        ENFORCE: "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "istio-injection": null,
    }}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
}

/// Whether the API server refuses a privileged pod in `ns` (server-side dry run).
async fn refuses_a_privileged_pod(bed: &Bed, ns: &str) -> bool {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged-probe"},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "securityContext": {"privileged": true}}]}
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    matches!(
        bed.api::<Pod>(ns).create(&dry, &pod).await,
        Err(kube::Error::Api(ref s)) if s.code == 403 && s.message.contains("PodSecurity")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_enforcing_restricted_admits_every_model_pod_and_serves_through_the_gateway() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "pod-security").await;
    // The test's artifact server is not the operator's and is not held to the level: it
    // starts before the namespace enforces it (Pod Security admits or refuses at creation).
    let t = Titanic::artifacts_only(&bed, &ns).await;
    enforce_restricted(&bed, &ns.name).await;
    assert!(
        refuses_a_privileged_pod(&bed, &ns.name).await,
        "the namespace does not enforce Pod Security \"restricted\""
    );
    let t = t.with_example().await;

    let pods = t.model_pods().await;
    assert!(pods.len() >= 2, "{} model pods", pods.len());
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let names: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["model-init", "model"], "no sidecar, no istio-init");
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        assert_eq!(phase, Some("Running"), "{:?}", p.metadata.name);
    }
    let users = keys("psa", 40);
    let mut served = 0;
    for key in &users {
        let o = t.gateway.invoke(&[("x-user-id", key)]).await;
        if o.status() == Some(200) && o.variant().is_some() {
            served += 1;
        }
    }
    assert_eq!(
        served,
        users.len(),
        "answered through the gateway with a variant"
    );
    ok("a namespace enforcing restricted runs every model pod; served through the gateway");

    // A Model the level refuses: the operator names the field and deploys nothing for it.
    let mut bad = t.example_models().remove(1);
    bad.metadata.name = Some("titanic-root".into());
    bad.spec.security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
        run_as_user: Some(0),
        ..Default::default()
    });
    bed.api::<Model>(&t.ns)
        .create(&PostParams::default(), &bad)
        .await
        .unwrap();
    let message = eventually(
        Duration::from_secs(60),
        "the Model's condition naming the field",
        || async {
            let m = bed.api::<Model>(&t.ns).get("titanic-root").await.ok()?;
            let c = m
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.status == "False")?;
            (c.reason == "PodSecurity").then_some(c.message)
        },
    )
    .await;
    assert!(
        message.starts_with("spec.securityContext.runAsUser"),
        "{message}"
    );
    ok("a Model running as root is refused, naming spec.securityContext.runAsUser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_namespace_enforces_restricted_and_its_pods_run() {
    let bed = Bed::connect().await;
    operator_ready(&bed).await;
    let ns = kube::Api::<Namespace>::all(bed.client.clone())
        .get(OPERATOR_NS)
        .await
        .unwrap();
    let level = ns.metadata.labels.unwrap_or_default().get(ENFORCE).cloned();
    assert_eq!(level.as_deref(), Some("restricted"));
    assert!(refuses_a_privileged_pod(&bed, OPERATOR_NS).await);
    let pods = bed
        .api::<Pod>(OPERATOR_NS)
        .list(&ListParams::default().labels(&format!("app={OPERATOR}")))
        .await
        .unwrap()
        .items;
    assert!(!pods.is_empty());
    assert!(pods
        .iter()
        .all(|p| { p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") }));
    ok("mlep-system enforces restricted and the operator's pods run there");
}
