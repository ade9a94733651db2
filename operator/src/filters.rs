//! The shared filter objects (`mlep_core::aggregate`): rebuilt from every endpoint the operator
//! watches, read and written by name. These are the operator's only writes outside endpoints'
//! namespaces, and its RBAC there names them (`resourceNames`: get, create by server-side
//! apply, patch, delete; no list): an object the core would render under any other name is
//! refused here, before the API server would refuse it.

use crate::reconcile::{apply_object, contains, delete, with_current, Context, Error, ObjectKey};
use kube::api::{DynamicObject, GetParams};
use mlep_core::aggregate::{render_filters, shared_objects, SharedObject, LABEL_FILTER};
use mlep_core::crd::ModelEndpoint;
use serde_json::Value;
use std::collections::BTreeMap;
use tracing::warn;

/// Rebuild the shared filter objects from every endpoint, `current` replacing its cached
/// version; apply what changed, delete what is no longer rendered.
pub async fn sync(ctx: &Context, current: Option<&ModelEndpoint>) -> Result<(), Error> {
    let _one_at_a_time = ctx.filters.lock().await;
    // Before the first full list the cache holds only some endpoints: a rebuild from it would
    // drop the others' entries.
    if ctx.endpoints.wait_until_ready().await.is_err() {
        return Ok(());
    }
    let all = match current {
        Some(c) => with_current(ctx, c),
        None => ctx
            .endpoints
            .state()
            .iter()
            .map(|e| (**e).clone())
            .collect(),
    };
    let aggregate = render_filters(&all, &ctx.settings);
    for (endpoint, why) in &aggregate.excluded {
        warn!(%endpoint, %why, "left out of the shared filter config");
    }
    let slots = shared_objects(&ctx.settings);
    let rendered = by_slot(&aggregate.objects, &slots)?;
    for slot in &slots {
        let key = key_of(slot);
        let have = get(ctx, &key).await?;
        match (rendered.get(&key), have) {
            (Some(want), have) => {
                if !have.is_some_and(|h| up_to_date(&h, want)) {
                    apply_object(ctx, want, &key).await?;
                }
            }
            // Ours (labelled) and no longer rendered: every endpoint of this wiring is gone.
            (None, Some(h)) if h["metadata"]["labels"][LABEL_FILTER].is_string() => {
                delete(ctx, &key).await?;
            }
            (None, _) => {}
        }
    }
    Ok(())
}

/// Whether the shared object on the server already says what `want` says. `contains` ignores
/// fields the server added, and so would also miss a field `want` dropped: a WasmPlugin's
/// `pluginConfig` is structured JSON where a shadow that stops (not ready, removed, swapped)
/// is a key that goes away. So the filter config is compared whole (an EnvoyFilter carries it
/// as one string, compared whole by `contains` already).
fn up_to_date(have: &Value, want: &Value) -> bool {
    let config = |o: &Value| o["spec"].get("pluginConfig").cloned();
    contains(have, want) && config(have) == config(want)
}

fn key_of(slot: &SharedObject<'_>) -> ObjectKey {
    ObjectKey {
        kind: slot.kind,
        namespace: slot.namespace.to_owned(),
        name: slot.name.to_owned(),
    }
}

/// The rendered objects by key, each one of `slots`; any other is refused.
pub fn by_slot<'v>(
    objects: &'v [Value],
    slots: &[SharedObject<'_>],
) -> Result<BTreeMap<ObjectKey, &'v Value>, Error> {
    let allowed: Vec<ObjectKey> = slots.iter().map(key_of).collect();
    let mut out = BTreeMap::new();
    for obj in objects {
        let key = ObjectKey::of(obj)?;
        if !allowed.contains(&key) {
            return Err(Error::NotShared(format!(
                "{} {}/{}",
                key.kind.kind, key.namespace, key.name
            )));
        }
        out.insert(key, obj);
    }
    Ok(out)
}

/// The object at `key` (from the API server's watch cache), if it exists; a kind the server
/// does not serve (WasmPlugin without its CRD) has none.
async fn get(ctx: &Context, key: &ObjectKey) -> Result<Option<Value>, Error> {
    match key
        .api(&ctx.client)
        .get_with(&key.name, &GetParams::any())
        .await
    {
        Ok(o) => Ok(Some(as_value(o, key)?)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn as_value(o: DynamicObject, key: &ObjectKey) -> Result<Value, Error> {
    let mut v = serde_json::to_value(&o).map_err(|_| Error::Malformed("serializable object"))?;
    v["apiVersion"] = Value::from(key.kind.api_version);
    v["kind"] = Value::from(key.kind.kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlep_core::meta::{ENVOY_FILTER, SERVICE};
    use mlep_core::render::RenderSettings;
    use serde_json::json;

    fn obj(kind: &mlep_core::meta::Kind, ns: &str, name: &str) -> Value {
        json!({"apiVersion": kind.api_version, "kind": kind.kind,
               "metadata": {"namespace": ns, "name": name}})
    }

    #[test]
    fn a_key_dropped_from_a_wasm_plugins_config_is_applied() {
        let with_shadow = json!({"spec": {"pluginConfig": {"endpoints": [{"name": "t", "shadow": {"cluster": "c"}}]}},
                                 "metadata": {"name": "mlep-gateway"}});
        let without = json!({"spec": {"pluginConfig": {"endpoints": [{"name": "t"}]}},
                             "metadata": {"name": "mlep-gateway"}});
        let mut served = with_shadow.clone();
        served["metadata"]["resourceVersion"] = json!("7");
        assert!(
            up_to_date(&served, &with_shadow),
            "fields the server adds are ignored"
        );
        assert!(
            contains(&served, &without),
            "what `contains` alone would miss"
        );
        assert!(!up_to_date(&served, &without));
        assert!(!up_to_date(&without, &with_shadow));
    }

    #[test]
    fn only_the_shared_filter_names_are_written_outside_endpoints_namespaces() {
        let settings = RenderSettings::default();
        let slots = shared_objects(&settings);
        let ours = [
            obj(&ENVOY_FILTER, "istio-system", "mlep-sidecars"),
            obj(&ENVOY_FILTER, "istio-system", "mlep-gateway"),
        ];
        assert_eq!(by_slot(&ours, &slots).unwrap().len(), 2);
        for other in [
            obj(&ENVOY_FILTER, "istio-system", "someone-elses"),
            obj(&ENVOY_FILTER, "ml", "mlep-sidecars"),
            obj(&SERVICE, "istio-system", "mlep-gateway"),
        ] {
            let err = by_slot(std::slice::from_ref(&other), &slots).unwrap_err();
            assert!(matches!(err, Error::NotShared(_)), "{other}: {err}");
        }
    }
}
