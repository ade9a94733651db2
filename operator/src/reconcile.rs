//! The reconciler: read, plan, render, apply, status. Thin: decisions live in `plan`, `render`
//! and `status`; this file talks to the API server.

use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use mlep_core::aggregate::{render_filters, LABEL_FILTER};
use mlep_core::crd::conditions::REASON_MODEL_NOT_FOUND;
use mlep_core::crd::{Model, ModelEndpoint, ModelEndpointStatus, ModelSpec, API_VERSION};
use mlep_core::plan::{plan, retiring, Observed, Readiness};
use mlep_core::render::{
    render_endpoint, RenderSettings, FIELD_MANAGER, LABEL_ENDPOINT, LABEL_ENDPOINT_NAMESPACE,
    LABEL_MODEL, LABEL_VARIANT,
};
use mlep_core::status::{endpoint_status, invalid_status, same_status};
use mlep_core::validate::validate_endpoint;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, instrument, warn};

/// Finalizer on every ModelEndpoint: removes the objects in other namespaces (the filter in
/// the ingress gateway's namespace), which ownerReferences cannot reach.
pub const FINALIZER: &str = "modelendpoints.mlep.dev";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("rendered object has no {0}")]
    Malformed(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Short label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "ApiUnreachable",
            Error::NoNamespace(_) => "NoNamespace",
            Error::Malformed(_) => "Malformed",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => "Finalizer",
            },
        }
    }
}

/// Everything the reconciler needs.
pub struct Context {
    pub client: Client,
    pub settings: RenderSettings,
    pub metrics: Arc<Metrics>,
    pub models: Store<Model>,
    /// Every ModelEndpoint (the controller's cache): the shared filter objects are rebuilt
    /// from all of them.
    pub endpoints: Store<ModelEndpoint>,
    /// One rebuild of the shared filter objects at a time.
    pub filters: tokio::sync::Mutex<()>,
}

/// Reconciles running at once.
pub const CONCURRENCY: u16 = 4;

/// The kinds the operator writes, with their plurals (for listing and pruning).
pub const KINDS: &[(&str, &str, &str)] = &[
    ("apps/v1", "Deployment", "deployments"),
    ("v1", "Service", "services"),
    (
        "networking.istio.io/v1",
        "DestinationRule",
        "destinationrules",
    ),
    (
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    ),
    ("networking.istio.io/v1", "Gateway", "gateways"),
    (
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    ),
    ("extensions.istio.io/v1alpha1", "WasmPlugin", "wasmplugins"),
    (
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    ),
];

/// The kinds the operator puts outside an endpoint's namespace (the gateway-side filter).
pub const FOREIGN_KINDS: &[(&str, &str, &str)] = &[
    (
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    ),
    ("extensions.istio.io/v1alpha1", "WasmPlugin", "wasmplugins"),
];

fn api_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let (_, _, plural) = KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

/// Run the controller until `shutdown` resolves: a Model cache, and the ModelEndpoint
/// controller owning Deployments. `scope` limits it to one namespace (tests); `None` watches all.
pub async fn run(
    client: Client,
    settings: RenderSettings,
    metrics: Arc<Metrics>,
    scope: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let (models, writer) = reflector::store::<Model>();
    let model_cache = reflector(
        writer,
        watcher(api::<Model>(&client, scope), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    let model_task = tokio::spawn(model_cache);
    let _ = models.wait_until_ready().await;
    let controller = Controller::new(
        api::<ModelEndpoint>(&client, scope),
        watcher::Config::default(),
    );
    let endpoint_store = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        metrics,
        models,
        endpoints: endpoint_store.clone(),
        filters: tokio::sync::Mutex::new(()),
    });

    // Models get a status of their own: Ready when their spec is valid.
    let models_controller =
        Controller::new(api::<Model>(&client, scope), watcher::Config::default())
            .run(reconcile_model, model_error_policy, ctx.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    warn!(error = %e, "model reconcile stream");
                }
            });
    let models_task = tokio::spawn(models_controller);

    controller
        .owns(
            api::<Deployment>(&client, scope),
            watcher::Config::default().labels(LABEL_ENDPOINT),
        )
        .watches(
            api::<Model>(&client, scope),
            watcher::Config::default(),
            move |m: Model| {
                // A Model change concerns every endpoint of its namespace that names it.
                let ns = m.namespace();
                let name = m.name_any();
                endpoint_store
                    .state()
                    .into_iter()
                    .filter(|e| e.namespace() == ns && references(&e.spec, &name))
                    .map(|e| ObjectRef::from_obj(&*e))
                    .collect::<Vec<_>>()
            },
        )
        // A few reconciles at a time: each one lists its children kind by kind, and hundreds
        // at once only queue up in the API server (measured: 34 s per reconcile, unbounded).
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "reconcile stream");
            }
        })
        .await;
    models_task.abort();
    model_task.abort();
}

fn model_error_policy(m: Arc<Model>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(model = %m.name_any(), %error, "model reconcile failed");
    ctx.metrics.failure(error.reason());
    Action::requeue(Duration::from_secs(5))
}

/// A Model's status: `Ready` when its spec is valid, else the field that is not.
#[instrument(skip_all, fields(model = %m.name_any(), namespace = %m.namespace().unwrap_or_default()))]
async fn reconcile_model(m: Arc<Model>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = m
        .namespace()
        .ok_or_else(|| Error::NoNamespace(m.name_any()))?;
    let status = mlep_core::status::model_status(&m, now());
    if m.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let api: Api<Model> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "apiVersion": API_VERSION, "kind": Model::kind(&()), "status": status });
    api.patch_status(
        &m.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.write();
    Ok(Action::await_change())
}

fn references(spec: &mlep_core::crd::ModelEndpointSpec, model: &str) -> bool {
    spec.variants.iter().any(|v| v.model == model)
        || spec.shadow.as_ref().is_some_and(|s| s.model == model)
}

fn error_policy(ep: Arc<ModelEndpoint>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(endpoint = %ep.name_any(), namespace = %ep.namespace().unwrap_or_default(), %error, "reconcile failed");
    ctx.metrics.failure(error.reason());
    Action::requeue(Duration::from_secs(5))
}

#[instrument(skip_all, fields(endpoint = %ep.name_any(), namespace = %ep.namespace().unwrap_or_default()))]
async fn reconcile(ep: Arc<ModelEndpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = ep
        .namespace()
        .ok_or_else(|| Error::NoNamespace(ep.name_any()))?;
    let api: Api<ModelEndpoint> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ep, |event| async {
        match event {
            FinalizerEvent::Apply(ep) => apply(&ep, &ns, &ctx).await,
            FinalizerEvent::Cleanup(ep) => cleanup(&ep, &ns, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Remove what ownerReferences cannot: objects in other namespaces.
async fn cleanup(ep: &ModelEndpoint, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let selector = format!(
        "{LABEL_ENDPOINT}={},{LABEL_ENDPOINT_NAMESPACE}={ns}",
        ep.name_any()
    );
    prune(ctx, &ctx.settings.gateway_namespace, &selector).await?;
    sync_filters(ctx, Some(ep)).await?;
    info!("cleaned up");
    Ok(Action::await_change())
}

async fn apply(ep: &ModelEndpoint, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let name = ep.name_any();
    let models: BTreeMap<String, ModelSpec> = ctx
        .models
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns))
        .map(|m| (m.name_any(), m.spec.clone()))
        .collect();
    let last = ep.status.as_ref();
    let endpoints: Api<ModelEndpoint> = Api::namespaced(ctx.client.clone(), ns);

    if let Err(e) = validate_endpoint(&ep.spec, |n| models.get(n)) {
        // Nothing rendered changes: the last good configuration keeps serving.
        info!(field = %e.field, reason = e.reason, "invalid spec");
        let status = invalid_status(ep, last, &e, now());
        write_status(ctx, &endpoints, &name, last, status).await?;
        // A Model created just before the endpoint may not be in the Model cache yet, and its
        // watch event may have come before the endpoint existed to be mapped to: look again.
        return Ok(if e.reason == REASON_MODEL_NOT_FOUND {
            Action::requeue(Duration::from_secs(5))
        } else {
            Action::await_change()
        });
    }

    // One list per kind: what exists (to compare and prune) and the Deployments' readiness.
    let own_selector = format!("{LABEL_ENDPOINT}={name}");
    let foreign_selector = format!("{LABEL_ENDPOINT}={name},{LABEL_ENDPOINT_NAMESPACE}={ns}");
    let mut existing = list_existing(ctx, ns, &own_selector, KINDS).await?;
    if ctx.settings.gateway_namespace != ns {
        let gw_ns = &ctx.settings.gateway_namespace;
        existing.extend(list_existing(ctx, gw_ns, &foreign_selector, FOREIGN_KINDS).await?);
    }
    let observed = observe(&existing);
    let at = jiff::Timestamp::now();
    let mut p = plan(&ep.spec, last, &observed);
    p.retiring = retiring(
        &ep.spec,
        last,
        at.as_second(),
        ctx.settings.route_grace_seconds,
    );
    let outcome = crate::rollout::step(ep, ns, last, &observed, &p, &at).await;
    mlep_core::rollout::apply(&mut p, &outcome, &observed);
    let previous = last.and_then(|s| s.allocation.as_ref());
    let rendered = match render_endpoint(ep, ns, &models, &p, previous, &ctx.settings) {
        Ok(r) => r,
        Err(e) => {
            let status = invalid_status(ep, last, &e, now());
            write_status(ctx, &endpoints, &name, last, status).await?;
            return Ok(Action::await_change());
        }
    };

    let mut keep_local = BTreeSet::new();
    let mut keep_foreign = BTreeSet::new();
    for obj in &rendered.objects {
        let key = key_of(obj)?;
        if key.1 == ns {
            keep_local.insert(key.clone());
        } else {
            keep_foreign.insert(key.clone());
        }
        match existing.get(&key) {
            Some(current) if contains(current, obj) => {}
            current => {
                let why = current.map_or_else(
                    || "missing".to_owned(),
                    |c| difference(c, obj, String::new()),
                );
                debug!(kind = %key.2, name = %key.3, %why, "out of date");
                apply_object(ctx, obj, &key).await?
            }
        }
    }
    // Remove what is no longer rendered (a swapped-out model's Deployment, a removed variant
    // once its grace period is over: until then its objects stay as they are).
    let retiring_variant = |obj: &Value| {
        obj["metadata"]["labels"][LABEL_VARIANT]
            .as_str()
            .is_some_and(|v| p.is_retiring(v))
    };
    for (key, _) in existing.iter().filter(|(k, obj)| {
        let rendered = if k.1 == ns {
            keep_local.contains(*k)
        } else {
            keep_foreign.contains(*k)
        };
        !rendered && !retiring_variant(obj)
    }) {
        delete(ctx, key).await?;
    }

    let mut status = endpoint_status(ep, &p, &observed, rendered.allocation, last, now());
    mlep_core::rollout::record(&mut status, &outcome, last, &now());
    let settled = p.settled(&ep.spec);
    write_status(ctx, &endpoints, &name, last, status.clone()).await?;
    // The shared filter objects, with this endpoint's new status (the cache may lag).
    let mut fresh = ep.clone();
    fresh.status = Some(status);
    sync_filters(ctx, Some(&fresh)).await?;
    // A rollout comes back at its next step (or its next look at the analysis), a retiring
    // variant when its routes may go.
    let next = [
        outcome.requeue_after_seconds,
        p.next_retirement_in(at.as_second()).map(|s| s + 1),
    ];
    if let Some(s) = next.into_iter().flatten().min() {
        return Ok(Action::requeue(Duration::from_secs(s.clamp(1, 30) as u64)));
    }
    Ok(if settled {
        Action::requeue(Duration::from_secs(600))
    } else {
        Action::requeue(Duration::from_secs(30))
    })
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// (apiVersion, namespace, kind, name)
type Key = (String, String, String, String);

fn key_of(obj: &Value) -> Result<Key, Error> {
    let s = |v: &Value, f: &'static str| v.as_str().map(str::to_owned).ok_or(Error::Malformed(f));
    Ok((
        s(&obj["apiVersion"], "apiVersion")?,
        s(&obj["metadata"]["namespace"], "metadata.namespace")?,
        s(&obj["kind"], "kind")?,
        s(&obj["metadata"]["name"], "metadata.name")?,
    ))
}

/// Every object of our kinds in `ns` matching `selector`, from the API server's watch cache
/// (`resourceVersion=0`): a quorum read from etcd scans every object of the kind in the
/// namespace, which made reconciles O(endpoints) each (measured with 500 endpoints). A stale
/// answer costs at most a redundant apply or a prune on the next reconcile: every event of a
/// child requeues its endpoint. A kind the server does not serve
/// (e.g. autoscaling/v2 on old clusters, or Istio not installed) counts as empty.
async fn list_existing(
    ctx: &Context,
    ns: &str,
    selector: &str,
    kinds: &[(&str, &str, &str)],
) -> Result<BTreeMap<Key, Value>, Error> {
    let mut out = BTreeMap::new();
    for (version, kind, _) in kinds {
        let Some(ar) = api_resource(version, kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
        let list = match api
            .list(&ListParams::default().labels(selector).match_any())
            .await
        {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        };
        for o in list.items {
            let mut v =
                serde_json::to_value(&o).map_err(|_| Error::Malformed("serializable object"))?;
            // Items of a list of built-in kinds carry no apiVersion/kind.
            v["apiVersion"] = Value::from(*version);
            v["kind"] = Value::from(*kind);
            out.insert(
                ((*version).into(), ns.into(), (*kind).into(), o.name_any()),
                v,
            );
        }
    }
    Ok(out)
}

async fn apply_object(ctx: &Context, obj: &Value, key: &Key) -> Result<(), Error> {
    let (version, ns, kind, name) = key;
    let ar = api_resource(version, kind).ok_or(Error::Malformed("known kind"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    ctx.metrics.write();
    info!(%kind, %name, namespace = %ns, "applied");
    Ok(())
}

/// Rebuild the shared filter objects (`mlep_core::aggregate`) from every endpoint, `current`
/// replacing its cached version; apply what changed, delete what is no longer rendered.
async fn sync_filters(ctx: &Context, current: Option<&ModelEndpoint>) -> Result<(), Error> {
    let _one_at_a_time = ctx.filters.lock().await;
    // Before the first full list the cache holds only some endpoints: a rebuild from it would
    // drop the others' entries.
    if ctx.endpoints.wait_until_ready().await.is_err() {
        return Ok(());
    }
    let mut all: Vec<ModelEndpoint> = ctx
        .endpoints
        .state()
        .iter()
        .map(|e| (**e).clone())
        .collect();
    if let Some(c) = current {
        all.retain(|e| !(e.name_any() == c.name_any() && e.namespace() == c.namespace()));
        all.push(c.clone());
    }
    let aggregate = render_filters(&all, &ctx.settings);
    for (endpoint, why) in &aggregate.excluded {
        warn!(%endpoint, %why, "left out of the shared filter config");
    }
    let selector = LABEL_FILTER;
    let mut existing = BTreeMap::new();
    let namespaces: BTreeSet<&str> = [
        ctx.settings.mesh_root_namespace.as_str(),
        ctx.settings.gateway_namespace.as_str(),
    ]
    .into_iter()
    .collect();
    for ns in namespaces {
        existing.extend(list_existing(ctx, ns, selector, FOREIGN_KINDS).await?);
    }
    let mut keep = BTreeSet::new();
    for obj in &aggregate.objects {
        let key = key_of(obj)?;
        if !existing.get(&key).is_some_and(|have| contains(have, obj)) {
            apply_object(ctx, obj, &key).await?;
        }
        keep.insert(key);
    }
    for key in existing.keys().filter(|k| !keep.contains(*k)) {
        delete(ctx, key).await?;
    }
    Ok(())
}

/// Delete every object the operator puts outside an endpoint's namespace matching `selector`.
async fn prune(ctx: &Context, ns: &str, selector: &str) -> Result<(), Error> {
    for key in list_existing(ctx, ns, selector, FOREIGN_KINDS)
        .await?
        .keys()
    {
        delete(ctx, key).await?;
    }
    Ok(())
}

async fn delete(ctx: &Context, key: &Key) -> Result<(), Error> {
    let (version, ns, kind, name) = key;
    let ar = api_resource(version, kind).ok_or(Error::Malformed("known kind"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            ctx.metrics.write();
            info!(%kind, %name, namespace = %ns, "deleted");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Readiness of this endpoint's Deployments, by (variant, model), from the listed objects.
fn observe(existing: &BTreeMap<Key, Value>) -> Observed {
    let mut observed = Observed::default();
    for (_, d) in existing.iter().filter(|(k, _)| k.2 == "Deployment") {
        let labels = &d["metadata"]["labels"];
        let (Some(v), Some(m)) = (labels[LABEL_VARIANT].as_str(), labels[LABEL_MODEL].as_str())
        else {
            continue;
        };
        let int = |v: &Value| v.as_i64().and_then(|n| i32::try_from(n).ok());
        let r = Readiness {
            replicas: int(&d["spec"]["replicas"]).unwrap_or(1),
            ready_replicas: int(&d["status"]["readyReplicas"]).unwrap_or(0),
        };
        observed.deployments.insert((v.to_owned(), m.to_owned()), r);
    }
    observed
}

/// Write status with server-side apply, only when it changed.
async fn write_status(
    ctx: &Context,
    api: &Api<ModelEndpoint>,
    name: &str,
    last: Option<&ModelEndpointStatus>,
    status: ModelEndpointStatus,
) -> Result<(), Error> {
    if last.is_some_and(|l| same_status(l, &status)) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": ModelEndpoint::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.metrics.write();
    Ok(())
}

/// Whether `have` already holds everything `want` says (fields the server added are ignored;
/// an empty list or object in `want` matches a missing field).
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, wv)| match h.get(k) {
            Some(hv) => contains(hv, wv),
            None => is_empty(wv),
        }),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        (Value::Number(h), Value::Number(w)) => h.as_f64() == w.as_f64(),
        _ => have == want,
    }
}

/// Where `have` first differs from `want` (a JSON path), for the logs.
fn difference(have: &Value, want: &Value, at: String) -> String {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .find(|(k, wv)| {
                !h.get(*k)
                    .map_or_else(|| is_empty(wv), |hv| contains(hv, wv))
            })
            .map(|(k, wv)| match h.get(k) {
                Some(hv) => difference(hv, wv, format!("{at}.{k}")),
                None => format!("{at}.{k} missing"),
            })
            .unwrap_or(at),
        (Value::Array(h), Value::Array(w)) if h.len() == w.len() => h
            .iter()
            .zip(w)
            .enumerate()
            .find(|(_, (a, b))| !contains(a, b))
            .map(|(i, (a, b))| difference(a, b, format!("{at}[{i}]")))
            .unwrap_or(at),
        _ => format!("{at}: have {have}, want {want}"),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_do_not_count_as_a_difference_but_changed_values_do() {
        let want = json!({"spec": {"replicas": 1, "ports": [{"name": "http", "protocol": "TCP"}], "env": []}});
        let have = json!({"spec": {"replicas": 1, "ports": [{"name": "http", "protocol": "TCP", "targetPort": 8080}], "revisionHistoryLimit": 10}});
        assert!(contains(&have, &want));
        let changed =
            json!({"spec": {"replicas": 2, "ports": [{"name": "http", "protocol": "TCP"}]}});
        assert!(!contains(&have, &changed));
        let extra = json!({"spec": {"replicas": 1, "ports": [{"name": "http", "protocol": "TCP"}, {"name": "x"}]}});
        assert!(!contains(&have, &extra));
    }

    #[test]
    fn every_written_kind_has_an_api_resource() {
        for (v, k, plural) in KINDS {
            let ar = api_resource(v, k).unwrap();
            assert_eq!((ar.api_version.as_str(), ar.plural.as_str()), (*v, *plural));
        }
    }
}
