//! The namespaced install (`kubectl apply -k manifests/namespaced/`) on the bed, in place of the
//! cluster-wide one (one operator writes the shared filters at a time): the operator serves an
//! endpoint in its watched namespace through the gateway, provably cannot read or write another
//! namespace (`kubectl auth can-i` as its ServiceAccount) nor the mesh's objects beyond its own
//! shared filters by name, and an endpoint in an unwatched namespace stays untouched. The
//! cluster-wide install is restored afterwards, after a failure too. One at a time, after the
//! namespaced phases (`scripts/test-cluster-e2e.sh`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use mlep_cluster_e2e::load::Target;
use mlep_cluster_e2e::*;
use mlep_core::aggregate::GATEWAY_FILTER;
use mlep_core::crd::Model;
use std::path::{Path, PathBuf};

const IMAGE: &str = "ghcr.io/k8smlendpoints/mlep-operator";
/// The namespace the shipped overlay watches (manifests/namespaced/), retargeted here.
const SHIPPED_NAMESPACE: &str = "team-a";

/// The tag of the operator image running now (this tree's, imported by the script).
async fn running_tag(bed: &Bed) -> String {
    let d = bed
        .api::<Deployment>(OPERATOR_NS)
        .get(OPERATOR)
        .await
        .unwrap();
    let image = d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    image.rsplit_once(':').unwrap().1.to_owned()
}

/// A kustomization in `.cache/e2e/install-modes/<name>` over `base` (a path from the
/// repository's root) with this image tag and `extra` lines; returns its directory.
fn overlay(name: &str, base: &str, tag: &str, extra: &str) -> PathBuf {
    let dir = repo().join(".cache/e2e/install-modes").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources: [../../../../{base}]\n\
         images:\n  - name: {IMAGE}\n    newTag: \"{tag}\"\n{extra}"
    );
    std::fs::write(dir.join("kustomization.yaml"), text).unwrap();
    dir
}

/// The shipped namespaced overlay, watching `ns` instead of its example namespace.
fn namespaced_overlay(tag: &str, ns: &str) -> PathBuf {
    let extra = format!(
        r#"patches:
  - target: {{kind: RoleBinding, name: {OPERATOR}, namespace: {SHIPPED_NAMESPACE}}}
    patch: |-
      - op: replace
        path: /metadata/namespace
        value: {ns}
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata: {{name: {OPERATOR}, namespace: {OPERATOR_NS}}}
      spec:
        template:
          spec:
            containers:
              - name: operator
                env:
                  - name: MLEP_WATCH_NAMESPACES
                    value: {ns}
"#
    );
    overlay("namespaced", "manifests/namespaced", tag, &extra)
}

fn sh(args: &[&str]) {
    let ok = std::process::Command::new("kubectl")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kubectl {}", args.join(" "));
}

/// `kubectl apply -k dir`, then the operator's rollout awaited; whether both succeeded.
fn install(dir: &Path) -> bool {
    let dir = dir.display().to_string();
    [
        vec!["apply", "-k", &dir],
        vec![
            "-n",
            OPERATOR_NS,
            "rollout",
            "status",
            "deploy/mlep-operator",
            "--timeout=180s",
        ],
    ]
    .iter()
    .all(|args| {
        std::process::Command::new("kubectl")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Puts the cluster-wide install back when dropped (`kubectl apply -k manifests/`, this image):
/// its ClusterRoleBinding returns and the watch-namespaces setting goes (client-side apply
/// removes what the previous apply set and this one does not).
struct RestoreClusterWide(PathBuf);

impl Drop for RestoreClusterWide {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new("kubectl")
                .args([
                    "-n",
                    OPERATOR_NS,
                    "logs",
                    "deploy/mlep-operator",
                    "--tail=40",
                ])
                .status();
        }
        if !install(&self.0) {
            eprintln!("restoring the cluster-wide install failed");
        }
    }
}

/// `kubectl auth can-i VERB WHAT -n NS` as the operator's ServiceAccount.
async fn can_i(verb: &str, what: &str, ns: Option<&str>, sub: Option<&str>) -> bool {
    let sa = format!("--as=system:serviceaccount:{OPERATOR_NS}:{OPERATOR}");
    let mut args = vec!["auth", "can-i", verb, what, sa.as_str()];
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let sub = sub.map(|s| format!("--subresource={s}"));
    args.extend(sub.as_deref());
    let (_, out, err) = kubectl(&args).await;
    match out.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {}: {other:?} {err}", args.join(" ")),
    }
}

/// What the namespaced operator's ServiceAccount may do, as the API server answers.
async fn only_the_watched_namespace_and_its_own_objects_are_granted(watched: &str, off: &str) {
    const EF: &str = "envoyfilters.networking.istio.io";
    let ef = |name: &str| format!("{EF}/{name}");
    let (istio, own) = (Some("istio-system"), Some(OPERATOR_NS));
    let yes = [
        ("create", "deployments.apps".to_owned(), Some(watched), None),
        ("list", "pods".into(), Some(watched), None),
        (
            "watch",
            "modelendpoints.mlep.dev".into(),
            Some(watched),
            None,
        ),
        (
            "patch",
            "modelendpoints.mlep.dev".into(),
            Some(watched),
            Some("status"),
        ),
        ("patch", ef("mlep-sidecars"), istio, None),
        ("create", ef("mlep-gateway"), istio, None),
        (
            "delete",
            "wasmplugins.extensions.istio.io/mlep-sidecars".into(),
            istio,
            None,
        ),
        (
            "update",
            "leases.coordination.k8s.io/mlep-operator".into(),
            own,
            None,
        ),
    ];
    let no = [
        (
            "list",
            "modelendpoints.mlep.dev".to_owned(),
            Some(off),
            None,
        ),
        ("get", "models.mlep.dev".into(), Some(off), None),
        ("create", "deployments.apps".into(), Some(off), None),
        ("patch", "services".into(), Some(off), None),
        ("list", "pods".into(), Some(off), None),
        ("create", "events.events.k8s.io".into(), Some(off), None),
        ("list", "modelendpoints.mlep.dev".into(), None, None),
        ("get", "secrets".into(), Some(watched), None),
        ("create", ef("someone-elses"), istio, None),
        ("patch", ef("someone-elses"), istio, None),
        ("create", EF.into(), istio, None),
        ("list", EF.into(), istio, None),
        ("create", EF.into(), Some(watched), None),
        (
            "patch",
            "virtualservices.networking.istio.io".into(),
            istio,
            None,
        ),
        (
            "update",
            "leases.coordination.k8s.io/someone-elses".into(),
            own,
            None,
        ),
    ];
    for (verb, what, ns, sub) in yes {
        assert!(
            can_i(verb, &what, ns, sub).await,
            "cannot {verb} {what} in {ns:?}"
        );
    }
    for (verb, what, ns, sub) in no {
        assert!(
            !can_i(verb, &what, ns, sub).await,
            "can {verb} {what} in {ns:?}"
        );
    }
    ok(format!(
        "auth can-i as the operator: {watched} and its own shared filters and Lease by name yes; \
         {off}, cluster-wide lists, other names in istio-system no"
    ));
}

/// The example's Models and endpoint in `ns`, host `<ns>.mlep.test`, not waited for.
async fn example_in(bed: &Bed, ns: &str) -> Titanic {
    let host = format!("{ns}.mlep.test");
    let t = Titanic {
        ns: ns.to_owned(),
        artifacts: format!("http://artifacts.{ns}.svc.cluster.local"),
        gateway: Target::titanic(bed.gateway, &host),
        host,
        bed: bed.clone(),
    };
    t.create_example().await;
    t
}

/// Nothing of the operator's in `t`'s namespace: no status, no finalizer, no children, no
/// route through the gateway.
async fn untouched(bed: &Bed, t: &Titanic) {
    let e = t.endpoint().await;
    assert!(e.status.is_none(), "status written: {:?}", e.status);
    assert!(e.metadata.finalizers.unwrap_or_default().is_empty());
    for m in bed
        .api::<Model>(&t.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        assert!(m.status.is_none(), "Model status written: {:?}", m.status);
    }
    let labelled = ListParams::default().labels("mlep.dev/endpoint");
    let deployments = bed.api::<Deployment>(&t.ns).list(&labelled).await.unwrap();
    let services = bed.api::<Service>(&t.ns).list(&labelled).await.unwrap();
    assert!(deployments.items.is_empty() && services.items.is_empty());
    assert!(t.istio_object("VirtualService").await.is_none());
    let o = t.gateway.invoke(&[("x-user-id", "probe")]).await;
    assert!(
        o.variant().is_none(),
        "the gateway assigns {}: {o:?}",
        t.host
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespaced_install_serves_its_namespace_and_cannot_touch_the_others() {
    let bed = Bed::connect().await;
    operator_ready(&bed).await;
    let tag = running_tag(&bed).await;
    let watched = TempNs::create(&bed, "nsinstall").await;
    let off = TempNs::create(&bed, "nsinstall-off").await;
    // Dropped before the namespaces: the cluster-wide operator is back to finalize endpoints.
    let _restore = RestoreClusterWide(overlay("cluster-wide", "manifests", &tag, ""));
    let namespaced = namespaced_overlay(&tag, &watched.name);

    sh(&[
        "delete",
        "clusterrolebinding",
        OPERATOR,
        "--ignore-not-found",
    ]);
    assert!(install(&namespaced), "the namespaced install");
    operator_ready(&bed).await;
    only_the_watched_namespace_and_its_own_objects_are_granted(&watched.name, &off.name).await;

    // The unwatched endpoint first: by the time the watched one serves, the operator has had
    // every chance to touch it.
    let stranger = example_in(&bed, &off.name).await;
    let t = Titanic::deploy(&bed, &watched).await;
    let o = t.gateway.invoke(&[("x-user-id", "u-1")]).await;
    assert_eq!(o.status(), Some(200), "{o:?}");
    assert!(o.variant().is_some(), "{o:?}");
    ok(format!(
        "namespaced operator serves {} through the gateway",
        t.ns
    ));

    untouched(&bed, &stranger).await;
    let filter = bed
        .istio("istio-system", "EnvoyFilter")
        .get(GATEWAY_FILTER)
        .await
        .unwrap();
    let text = serde_json::to_string(&filter.data).unwrap();
    assert!(text.contains(&t.host), "the shared filter lacks {}", t.host);
    assert!(
        !text.contains(&stranger.host),
        "the shared filter carries {}",
        stranger.host
    );
    ok(format!(
        "{}: no status, no finalizer, no children, not routed, not in the shared filter",
        off.name
    ));
}
