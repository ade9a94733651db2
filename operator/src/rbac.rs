//! What the operator needs from the API server, as `(apiGroup, resource, verb)`, and the check
//! that `manifests/rbac.yaml` grants exactly that: every permission the code uses and nothing
//! more, no wildcards. The test runs the operator's calls by name against the manifest, so a new
//! kind in [`KINDS`] or a new call needs its grant (a real API server answers 403 otherwise, which
//! tests that run the operator as cluster-admin never see).

use crate::reconcile::KINDS;

/// Verbs on every kind the operator renders: listed by label, applied server-side (`patch`; an
/// apply that creates the object is also authorised as `create`), pruned (`delete`); `get` for
/// reads of a single child.
const CHILD_VERBS: &[&str] = &["get", "list", "create", "patch", "delete"];

/// Cluster-wide permissions, beside [`CHILD_VERBS`] on [`KINDS`].
const CLUSTER: &[(&str, &str, &[&str])] = &[
    // The endpoint controller watches endpoints; the finalizer is added and removed by patch.
    (
        "mlep.dev",
        "modelendpoints",
        &["get", "list", "watch", "patch", "update"],
    ),
    (
        "mlep.dev",
        "modelendpoints/status",
        &["get", "patch", "update"],
    ),
    // ownerReferences with blockOwnerDeletion need `update` on the owner's finalizers where the
    // OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened clusters).
    ("mlep.dev", "modelendpoints/finalizers", &["update"]),
    ("mlep.dev", "models", &["get", "list", "watch"]),
    // The Model controller writes Model status (`Ready`, `observedGeneration`).
    ("mlep.dev", "models/status", &["get", "patch", "update"]),
    // The endpoint controller owns Deployments (watch, to react to readiness).
    ("apps", "deployments", &["watch"]),
    // Model pods: watched (a crash reconciles its endpoint) and listed by a Deployment's
    // selector while it lacks ready replicas, to name the failure (`crate::pods`).
    ("", "pods", &["list", "watch"]),
    // Events on ModelEndpoints and Models (`crate::events`): only created, one per change.
    ("events.k8s.io", "events", &["create"]),
];

/// Leader election, in the operator's own namespace only (a Role).
pub const NAMESPACED: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];

/// Every cluster-wide `(group, resource, verb)` the operator uses.
pub fn cluster_permissions() -> std::collections::BTreeSet<(String, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for kind in KINDS {
        for verb in CHILD_VERBS {
            out.insert((
                kind.group().to_owned(),
                kind.plural.to_owned(),
                (*verb).to_owned(),
            ));
        }
    }
    for (group, resource, verbs) in CLUSTER {
        for verb in *verbs {
            out.insert((
                (*group).to_owned(),
                (*resource).to_owned(),
                (*verb).to_owned(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;
    use std::collections::BTreeSet;

    type Grants = BTreeSet<(String, String, String)>;

    /// The rules of every `kind` document in manifests/rbac.yaml, expanded.
    fn granted(kind: &str) -> Grants {
        let text = include_str!("../../manifests/rbac.yaml");
        let mut out = BTreeSet::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            if doc["kind"].as_str() != Some(kind) {
                continue;
            }
            let strs = |v: &Value| -> Vec<String> {
                v.as_sequence()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            };
            for rule in doc["rules"].as_sequence().unwrap() {
                for g in strs(&rule["apiGroups"]) {
                    for r in strs(&rule["resources"]) {
                        for v in strs(&rule["verbs"]) {
                            out.insert((g.clone(), r.clone(), v));
                        }
                    }
                }
            }
        }
        out
    }

    fn expand(list: &[(&str, &str, &[&str])]) -> Grants {
        list.iter()
            .flat_map(|(g, r, vs)| {
                vs.iter()
                    .map(move |v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_cluster_role_grants_exactly_what_the_operator_uses() {
        let granted = granted("ClusterRole");
        let needed = cluster_permissions();
        let missing: Vec<_> = needed.difference(&granted).collect();
        assert!(missing.is_empty(), "manifests/rbac.yaml lacks {missing:?}");
        let extra: Vec<_> = granted.difference(&needed).collect();
        assert!(
            extra.is_empty(),
            "manifests/rbac.yaml grants unused {extra:?}"
        );
    }

    #[test]
    fn leader_election_is_granted_in_the_operators_namespace_only() {
        assert_eq!(granted("Role"), expand(NAMESPACED));
        assert!(granted("ClusterRole").iter().all(|(_, r, _)| r != "leases"));
    }

    #[test]
    fn no_rule_uses_a_wildcard() {
        for kind in ["ClusterRole", "Role"] {
            assert!(
                granted(kind)
                    .iter()
                    .all(|(g, r, v)| !g.contains('*') && !r.contains('*') && !v.contains('*')),
                "{kind} has a wildcard"
            );
        }
    }
}
