//! The request-rate autoscaler against a real kube-apiserver (`scripts/test-operator.sh`
//! provisions it; see `cluster.rs` for what this server has and lacks), with a stand-in
//! Prometheus on 127.0.0.1 answering what the test says, as the analysis test in `cluster.rs`
//! does: the operator sets the Deployment's replicas from the measured rate, reports the
//! measurement in status, keeps the count when Prometheus fails (a Warning Event), and scales
//! down once the window allows. The decisions themselves are unit-tested in
//! `mlep_core::autoscale`; real traffic through real proxies is the cluster bed's test.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use mlep_core::crd::{Model, ModelEndpoint, VariantAutoscalingStatus};
use mlep_core::render::RenderSettings;
use mlep_operator::metrics::Metrics;
use mlep_operator::reconcile;
use mlep_operator::scope::Scope;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

mod support;

use support::{client, eventually, yaml_docs};

const B: &str = "titanic-b-titanic-v2";

/// What the stand-in Prometheus answers every query with: a rate, or HTTP 500.
#[derive(Clone, Copy)]
enum Answer {
    Rate(f64),
    Fails,
}

/// A stand-in Prometheus: answers `/api/v1/query` as `answer` says, counts the queries.
async fn prometheus(answer: Arc<Mutex<Answer>>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = *answer.lock().unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                if request.starts_with("GET /api/v1/query?") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                let (status, body) = match answer {
                    Answer::Rate(r) => (
                        "200 OK",
                        json!({"status": "success", "data": {"resultType": "vector",
                            "result": [{"metric": {}, "value": [1, r.to_string()]}]}})
                        .to_string(),
                    ),
                    Answer::Fails => ("500 Internal Server Error", "SECRET-INTERNAL-DETAIL".into()),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, count)
}

fn operator(
    client: &Client,
    ns: &str,
    prometheus: &str,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut settings = RenderSettings {
        wasm_url: "http://127.0.0.1:9/mlep_filter.wasm".into(),
        wasm_sha256: "ab".repeat(32),
        gateway_namespace: format!("{ns}-gw"),
        mesh_root_namespace: format!("{ns}-gw"),
        ..Default::default()
    };
    settings.prometheus.default_url = prometheus.to_owned();
    let (tx, rx) = oneshot::channel::<()>();
    let (c, scope) = (client.clone(), ns.to_owned());
    let task = tokio::spawn(async move {
        reconcile::run(
            c,
            settings,
            Arc::new(Metrics::default()),
            &Scope::namespace(&scope),
            async move {
                let _ = rx.await;
            },
        )
        .await
    });
    (tx, task)
}

/// The example (`manifests/example/`) in `ns` (and its gateway namespace), variant b scaling
/// on 10 requests per second per replica, at most 6.
async fn apply_example(client: &Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in [ns.to_owned(), format!("{ns}-gw")] {
        if namespaces.get_opt(&n).await.unwrap().is_none() {
            let o: Namespace = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
            namespaces.create(&PostParams::default(), &o).await.unwrap();
        }
    }
    let pp = PatchParams::apply("test").force();
    for mut m in yaml_docs("manifests/example/models.yaml") {
        m["metadata"]["namespace"] = json!(ns);
        let name = m["metadata"]["name"].as_str().unwrap().to_owned();
        let api: Api<Model> = Api::namespaced(client.clone(), ns);
        api.patch(&name, &pp, &Patch::Apply(&m)).await.unwrap();
    }
    let mut ep: Value = yaml_docs("manifests/example/endpoint.yaml").remove(0);
    ep["metadata"]["namespace"] = json!(ns);
    ep["spec"]["variants"][1]["autoscaling"] =
        json!({"minReplicas": 1, "maxReplicas": 6, "targetRequestsPerSecond": 10});
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    api.patch("titanic", &pp, &Patch::Apply(&ep)).await.unwrap();
}

async fn replicas(client: &Client, ns: &str) -> Option<i32> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.get_opt(B).await.ok()??.spec?.replicas
}

async fn b_status(client: &Client, ns: &str) -> Option<VariantAutoscalingStatus> {
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let ep = api.get("titanic").await.ok()?;
    ep.status?
        .variants
        .into_iter()
        .find(|v| v.name == "b")?
        .autoscaling
}

/// Reasons and notes of the Events on the endpoint.
async fn events(client: &Client, ns: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ModelEndpoint"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn the_operator_scales_a_variant_on_its_measured_request_rate_and_keeps_it_without_data() {
    let client = client().await;
    let ns = &format!("it-autoscale-{}", std::process::id());
    let answer = Arc::new(Mutex::new(Answer::Rate(42.0)));
    let (url, queries) = prometheus(answer.clone()).await;
    let (stop, task) = operator(&client, ns, &url);
    apply_example(&client, ns).await;

    // 42 rps over 10 per replica: 5 replicas at once, and no HPA (the operator scales b).
    eventually("b at 5 replicas", || async {
        (replicas(&client, ns).await == Some(5)).then_some(())
    })
    .await;
    assert!(queries.load(Ordering::SeqCst) > 0);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    assert!(hpas
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let s = eventually("b's measurement in status", || async {
        b_status(&client, ns).await.filter(|s| s.current.is_some())
    })
    .await;
    assert_eq!(
        (s.min_replicas, s.max_replicas, s.target.as_str()),
        (1, 6, "10 rps/replica")
    );
    assert!(
        s.current.as_deref().unwrap().ends_with(" rps/replica"),
        "{s:?}"
    );
    eventually("a Rescaled event", || async {
        events(&client, ns)
            .await
            .into_iter()
            .find(|(r, n)| r == "Rescaled" && n.contains("variant b, model titanic-v2"))
    })
    .await;

    // Prometheus fails: the count stays, a Warning says why (never the remote's answer).
    *answer.lock().unwrap() = Answer::Fails;
    let (_, note) = eventually("an AutoscaleMetricsUnavailable event", || async {
        events(&client, ns)
            .await
            .into_iter()
            .find(|(r, _)| r == "AutoscaleMetricsUnavailable")
    })
    .await;
    assert!(
        note.contains("HTTP 500") && note.contains("keeping 5 replicas"),
        "{note}"
    );
    assert!(!note.contains("SECRET"), "{note}");
    assert_eq!(replicas(&client, ns).await, Some(5));
    let s = b_status(&client, ns).await.unwrap();
    assert_eq!(s.current, None, "no measurement, none shown");

    // Quiet again, scale-down stabilization off: down to 1 at the next measurement (a changed
    // spec is measured at once).
    *answer.lock().unwrap() = Answer::Rate(5.0);
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let window = json!({"spec": {"variants": [
        {"name": "a", "model": "titanic-v1", "weight": 80, "replicas": 1},
        {"name": "b", "model": "titanic-v2", "weight": 20, "autoscaling":
            {"minReplicas": 1, "maxReplicas": 6, "targetRequestsPerSecond": 10,
             "scaleDownStabilizationSeconds": 0}}]}});
    api.patch("titanic", &PatchParams::default(), &Patch::Merge(&window))
        .await
        .unwrap();
    eventually("b down to 1 replica", || async {
        (replicas(&client, ns).await == Some(1)).then_some(())
    })
    .await;

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
}
