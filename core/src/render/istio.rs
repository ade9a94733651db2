//! The Istio routing objects of an endpoint: DestinationRule subsets, the VirtualService's
//! header routes and weighted default, the Gateway.

use super::Ctx;
use crate::crd::ModelEndpointSpec;
use crate::envoy::{self, subset_name, RouteHeaders, RouteInput, VariantRoutes, DEFAULT_ROUTE};
use crate::host_claims::{classify, Claimant, HostKind};
use crate::meta::{
    istio, DESTINATION_RULE, GATEWAY, LABEL_MODEL, LABEL_VERSION, SERVICE_PORT, VIRTUAL_SERVICE,
};
use crate::plan::Plan;
use mlep_contract::metrics::{MODEL_HEADER, VARIANT_HEADER};
use mlep_contract::routed_value;
use serde_json::{json, Value};

pub(super) fn destination_rule(ctx: &Ctx, plan: &Plan) -> Value {
    let mut subsets: Vec<Value> = plan
        .variants
        .iter()
        .map(|v| (&v.name, &v.serving_model))
        .chain(plan.retiring.iter().map(|r| (&r.name, &r.model)))
        .map(|(v, m)| json!({ "name": v, "labels": { LABEL_VERSION: v, LABEL_MODEL: m } }))
        .collect();
    // A rollout's other model gets its own subset for as long as it runs, from before its
    // route exists until after the route is gone (make before break: Envoy applies a route
    // naming a cluster it has not warmed yet, and answers 503; see `ROUTE_WARMUP_SECONDS`).
    for (variant, model) in rollout_subsets(plan) {
        subsets.push(json!({
            "name": subset_name(variant, model),
            "labels": { LABEL_VERSION: variant, LABEL_MODEL: model },
        }));
    }
    istio(
        &DESTINATION_RULE,
        ctx.meta(ctx.name, []),
        json!({ "host": ctx.fqdn(ctx.name), "subsets": subsets }),
    )
}

/// The filter (or Envoy's mirror, patched in by `crate::aggregate`) copies to the shadow's
/// Envoy cluster itself; a 0% mirror on the weighted default makes the shadow a destination
/// of the VirtualService, so proxies that only build clusters their routes reference
/// (gateways with cluster filtering) have it. Istio counts mirror hosts as destinations
/// (pilot/pkg/model/push_context.go) and renders no mirror policy for 0%
/// (pilot/pkg/networking/core/route/route.go `MirrorPercent`).
fn shadow_destination(ctx: &Ctx) -> Value {
    json!([{
        "destination": { "host": ctx.fqdn(&envoy::shadow_service(ctx.name)), "port": { "number": SERVICE_PORT } },
        "percentage": { "value": 0.0 },
    }])
}

/// The shadow Service's DestinationRule: Istio's default circuit breakers are unlimited, so
/// a shadow that stops answering would have Envoy's native mirror hold every copy for the
/// route's timeout. At most `MAX_SHADOW_COPIES_IN_FLIGHT` copies are in flight or queued per
/// proxy, as the filter's own copies are; the others fail at once (`upstream_rq_pending_overflow`,
/// counted as the shadow's errors). The primary's clusters are untouched.
pub(super) fn shadow_destination_rule(ctx: &Ctx) -> Value {
    let shadow = envoy::shadow_service(ctx.name);
    let most = mlep_contract::config::MAX_SHADOW_COPIES_IN_FLIGHT;
    istio(
        &DESTINATION_RULE,
        ctx.meta(&shadow, []),
        json!({
            "host": ctx.fqdn(&shadow),
            "trafficPolicy": { "connectionPool": { "http": {
                "http2MaxRequests": most,
                "http1MaxPendingRequests": most,
            } } },
        }),
    )
}

/// A route's `headers` manipulation ([`RouteHeaders`]): on a header route the plain variant
/// name back (request and response) and the model header removed; on the weighted default
/// both routing headers removed. Istio renders `set` as Envoy's `request_headers_to_add`
/// (overwrite) and `remove` as `request_headers_to_remove`, as local mode does itself.
fn headers(h: &RouteHeaders) -> Value {
    let mut out = json!({ "request": { "remove": h.remove } });
    if let Some((header, value)) = &h.set {
        out["request"]["set"] = json!({ *header: value });
        out["response"] = json!({ "set": { *header: value } });
    }
    out
}

pub(super) fn virtual_service(
    ctx: &Ctx,
    spec: &ModelEndpointSpec,
    plan: &Plan,
    route_key: &str,
) -> Vec<Value> {
    let host = ctx.fqdn(ctx.name);
    let dest = |subset: &str| json!({ "host": host, "subset": subset, "port": { "number": SERVICE_PORT } });
    let keyed = |name: &str| json!({ "exact": routed_value(name, route_key) });
    // A prefix: the value and its mirroring twin's (`<value>.mirror`, `crate::mirror`), so a
    // proxy whose filter config names twins before its routes have them still routes each
    // request to its variant (without the copy). Both carry the key, which no client has.
    let variant_keyed = |name: &str| json!({ "prefix": routed_value(name, route_key) });
    let routes = variant_routes(plan);
    let mut http: Vec<Value> = routes
        .header_routes()
        .map(|(name, v)| {
            json!({
                "name": name,
                "match": [{ "headers": { VARIANT_HEADER: variant_keyed(v) } }],
                "route": [{ "destination": dest(v) }],
                "headers": headers(&RouteHeaders::header_route(v)),
            })
        })
        .collect();
    // Users a rollout moved: the filter names their model; this route comes before their
    // variant's own, which still catches everyone else (and any request marked for a model
    // whose route is gone).
    if let Some((variant, model)) = rollout_route(plan) {
        let at = http
            .iter()
            .position(|r| r["name"] == format!("variant-{variant}"))
            .unwrap_or(0);
        let subset = subset_name(variant, model);
        http.insert(
            at,
            json!({
                "name": envoy::rollout_route_name(variant, model),
                "match": [{ "headers": {
                    VARIANT_HEADER: variant_keyed(variant),
                    MODEL_HEADER: keyed(model),
                } }],
                "route": [{ "destination": dest(&subset) }],
                "headers": headers(&RouteHeaders::header_route(variant)),
            }),
        );
    }
    let mut http = with_mirror_twins(spec, http);
    http.push(default_route(ctx, spec, &routes, dest));
    for route in &mut http {
        route["timeout"] = json!(envoy::ROUTE_TIMEOUT);
    }
    bind(ctx, spec, host, &http)
}

/// The endpoint's VirtualServices for `http`: the mesh's on its Service's names, and, when it
/// has gateways, theirs on its hosts.
fn bind(ctx: &Ctx, spec: &ModelEndpointSpec, host: String, http: &[Value]) -> Vec<Value> {
    let mut gateways = Vec::new();
    if let Some(g) = &spec.gateway {
        gateways.push(g.clone());
    }
    if spec.expose == Some(true) {
        gateways.push(format!("{}/{}", ctx.namespace, ctx.name));
    }
    // In the mesh the endpoint answers on its own Service's names only: an external host
    // bound to `mesh` would reach every sidecar and take in-mesh calls to that name (another
    // team's API, a cloud metadata name) from workloads that never asked for this endpoint.
    // External hosts are the gateway's, in a VirtualService of their own.
    let who = Claimant {
        namespace: ctx.namespace,
        name: ctx.name,
        cluster_domain: &ctx.settings.cluster_domain,
    };
    let mut mesh_hosts = own_service_hosts(&spec.hosts, &who);
    if !mesh_hosts.contains(&host) {
        mesh_hosts.push(host.clone());
    }
    // The gateway's first: an operator upgraded from one that bound every host in `E` moves
    // the external hosts to `E.gateway` before `E` lets them go (objects apply in order).
    let mut out = Vec::new();
    if !gateways.is_empty() {
        let mut hosts = spec.hosts.clone();
        if !hosts.contains(&host) {
            hosts.push(host.clone());
        }
        out.push(istio(
            &VIRTUAL_SERVICE,
            ctx.meta(&gateway_virtual_service(ctx.name), []),
            json!({ "hosts": hosts, "gateways": gateways, "http": http }),
        ));
    }
    out.push(istio(
        &VIRTUAL_SERVICE,
        ctx.meta(ctx.name, []),
        json!({ "hosts": mesh_hosts, "gateways": ["mesh"], "http": http }),
    ));
    out
}

/// An endpoint's VirtualService `existing` as an operator before the split rendered it (every
/// host bound to `mesh` and its gateways in one object) made into the two of today: `E.gateway`
/// (its gateways, every host; when it had any) and `E` (`mesh`, the endpoint's own Service names
/// only), with the same routes. `None` when `existing` binds no external host to `mesh`. For an
/// endpoint whose spec is rejected, which renders nothing: else such an endpoint kept binding
/// its external hosts in every sidecar across an upgrade.
pub fn unbind_external_from_mesh(existing: &Value, cluster_domain: &str) -> Option<Vec<Value>> {
    let meta = &existing["metadata"];
    let (name, namespace) = (meta["name"].as_str()?, meta["namespace"].as_str()?);
    let spec = &existing["spec"];
    let strings = |v: &Value| -> Vec<String> {
        (v.as_array().into_iter().flatten())
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };
    let (hosts, gateways) = (strings(&spec["hosts"]), strings(&spec["gateways"]));
    let who = Claimant {
        namespace,
        name,
        cluster_domain,
    };
    let mesh_hosts = own_service_hosts(&hosts, &who);
    if !gateways.iter().any(|g| g == "mesh") || mesh_hosts.len() == hosts.len() {
        return None;
    }
    let object = |name: String, hosts: Value, gateways: Value| {
        json!({
            "apiVersion": existing["apiVersion"],
            "kind": existing["kind"],
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": meta["labels"],
                "ownerReferences": meta["ownerReferences"],
            },
            "spec": { "hosts": hosts, "gateways": gateways, "http": spec["http"] },
        })
    };
    let others: Vec<&String> = gateways.iter().filter(|g| *g != "mesh").collect();
    let mut out = Vec::new();
    if !others.is_empty() {
        out.push(object(
            gateway_virtual_service(name),
            json!(hosts),
            json!(others),
        ));
    }
    out.push(object(name.to_owned(), json!(mesh_hosts), json!(["mesh"])));
    Some(out)
}

/// Those of `hosts` that name `who`'s own Service: the hosts the mesh knows it by.
fn own_service_hosts(hosts: &[String], who: &Claimant) -> Vec<String> {
    (hosts.iter())
        .filter(|h| classify(h, who) == Ok(HostKind::OwnService))
        .cloned()
        .collect()
}

/// The name of the VirtualService binding endpoint `name` to its gateways. The dot keeps it
/// from ever being another endpoint's VirtualService: an endpoint's name is its Service's, a
/// DNS label.
pub fn gateway_virtual_service(name: &str) -> String {
    format!("{name}.gateway")
}

/// The fallback for requests no header route took (the filter did not see them, or named a
/// variant or model with no route here): the routed weights, ready variants only, with both
/// routing headers removed so no model sees the route key.
fn default_route(
    ctx: &Ctx,
    spec: &ModelEndpointSpec,
    routes: &VariantRoutes,
    dest: impl Fn(&str) -> Value,
) -> Value {
    let default: Vec<Value> = match routes.weighted.as_slice() {
        [(one, _)] => vec![json!({ "destination": dest(one) })],
        many => many
            .iter()
            .map(|(v, w)| json!({ "destination": dest(v), "weight": w }))
            .collect(),
    };
    let mut fallback = json!({
        "name": DEFAULT_ROUTE,
        "route": default,
        "headers": headers(&RouteHeaders::weighted_default()),
    });
    if spec.shadow.is_some() {
        fallback["mirrors"] = shadow_destination(ctx);
    }
    fallback
}

/// The header routes `http`, each preceded by its mirroring twin when the shadow compares a
/// sample and the wiring patches routes: the filter sends the copies it does not compare to
/// the twins, which the EnvoyFilter wiring gives Envoy's mirror (`crate::mirror`). A twin
/// matches its value exactly and comes first; its route's prefix match would take it too.
fn with_mirror_twins(spec: &ModelEndpointSpec, http: Vec<Value>) -> Vec<Value> {
    if !spec.renders_mirror_twins() {
        return http;
    }
    http.into_iter()
        .flat_map(|r| {
            let twin = mirror_twin_route(&r);
            twin.into_iter().chain(std::iter::once(r))
        })
        .collect()
}

/// A header route's mirroring twin: the same route, named after it and matching the twin
/// ([`mlep_contract::mirror_twin`]) of its routed variant value exactly.
fn mirror_twin_route(route: &Value) -> Option<Value> {
    let name = route["name"].as_str()?;
    let value = route["match"][0]["headers"][VARIANT_HEADER]["prefix"].as_str()?;
    let mut twin = route.clone();
    twin["name"] = json!(mlep_contract::mirror_twin(name));
    twin["match"][0]["headers"][VARIANT_HEADER] =
        json!({ "exact": mlep_contract::mirror_twin(value) });
    Some(twin)
}

/// The per-variant routes of a plan (see [`VariantRoutes`]): by header to ready variants, by
/// weight to those with a routed weight.
/// A retiring variant keeps its header route (no weight): the filter no longer names it, but a
/// proxy on the previous filter config still may (`crate::plan::retiring`).
pub fn variant_routes(plan: &Plan) -> VariantRoutes {
    let live = plan.variants.iter().map(|v| RouteInput {
        name: &v.name,
        weight: v.weight,
        ready: v.ready,
    });
    let retiring = plan.retiring.iter().map(|r| RouteInput {
        name: &r.name,
        weight: 0,
        ready: true,
    });
    VariantRoutes::new(live.chain(retiring))
}

/// `(variant, model)` of each subset a rollout needs besides its variant's own: every model
/// it runs that the variant does not serve, and the model its route names.
fn rollout_subsets(plan: &Plan) -> Vec<(&str, &str)> {
    let Some(r) = plan.rollout.as_ref() else {
        return Vec::new();
    };
    let serving = plan
        .variants
        .iter()
        .find(|v| v.name == r.variant)
        .map(|v| v.serving_model.as_str());
    let mut models: Vec<&str> = r.models.iter().flatten().map(String::as_str).collect();
    models.extend(r.route_model.as_deref());
    models.sort_unstable();
    models.dedup();
    models
        .into_iter()
        .filter(|m| Some(*m) != serving || r.route_model.as_deref() == Some(*m))
        .map(|m| (r.variant.as_str(), m))
        .collect()
}

/// `(variant, model)` of a rollout's own route, if it needs one now.
fn rollout_route(plan: &Plan) -> Option<(&str, &str)> {
    let r = plan.rollout.as_ref()?;
    Some((r.variant.as_str(), r.route_model.as_deref()?))
}

pub(super) fn gateway(ctx: &Ctx, spec: &ModelEndpointSpec) -> Value {
    istio(
        &GATEWAY,
        ctx.meta(ctx.name, []),
        json!({
            "selector": ctx.settings.gateway_selector,
            "servers": [{
                "port": { "number": 80, "name": "http", "protocol": "HTTP" },
                "hosts": spec.hosts,
            }],
        }),
    )
}
