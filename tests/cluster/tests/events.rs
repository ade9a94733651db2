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

use kube::api::PostParams;
use mlep_cluster_e2e::*;
use mlep_core::crd::conditions::{REASON_ARTIFACT_FETCH_FAILED, REASON_MODEL_CRASH_LOOPING};
use mlep_core::crd::Model;
use std::time::Duration;

/// How long a failure may take to be named: the pod starts, fails, and the operator reconciles
/// on the pod's change.
const NAMED_WITHIN: Duration = Duration::from_secs(180);

/// Create `model`, make it variant b's, and wait until `Ready` says `reason` with a message
/// starting `variant b, model <model>: pod <its Deployment's pod>` and containing `what`; then
/// for the Warning Event with that reason. Returns the message.
async fn named(t: &Titanic, model: Model, reason: &str, what: &str) -> String {
    let name = model.metadata.name.clone().unwrap();
    t.bed
        .api::<Model>(&t.ns)
        .create(&PostParams::default(), &model)
        .await
        .unwrap();
    t.edit(|s| s.variants[1].model.clone_from(&name)).await;
    let c = eventually(NAMED_WITHIN, &format!("Ready names {reason}"), || async {
        let e = t.endpoint().await;
        condition(&e, "Ready")
            .filter(|c| c.status == "False" && c.reason == reason)
            .cloned()
    })
    .await;
    let prefix = format!("variant b, model {name}: pod titanic-b-{name}");
    assert!(
        c.message.starts_with(&prefix) && c.message.contains(what),
        "{}",
        c.message
    );
    println!("    Ready/{}: {}", c.reason, c.message);
    eventually(NAMED_WITHIN, &format!("a {reason} event"), || async {
        endpoint_events(&t.bed, &t.ns)
            .await
            .into_iter()
            .find(|e| e.0 == "Warning" && e.1 == reason)
    })
    .await;
    c.message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_exits_or_fails_its_artifact_check_is_named_with_an_event() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "failing").await;
    let t = Titanic::deploy(&bed, &ns).await;

    // The model server refuses its port and exits at start, again after every restart.
    let exits = t.exiting_model();
    named(
        &t,
        exits,
        REASON_MODEL_CRASH_LOOPING,
        "container model exited ",
    )
    .await;
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
    named(
        &t,
        bad,
        REASON_ARTIFACT_FETCH_FAILED,
        "init container model-init exited ",
    )
    .await;
    ok("an artifact failing its sha256: Ready/ArtifactFetchFailed naming model-init and its exit code; a Warning event");
    // Variant a kept serving throughout.
    let o = t.gateway.invoke(&[("x-mlep-target-variant", "a")]).await;
    assert_eq!(o.status(), Some(200));
}
