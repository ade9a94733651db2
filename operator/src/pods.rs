//! The pods behind an endpoint's Deployments, read for one thing: why a model does not serve.
//! Each not-fully-ready Deployment's pods are listed by its selector and summarised by
//! `mlep_core::failure::failure_of` (crash loop, OOM kill, artifact fetch, readiness probe);
//! the decision names the worst in the endpoint's conditions.

use crate::reconcile::Error;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use mlep_core::crd::ModelEndpoint;
use mlep_core::failure::{failure_of, Failures};
use mlep_core::render::{LABEL_ENDPOINT, LABEL_MODEL, LABEL_VARIANT};

/// Failures of the variant-models among `deployments` (in `ns`) that lack ready replicas.
/// A fully ready Deployment's pods are not listed: a settled endpoint costs no pod list.
pub async fn failures(
    client: &Client,
    ns: &str,
    deployments: &[Deployment],
    now_unix: i64,
) -> Result<Failures, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut out = Failures::new();
    for d in deployments.iter().filter(|d| !fully_ready(d)) {
        let labels = d.labels();
        let (Some(v), Some(m)) = (labels.get(LABEL_VARIANT), labels.get(LABEL_MODEL)) else {
            continue;
        };
        let Some(selector) = selector(d) else {
            continue;
        };
        // From the API server's watch cache, like the children's lists.
        let params = ListParams::default().labels(&selector).match_any();
        let pods = api.list(&params).await?.items;
        if let Some(f) = failure_of(&pods, now_unix) {
            out.insert((v.clone(), m.clone()), f);
        }
    }
    Ok(out)
}

fn fully_ready(d: &Deployment) -> bool {
    let r = crate::reconcile::readiness(d);
    r.ready_replicas >= r.replicas
}

/// The Deployment's `matchLabels` as a label selector (`None` when it has none: listing every
/// pod of the namespace would be wrong).
fn selector(d: &Deployment) -> Option<String> {
    let labels = d.spec.as_ref()?.selector.match_labels.as_ref()?;
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The endpoint a model pod belongs to (its `mlep.dev/endpoint` label, its namespace): a
/// pod's status change (a crash, a kill, a failed init) reconciles its endpoint.
pub fn endpoint_of(pod: &Pod) -> Option<ObjectRef<ModelEndpoint>> {
    let name = pod.labels().get(LABEL_ENDPOINT)?;
    let ns = pod.namespace()?;
    Some(ObjectRef::new(name).within(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployments_pods_are_selected_by_its_match_labels_only() {
        let d: Deployment = serde_json::from_value(json!({
            "spec": {"replicas": 2,
                     "selector": {"matchLabels": {"app": "t", "mlep.dev/model": "m3"}},
                     "template": {}},
            "status": {"readyReplicas": 1}
        }))
        .unwrap();
        assert_eq!(selector(&d).as_deref(), Some("app=t,mlep.dev/model=m3"));
        assert!(!fully_ready(&d));
        let none: Deployment =
            serde_json::from_value(json!({"spec": {"selector": {}, "template": {}}})).unwrap();
        assert_eq!(selector(&none), None);
    }

    #[test]
    fn a_pod_maps_to_the_endpoint_its_label_names_in_its_namespace() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {LABEL_ENDPOINT: "titanic"}}
        }))
        .unwrap();
        let r = endpoint_of(&p).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("titanic", Some("ns"))
        );
        let stray: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}})).unwrap();
        assert!(endpoint_of(&stray).is_none());
    }
}
