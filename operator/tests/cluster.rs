//! Integration tests against a real kube-apiserver + etcd (+ kube-controller-manager for garbage
//! collection), provisioned by `scripts/envtest/setup.sh` (see `scripts/test-operator.sh`), with
//! the generated CRDs and Istio's own CRDs installed. The controller runs in-process, scoped to
//! one namespace per test, so its write counter sees only its own endpoint.
//!
//! This API server has no scheduler or kubelet: Deployment readiness is set by patching status,
//! which is what isolates the operator's planning here (ready/unready orderings a real cluster
//! cannot produce on demand). The same behaviours with real pods, real readiness and the
//! operator under its shipped RBAC run on the cluster bed (scripts/test-cluster-e2e.sh: Ready,
//! weight change, model swap, variant removal, rollouts). CRDs are installed with CEL stripped
//! (see `support`).

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use mlep_core::aggregate::{GATEWAY_FILTER, SIDECAR_FILTER};
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::render::{render_all, RenderSettings, LABEL_ENDPOINT};
use mlep_operator::leader::LeaderElection;
use mlep_operator::metrics::Metrics;
use mlep_operator::reconcile;
use mlep_operator::scope::Scope;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

mod support;

use support::{client, eventually, repo, yaml_docs};

/// A namespace name unique to this test run (reruns against the same server start clean).
fn ns(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

fn settings(ns: &str) -> RenderSettings {
    RenderSettings {
        wasm_url: "http://127.0.0.1:9/mlep_filter.wasm".into(),
        wasm_sha256: "ab".repeat(32),
        // A per-test "gateway namespace", so cleanup across namespaces is observable.
        gateway_namespace: format!("{ns}-gw"),
        // The shared filters of this test's operator, apart from other tests'.
        mesh_root_namespace: format!("{ns}-gw"),
        ..Default::default()
    }
}

struct Operator {
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    fn start(client: &Client, ns: &str) -> Self {
        Self::start_with(client, ns, settings(ns))
    }

    fn start_with(client: &Client, ns: &str, settings: RenderSettings) -> Self {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = oneshot::channel::<()>();
        let (c, m, s, scope) = (client.clone(), metrics.clone(), settings, ns.to_owned());
        let task = tokio::spawn(async move {
            reconcile::run(c, s, m, &Scope::namespace(&scope), async move {
                let _ = rx.await;
            })
            .await
        });
        Self {
            metrics,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
        self.task.abort();
    }

    /// Wait until the controller has reconciled at least `n` times.
    async fn reconciled(&self, n: u64) {
        let m = self.metrics.clone();
        eventually(&format!("{n} reconciles"), || {
            let m = m.clone();
            async move { (m.reconciles() >= n).then_some(()) }
        })
        .await;
    }
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    for n in [name.to_owned(), format!("{name}-gw")] {
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": n } })).unwrap();
        if api.get_opt(&n).await.unwrap().is_none() {
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    }
}

/// Apply the example (`manifests/example/`) into `ns`; return the endpoint's name.
async fn apply_example(client: &Client, ns: &str, tweak: impl FnOnce(&mut Value)) -> String {
    let pp = PatchParams::apply("test").force();
    for mut m in yaml_docs("manifests/example/models.yaml") {
        m["metadata"]["namespace"] = json!(ns);
        let api: Api<Model> = Api::namespaced(client.clone(), ns);
        api.patch(
            m["metadata"]["name"].as_str().unwrap(),
            &pp,
            &Patch::Apply(&m),
        )
        .await
        .unwrap();
    }
    let mut ep = yaml_docs("manifests/example/endpoint.yaml").remove(0);
    ep["metadata"]["namespace"] = json!(ns);
    tweak(&mut ep);
    let name = ep["metadata"]["name"].as_str().unwrap().to_owned();
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    api.patch(&name, &pp, &Patch::Apply(&ep)).await.unwrap();
    name
}

fn dynamic(
    client: &Client,
    ns: &str,
    api_version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn vs_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    )
}

fn dr_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "networking.istio.io/v1",
        "DestinationRule",
        "destinationrules",
    )
}

fn ef_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    dynamic(
        client,
        ns,
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    )
}

/// Weighted default route of the VirtualService: subset -> weight.
fn default_weights(vs: &DynamicObject) -> Vec<(String, u64)> {
    let http = vs.data["spec"]["http"].as_array().unwrap();
    let last = http.last().unwrap();
    last["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["destination"]["subset"].as_str().unwrap().to_owned(),
                r["weight"].as_u64().unwrap_or(100),
            )
        })
        .collect()
}

/// The filter config JSON carried by the shared EnvoyFilter (this test's endpoints only: each
/// test has its own mesh root namespace).
fn filter_config(ef: &DynamicObject) -> Value {
    let s = ef.data["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()
        .unwrap();
    serde_json::from_str(s).unwrap()
}

async fn set_ready(client: &Client, ns: &str, deployment: &str, ready: i32) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let status = json!({ "status": { "replicas": ready, "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": ready } });
    api.patch_status(deployment, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let ep = api.get(name).await.ok()?;
    let c = ep
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

async fn deployments(client: &Client, ns: &str, ep: &str) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("{LABEL_ENDPOINT}={ep}")))
        .await
        .unwrap()
        .items
}

/// Apply the example, let the children appear, make both variants ready.
async fn ready_example(
    client: &Client,
    ns: &str,
    op: &Operator,
    tweak: impl FnOnce(&mut Value),
) -> String {
    namespace(client, ns).await;
    let ep = apply_example(client, ns, tweak).await;
    eventually("two Deployments", || async {
        (deployments(client, ns, &ep).await.len() == 2).then_some(())
    })
    .await;
    for d in ["titanic-a-titanic-v1", "titanic-b-titanic-v2"] {
        set_ready(client, ns, d, 1).await;
    }
    eventually("Ready=True", || async {
        condition(client, ns, &ep, "Ready")
            .await
            .filter(|c| c.0 == "True")
            .map(|_| ())
    })
    .await;
    op.reconciled(1).await;
    // The reconcile that wrote Ready writes the shared filter right after its status: wait for
    // that too, so callers comparing resourceVersions start from the settled state.
    eventually(
        "the shared filter carries the endpoint's allocation",
        || async {
            let status = Api::<ModelEndpoint>::namespaced(client.clone(), ns)
                .get(&ep)
                .await
                .ok()?
                .status?;
            let ef = ef_api(client, &format!("{ns}-gw"))
                .get(SIDECAR_FILTER)
                .await
                .ok()?;
            let carried = filter_config(&ef)["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["name"] == ep.as_str())?["allocation"]
                .clone();
            (carried == serde_json::to_value(status.allocation?).ok()?).then_some(())
        },
    )
    .await;
    ep
}

#[tokio::test]
async fn the_example_renders_accepted_children_and_becomes_ready_once_deployments_are() {
    let client = client().await;
    let ns = &ns("it-example");
    namespace(&client, ns).await;
    let op = Operator::start(&client, ns);
    let ep = apply_example(&client, ns, |_| {}).await;

    let ds = eventually("Deployments", || async {
        let d = deployments(&client, ns, &ep).await;
        (d.len() == 2).then_some(d)
    })
    .await;
    let pod = ds[0].spec.as_ref().unwrap().template.clone();
    let labels = pod.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["app"], "titanic");
    assert!(["a", "b"].contains(&labels["version"].as_str()));
    let spec = pod.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap()[0].name, "model-init");
    assert_eq!(
        spec.containers[0].args.as_deref(),
        Some(&["serve".to_owned()][..])
    );
    for (kind, api) in [
        ("VirtualService", vs_api(&client, ns)),
        ("DestinationRule", dr_api(&client, ns)),
        ("EnvoyFilter", ef_api(&client, &format!("{ns}-gw"))),
    ] {
        eventually(kind, || async {
            api.list(&ListParams::default())
                .await
                .ok()
                .filter(|l| !l.items.is_empty())
                .map(|_| ())
        })
        .await;
    }
    let svc: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually("Service", || async {
        svc.get_opt(&ep).await.ok().flatten().map(|_| ())
    })
    .await;

    // Nothing is ready: not Ready, and no header route to an unready variant.
    let (status, reason, _) = eventually("Ready=False", || async {
        condition(&client, ns, &ep, "Ready")
            .await
            .filter(|c| c.0 == "False")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NoReadyVariant")
    );
    let vs = vs_api(&client, ns).get(&ep).await.unwrap();
    assert_eq!(
        vs.data["spec"]["http"].as_array().unwrap().len(),
        1,
        "only the default route while nothing is ready"
    );

    // One variant ready: it gets all the traffic.
    set_ready(&client, ns, "titanic-a-titanic-v1", 1).await;
    eventually("a=100", || async {
        let vs = vs_api(&client, ns).get(&ep).await.ok()?;
        (default_weights(&vs) == vec![("a".to_owned(), 100)]).then_some(())
    })
    .await;

    set_ready(&client, ns, "titanic-b-titanic-v2", 1).await;
    eventually("Ready=True", || async {
        condition(&client, ns, &ep, "Ready")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    let vs = vs_api(&client, ns).get(&ep).await.unwrap();
    assert_eq!(
        default_weights(&vs),
        vec![("a".to_owned(), 80), ("b".to_owned(), 20)]
    );
    // The header route obeys only the value the filter sets, with the endpoint's route key.
    let key = Api::<ModelEndpoint>::namespaced(client.clone(), ns)
        .get(&ep)
        .await
        .unwrap()
        .status
        .and_then(|s| s.route_key)
        .expect("a route key in status");
    let http = vs.data["spec"]["http"].as_array().unwrap();
    assert_eq!(
        http[0]["match"][0]["headers"]["x-mlep-variant"]["prefix"],
        format!("a.{key}")
    );
    let cfg = filter_config(
        &ef_api(&client, &format!("{ns}-gw"))
            .get(SIDECAR_FILTER)
            .await
            .unwrap(),
    );
    assert_eq!(
        cfg["endpoints"][0]["routing"]["sticky"]["header"],
        "x-user-id"
    );
    assert_eq!(
        cfg["endpoints"][0]["routeKey"],
        key.as_str(),
        "the filter sets what the route matches"
    );
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let st = api.get(&ep).await.unwrap().status.unwrap();
    assert_eq!(st.allocation.unwrap().counts()["a"], 8000);
    assert_eq!(st.summary.unwrap().weights, "a=80,b=20");
    let models: Api<Model> = Api::namespaced(client.clone(), ns);
    let ready = eventually("Model titanic-v1 Ready", || async {
        models
            .get("titanic-v1")
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
    })
    .await;
    assert_eq!(ready.status, "True");
    op.stop().await;
}

#[tokio::test]
async fn a_second_reconcile_and_an_operator_restart_write_nothing() {
    let client = client().await;
    let ns = &ns("it-idempotent");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    // Let the reconcile that follows the last status write finish, then poke it again.
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let before = op.metrics.reconciles();
    api.patch(
        &ep,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"poke": "1"}}})),
    )
    .await
    .unwrap();
    op.reconciled(before + 1).await;
    let writes = op.metrics.writes();
    api.patch(
        &ep,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"poke": "2"}}})),
    )
    .await
    .unwrap();
    op.reconciled(before + 2).await;
    assert_eq!(
        op.metrics.writes(),
        writes,
        "a reconcile of an unchanged endpoint wrote something"
    );
    op.stop().await;

    let restarted = Operator::start(&client, ns);
    restarted.reconciled(1).await;
    assert_eq!(
        restarted.metrics.writes(),
        0,
        "a restarted operator rewrote unchanged objects"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn changing_weights_moves_only_routing_and_filter_config_and_keeps_users_put() {
    let client = client().await;
    let ns = &ns("it-weights");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let before = api
        .get(&ep)
        .await
        .unwrap()
        .status
        .unwrap()
        .allocation
        .unwrap();
    let generations: Vec<_> = deployments(&client, ns, &ep)
        .await
        .iter()
        .map(|d| (d.name_any(), d.metadata.generation))
        .collect();

    let patch = json!({"spec": {"variants": [
        {"name": "a", "model": "titanic-v1", "weight": 50, "replicas": 1},
        {"name": "b", "model": "titanic-v2", "weight": 50, "replicas": 1},
    ]}});
    api.patch(&ep, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("VirtualService at 50/50", || async {
        let vs = vs_api(&client, ns).get(&ep).await.ok()?;
        (default_weights(&vs) == vec![("a".to_owned(), 50), ("b".to_owned(), 50)]).then_some(())
    })
    .await;
    let after = eventually("status allocation at 50/50", || async {
        let a = api.get(&ep).await.ok()?.status?.allocation?;
        (a.counts()["b"] == 5000).then_some(a)
    })
    .await;
    // Users of b stay on b; only a's share moves, and only to b.
    for bucket in 0..mlep_contract::BUCKETS {
        if before.lookup(bucket) == Some("b") {
            assert_eq!(after.lookup(bucket), Some("b"), "bucket {bucket} left b");
        }
    }
    let cfg = filter_config(
        &ef_api(&client, &format!("{ns}-gw"))
            .get(SIDECAR_FILTER)
            .await
            .unwrap(),
    );
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        cfg["endpoints"][0]["allocation"]
    );
    let now: Vec<_> = deployments(&client, ns, &ep)
        .await
        .iter()
        .map(|d| (d.name_any(), d.metadata.generation))
        .collect();
    assert_eq!(
        now, generations,
        "a weight change touched Deployments (pods would restart)"
    );
    op.stop().await;
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_naming_the_field_and_the_last_good_config_keeps_serving()
{
    let client = client().await;
    let ns = &ns("it-invalid");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    let vs_before = vs_api(&client, ns).get(&ep).await.unwrap();
    let ef_before = ef_api(&client, &format!("{ns}-gw"))
        .get(SIDECAR_FILTER)
        .await
        .unwrap();
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);

    for (variants, field) in [
        (
            json!([{"name": "a", "model": "titanic-v1", "weight": 80}, {"name": "b", "model": "titanic-v2", "weight": 30}]),
            "spec.variants:",
        ),
        (
            json!([{"name": "a", "model": "titanic-v1", "weight": 80}, {"name": "a", "model": "titanic-v2", "weight": 20}]),
            "spec.variants[1].name",
        ),
        (
            json!([{"name": "a", "model": "titanic-v1", "weight": 80}, {"name": "b", "model": "nope", "weight": 20}]),
            "spec.variants[1].model",
        ),
    ] {
        api.patch(
            &ep,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"variants": variants}})),
        )
        .await
        .unwrap();
        let (_, _, msg) = eventually(&format!("condition naming {field}"), || async {
            condition(&client, ns, &ep, "Ready")
                .await
                .filter(|c| c.0 == "False" && c.2.starts_with(field))
        })
        .await;
        assert!(
            msg.contains("last good configuration keeps serving"),
            "{msg}"
        );
    }
    // A Model with a malformed sha256 makes the endpoint invalid, naming the variant.
    let models: Api<Model> = Api::namespaced(client.clone(), ns);
    api.patch(&ep, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"variants": [
        {"name": "a", "model": "titanic-v1", "weight": 80}, {"name": "b", "model": "titanic-v2", "weight": 20}]}})))
        .await
        .unwrap();
    // The CRD's own schema refuses a malformed sha256 (the operator checks it too, for servers
    // and tools that do not validate).
    let refused = models
        .patch(
            "titanic-v2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"artifact": {"sha256": "XYZ"}}})),
        )
        .await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 422),
        "{refused:?}"
    );
    models
        .patch(
            "titanic-v2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"artifact": {"uri": "ftp://example.com/m.tar.gz"}}})),
        )
        .await
        .unwrap();
    eventually("condition naming the model's artifact URI", || async {
        condition(&client, ns, &ep, "Ready").await.filter(|c| {
            c.2.starts_with("spec.variants[1].model") && c.2.contains("spec.artifact.uri")
        })
    })
    .await;
    let vs_after = vs_api(&client, ns).get(&ep).await.unwrap();
    let ef_after = ef_api(&client, &format!("{ns}-gw"))
        .get(SIDECAR_FILTER)
        .await
        .unwrap();
    assert_eq!(
        vs_after.resource_version(),
        vs_before.resource_version(),
        "the VirtualService changed"
    );
    assert_eq!(
        ef_after.resource_version(),
        ef_before.resource_version(),
        "the EnvoyFilter changed"
    );
    assert_eq!(deployments(&client, ns, &ep).await.len(), 2);
    op.stop().await;
}

/// Variant b of the example moves to a new Model `titanic-v3`; returns once its Deployment
/// stands beside the old one.
async fn swap_b_to_v3(client: &Client, ns: &str, ep: &str) {
    let models: Api<Model> = Api::namespaced(client.clone(), ns);
    let mut v3 = yaml_docs("manifests/example/models.yaml").remove(1);
    v3["metadata"] = json!({"name": "titanic-v3", "namespace": ns});
    models
        .patch(
            "titanic-v3",
            &PatchParams::apply("test"),
            &Patch::Apply(&v3),
        )
        .await
        .unwrap();
    let swap = json!({"spec": {"variants": [
        {"name": "a", "model": "titanic-v1", "weight": 80, "replicas": 1},
        {"name": "b", "model": "titanic-v3", "weight": 20, "replicas": 1}]}});
    Api::<ModelEndpoint>::namespaced(client.clone(), ns)
        .patch(ep, &PatchParams::default(), &Patch::Merge(&swap))
        .await
        .unwrap();
    eventually("new Deployment beside the old", || async {
        (deployments(client, ns, ep).await.len() == 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_model_swap_starts_the_new_deployment_beside_the_old_and_moves_traffic_once_ready() {
    let client = client().await;
    let ns = &ns("it-swap");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    swap_b_to_v3(&client, ns, &ep).await;
    let subset_model = || async {
        let dr = dr_api(&client, ns).get(&ep).await.ok()?;
        let subsets = dr.data["spec"]["subsets"].as_array()?.clone();
        subsets.iter().find(|s| s["name"] == "b").map(|s| {
            s["labels"]["mlep.dev/model"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
    };
    eventually("Progressing with SwappingModel", || async {
        condition(&client, ns, &ep, "Progressing")
            .await
            .filter(|c| c.1 == "SwappingModel")
    })
    .await;
    assert_eq!(
        subset_model().await.as_deref(),
        Some("titanic-v2"),
        "traffic moved before the new model was ready"
    );
    set_ready(&client, ns, "titanic-b-titanic-v3", 1).await;
    eventually("subset b on titanic-v3", || async {
        subset_model().await.filter(|m| m == "titanic-v3")
    })
    .await;
    eventually("old Deployment removed", || async {
        let names: Vec<String> = deployments(&client, ns, &ep)
            .await
            .iter()
            .map(|d| d.name_any())
            .collect();
        (names
            == vec![
                "titanic-a-titanic-v1".to_owned(),
                "titanic-b-titanic-v3".to_owned(),
            ])
        .then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn deleting_the_endpoint_removes_everything_it_created() {
    let client = client().await;
    let ns = &ns("it-delete");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |e| e["spec"]["expose"] = json!(true)).await;
    let gw_ns = format!("{ns}-gw");
    eventually("gateway-side EnvoyFilter", || async {
        ef_api(&client, &gw_ns)
            .get_opt(GATEWAY_FILTER)
            .await
            .ok()
            .flatten()
            .map(|_| ())
    })
    .await;
    let gw = dynamic(&client, ns, "networking.istio.io/v1", "Gateway", "gateways");
    assert!(
        gw.get_opt(&ep).await.unwrap().is_some(),
        "exposed endpoint has a Gateway"
    );

    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    api.delete(&ep, &DeleteParams::default()).await.unwrap();
    eventually("endpoint gone", || async {
        api.get_opt(&ep)
            .await
            .ok()
            .filter(|e| e.is_none())
            .map(|_| ())
    })
    .await;
    eventually(
        "the shared gateway EnvoyFilter removed with the last endpoint",
        || async {
            ef_api(&client, &gw_ns)
                .get_opt(GATEWAY_FILTER)
                .await
                .ok()
                .filter(|e| e.is_none())
                .map(|_| ())
        },
    )
    .await;
    let svc: Api<Service> = Api::namespaced(client.clone(), ns);
    eventually("children collected by the garbage collector", || async {
        let left = deployments(&client, ns, &ep).await.len()
            + usize::from(svc.get_opt(&ep).await.ok()?.is_some())
            + usize::from(vs_api(&client, ns).get_opt(&ep).await.ok()?.is_some())
            + usize::from(dr_api(&client, ns).get_opt(&ep).await.ok()?.is_some())
            + usize::from(gw.get_opt(&ep).await.ok()?.is_some())
            + usize::from(
                ef_api(&client, &gw_ns)
                    .get_opt(SIDECAR_FILTER)
                    .await
                    .ok()?
                    .is_some(),
            );
        (left == 0).then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn every_rendered_object_passes_the_api_servers_schemas_in_a_dry_run_apply() {
    let client = client().await;
    let ns = &ns("it-dryrun");
    namespace(&client, ns).await;
    let mut models: Vec<Model> = yaml_docs("manifests/example/models.yaml")
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
    for m in &mut models {
        m.metadata.namespace = Some(ns.into());
    }
    let mut eps = Vec::new();
    for (name, wiring) in [("ef", "EnvoyFilter"), ("wp", "WasmPlugin")] {
        let mut e = yaml_docs("manifests/example/endpoint.yaml").remove(0);
        e["metadata"] = json!({"name": name, "namespace": ns});
        // One shared filter carries both endpoints: each needs hosts of its own.
        e["spec"]["hosts"] = json!([format!("titanic-{name}.example.com")]);
        e["spec"]["filterWiring"] = json!(wiring);
        e["spec"]["expose"] = json!(true);
        e["spec"]["shadow"] = json!({"model": "titanic-v2", "percent": 10});
        eps.push(serde_json::from_value::<ModelEndpoint>(e).unwrap());
    }
    let objects = render_all(&models, &eps, &settings(ns), &mut || {
        "operator-test-route-key".to_owned()
    })
    .unwrap();
    let kinds: std::collections::BTreeSet<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    for k in [
        "Deployment",
        "Service",
        "DestinationRule",
        "VirtualService",
        "Gateway",
        "EnvoyFilter",
        "WasmPlugin",
    ] {
        assert!(kinds.contains(k), "{k} not rendered");
    }
    let pp = PatchParams::apply("dry-run").dry_run();
    for o in &objects {
        let (api_version, kind) = (
            o["apiVersion"].as_str().unwrap(),
            o["kind"].as_str().unwrap(),
        );
        let plural = mlep_core::meta::Kind::of(api_version, kind).unwrap().plural;
        let target_ns = o["metadata"]["namespace"].as_str().unwrap();
        let api = dynamic(&client, target_ns, api_version, kind, plural);
        let name = o["metadata"]["name"].as_str().unwrap();
        if let Err(e) = api.patch(name, &pp, &Patch::Apply(o)).await {
            panic!("{kind} {target_ns}/{name} rejected: {e}");
        }
    }
}

#[tokio::test]
async fn the_operator_converges_after_an_api_server_restart_mid_reconcile() {
    let client = client().await;
    let ns = &ns("it-restart");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let patch = json!({"spec": {"variants": [
        {"name": "a", "model": "titanic-v1", "weight": 30, "replicas": 1},
        {"name": "b", "model": "titanic-v2", "weight": 70, "replicas": 1}]}});
    api.patch(&ep, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    // Restart the API server while the operator reacts to that change.
    let script = repo("scripts/envtest/setup.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("restart-apiserver")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("VirtualService at 30/70 after the restart", || async {
        let vs = vs_api(&client, ns).get(&ep).await.ok()?;
        (default_weights(&vs) == vec![("a".to_owned(), 30), ("b".to_owned(), 70)]).then_some(())
    })
    .await;
    eventually("status shows 30/70", || async {
        let s = api.get(&ep).await.ok()?.status?;
        (s.summary?.weights == "a=30,b=70"
            && s.observed_generation == api.get(&ep).await.ok()?.metadata.generation)
            .then_some(())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn only_one_replica_leads_and_an_expired_lease_is_taken_over() {
    let client = client().await;
    let ns = &ns("it-leader");
    namespace(&client, ns).await;
    let lease = Duration::from_secs(2);
    let a = LeaderElection::new(client.clone(), ns, "mlep-operator", "a".into(), lease);
    let b = LeaderElection::new(client.clone(), ns, "mlep-operator", "b".into(), lease);
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "the first candidate leads"
    );
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "a second candidate must not lead while the lease is held"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "the leader renews");
    // a stops renewing: once the lease expires, b takes over and a no longer leads.
    let took = eventually("b takes over the expired lease", || async {
        b.try_acquire_or_renew().await.ok().filter(|x| *x)
    })
    .await;
    assert!(took);
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "the old leader must not win back a held lease"
    );
}

/// GET `path` from 127.0.0.1:`port`; (status line, body).
async fn http_get(port: u16, path: &str) -> Option<(String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split])
        .lines()
        .next()?
        .to_owned();
    Some((head, buf[split + 4..].to_vec()))
}

#[tokio::test]
async fn the_binary_checks_its_crds_takes_the_lease_and_serves_health_metrics_and_the_module_apart()
{
    let client = client().await;
    let ns = &ns("it-binary");
    namespace(&client, ns).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let module_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let wasm = std::env::temp_dir().join(format!("mlep-test-{}.wasm", std::process::id()));
    std::fs::write(&wasm, b"\0asm\x01\0\0\0").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlep-operator"))
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", "test-replica")
        .env("MLEP_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("MLEP_MODULE_ADDR", format!("127.0.0.1:{module_port}"))
        .env("MLEP_WASM_PATH", &wasm)
        .env("MLEP_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let health = eventually("/healthz", || http_get(port, "/healthz")).await;
    assert!(health.0.contains("200"), "{health:?}");
    let expected = mlep_operator::server::WasmModule::new(b"\0asm\x01\0\0\0".to_vec()).sha256;
    let (_, sum) = http_get(port, "/mlep_filter.wasm.sha256").await.unwrap();
    assert_eq!(String::from_utf8(sum).unwrap().trim(), expected);
    let path = mlep_core::module::module_path(&expected);
    let (status, module) = http_get(module_port, &path).await.unwrap();
    assert!(status.contains("200"), "{status}");
    assert_eq!(module, b"\0asm\x01\0\0\0");
    // The module has its own port: the admin port does not serve it.
    let (status, _) = http_get(port, &path).await.unwrap();
    assert!(status.contains("404"), "{status}");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    let holder = eventually("the Lease held by the binary", || async {
        leases
            .get_opt("mlep-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    assert_eq!(holder, "test-replica");
    let (_, metrics) = eventually("reconcile metrics", || async {
        http_get(port, "/metrics").await.filter(|(_, b)| {
            String::from_utf8_lossy(b).contains("mlep_operator_reconcile_duration_seconds_count")
        })
    })
    .await;
    assert!(
        String::from_utf8_lossy(&metrics).contains("# TYPE mlep_operator_reconciles_total counter")
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let _ = std::fs::remove_file(wasm);
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_its_module_and_says_why() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mlep-operator"))
        .env("MLEP_WASM_PATH", "/nonexistent/mlep_filter.wasm")
        .env("MLEP_HTTP_ADDR", "127.0.0.1:0")
        .env("MLEP_MODULE_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MLEP_WASM_PATH") && err.contains("/nonexistent/mlep_filter.wasm"),
        "{err}"
    );
}

/// A stand-in Prometheus on 127.0.0.1 that counts connections and answers every request with
/// HTTP 500 and a body that must never reach a status.
async fn counting_prometheus() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "SECRET-INTERNAL-DETAIL";
                let head = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
            });
        }
    });
    (url, count)
}

/// The endpoint's status as JSON text (every message in it).
async fn status_text(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    serde_json::to_string(&api.get(name).await.unwrap().status).unwrap()
}

#[tokio::test]
async fn analysis_queries_only_an_allowed_prometheus_and_status_never_carries_its_answer() {
    use std::sync::atomic::Ordering;
    let client = client().await;
    let ns = &ns("it-prometheus");
    let (allowed, allowed_hits) = counting_prometheus().await;
    let (other, other_hits) = counting_prometheus().await;
    let mut s = settings(ns);
    s.prometheus.default_url = allowed.clone();
    let op = Operator::start_with(&client, ns, s);
    let ep = ready_example(&client, ns, &op, |ep| {
        // A step that keeps asking (a failing analysis waits, up to maxStepSeconds).
        ep["spec"]["rollout"] = json!({"strategy": "Canary", "stepSeconds": 1,
            "maxStepSeconds": 600, "analysis": {"minRequests": 1}});
    })
    .await;
    // A model swap starts a Canary step, whose analysis asks the operator's Prometheus.
    swap_b_to_v3(&client, ns, &ep).await;
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    set_ready(&client, ns, "titanic-b-titanic-v3", 1).await;
    let text = eventually("the analysis failure in status", || async {
        let t = status_text(&client, ns, &ep).await;
        t.contains("prometheus query failed: HTTP 500").then_some(t)
    })
    .await;
    assert!(allowed_hits.load(Ordering::SeqCst) > 0);
    assert!(!text.contains("SECRET-INTERNAL-DETAIL"), "{text}");

    // Naming a Prometheus the operator does not allow: InvalidSpec naming the field, and no
    // request to it, while the rollout would otherwise query every step.
    let named = json!({"spec": {"rollout": {"analysis": {"prometheusUrl": other}}}});
    api.patch(&ep, &PatchParams::default(), &Patch::Merge(&named))
        .await
        .unwrap();
    let (_, reason, _) = eventually("InvalidSpec naming prometheusUrl", || async {
        condition(&client, ns, &ep, "Ready")
            .await
            .filter(|c| c.2.starts_with("spec.rollout.analysis.prometheusUrl"))
    })
    .await;
    assert_eq!(reason, "InvalidSpec");
    // A rejected spec waits for a change: poke the endpoint to reconcile it a few more times.
    for poke in 0..3 {
        let after = op.metrics.reconciles();
        let note = json!({"metadata": {"annotations": {"test/poke": poke.to_string()}}});
        api.patch(&ep, &PatchParams::default(), &Patch::Merge(&note))
            .await
            .unwrap();
        op.reconciled(after + 1).await;
    }
    assert_eq!(
        other_hits.load(Ordering::SeqCst),
        0,
        "the operator contacted {other}"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_model_breaking_pod_security_is_not_deployed_and_both_conditions_name_the_field() {
    let client = client().await;
    let ns = &ns("it-podsecurity");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    let before = deployments(&client, ns, &ep).await;
    let models: Api<Model> = Api::namespaced(client.clone(), ns);
    let privileged = json!({"spec": {"securityContext": {"privileged": true}}});
    models
        .patch(
            "titanic-v2",
            &PatchParams::default(),
            &Patch::Merge(&privileged),
        )
        .await
        .unwrap();
    let field = "spec.securityContext.privileged";
    eventually("the Model's condition naming the field", || async {
        let m = models.get("titanic-v2").await.ok()?;
        let c = m
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.status == "False" && c.reason == "PodSecurity" && c.message.starts_with(field))
            .then_some(())
    })
    .await;
    let (_, reason, msg) = eventually("the endpoint's condition naming the Model", || async {
        condition(&client, ns, &ep, "Ready")
            .await
            .filter(|c| c.0 == "False" && c.2.contains(field))
    })
    .await;
    assert_eq!(reason, "PodSecurity");
    assert!(msg.starts_with("spec.variants[1].model"), "{msg}");
    assert!(
        msg.contains("last good configuration keeps serving"),
        "{msg}"
    );
    let after = deployments(&client, ns, &ep).await;
    let spec_of = |ds: &[Deployment]| -> Vec<Value> {
        ds.iter()
            .map(|d| serde_json::to_value(&d.spec).unwrap())
            .collect()
    };
    assert_eq!(spec_of(&after), spec_of(&before), "a Deployment changed");
    op.stop().await;
}

/// The Events (events.k8s.io) regarding the ModelEndpoint `ep` in `ns`: (type, reason, note).
async fn endpoint_events(client: &Client, ns: &str, ep: &str) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("ModelEndpoint") && r.name.as_deref() == Some(ep)
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

#[tokio::test]
async fn an_invalid_spec_is_one_warning_event_on_the_endpoint_with_its_reason_and_field() {
    let client = client().await;
    let ns = &ns("it-events");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    eventually("an Available event", || async {
        endpoint_events(&client, ns, &ep)
            .await
            .into_iter()
            .find(|e| e.0 == "Normal" && e.1 == "Available")
    })
    .await;
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let over = json!([{"name": "a", "model": "titanic-v1", "weight": 80}, {"name": "b", "model": "titanic-v2", "weight": 30}]);
    api.patch(
        &ep,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"variants": over}})),
    )
    .await
    .unwrap();
    let invalid = || async {
        endpoint_events(&client, ns, &ep)
            .await
            .into_iter()
            .filter(|e| e.1 == "InvalidSpec")
            .collect::<Vec<_>>()
    };
    let warned = eventually("an InvalidSpec event", || async {
        Some(invalid().await).filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(warned[0].0, "Warning");
    assert!(
        warned[0].2.starts_with("spec.variants: ") && warned[0].2.contains("110"),
        "{warned:?}"
    );
    // Reconciles of the same spec tell nothing new: no event per reconcile.
    let before = op.metrics.reconciles();
    api.patch(
        &ep,
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"touched": "1"}}})),
    )
    .await
    .unwrap();
    op.reconciled(before + 1).await;
    assert_eq!(invalid().await.len(), 1, "{:?}", invalid().await);
    op.stop().await;
}

/// A pod of `deployment`'s template in `ns` (no kubelet runs here: the test writes its status).
async fn model_pod(client: &Client, ns: &str, deployment: &str, name: &str) -> Api<Pod> {
    let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    if sa.get_opt("default").await.unwrap().is_none() {
        let default = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        sa.create(&PostParams::default(), &default).await.unwrap();
    }
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(deployment)
        .await
        .unwrap();
    let labels = d.spec.unwrap().template.metadata.unwrap().labels;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "model", "image": "model-server"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods
}

#[tokio::test]
async fn a_crash_looping_model_is_named_in_the_endpoint_conditions_and_a_warning_event() {
    let client = client().await;
    let ns = &ns("it-crash");
    let op = Operator::start(&client, ns);
    let ep = ready_example(&client, ns, &op, |_| {}).await;
    let pods = model_pod(&client, ns, "titanic-b-titanic-v2", "titanic-b-crash").await;
    let crashing = json!({"status": {"containerStatuses": [{
        "name": "model", "ready": false, "restartCount": 4, "image": "model-server", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                                     "message": "error: unknown flag --bogus\n"}},
    }]}});
    pods.patch_status(
        "titanic-b-crash",
        &PatchParams::default(),
        &Patch::Merge(&crashing),
    )
    .await
    .unwrap();
    set_ready(&client, ns, "titanic-b-titanic-v2", 0).await;
    let (_, _, message) = eventually("Ready names the crash loop", || async {
        condition(&client, ns, &ep, "Ready")
            .await
            .filter(|c| c.0 == "False" && c.1 == "ModelCrashLooping")
    })
    .await;
    assert!(
        message.starts_with("variant b, model titanic-v2: pod titanic-b-crash: container model exited 2 (Error): error: unknown flag --bogus"),
        "{message}"
    );
    let degraded = condition(&client, ns, &ep, "Degraded").await.unwrap();
    assert_eq!(
        (degraded.0.as_str(), degraded.1.as_str()),
        ("True", "ModelCrashLooping")
    );
    let event = eventually("a ModelCrashLooping event", || async {
        endpoint_events(&client, ns, &ep)
            .await
            .into_iter()
            .find(|e| e.1 == "ModelCrashLooping")
    })
    .await;
    assert_eq!(
        (event.0.as_str(), event.2.as_str()),
        ("Warning", message.as_str())
    );
    op.stop().await;
}
