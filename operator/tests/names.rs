//! Name ownership against a real kube-apiserver (`scripts/test-operator.sh` provisions it, with
//! kube-controller-manager's garbage collector; see `cluster.rs` for what this server has and
//! lacks). Object names join endpoint, variant and model with `-`, so two endpoints of one
//! namespace can render one name: endpoint `a` (variant `b-c`, model `d`) and endpoint `a-b`
//! (variant `c`, model `d`) both render Deployment `a-b-c-d`. The operator applies with force
//! server-side apply; it must not take the first one's Deployment for the second.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::render::{deployment_name, LABEL_ENDPOINT};
use mlep_operator::scope::Scope;
use serde_json::json;

mod support;

use support::{
    client, eventually, operator_settings, start_operator_with, stop_operator, yaml_docs,
    RunningOperator,
};

/// The operator on namespace `ns` (its shared filters there too); stopped by sending.
fn start_operator(client: &Client, ns: &str) -> RunningOperator {
    start_operator_with(client, operator_settings(ns), Scope::namespace(ns))
}

/// Namespace `ns` with Model `d` (the example's first model under another name).
async fn namespace_with_model(client: &Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(ns).await.unwrap().is_none() {
        let n = serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
        api.create(&PostParams::default(), &n).await.unwrap();
    }
    let mut m = yaml_docs("manifests/example/models.yaml").remove(0);
    m["metadata"] = json!({ "name": "d", "namespace": ns });
    Api::<Model>::namespaced(client.clone(), ns)
        .patch("d", &PatchParams::apply("test").force(), &Patch::Apply(&m))
        .await
        .unwrap();
}

/// Endpoint `name` in `ns`: one variant of Model `d`, its own external host.
async fn endpoint(client: &Client, ns: &str, name: &str, variant: &str) -> ModelEndpoint {
    let ep = json!({
        "apiVersion": "mlep.dev/v1alpha1",
        "kind": "ModelEndpoint",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "hosts": [format!("{name}-{}.example.com", std::process::id())],
            "variants": [{ "name": variant, "model": "d", "weight": 100, "replicas": 1 }],
        },
    });
    Api::<ModelEndpoint>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&ep),
        )
        .await
        .unwrap()
}

/// `(status, reason, message)` of endpoint `name`'s Ready condition.
async fn ready(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let ep = Api::<ModelEndpoint>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?;
    let c = ep
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

/// `(endpoint label, ownerReference uids)` of Deployment `name`, once it exists.
async fn owner_of(api: &Api<Deployment>, name: &str) -> Option<(String, Vec<String>)> {
    let d = api.get_opt(name).await.ok()??;
    let label = d.labels().get(LABEL_ENDPOINT).cloned().unwrap_or_default();
    let uids = d.owner_references().iter().map(|r| r.uid.clone()).collect();
    Some((label, uids))
}

#[tokio::test]
async fn a_second_endpoint_rendering_the_first_ones_deployment_name_is_refused_and_takes_nothing() {
    let client = client().await;
    let ns = format!("names-{}", std::process::id());
    namespace_with_model(&client, &ns).await;
    let op = start_operator(&client, &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let name = deployment_name("a", "b-c", "d");
    assert_eq!(name, deployment_name("a-b", "c", "d"));

    let first = endpoint(&client, &ns, "a", "b-c").await;
    let first_uid = first.uid().unwrap();
    let owned_by_a = (String::from("a"), vec![first_uid.clone()]);
    eventually("the first's Deployment", || async {
        owner_of(&deployments, &name)
            .await
            .filter(|o| *o == owned_by_a)
    })
    .await;

    endpoint(&client, &ns, "a-b", "c").await;
    let (_, _, message) = eventually("the second in NameConflict", || async {
        ready(&client, &ns, "a-b")
            .await
            .filter(|c| c.0 == "False" && c.1 == "NameConflict")
    })
    .await;
    assert!(
        message.contains(&format!("Deployment {name:?}"))
            && message.contains(&format!("ModelEndpoint \"a\" (uid {first_uid})")),
        "{message}"
    );
    // The first keeps its Deployment; nothing of the second's is applied.
    assert_eq!(owner_of(&deployments, &name).await, Some(owned_by_a));
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    assert!(services.get_opt("a-b").await.unwrap().is_none());
    assert!(services.get_opt("a").await.unwrap().is_some());

    // The first goes (its Deployment with it): the name is free, the second is wired.
    let endpoints: Api<ModelEndpoint> = Api::namespaced(client.clone(), &ns);
    endpoints
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let second_uid = endpoints.get("a-b").await.unwrap().uid().unwrap();
    let owned_by_a_b = (String::from("a-b"), vec![second_uid]);
    eventually("the second's Deployment", || async {
        owner_of(&deployments, &name)
            .await
            .filter(|o| *o == owned_by_a_b)
    })
    .await;
    endpoints
        .delete("a-b", &DeleteParams::default())
        .await
        .unwrap();
    stop_operator(op).await;
}
