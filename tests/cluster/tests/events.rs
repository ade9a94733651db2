//! Failing models named on the bed (issue 19, item 4): a model whose server exits at start gets
//! `ModelCrashLooping`, a model whose artifact fails its sha256 `ArtifactFetchFailed`, in the
//! endpoint's `Ready` condition (with the pod, container and exit code) and as a Warning Event
//! that `kubectl describe mle` lists. Real pods, a real kubelet: nothing is patched.
//!
//! ```text
//! eval "$(scripts/cluster.sh env | sed 's/^/export /')"
//! cargo test -p mlep-cluster-e2e --test events -- --nocapture
//! ```

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use mlep_cluster_e2e::*;
use mlep_core::crd::conditions::{REASON_ARTIFACT_FETCH_FAILED, REASON_MODEL_CRASH_LOOPING};
use mlep_core::crd::{Condition, Model};
use std::time::Duration;

/// How long a failure may take to be named: the pod starts, fails, and the operator reconciles
/// on the pod's change.
const NAMED_WITHIN: Duration = Duration::from_secs(180);

/// The Events regarding the endpoint: `(type, reason, note)`.
async fn endpoint_events(t: &Titanic) -> Vec<(String, String, String)> {
    t.bed
        .api::<Event>(&t.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("ModelEndpoint") && r.name.as_deref() == Some(ENDPOINT)
            })
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Create `model` and make it variant b's; wait until `Ready` carries `reason`.
async fn b_on(t: &Titanic, model: Model, reason: &str) -> Condition {
    let name = model.metadata.name.clone().unwrap();
    t.bed
        .api::<Model>(&t.ns)
        .create(&PostParams::default(), &model)
        .await
        .unwrap();
    t.edit(|s| s.variants[1].model.clone_from(&name)).await;
    eventually(NAMED_WITHIN, &format!("Ready names {reason}"), || async {
        let e = t.endpoint().await;
        condition(&e, "Ready")
            .filter(|c| c.status == "False" && c.reason == reason)
            .cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_exits_or_fails_its_artifact_check_is_named_with_an_event() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "failing").await;
    let t = Titanic::deploy(&bed, &ns).await;

    // The model server refuses its port and exits at start, again after every restart.
    let mut exits = t.example_models().remove(1);
    exits.metadata = meta("titanic-exits");
    exits.spec.env.push(EnvVar {
        name: "MLEP_PORT".into(),
        value: Some("not-a-port".into()),
        value_from: None,
    });
    let c = b_on(&t, exits, REASON_MODEL_CRASH_LOOPING).await;
    assert!(
        c.message
            .starts_with("variant b, model titanic-exits: pod titanic-b-titanic-exits")
            && c.message.contains("container model exited "),
        "{}",
        c.message
    );
    println!("    Ready/{}: {}", c.reason, c.message);
    let event = eventually(NAMED_WITHIN, "a ModelCrashLooping event", || async {
        endpoint_events(&t)
            .await
            .into_iter()
            .find(|e| e.1 == REASON_MODEL_CRASH_LOOPING)
    })
    .await;
    assert_eq!(event.0, "Warning", "{event:?}");
    let (_, described, _) = kubectl(&["-n", &t.ns, "describe", "mle", ENDPOINT]).await;
    assert!(
        described.contains(REASON_MODEL_CRASH_LOOPING),
        "{described}"
    );
    ok("a model server that exits: Ready/ModelCrashLooping naming pod, container and exit code; a Warning event kubectl describe lists");

    // The artifact's sha256 is wrong: model-init refuses it, the server never starts.
    let mut bad = t.example_models().remove(1);
    bad.metadata = meta("titanic-badsha");
    if let Some(a) = bad.spec.artifact.as_mut() {
        a.sha256 = "0".repeat(64);
    }
    let c = b_on(&t, bad, REASON_ARTIFACT_FETCH_FAILED).await;
    assert!(
        c.message
            .starts_with("variant b, model titanic-badsha: pod titanic-b-titanic-badsha")
            && c.message.contains("init container model-init exited "),
        "{}",
        c.message
    );
    println!("    Ready/{}: {}", c.reason, c.message);
    eventually(NAMED_WITHIN, "an ArtifactFetchFailed event", || async {
        endpoint_events(&t)
            .await
            .into_iter()
            .find(|e| e.0 == "Warning" && e.1 == REASON_ARTIFACT_FETCH_FAILED)
    })
    .await;
    ok("an artifact failing its sha256: Ready/ArtifactFetchFailed naming model-init and its exit code; a Warning event");
    // Variant a kept serving throughout.
    let o = t.gateway.invoke(&[("x-mlep-target-variant", "a")]).await;
    assert_eq!(o.status(), Some(200));
}
