use super::*;
use crate::leader::LEASE;
use mlep_core::aggregate::shared_objects;
use mlep_core::render::RenderSettings;
use serde_yaml::Value;
use std::collections::BTreeSet;

/// `(group, resource, verb, resourceName)`; no name: any object of the resource.
type Grant = (String, String, String, Option<String>);

const OPERATOR_NS: &str = "mlep-system";
const SA: &str = "mlep-operator";

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Every document the two installs apply, beside the CRDs and the Deployment.
fn rbac_docs() -> Vec<Value> {
    [
        include_str!("../../../manifests/operator/rbac.yaml"),
        include_str!("../../../manifests/cluster-wide.yaml"),
        include_str!("../../../manifests/namespaced/watched-namespaces.yaml"),
    ]
    .into_iter()
    .flat_map(docs)
    .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The rules of the `kind` named `name`, expanded.
fn granted(kind: &str, name: &str) -> BTreeSet<Grant> {
    let doc = rbac_docs()
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    let mut out = BTreeSet::new();
    for rule in doc["rules"].as_sequence().unwrap() {
        let names = strs(&rule["resourceNames"]);
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    for n in &names {
                        out.insert((g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

fn namespace_of(kind: &str, name: &str) -> Option<String> {
    rbac_docs()
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .and_then(|d| d["metadata"]["namespace"].as_str().map(str::to_owned))
}

#[test]
fn the_cluster_role_grants_exactly_what_the_operator_uses_where_it_serves() {
    let granted = granted("ClusterRole", "mlep-operator");
    assert!(granted.iter().all(|g| g.3.is_none()));
    let granted: BTreeSet<Permission> = granted.into_iter().map(|(g, r, v, _)| (g, r, v)).collect();
    let needed = served_permissions();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "ClusterRole mlep-operator lacks {missing:?}"
    );
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        extra.is_empty(),
        "ClusterRole mlep-operator grants unused {extra:?}"
    );
}

#[test]
fn the_shared_filter_objects_are_granted_by_name_only_in_the_mesh_root_namespace() {
    let settings = RenderSettings::default();
    let needed: BTreeSet<Grant> = shared_objects(&settings)
        .iter()
        .flat_map(|s| {
            assert_eq!(s.namespace, "istio-system");
            SHARED_VERBS.iter().map(move |v| {
                let (g, r) = (s.kind.group(), s.kind.plural);
                (
                    g.to_owned(),
                    r.to_owned(),
                    (*v).to_owned(),
                    Some(s.name.to_owned()),
                )
            })
        })
        .collect();
    let role = "mlep-operator-shared-filters";
    assert_eq!(granted("Role", role), needed);
    assert_eq!(namespace_of("Role", role).as_deref(), Some("istio-system"));
    // Nowhere else: no rule on a shared kind without names, in any role.
    let shared: BTreeSet<&str> = KINDS
        .iter()
        .filter(|k| k.shared)
        .map(|k| k.plural)
        .collect();
    assert!(granted("ClusterRole", "mlep-operator")
        .iter()
        .all(|(_, r, _, _)| !shared.contains(r.as_str())));
}

#[test]
fn the_lease_is_granted_by_name_in_the_operators_namespace() {
    let role = "mlep-operator-leader-election";
    let needed: BTreeSet<Grant> = LEASE_RULES
        .iter()
        .flat_map(|(g, r, verbs, named)| {
            verbs.iter().map(move |v| {
                let name = named.then(|| LEASE.to_owned());
                ((*g).to_owned(), (*r).to_owned(), (*v).to_owned(), name)
            })
        })
        .collect();
    assert_eq!(granted("Role", role), needed);
    assert_eq!(namespace_of("Role", role).as_deref(), Some(OPERATOR_NS));
}

/// `(kind, namespace)` of every binding of the operator's ServiceAccount to `role_kind role`.
fn bindings_of(role_kind: &str, role: &str) -> Vec<(String, Option<String>)> {
    rbac_docs()
        .into_iter()
        .filter(|d| {
            d["roleRef"]["kind"].as_str() == Some(role_kind)
                && d["roleRef"]["name"].as_str() == Some(role)
        })
        .map(|d| {
            let subjects = d["subjects"].as_sequence().unwrap();
            assert_eq!(subjects.len(), 1, "{d:?}");
            assert_eq!(subjects[0]["kind"].as_str(), Some("ServiceAccount"));
            assert_eq!(subjects[0]["name"].as_str(), Some(SA));
            assert_eq!(subjects[0]["namespace"].as_str(), Some(OPERATOR_NS));
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["namespace"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// `MLEP_WATCH_NAMESPACES` as the namespaced install sets it, and its resources.
fn namespaced_install() -> (BTreeSet<String>, Vec<String>) {
    let k = docs(include_str!(
        "../../../manifests/namespaced/kustomization.yaml"
    ))
    .remove(0);
    let mut watched = BTreeSet::new();
    for p in k["patches"].as_sequence().unwrap() {
        let patch = docs(p["patch"].as_str().unwrap()).remove(0);
        let Some(containers) = patch["spec"]["template"]["spec"]["containers"].as_sequence() else {
            continue;
        };
        for env in containers
            .iter()
            .flat_map(|c| c["env"].as_sequence().unwrap())
        {
            if env["name"].as_str() == Some("MLEP_WATCH_NAMESPACES") {
                let list = env["value"].as_str().unwrap().split(',');
                watched.extend(list.map(|n| n.trim().to_owned()));
            }
        }
    }
    (watched, strs(&k["resources"]))
}

#[test]
fn the_cluster_wide_install_binds_the_rules_everywhere_the_namespaced_one_per_watched_namespace() {
    let bindings = bindings_of("ClusterRole", "mlep-operator");
    let cluster: Vec<_> = bindings
        .iter()
        .filter(|b| b.0 == "ClusterRoleBinding")
        .collect();
    assert_eq!(
        cluster.len(),
        1,
        "one ClusterRoleBinding (manifests/cluster-wide.yaml)"
    );
    let per_namespace: BTreeSet<String> = bindings
        .iter()
        .filter(|b| b.0 == "RoleBinding")
        .map(|b| b.1.clone().unwrap())
        .collect();
    let (watched, resources) = namespaced_install();
    assert!(!watched.is_empty());
    assert_eq!(
        per_namespace, watched,
        "a RoleBinding for each of MLEP_WATCH_NAMESPACES"
    );
    // The namespaced install takes everything but the ClusterRoleBinding.
    assert_eq!(
        resources,
        ["../crds", "../operator", "watched-namespaces.yaml"]
    );
    let cluster_wide = docs(include_str!("../../../manifests/kustomization.yaml")).remove(0);
    assert_eq!(
        strs(&cluster_wide["resources"]),
        ["crds", "operator", "cluster-wide.yaml"]
    );
}

#[test]
fn every_role_is_bound_to_the_operator_in_its_own_namespace() {
    for d in rbac_docs()
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Role"))
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        let ns = d["metadata"]["namespace"].as_str().map(str::to_owned);
        assert_eq!(
            bindings_of("Role", name),
            [("RoleBinding".to_owned(), ns)],
            "{name}"
        );
    }
}

#[test]
fn no_rule_uses_a_wildcard() {
    for d in rbac_docs() {
        for rule in d["rules"].as_sequence().into_iter().flatten() {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    strs(&rule[field]).iter().all(|s| !s.contains('*')),
                    "{:?} has a wildcard in {field}",
                    d["metadata"]["name"]
                );
            }
        }
    }
}
