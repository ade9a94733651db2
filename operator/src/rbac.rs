//! What the operator needs from the API server, as `(apiGroup, resource, verb)` and where, and
//! the check that the manifests grant exactly that in both installs: every permission the code
//! uses and nothing more, no wildcards, names wherever Kubernetes can check them. The test runs
//! the operator's calls by name against the manifests, so a new kind in [`KINDS`] or a new call
//! needs its grant (a real API server answers 403 otherwise, which tests that run the operator
//! as cluster-admin never see).
//!
//! - In every namespace it serves: [`served_permissions`], ClusterRole `mlep-operator`, bound
//!   cluster-wide (`manifests/cluster-wide.yaml`) or by a RoleBinding per watched namespace
//!   (`manifests/namespaced/`).
//! - The shared filter objects ([`crate::filters`]): [`SHARED_VERBS`] on the shared kinds, by
//!   name, in Istio's root namespace (Role `mlep-operator-shared-filters`).
//! - Its Lease ([`crate::leader::LEASE`]): by name, in its own namespace.

use crate::reconcile::KINDS;

/// Verbs on every kind the operator renders in an endpoint's namespace: listed by label,
/// applied server-side (`patch`; an apply that creates the object is also authorised as
/// `create`), pruned (`delete`); `get` for reads of a single child.
const CHILD_VERBS: &[&str] = &["get", "list", "create", "patch", "delete"];

/// Verbs on the shared filter objects, each by name: read (`get`), applied server-side (`patch`,
/// and `create` with the object's name when the apply creates it), removed (`delete`).
pub const SHARED_VERBS: &[&str] = &["get", "create", "patch", "delete"];

/// In every namespace the operator serves, beside [`CHILD_VERBS`] on its endpoint kinds.
const SERVED: &[(&str, &str, &[&str])] = &[
    // The endpoint controller watches endpoints; the finalizer is added and removed by patch.
    (
        "mlep.dev",
        "modelendpoints",
        &["get", "list", "watch", "patch"],
    ),
    // Status is written by server-side apply (a patch); nothing here is ever replaced.
    ("mlep.dev", "modelendpoints/status", &["get", "patch"]),
    // ownerReferences with blockOwnerDeletion need `update` on the owner's finalizers where the
    // OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened clusters).
    ("mlep.dev", "modelendpoints/finalizers", &["update"]),
    ("mlep.dev", "models", &["get", "list", "watch"]),
    // The Model controller writes Model status (`Ready`, `observedGeneration`).
    ("mlep.dev", "models/status", &["get", "patch"]),
    // The endpoint controller owns Deployments (watch, to react to readiness).
    ("apps", "deployments", &["watch"]),
    // Model pods: watched (a crash reconciles its endpoint) and listed by a Deployment's
    // selector while it lacks ready replicas, to name the failure (`crate::pods`).
    ("", "pods", &["list", "watch"]),
    // Events on ModelEndpoints and Models (`crate::events`): only created, one per change.
    ("events.k8s.io", "events", &["create"]),
];

/// Leader election, in the operator's own namespace only (a Role): `(group, resource, verbs,
/// by name)`. `create` cannot be limited by name (a POST carries the name in its body).
pub const LEASE_RULES: &[(&str, &str, &[&str], bool)] = &[
    ("coordination.k8s.io", "leases", &["get", "update"], true),
    ("coordination.k8s.io", "leases", &["create"], false),
];

/// One permission: `(apiGroup, resource, verb)`.
pub type Permission = (String, String, String);

/// Every `(group, resource, verb)` the operator uses in a namespace it serves.
pub fn served_permissions() -> std::collections::BTreeSet<Permission> {
    let mut out = std::collections::BTreeSet::new();
    for kind in KINDS.iter().filter(|k| !k.shared) {
        for verb in CHILD_VERBS {
            out.insert((
                kind.group().to_owned(),
                kind.plural.to_owned(),
                (*verb).to_owned(),
            ));
        }
    }
    for (group, resource, verbs) in SERVED {
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
mod tests;
