//! Before an endpoint's objects are applied (force server-side apply, which would take over
//! any object of the same kind and name): is every rendered name free or this endpoint's?
//! The decision is `mlep_core::ownership`'s; this file reads what it needs. The endpoint's
//! own children, listed by its label for the reconcile, cost nothing more; a rendered name
//! missing from them is read by name (`get`, which the operator's rules grant on every child
//! kind): once per new object, none in a settled reconcile.

use crate::reconcile::{Context, Error, ObjectKey};
use kube::ResourceExt;
use mlep_core::crd::ModelEndpoint;
use mlep_core::ownership::{check_owner, rendered_twice, Applier};
use mlep_core::validate::SpecError;
use serde_json::Value;
use std::collections::BTreeMap;

/// `Err(NameConflict)` when `ep` renders one name twice or an object of a rendered name
/// exists and is not `ep`'s (`existing`: its children as listed by its label).
pub(crate) async fn name_conflict(
    ctx: &Context,
    ep: &ModelEndpoint,
    rendered: &[Value],
    existing: &BTreeMap<ObjectKey, Value>,
) -> Result<Result<(), SpecError>, Error> {
    let name = ep.name_any();
    let uid = ep.uid().ok_or_else(|| Error::NoUid(name.clone()))?;
    let ours = Applier {
        name: &name,
        uid: &uid,
    };
    let keys = rendered
        .iter()
        .map(ObjectKey::of)
        .collect::<Result<Vec<_>, _>>()?;
    if let Err(e) = rendered_twice(keys.iter().map(|k| (k.kind.kind, k.name.as_str()))) {
        return Ok(Err(e));
    }
    for key in keys.iter().filter(|k| !k.kind.shared) {
        let meta = match existing.get(key) {
            Some(obj) => serde_json::from_value(obj["metadata"].clone())
                .map_err(|_| Error::Malformed("metadata"))?,
            None => match key.api(&ctx.client).get_opt(&key.name).await? {
                Some(obj) => obj.metadata,
                None => continue,
            },
        };
        if let Err(e) = check_owner(&ours, key.kind.kind, &meta) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}
