//! Host ownership against a real kube-apiserver (`scripts/test-operator.sh` provisions it; see
//! `cluster.rs` for what this server has and lacks): the operator runs in-process watching
//! every namespace, since what is tested is one namespace's endpoint against another's.
//! Hosts and namespaces carry the process id, so endpoints other runs left behind claim none
//! of them.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use mlep_core::aggregate::GATEWAY_FILTER;
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::render::{gateway_virtual_service, RenderSettings};
use mlep_operator::scope::Scope;
use serde_json::{json, Value};

mod support;

use support::{
    client, eventually, operator_settings, start_operator_with, stop_operator, yaml_docs,
    RunningOperator,
};

const ENDPOINT: &str = "titanic";

/// One operator watching every namespace at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ns(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

/// The operator on every namespace, its shared filters in `gw`; stopped by sending.
fn start_operator(client: &Client, gw: &str) -> RunningOperator {
    start_operator_allowing(client, gw, &[])
}

/// [`start_operator`] with the operator's external host patterns (`MLEP_ALLOWED_HOSTS`).
fn start_operator_allowing(client: &Client, gw: &str, allowed_hosts: &[&str]) -> RunningOperator {
    let settings = RenderSettings {
        allowed_hosts: allowed_hosts.iter().map(|h| (*h).to_owned()).collect(),
        ..operator_settings(gw)
    };
    start_operator_with(client, settings, Scope::All)
}

async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    if api.get_opt(name).await.unwrap().is_none() {
        api.create(&PostParams::default(), &ns).await.unwrap();
    }
}

/// The example's Models and endpoint (`manifests/example/`) in `ns`, the endpoint with `hosts`.
async fn apply_example(client: &Client, ns: &str, hosts: &[&str]) {
    namespace(client, ns).await;
    let pp = PatchParams::apply("test").force();
    for mut m in yaml_docs("manifests/example/models.yaml") {
        m["metadata"]["namespace"] = json!(ns);
        let name = m["metadata"]["name"].as_str().unwrap().to_owned();
        Api::<Model>::namespaced(client.clone(), ns)
            .patch(&name, &pp, &Patch::Apply(&m))
            .await
            .unwrap();
    }
    let mut ep = yaml_docs("manifests/example/endpoint.yaml").remove(0);
    assert_eq!(ep["metadata"]["name"], ENDPOINT);
    ep["metadata"]["namespace"] = json!(ns);
    ep["spec"]["hosts"] = json!(hosts);
    // External hosts are bound on a gateway only (the mesh knows the Service's names).
    ep["spec"]["expose"] = json!(true);
    Api::<ModelEndpoint>::namespaced(client.clone(), ns)
        .patch(ENDPOINT, &pp, &Patch::Apply(&ep))
        .await
        .unwrap();
}

/// Make the example's two Deployments ready once they exist.
async fn make_ready(client: &Client, ns: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for d in ["titanic-a-titanic-v1", "titanic-b-titanic-v2"] {
        eventually(&format!("Deployment {ns}/{d}"), || async {
            api.get_opt(d).await.ok().flatten().map(|_| ())
        })
        .await;
        let status = json!({ "status": { "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1 } });
        api.patch_status(d, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
}

/// `(status, reason, message)` of the endpoint's Ready condition.
async fn ready(client: &Client, ns: &str) -> Option<(String, String, String)> {
    let ep = Api::<ModelEndpoint>::namespaced(client.clone(), ns)
        .get(ENDPOINT)
        .await
        .ok()?;
    let c = ep
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

fn istio_api(
    client: &Client,
    ns: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", version, kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// The hosts of the endpoint's VirtualServices (the mesh's and its gateway's); `None` while it
/// has none.
async fn vs_hosts(client: &Client, ns: &str) -> Option<Vec<String>> {
    let api = istio_api(client, ns, "v1", "VirtualService", "virtualservices");
    let mut hosts: Vec<String> = Vec::new();
    for name in [ENDPOINT.to_owned(), gateway_virtual_service(ENDPOINT)] {
        if let Some(vs) = api.get_opt(&name).await.ok()? {
            hosts.extend(
                serde_json::from_value::<Vec<String>>(vs.data["spec"]["hosts"].clone()).ok()?,
            );
        }
    }
    (!hosts.is_empty()).then_some(hosts)
}

/// `namespace/name` of the endpoints in the shared gateway filter whose hosts hold `host`
/// (the sidecars' knows an endpoint by its own Service only).
async fn filter_holders(client: &Client, gw: &str, host: &str) -> Option<Vec<String>> {
    let ef = istio_api(client, gw, "v1alpha3", "EnvoyFilter", "envoyfilters")
        .get_opt(GATEWAY_FILTER)
        .await
        .ok()??;
    let text = ef.data["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()?;
    let cfg: Value = serde_json::from_str(text).ok()?;
    Some(
        cfg["endpoints"]
            .as_array()?
            .iter()
            .filter(|e| e.to_string().contains(host))
            .map(|e| {
                format!(
                    "{}/{}",
                    e["namespace"].as_str().unwrap_or(""),
                    e["name"].as_str().unwrap_or("")
                )
            })
            .collect(),
    )
}

async fn delete_endpoint(client: &Client, ns: &str) {
    let api: Api<ModelEndpoint> = Api::namespaced(client.clone(), ns);
    let _ = api.delete(ENDPOINT, &DeleteParams::default()).await;
    eventually(
        &format!("{ns}/{ENDPOINT} gone (finalizer done)"),
        || async {
            api.get_opt(ENDPOINT)
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_contested_host_stays_with_the_endpoint_created_first_and_passes_on_when_it_goes() {
    let _one = SERIAL.lock().await;
    let client = client().await;
    // Created first, but sorting after the second by namespace: creation decides.
    let (first, second, gw) = (ns("hosts-z"), ns("hosts-a"), ns("hosts-gw"));
    let host = format!("shared-{}.example.com", std::process::id());
    namespace(&client, &gw).await;
    let op = start_operator(&client, &gw);

    apply_example(&client, &first, &[&host]).await;
    make_ready(&client, &first).await;
    eventually("the first Ready", || async {
        ready(&client, &first).await.filter(|c| c.0 == "True")
    })
    .await;
    // The second is created in a later second than the first (creationTimestamp's precision).
    let created = Api::<ModelEndpoint>::namespaced(client.clone(), &first)
        .get(ENDPOINT)
        .await
        .unwrap()
        .metadata
        .creation_timestamp
        .unwrap()
        .0
        .as_second();
    eventually("a later second", || async {
        (jiff::Timestamp::now().as_second() > created).then_some(())
    })
    .await;
    apply_example(&client, &second, &[&host]).await;

    let (_, _, message) = eventually("the second in HostConflict", || async {
        ready(&client, &second)
            .await
            .filter(|c| c.0 == "False" && c.1 == "HostConflict")
    })
    .await;
    assert!(
        message.contains("spec.hosts[0]")
            && message.contains(&host)
            && message.contains(&format!("{first}/{ENDPOINT}")),
        "{message}"
    );
    assert_eq!(
        vs_hosts(&client, &second).await,
        None,
        "the second is not wired"
    );
    assert!(vs_hosts(&client, &first).await.unwrap().contains(&host));
    let holders = eventually("the first in the shared filter", || async {
        filter_holders(&client, &gw, &host)
            .await
            .filter(|h| !h.is_empty())
    })
    .await;
    assert_eq!(holders, [format!("{first}/{ENDPOINT}")]);

    // Deleting the first hands the host over: the second is wired, filtered and Ready.
    delete_endpoint(&client, &first).await;
    eventually("the second's VirtualService carries the host", || async {
        vs_hosts(&client, &second)
            .await
            .filter(|h| h.contains(&host))
    })
    .await;
    make_ready(&client, &second).await;
    eventually("the second Ready", || async {
        ready(&client, &second).await.filter(|c| c.0 == "True")
    })
    .await;
    eventually("the second alone in the shared filter", || async {
        filter_holders(&client, &gw, &host)
            .await
            .filter(|h| *h == [format!("{second}/{ENDPOINT}")])
    })
    .await;

    delete_endpoint(&client, &second).await;
    stop_operator(op).await;
}

#[tokio::test]
async fn an_endpoint_listing_another_namespaces_service_is_invalid_and_not_wired() {
    let _one = SERIAL.lock().await;
    let client = client().await;
    let (victim, tenant, gw) = (ns("hosts-victim"), ns("hosts-tenant"), ns("hosts-gw2"));
    namespace(&client, &gw).await;
    let op = start_operator(&client, &gw);
    apply_example(
        &client,
        &victim,
        &[&format!("victim-{}.example.com", std::process::id())],
    )
    .await;
    let stolen = format!("{ENDPOINT}.{victim}.svc.cluster.local");
    let own = format!("tenant-{}.example.com", std::process::id());
    apply_example(&client, &tenant, &[&own, &stolen]).await;

    let (_, _, message) = eventually("InvalidSpec naming the host", || async {
        ready(&client, &tenant)
            .await
            .filter(|c| c.0 == "False" && c.1 == "InvalidSpec")
    })
    .await;
    assert!(
        message.contains("spec.hosts[1]") && message.contains(&stolen),
        "{message}"
    );
    assert!(message.contains(&victim), "names the namespace: {message}");
    // The victim is wired with its own Service name; the tenant is not wired at all.
    eventually("the victim's VirtualService", || async {
        vs_hosts(&client, &victim)
            .await
            .filter(|h| h.contains(&stolen))
    })
    .await;
    assert_eq!(vs_hosts(&client, &tenant).await, None);

    delete_endpoint(&client, &tenant).await;
    delete_endpoint(&client, &victim).await;
    stop_operator(op).await;
}

/// A tenant whose endpoint was accepted then claims another namespace's Service: the spec is
/// rejected, and a neighbour's reconcile, which rebuilds the shared filter, must not carry
/// the rejected hosts to the proxies. The accepted ones keep serving.
#[tokio::test]
async fn a_host_claimed_by_a_rejected_edit_never_reaches_the_shared_filter() {
    let _one = SERIAL.lock().await;
    let client = client().await;
    let (victim, tenant, third, gw) = (
        ns("edit-victim"),
        ns("edit-tenant"),
        ns("edit-third"),
        ns("hosts-gw3"),
    );
    namespace(&client, &gw).await;
    let op = start_operator(&client, &gw);
    let pid = std::process::id();
    apply_example(&client, &victim, &[&format!("victim-{pid}.example.com")]).await;
    let own = format!("tenant-{pid}.example.com");
    apply_example(&client, &tenant, &[&own]).await;
    let tenant_id = format!("{tenant}/{ENDPOINT}");
    eventually(
        "the tenant's accepted host in the shared filter",
        || async {
            filter_holders(&client, &gw, &own)
                .await
                .filter(|h| h == std::slice::from_ref(&tenant_id))
        },
    )
    .await;

    let stolen = format!("{ENDPOINT}.{victim}.svc.cluster.local");
    apply_example(&client, &tenant, &[&own, &stolen]).await;
    eventually("InvalidSpec naming the host", || async {
        ready(&client, &tenant)
            .await
            .filter(|c| c.0 == "False" && c.1 == "InvalidSpec" && c.2.contains(&stolen))
    })
    .await;
    // A third endpoint's reconcile rebuilds the shared filter after the rejection.
    let third_host = format!("third-{pid}.example.com");
    apply_example(&client, &third, &[&third_host]).await;
    let third_id = format!("{third}/{ENDPOINT}");
    eventually("the third endpoint in the shared filter", || async {
        filter_holders(&client, &gw, &third_host)
            .await
            .filter(|h| h == std::slice::from_ref(&third_id))
    })
    .await;
    let holders = filter_holders(&client, &gw, &stolen).await.unwrap();
    assert_eq!(
        holders,
        [format!("{victim}/{ENDPOINT}")],
        "only the Service's own endpoint"
    );
    assert_eq!(
        filter_holders(&client, &gw, &own).await.unwrap(),
        [tenant_id],
        "the tenant's accepted spec keeps serving"
    );

    for n in [&third, &tenant, &victim] {
        delete_endpoint(&client, n).await;
    }
    stop_operator(op).await;
}

/// The operator's host patterns give each namespace its own names: a host outside them is an
/// invalid spec naming it, and nothing is wired; one inside them is wired on the gateway.
#[tokio::test]
async fn an_external_host_outside_the_operators_patterns_is_refused_naming_them() {
    let _one = SERIAL.lock().await;
    let client = client().await;
    let (team, gw) = (ns("policy-team"), ns("hosts-gw4"));
    namespace(&client, &gw).await;
    let op = start_operator_allowing(&client, &gw, &["*.{namespace}.models.example.com"]);
    apply_example(&client, &team, &["api.bank.example"]).await;
    let (_, _, message) = eventually("InvalidSpec naming the host and the patterns", || async {
        ready(&client, &team)
            .await
            .filter(|c| c.0 == "False" && c.1 == "InvalidSpec")
    })
    .await;
    assert!(
        message.contains("spec.hosts[0]")
            && message.contains("api.bank.example")
            && message.contains("MLEP_ALLOWED_HOSTS"),
        "{message}"
    );
    assert_eq!(vs_hosts(&client, &team).await, None, "nothing is wired");

    let own = format!("titanic.{team}.models.example.com");
    apply_example(&client, &team, &[&own]).await;
    eventually("the namespace's own name on the gateway", || async {
        vs_hosts(&client, &team).await.filter(|h| h.contains(&own))
    })
    .await;

    delete_endpoint(&client, &team).await;
    stop_operator(op).await;
}

/// An operator upgraded from one that bound every host to `mesh` in one VirtualService: an
/// endpoint whose spec is rejected renders nothing, yet its external hosts leave the mesh
/// (split into `E.gateway`), with its routes as they were.
#[tokio::test]
async fn a_rejected_endpoint_still_takes_its_external_hosts_out_of_the_mesh() {
    let _one = SERIAL.lock().await;
    let client = client().await;
    let (team, gw) = (ns("legacy-team"), ns("hosts-gw5"));
    namespace(&client, &gw).await;
    let op = start_operator(&client, &gw);
    let ext = format!("legacy-{}.example.com", std::process::id());
    apply_example(&client, &team, &[&ext]).await;
    eventually("wired on the gateway", || async {
        vs_hosts(&client, &team).await.filter(|h| h.contains(&ext))
    })
    .await;
    apply_example(&client, &team, &[&ext, "1.2.3.4"]).await;
    eventually("InvalidSpec", || async {
        ready(&client, &team)
            .await
            .filter(|c| c.0 == "False" && c.1 == "InvalidSpec")
    })
    .await;
    // The upgrade: the operator stops, and what the previous one left is one VirtualService
    // binding everything to `mesh` too; the new one starts and looks at every endpoint.
    stop_operator(op).await;
    let api = istio_api(&client, &team, "v1", "VirtualService", "virtualservices");
    let fqdn = format!("{ENDPOINT}.{team}.svc.cluster.local");
    let legacy = json!({"spec": {
        "hosts": [ext, fqdn],
        "gateways": ["mesh", format!("{team}/{ENDPOINT}")],
    }});
    api.patch(ENDPOINT, &PatchParams::default(), &Patch::Merge(&legacy))
        .await
        .unwrap();
    let _ = api
        .delete(&gateway_virtual_service(ENDPOINT), &DeleteParams::default())
        .await;
    let op = start_operator(&client, &gw);
    let mesh = eventually(
        "the mesh's VirtualService binds only the Service",
        || async {
            let vs = api.get_opt(ENDPOINT).await.ok()??;
            (vs.data["spec"]["gateways"] == json!(["mesh"])).then_some(vs)
        },
    )
    .await;
    assert_eq!(mesh.data["spec"]["hosts"], json!([fqdn]));
    let edge = api
        .get_opt(&gateway_virtual_service(ENDPOINT))
        .await
        .unwrap()
        .expect("the gateway's VirtualService, recreated from the legacy one");
    assert_eq!(
        edge.data["spec"]["gateways"],
        json!([format!("{team}/{ENDPOINT}")])
    );
    assert!(edge.data["spec"]["hosts"].to_string().contains(&ext));
    assert_eq!(edge.data["spec"]["http"], mesh.data["spec"]["http"]);

    delete_endpoint(&client, &team).await;
    stop_operator(op).await;
}
