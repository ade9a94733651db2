//! Whose an existing object is, before the operator applies one of the same kind and name.
//!
//! The operator applies with force server-side apply, which takes over whatever object has the
//! rendered kind and name. Names join endpoint, variant and model with `-`
//! (`crate::render::deployment_name`), so two endpoints of one namespace can render the same
//! name (endpoint `a`, variant `b-c`, model `d` and endpoint `a-b`, variant `c`, model `d` both
//! give Deployment `a-b-c-d`), as can a teammate's own object. Before applying, the operator
//! looks at the object of each rendered name that already exists and asks [`check_owner`]:
//! one that is not this endpoint's rejects the whole endpoint with `NameConflict` (nothing of
//! it is applied; the other owner's object keeps serving). One endpoint rendering a name twice
//! is [`rendered_twice`].

use crate::crd::conditions::REASON_NAME_CONFLICT;
use crate::meta::LABEL_ENDPOINT;
use crate::validate::SpecError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeSet;

/// The endpoint about to apply: its name and uid (what its objects' ownerReference names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applier<'a> {
    pub name: &'a str,
    pub uid: &'a str,
}

/// `Ok` when the existing object (`kind`, `meta`) is `ours`'s: an ownerReference carries its
/// uid and no endpoint label (`mlep.dev/endpoint`) names another endpoint. Else `NameConflict`
/// naming the object and its owner.
pub fn check_owner(ours: &Applier, kind: &str, meta: &ObjectMeta) -> Result<(), SpecError> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let label = meta.labels.as_ref().and_then(|l| l.get(LABEL_ENDPOINT));
    let owned = refs.iter().any(|r| r.uid == ours.uid);
    let labelled_other = label.is_some_and(|l| l != ours.name);
    if owned && !labelled_other {
        return Ok(());
    }
    let name = meta.name.as_deref().unwrap_or_default();
    Err(SpecError {
        field: "metadata.name".into(),
        message: format!(
            "{kind} {name:?} already exists and belongs to {}; nothing of this endpoint is \
             applied while it does (rename this endpoint, or the variant or model its name is \
             made of)",
            owner_text(ours, refs, label.map(String::as_str))
        ),
        reason: REASON_NAME_CONFLICT,
    })
}

/// Who an object that is not `ours`'s belongs to, for the condition.
fn owner_text(ours: &Applier, refs: &[OwnerReference], label: Option<&str>) -> String {
    let other = refs
        .iter()
        .filter(|r| r.uid != ours.uid)
        .max_by_key(|r| r.controller == Some(true));
    match (other, label) {
        (Some(r), _) if r.kind == "ModelEndpoint" && r.name == ours.name => format!(
            "an earlier ModelEndpoint {:?} (uid {}; being deleted?), not this one (uid {})",
            r.name, r.uid, ours.uid
        ),
        (Some(r), _) => format!("{} {:?} (uid {})", r.kind, r.name, r.uid),
        (None, Some(l)) if l != ours.name => {
            format!("ModelEndpoint {l:?} (its label {LABEL_ENDPOINT})")
        }
        (None, _) => "no ModelEndpoint: it has no ownerReference to this one (an object \
                      made by someone else)"
            .into(),
    }
}

/// `NameConflict` when one endpoint renders two objects of one kind and name (`(kind, name)`
/// pairs): variant and model names joined by `-` can meet (variants `b-c`/`d` and `b`/`c-d`
/// both give `<E>-b-c-d`), and each apply would overwrite the other.
pub fn rendered_twice<'a>(
    objects: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), SpecError> {
    let mut seen = BTreeSet::new();
    for (kind, name) in objects {
        if !seen.insert((kind, name)) {
            return Err(SpecError {
                field: "spec.variants".into(),
                message: format!(
                    "{kind} {name:?} is rendered twice: its name joins the endpoint's, a \
                     variant's and a model's with \"-\", and two of them meet; rename a variant \
                     or a model"
                ),
                reason: REASON_NAME_CONFLICT,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::deployment_name;

    const A: Applier = Applier {
        name: "a",
        uid: "uid-a",
    };
    const A_B: Applier = Applier {
        name: "a-b",
        uid: "uid-a-b",
    };

    fn owner(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "mlep.dev/v1alpha1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// An object as an endpoint's reconcile leaves it: its ownerReference and label.
    fn made_by(ep: &Applier, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: Some([(LABEL_ENDPOINT.to_owned(), ep.name.to_owned())].into()),
            owner_references: Some(vec![owner("ModelEndpoint", ep.name, ep.uid)]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_deployment_of_another_endpoint_with_the_same_joined_name_is_a_name_conflict() {
        let name = deployment_name("a", "b-c", "d");
        assert_eq!(name, deployment_name("a-b", "c", "d"), "the names meet");
        let theirs = made_by(&A, &name);
        assert_eq!(check_owner(&A, "Deployment", &theirs), Ok(()));
        let e = check_owner(&A_B, "Deployment", &theirs).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason),
            ("metadata.name", REASON_NAME_CONFLICT)
        );
        assert!(
            e.message
                .starts_with("Deployment \"a-b-c-d\" already exists and belongs to ModelEndpoint \"a\" (uid uid-a)"),
            "{e}"
        );
    }

    #[test]
    fn an_object_is_ours_only_with_our_uid_and_no_label_naming_another_endpoint() {
        // Our uid, but labelled for another endpoint (hand-edited, or taken over before).
        let mut relabelled = made_by(&A_B, "x");
        relabelled.labels = Some([(LABEL_ENDPOINT.to_owned(), "a".to_owned())].into());
        let e = check_owner(&A_B, "Service", &relabelled).unwrap_err();
        assert!(e.message.contains("ModelEndpoint \"a\" (its label"), "{e}");
        // Our label, another owner.
        let mut foreign = made_by(&A_B, "x");
        foreign.owner_references = Some(vec![owner("Deployment", "app", "uid-app")]);
        let e = check_owner(&A_B, "Service", &foreign).unwrap_err();
        assert!(
            e.message.contains("Deployment \"app\" (uid uid-app)"),
            "{e}"
        );
        // Our uid among others, no label: ours (the garbage collector keeps it for us too).
        let mut shared = made_by(&A_B, "x");
        shared.labels = None;
        shared
            .owner_references
            .as_mut()
            .unwrap()
            .insert(0, owner("Thing", "t", "uid-t"));
        assert_eq!(check_owner(&A_B, "Service", &shared), Ok(()));
    }

    #[test]
    fn an_object_nobody_owns_is_not_taken_over() {
        let mut plain = made_by(&A, "a-capture");
        plain.owner_references = None;
        plain.labels = None;
        let e = check_owner(&A, "Service", &plain).unwrap_err();
        assert!(e.message.contains("has no ownerReference"), "{e}");
        // Labelled with our name but owned by no one: still not ours.
        plain.labels = Some([(LABEL_ENDPOINT.to_owned(), "a".to_owned())].into());
        assert!(check_owner(&A, "Service", &plain).is_err());
    }

    #[test]
    fn an_earlier_endpoint_of_the_same_name_is_named_as_such() {
        let old = Applier {
            name: "a",
            uid: "uid-old",
        };
        let e = check_owner(&A, "Deployment", &made_by(&old, "a-v-m")).unwrap_err();
        assert!(
            e.message
                .contains("an earlier ModelEndpoint \"a\" (uid uid-old")
                && e.message.contains("not this one (uid uid-a)"),
            "{e}"
        );
    }

    #[test]
    fn one_endpoint_rendering_a_name_twice_is_a_name_conflict() {
        let one = deployment_name("a", "b-c", "d");
        let two = deployment_name("a", "b", "c-d");
        let e = rendered_twice([("Deployment", one.as_str()), ("Deployment", two.as_str())])
            .unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason),
            ("spec.variants", REASON_NAME_CONFLICT)
        );
        assert!(
            e.message
                .starts_with("Deployment \"a-b-c-d\" is rendered twice"),
            "{e}"
        );
        // One name across kinds is how an endpoint's objects are named: fine.
        assert_eq!(
            rendered_twice([
                ("Deployment", "a-v-m"),
                ("HorizontalPodAutoscaler", "a-v-m")
            ]),
            Ok(())
        );
    }
}
