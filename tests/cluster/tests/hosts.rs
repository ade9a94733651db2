//! Hosts belong to their endpoint (issue 17, item 4), on the bed with two namespaces each:
//! - an endpoint listing another namespace's in-mesh FQDN gets `InvalidSpec` naming the host, is
//!   not wired, and that namespace's in-mesh callers are still answered by their own endpoint;
//!   its external host is the gateway's only: a sidecar caller naming it is not assigned;
//! - two endpoints claiming one external host: the first created serves it through the
//!   gateway, the second has `HostConflict`; deleting the first hands the host to the second.
//!
//! The second endpoint of each pair has one variant named [`OTHER`], which the first does not
//! have: an answer carrying it came from the second's routes.
//!
//! ```text
//! cargo test -p mlep-cluster-e2e --test hosts -- --test-threads=1 --nocapture
//! ```

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::api::{DeleteParams, PostParams};
use mlep_cluster_e2e::*;
use mlep_core::crd::{ModelEndpoint, ModelEndpointSpec, VariantSpec};
use std::time::Duration;

/// The second endpoint's only variant.
const OTHER: &str = "other";

/// Artifacts and models in `ns`, and an endpoint `name` there with `hosts` and one variant
/// [`OTHER`] on titanic-v1, exposed on the gateway. Returns without waiting.
async fn second_endpoint(bed: &Bed, ns: &TempNs, name: &str, hosts: Vec<String>) -> Titanic {
    let t = Titanic::artifacts_only(bed, ns).await;
    for m in t.example_models() {
        bed.api::<mlep_core::crd::Model>(&t.ns)
            .create(&PostParams::default(), &m)
            .await
            .unwrap();
    }
    let mut spec = ModelEndpointSpec::new(hosts, vec![VariantSpec::new(OTHER, "titanic-v1", 100)]);
    spec.expose = Some(true);
    let e = ModelEndpoint {
        metadata: meta(name),
        spec,
        status: None,
    };
    t.endpoints()
        .create(&PostParams::default(), &e)
        .await
        .unwrap();
    t
}

/// `(status, reason, message)` of endpoint `name`'s Ready condition in `t`'s namespace.
async fn ready_of(t: &Titanic, name: &str) -> Option<(String, String, String)> {
    let e = t.endpoints().get(name).await.ok()?;
    let c = condition(&e, "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_another_namespaces_service_is_refused_and_its_callers_keep_their_model() {
    let Stage { bed, ns: _a, t, s } = Stage::set("hosts-owner").await;
    let b = TempNs::create(&bed, "hosts-thief").await;
    let fqdn = format!("{ENDPOINT}.{}.svc.cluster.local", t.ns);
    let own = format!("{}.mlep.test", b.name);
    let thief = second_endpoint(&bed, &b, "thief", vec![own, fqdn.clone()]).await;

    let (_, _, message) = eventually(
        Duration::from_secs(120),
        "the thief's InvalidSpec",
        || async {
            ready_of(&thief, "thief")
                .await
                .filter(|c| c.0 == "False" && c.1 == "InvalidSpec")
        },
    )
    .await;
    assert!(
        message.contains("spec.hosts[1]") && message.contains(&fqdn),
        "{message}"
    );
    ok(format!("another namespace's FQDN is refused: {message}"));
    let vs = bed
        .istio(&thief.ns, "VirtualService")
        .get_opt("thief")
        .await
        .unwrap();
    assert!(vs.is_none(), "the refused endpoint is wired: {vs:?}");

    // The owner's in-mesh callers: answered by the owner's variants, never the thief's.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for k in keys("owner", 40) {
        let o = s.invoke(&[("x-user-id", &k)]).await;
        assert_eq!(o.status(), Some(200), "{o:?}");
        *seen
            .entry(o.variant().unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    assert!(
        seen.keys().all(|v| v == "a" || v == "b") && !seen.is_empty(),
        "{seen:?}"
    );
    ok(format!(
        "the owner's sidecar callers stay on the owner's variants: {seen:?}"
    ));
    // The owner's external host is the gateway's: in the mesh it names nothing of the
    // endpoint's, so a sidecar caller sending it is neither assigned nor routed by it.
    let o = s
        .invoke(&[("host", t.host.as_str()), ("x-user-id", "by-external-name")])
        .await;
    assert!(o.variant().is_none(), "{o:?}");
    ok(format!(
        "through a sidecar, the external host {} is not the endpoint's: {:?}",
        t.host,
        o.status()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contested_external_host_stays_with_the_first_endpoint_and_passes_on_when_it_goes() {
    let bed = Bed::connect().await;
    let first_ns = TempNs::create(&bed, "hosts-first").await;
    // Ready before the second exists: created in an earlier second.
    let first = Titanic::deploy(&bed, &first_ns).await;
    let second_ns = TempNs::create(&bed, "hosts-second").await;
    let second = second_endpoint(&bed, &second_ns, ENDPOINT, vec![first.host.clone()]).await;

    let (_, _, message) = eventually(
        Duration::from_secs(120),
        "the second's HostConflict",
        || async {
            ready_of(&second, ENDPOINT)
                .await
                .filter(|c| c.0 == "False" && c.1 == "HostConflict")
        },
    )
    .await;
    assert!(
        message.contains(&first.host) && message.contains(&format!("{}/{ENDPOINT}", first.ns)),
        "{message}"
    );
    ok(format!("the second claimant has HostConflict: {message}"));
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for k in keys("contested", 40) {
        let o = first.gateway.invoke(&[("x-user-id", &k)]).await;
        assert_eq!(o.status(), Some(200), "{o:?}");
        *seen
            .entry(o.variant().unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    assert!(
        !seen.contains_key(OTHER) && !seen.contains_key("none"),
        "{seen:?}"
    );
    ok(format!(
        "the gateway serves the host with the first endpoint: {seen:?}"
    ));

    first
        .endpoints()
        .delete(ENDPOINT, &DeleteParams::default())
        .await
        .unwrap();
    second.wait_ready(Duration::from_secs(300)).await;
    eventually(
        Duration::from_secs(180),
        "the gateway answers with the second",
        || async {
            let o = first.gateway.invoke(&[("x-user-id", "handed-over")]).await;
            (o.status() == Some(200) && o.variant() == Some(OTHER)).then_some(())
        },
    )
    .await;
    for k in keys("handed-over", 20) {
        let o = first.gateway.invoke(&[("x-user-id", &k)]).await;
        assert_eq!((o.status(), o.variant()), (Some(200), Some(OTHER)), "{o:?}");
    }
    ok("deleting the first hands the host over: the gateway answers with the second's model");
}
