//! The reconciler: list the endpoint's children, decide (`mlep_core::reconcile`: plan, rollout
//! step, status, requeue), render, apply, write status. Thin: every decision is the core's;
//! this file talks to the API server.

use crate::metrics::Metrics;
use crate::scope::{touched, watch, Scope};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use mlep_core::crd::conditions::REASON_HOST_CONFLICT;
use mlep_core::crd::{Model, ModelEndpoint, ModelEndpointStatus, ModelSpec};
use mlep_core::host_claims::{host_owners_under, share_a_host};
use mlep_core::meta::{Kind, DEPLOYMENT, VIRTUAL_SERVICE};
use mlep_core::plan::{Observed, Readiness};
use mlep_core::reconcile::{self as decision, Decision, Requeue};
use mlep_core::render::{
    render_endpoint, RenderSettings, FIELD_MANAGER, LABEL_ENDPOINT, LABEL_MODEL, LABEL_VARIANT,
};
use mlep_core::rollout::Now;
use mlep_core::status::same_status;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, instrument, warn};

/// Finalizer on every ModelEndpoint: removes its entry from the shared filter objects (in the
/// mesh root and gateway namespaces), which ownerReferences cannot reach.
pub const FINALIZER: &str = "modelendpoints.mlep.dev";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("{0} has no uid")]
    NoUid(String),
    #[error("rendered object has no {0}")]
    Malformed(&'static str),
    #[error("finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("no randomness for a route key: {0}")]
    Random(String),
    #[error("refusing to write {0}: not a shared filter object")]
    NotShared(String),
}

impl Error {
    /// Short label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "ApiError",
            Error::Kube(_) => "ApiUnreachable",
            Error::NoNamespace(_) => "NoNamespace",
            Error::NoUid(_) => "NoUid",
            Error::Malformed(_) => "Malformed",
            Error::Random(_) => "Random",
            Error::NotShared(_) => "NotShared",
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
    /// Who publishes the Events core decides (`crate::events`).
    pub reporter: Reporter,
    /// The request-rate autoscaler's memory (`crate::autoscale`).
    pub autoscaler: crate::autoscale::Shared,
}

/// Reconciles running at once.
pub const CONCURRENCY: u16 = 4;

/// The kinds the operator writes (`mlep_core::meta::KINDS`: the one table reconcile, RBAC and
/// the benchmark read).
pub use mlep_core::meta::KINDS;

/// The kinds the operator writes in an endpoint's namespace (not the shared filter objects,
/// `crate::filters`).
fn endpoint_kinds() -> impl Iterator<Item = &'static Kind> {
    KINDS.iter().filter(|k| !k.shared)
}

fn api_resource(kind: &Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group(), kind.version(), kind.kind),
        kind.plural,
    )
}

/// The Model cache, filled once before it is returned, and the task keeping it current.
async fn model_cache(
    client: &Client,
    scope: &Scope,
) -> (Store<Model>, tokio::task::JoinHandle<()>) {
    let (models, writer) = reflector::store::<Model>();
    let cache = reflector(
        writer,
        watch::<Model>(scope, client, watcher::Config::default()),
    )
    .touched_objects()
    .for_each(|_| futures::future::ready(()));
    let task = tokio::spawn(cache);
    let _ = models.wait_until_ready().await;
    (models, task)
}

/// The controller of `K` in `scope`: one cache, one trigger stream, however many namespaces.
fn controller_of<K>(client: &Client, scope: &Scope) -> Controller<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let trigger = reflector(
        writer,
        watch::<K>(scope, client, watcher::Config::default()),
    )
    .applied_objects();
    Controller::for_stream(trigger, reader)
}

/// Run the controller until `shutdown` resolves: a Model cache, and the ModelEndpoint
/// controller owning Deployments, over the namespaces of `scope`.
pub async fn run(
    client: Client,
    settings: RenderSettings,
    metrics: Arc<Metrics>,
    scope: &Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (models, model_task) = model_cache(&client, scope).await;
    let controller = controller_of::<ModelEndpoint>(&client, scope);
    let endpoint_store = controller.store();
    metrics.observe_endpoints(endpoint_store.clone());
    let neighbours_store = endpoint_store.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        metrics,
        models,
        endpoints: endpoint_store.clone(),
        filters: tokio::sync::Mutex::new(()),
        reporter: crate::events::reporter(),
        autoscaler: Default::default(),
    });

    let models_task = spawn_model_controller(&client, scope, ctx.clone());

    let labelled = || watcher::Config::default().labels(LABEL_ENDPOINT);
    controller
        .owns_stream(touched::<Deployment>(scope, &client, labelled()))
        // A model pod's crash, kill or failed init names the failure in its endpoint's status.
        .watches_stream(touched::<Pod>(scope, &client, labelled()), |p: Pod| {
            crate::pods::endpoint_of(&p)
        })
        .watches_stream(
            touched::<Model>(scope, &client, watcher::Config::default()),
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
        // A host handed over: the endpoints waiting for it, or losing it, look again.
        .watches_stream(
            touched::<ModelEndpoint>(scope, &client, watcher::Config::default()),
            move |e: ModelEndpoint| host_neighbours(&neighbours_store, &e),
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

/// Models get a status of their own: Ready when their spec is valid.
fn spawn_model_controller(
    client: &Client,
    scope: &Scope,
    ctx: Arc<Context>,
) -> tokio::task::JoinHandle<()> {
    let models_controller = controller_of::<Model>(client, scope)
        .run(reconcile_model, model_error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "model reconcile stream");
            }
        });
    tokio::spawn(models_controller)
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
    let status = mlep_core::status::model_status(&m, ctx.settings.pod_security, clock().text);
    if m.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let api: Api<Model> = Api::namespaced(ctx.client.clone(), &ns);
    patch_status(ctx.as_ref(), &api, &m.name_any(), &status).await?;
    let events = mlep_core::events::model_events(m.status.as_ref(), &status);
    let regarding = m.object_ref(&());
    crate::events::publish(
        &ctx.client,
        &ctx.reporter,
        &ctx.metrics,
        &regarding,
        &events,
    )
    .await;
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
            FinalizerEvent::Cleanup(ep) => cleanup(&ep, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(started.elapsed());
    result
}

/// Remove what ownerReferences cannot: the endpoint's entry in the shared filter objects.
async fn cleanup(ep: &ModelEndpoint, ctx: &Context) -> Result<Action, Error> {
    crate::filters::sync(ctx, Some(ep)).await?;
    crate::autoscale::forget(ctx, &ep.namespace().unwrap_or_default(), &ep.name_any());
    info!("cleaned up");
    Ok(Action::await_change())
}

async fn apply(ep: &ModelEndpoint, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let name = ep.name_any();
    let models = models_in(ctx, ns);
    let endpoints: Api<ModelEndpoint> = Api::namespaced(ctx.client.clone(), ns);
    let children = children_of(ctx, ns, &name).await?;
    let observed = observe(&children.deployments);
    let now = clock();
    let fresh_route_key = fresh_route_key()?;
    let claims = host_owners_under(
        &with_current(ctx, ep),
        &ctx.settings.cluster_domain,
        &ctx.settings.allowed_hosts,
    );
    let failures = crate::pods::failures(&ctx.client, ns, &children.deployments, now.unix).await?;
    let input = decision::Input {
        endpoint: ep,
        namespace: ns,
        last: ep.status.as_ref(),
        models: Some(&models),
        claims: Some(&claims),
        observed: &observed,
        failures: &failures,
        now: &now,
        route_grace_seconds: ctx.settings.route_grace_seconds,
        fresh_route_key: &fresh_route_key,
    };
    let mut d = decide_with_analysis(ctx, &input).await;
    if d.rejected.is_none() {
        crate::autoscale::scale(ctx, ep, ns, &observed, &mut d, &now).await;
    }
    for w in &d.warnings {
        warn!(endpoint = %name, error = %w, "ignoring annotation");
    }
    if let Some(e) = &d.rejected {
        // Nothing rendered changes: the last good configuration keeps serving, except that
        // external hosts leave the mesh (an older operator bound them there).
        info!(field = %e.field, reason = e.reason, "invalid spec");
        unbind_external_from_mesh(ctx, ns, &name, &children).await?;
    } else {
        render_and_sync(ctx, &input, &models, &mut d, &children).await?;
    }
    write_status(ctx, &endpoints, &name, input.last, &d.status).await?;
    // Written, then told: a failed write decides (and tells) again on the next reconcile.
    let regarding = ep.object_ref(&());
    crate::events::publish(
        &ctx.client,
        &ctx.reporter,
        &ctx.metrics,
        &regarding,
        &d.events,
    )
    .await;
    if d.rejected.is_none() {
        // The shared filter objects, with this endpoint's new status (the cache may lag).
        let mut fresh = ep.clone();
        fresh.status = Some(d.status.clone());
        crate::filters::sync(ctx, Some(&fresh)).await?;
    }
    Ok(match d.requeue {
        Requeue::After(s) => Action::requeue(Duration::from_secs(s)),
        Requeue::AwaitChange => Action::await_change(),
    })
}

/// Split the endpoint's VirtualService if an older operator bound its external hosts to
/// `mesh` (`mlep_core::render::unbind_external_from_mesh`); the routes stay as they were.
async fn unbind_external_from_mesh(
    ctx: &Context,
    ns: &str,
    name: &str,
    children: &Children,
) -> Result<(), Error> {
    let key = ObjectKey {
        kind: &VIRTUAL_SERVICE,
        namespace: ns.to_owned(),
        name: name.to_owned(),
    };
    let Some(split) = children.objects.get(&key).and_then(|vs| {
        mlep_core::render::unbind_external_from_mesh(vs, &ctx.settings.cluster_domain)
    }) else {
        return Ok(());
    };
    for obj in &split {
        apply_object(ctx, obj, &ObjectKey::of(obj)?).await?;
    }
    info!("external hosts moved out of the mesh");
    Ok(())
}

/// Render `d`'s plan and apply it. When rendering fails, or a rendered name is held by an
/// object that is not this endpoint's (`NameConflict`: force-applying would take it over),
/// nothing is applied and `d` becomes the rejection.
async fn render_and_sync(
    ctx: &Context,
    input: &decision::Input<'_>,
    models: &BTreeMap<String, ModelSpec>,
    d: &mut Decision,
    children: &Children,
) -> Result<(), Error> {
    let (ep, ns) = (input.endpoint, input.namespace);
    let previous = input.last.and_then(|s| s.allocation.as_ref());
    let key = decision::route_key(input);
    let checked = match render_endpoint(ep, ns, models, &d.plan, previous, &key, &ctx.settings) {
        Ok(r) => crate::ownership::name_conflict(ctx, ep, &r.objects, &children.objects)
            .await?
            .map(|()| r),
        Err(e) => Err(e),
    };
    match checked {
        Ok(rendered) => sync_children(ctx, d, rendered.objects, &children.objects).await,
        Err(e) => {
            warn!(field = %e.field, reason = e.reason, error = %e.message, "not applied");
            *d = decision::rejected(input, e, Vec::new());
            Ok(())
        }
    }
}

/// The Models of namespace `ns`, by name.
fn models_in(ctx: &Context, ns: &str) -> BTreeMap<String, ModelSpec> {
    ctx.models
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns))
        .map(|m| (m.name_any(), m.spec.clone()))
        .collect()
}

/// Endpoint `name`'s children, one list per kind: what exists (to compare and prune) and the
/// Deployments' readiness.
async fn children_of(ctx: &Context, ns: &str, name: &str) -> Result<Children, Error> {
    let selector = format!("{LABEL_ENDPOINT}={name}");
    list_existing(ctx, ns, &selector, endpoint_kinds()).await
}

/// A fresh random route key (`mlep_core::envoy::new_route_key`).
fn fresh_route_key() -> Result<String, Error> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| Error::Random(e.to_string()))?;
    Ok(mlep_core::envoy::new_route_key(random))
}

/// The decision, with the rollout analysis's sample when it needs one. Only a Prometheus the
/// operator's configuration allows is ever contacted.
async fn decide_with_analysis(ctx: &Context, input: &decision::Input<'_>) -> Decision {
    match ctx.settings.prometheus.url_for(&input.endpoint.spec) {
        Err(e) => decision::rejected(input, e, Vec::new()),
        Ok(url) => {
            let sample = match decision::query(input) {
                Some(q) => Some(crate::rollout::query_prometheus(url, q).await),
                None => None,
            };
            decision::decide(input, sample)
        }
    }
}

/// Apply what is out of date among `rendered`, and remove what is no longer rendered (a
/// swapped-out model's Deployment, a removed variant once its grace period is over: until
/// then its objects stay as they are).
async fn sync_children(
    ctx: &Context,
    d: &Decision,
    rendered: Vec<Value>,
    existing: &BTreeMap<ObjectKey, Value>,
) -> Result<(), Error> {
    let mut keep = BTreeSet::new();
    for obj in &rendered {
        let key = ObjectKey::of(obj)?;
        match existing.get(&key) {
            Some(current) if contains(current, obj) => {}
            current => {
                let why = current.map_or_else(
                    || "missing".to_owned(),
                    |c| difference(c, obj, String::new()),
                );
                debug!(kind = %key.kind.kind, name = %key.name, %why, "out of date");
                apply_object(ctx, obj, &key).await?
            }
        }
        keep.insert(key);
    }
    let retiring_variant = |obj: &Value| {
        obj["metadata"]["labels"][LABEL_VARIANT]
            .as_str()
            .is_some_and(|v| d.plan.is_retiring(v))
    };
    for (key, _) in existing
        .iter()
        .filter(|(k, obj)| !keep.contains(*k) && !retiring_variant(obj))
    {
        delete(ctx, key).await?;
    }
    Ok(())
}

/// The one clock read of a reconcile: Unix seconds and RFC 3339 text (whole seconds).
fn clock() -> Now {
    let t = jiff::Timestamp::now();
    let text = t
        .round(jiff::Unit::Second)
        .map(|r| r.to_string())
        .unwrap_or_default();
    Now {
        unix: t.as_second(),
        text,
    }
}

/// Which object: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: &'static Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key of a rendered object (of a kind the operator writes).
    pub(crate) fn of(obj: &Value) -> Result<Self, Error> {
        fn s<'v>(v: &'v Value, f: &'static str) -> Result<&'v str, Error> {
            v.as_str().ok_or(Error::Malformed(f))
        }
        let kind = Kind::of(
            s(&obj["apiVersion"], "apiVersion")?,
            s(&obj["kind"], "kind")?,
        )
        .ok_or(Error::Malformed("known kind"))?;
        Ok(Self {
            kind,
            namespace: s(&obj["metadata"]["namespace"], "metadata.namespace")?.to_owned(),
            name: s(&obj["metadata"]["name"], "metadata.name")?.to_owned(),
        })
    }

    pub(crate) fn api(&self, client: &Client) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.namespace, &api_resource(self.kind))
    }
}

/// An endpoint's children as listed: every object by key (to compare with what is rendered,
/// and to prune), and its Deployments as typed objects (their readiness).
#[derive(Default)]
struct Children {
    objects: BTreeMap<ObjectKey, Value>,
    deployments: Vec<Deployment>,
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
    kinds: impl Iterator<Item = &'static Kind>,
) -> Result<Children, Error> {
    let mut out = Children::default();
    let params = ListParams::default().labels(selector).match_any();
    for kind in kinds {
        let key = |name: String| ObjectKey {
            kind,
            namespace: ns.to_owned(),
            name,
        };
        if *kind == DEPLOYMENT {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let Some(list) = not_served_as_empty(api.list(&params).await)? else {
                continue;
            };
            for d in list.items {
                // Typed objects serialize with their apiVersion and kind.
                let v = serde_json::to_value(&d)
                    .map_err(|_| Error::Malformed("serializable object"))?;
                out.objects.insert(key(d.name_any()), v);
                out.deployments.push(d);
            }
            continue;
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), ns, &api_resource(kind));
        let Some(list) = not_served_as_empty(api.list(&params).await)? else {
            continue;
        };
        for o in list.items {
            let mut v =
                serde_json::to_value(&o).map_err(|_| Error::Malformed("serializable object"))?;
            // Items of a list of built-in kinds carry no apiVersion/kind.
            v["apiVersion"] = Value::from(kind.api_version);
            v["kind"] = Value::from(kind.kind);
            out.objects.insert(key(o.name_any()), v);
        }
    }
    Ok(out)
}

/// A list of a kind the server does not serve (404) is none.
fn not_served_as_empty<T>(r: Result<T, kube::Error>) -> Result<Option<T>, Error> {
    match r {
        Ok(l) => Ok(Some(l)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn apply_object(ctx: &Context, obj: &Value, key: &ObjectKey) -> Result<(), Error> {
    key.api(&ctx.client)
        .patch(
            &key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    ctx.metrics.write();
    info!(kind = %key.kind.kind, name = %key.name, namespace = %key.namespace, "applied");
    Ok(())
}

/// Every cached endpoint, `current` replacing its cached version (the cache may lag).
pub(crate) fn with_current(ctx: &Context, current: &ModelEndpoint) -> Vec<ModelEndpoint> {
    let mut all: Vec<ModelEndpoint> = ctx
        .endpoints
        .state()
        .iter()
        .filter(|e| !(e.name_any() == current.name_any() && e.namespace() == current.namespace()))
        .map(|e| (**e).clone())
        .collect();
    all.push(current.clone());
    all
}

/// The endpoints to reconcile when `changed` changes or goes: those sharing a host with it
/// (it may now keep one of theirs) and those in `HostConflict` (it may have let their host
/// go: its new spec no longer says which).
fn host_neighbours(
    store: &Store<ModelEndpoint>,
    changed: &ModelEndpoint,
) -> Vec<ObjectRef<ModelEndpoint>> {
    let in_conflict = |e: &ModelEndpoint| {
        e.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.reason == REASON_HOST_CONFLICT)
        })
    };
    store
        .state()
        .into_iter()
        .filter(|e| !(e.name_any() == changed.name_any() && e.namespace() == changed.namespace()))
        .filter(|e| in_conflict(e) || share_a_host(e, changed))
        .map(|e| ObjectRef::from_obj(&*e))
        .collect()
}

pub(crate) async fn delete(ctx: &Context, key: &ObjectKey) -> Result<(), Error> {
    match key
        .api(&ctx.client)
        .delete(&key.name, &DeleteParams::background())
        .await
    {
        Ok(_) => {
            ctx.metrics.write();
            info!(kind = %key.kind.kind, name = %key.name, namespace = %key.namespace, "deleted");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Readiness of this endpoint's Deployments, by (variant, model), from their labels and status.
fn observe(deployments: &[Deployment]) -> Observed {
    let mut observed = Observed::default();
    for d in deployments {
        let labels = d.labels();
        let (Some(v), Some(m)) = (labels.get(LABEL_VARIANT), labels.get(LABEL_MODEL)) else {
            continue;
        };
        observed
            .deployments
            .insert((v.clone(), m.clone()), readiness(d));
    }
    observed
}

/// One Deployment's desired and ready replicas (1 and 0 when unset) and its last wake-up.
pub(crate) fn readiness(d: &Deployment) -> Readiness {
    Readiness {
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready_replicas: d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        woken_at: d
            .annotations()
            .get(mlep_core::autoscale::sleep::WOKEN_AT_ANNOTATION)
            .and_then(|t| t.parse().ok()),
    }
}

/// Write an endpoint's status, only when it changed.
async fn write_status(
    ctx: &Context,
    api: &Api<ModelEndpoint>,
    name: &str,
    last: Option<&ModelEndpointStatus>,
    status: &ModelEndpointStatus,
) -> Result<(), Error> {
    if last.is_some_and(|l| same_status(l, status)) {
        return Ok(());
    }
    patch_status(ctx, api, name, status).await
}

/// The one status write: server-side apply of `status` under the operator's field manager.
async fn patch_status<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
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
        assert!(KINDS.len() >= 8);
        for k in KINDS {
            let ar = api_resource(k);
            assert_eq!(
                (
                    ar.api_version.as_str(),
                    ar.kind.as_str(),
                    ar.plural.as_str()
                ),
                (k.api_version, k.kind, k.plural)
            );
        }
    }
}
