//! One filter per proxy: the filter objects carry every endpoint a proxy serves.
//!
//! A Wasm filter costs every request that crosses it the V8 floor (~11 µs CPU here, see
//! docs/filter.md), so N per-endpoint filters in a chain cost N floors. Instead the operator
//! renders, from all ModelEndpoints of the cluster:
//! - `mlep-sidecars` in the mesh's root namespace (`istio-system`): no workload selector, context
//!   `SIDECAR_OUTBOUND`. Every in-mesh client must run the filter: a sidecar without it would
//!   route a client-sent `x-mlep-variant` (the VirtualService's header routes are visible to
//!   every namespace), around `allowTargeting: false`. The filter sits only on HTTP chains and
//!   passes requests for hosts it does not know untouched.
//! - `mlep-gateway` in the ingress gateway's namespace, selecting the gateway pods, context
//!   `GATEWAY`: every endpoint too (an endpoint reached through a Gateway of its own, `spec.gateway`,
//!   is still served by these pods).
//!
//! Each endpoint's entry is what its own reconcile decided and persisted in its status: the
//! routed (current) weights and the bucket allocation, so rebuilding the aggregate from the API
//! state after any change (or an operator restart) gives the same bytes. An endpoint that was
//! never rendered (no `status.allocation`) is not in it yet; an endpoint being deleted is left
//! out. Two endpoints claiming the same external host cannot share a filter config: the one
//! created first keeps it (`crate::host_claims`), the others are left out and reported (and
//! not wired: their reconcile rejects them with `HostConflict`). [`filters_for`], given entries
//! without creation times (`mlep render`), still leaves out the later `namespace/name`.
//!
//! Endpoints asking for `filterWiring: WasmPlugin` go into WasmPlugins of the same names, so a
//! cluster mixing both wirings has at most two filters per proxy.

use crate::crd::{FilterWiring, ModelEndpoint};
use crate::envoy::{self, mesh_virtual_hosts, CallTarget, EndpointRoute};
use crate::filter_config::apply_rollout;
use crate::filter_config::{endpoint_config, Targets};
use crate::host_claims::{endpoint_id, first_not_permitted, host_owners, Claimant};
use crate::meta::{Kind, RenderSettings, KINDS, SERVICE_PORT};
use crate::mirror::{MirrorOn, NativeMirror};
use crate::validate::validate_hosts;
use kube_core::ResourceExt;
use mlep_contract::{endpoint_needs_wasm, EndpointConfig, FilterConfig, CONFIG_VERSION};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use wiring::{filter_object, shared_meta, RouteMirror, Routes};

mod wiring;

pub use crate::meta::LABEL_FILTER;
pub use wiring::{FALLBACK_STAT_PREFIX, NATIVE_SUFFIX};
/// Where the EnvoyFilter wiring puts an endpoint's [`NativeMirror`]: every routing route of
/// its virtual hosts, or only the twins of the header routes the filter can name.
fn route_mirrors(c: &EndpointConfig, m: &NativeMirror) -> Vec<RouteMirror> {
    let policy = m.policy();
    let names = match m.on {
        MirrorOn::EveryRoute => vec![None],
        MirrorOn::Twins => envoy::twin_route_names(c).into_iter().map(Some).collect(),
    };
    c.virtual_hosts
        .iter()
        .flat_map(|vhost| {
            names.iter().map(|route| RouteMirror {
                vhost: vhost.clone(),
                route: route.clone(),
                policy: policy.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) use wiring::RBAC_TYPE_URL;

/// Name of the filter object for every sidecar (in the mesh root namespace).
pub const SIDECAR_FILTER: &str = "mlep-sidecars";
/// Name of the filter object for the ingress gateway (in its namespace).
pub const GATEWAY_FILTER: &str = "mlep-gateway";

/// One object the operator may write outside endpoints' namespaces: a shared filter object,
/// by kind, namespace and name. Its RBAC grants these names only (`resourceNames`), and the
/// operator refuses to write any other object there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SharedObject<'s> {
    pub kind: &'static Kind,
    pub namespace: &'s str,
    pub name: &'static str,
}

/// Every object [`render_filters`] may render under `settings`: each shared kind (EnvoyFilter,
/// WasmPlugin) as [`SIDECAR_FILTER`] in the mesh root namespace and as [`GATEWAY_FILTER`] in
/// the gateway's.
pub fn shared_objects(settings: &RenderSettings) -> Vec<SharedObject<'_>> {
    let places = [
        (settings.mesh_root_namespace.as_str(), SIDECAR_FILTER),
        (settings.gateway_namespace.as_str(), GATEWAY_FILTER),
    ];
    KINDS
        .iter()
        .filter(|k| k.shared)
        .flat_map(|kind| {
            places.map(|(namespace, name)| SharedObject {
                kind,
                namespace,
                name,
            })
        })
        .collect()
}

/// Whether `ep`'s spec needs the filter's Wasm build whatever its state: data capture, or a
/// variant that may sleep (held requests); a compared shadow runs on either build. From the
/// spec, so an endpoint does not move between the builds when a variant falls asleep
/// (`mlep_contract::needs_wasm` judges a config's current state; this one its possible
/// states).
pub fn spec_needs_wasm(ep: &ModelEndpoint) -> bool {
    let spec = &ep.spec;
    let may_sleep =
        (spec.variants.iter()).any(|v| v.autoscaling.as_ref().is_some_and(|a| a.min_replicas == 0));
    let captures = (spec.data_capture.as_ref()).is_some_and(|c| c.enabled());
    captures || may_sleep
}

/// The endpoints (`namespace/name`) among `endpoints` whose spec needs the Wasm build
/// ([`spec_needs_wasm`]), as [`filters_for`] takes them.
pub fn wasm_only<'a>(endpoints: impl IntoIterator<Item = &'a ModelEndpoint>) -> BTreeSet<String> {
    (endpoints.into_iter())
        .filter(|e| spec_needs_wasm(e))
        .map(endpoint_id)
        .collect()
}

/// The aggregate filter objects, and the endpoints left out with the reason.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aggregate {
    pub objects: Vec<Value>,
    pub excluded: Vec<(String, String)>,
}

/// The filter entry an endpoint serves with now, from its spec and the status its last
/// reconcile wrote; `None` before its first successful render.
pub fn served_config(ep: &ModelEndpoint, settings: &RenderSettings) -> Option<EndpointConfig> {
    let cluster_domain = settings.cluster_domain.as_str();
    let status = ep.status.as_ref()?;
    let allocation = status.allocation.as_ref()?;
    let ns = ep.namespace().unwrap_or_else(|| "default".to_owned());
    let name = ep.name_any();
    let weights: Vec<(&str, u32)> = ep
        .spec
        .variants
        .iter()
        .map(|v| {
            let w = status
                .variants
                .iter()
                .find(|s| s.name == v.name)
                .map_or(0, |s| s.current_weight);
            (v.name.as_str(), w)
        })
        .collect();
    // Copies go to the shadow once its model has a ready pod, as the reconcile recorded
    // (`crate::plan::Plan::shadow_ready`): before, every copy would be a 503.
    let shadow = (ep.spec.shadow.as_ref())
        .filter(|s| status.shadow_model.as_ref() == Some(&s.model))
        .map(|_| CallTarget::shadow_istio(&name, &ns, cluster_domain, SERVICE_PORT));
    // Not before its reconcile chose a route key: the routes would not know the filter's values.
    let key = status
        .route_key
        .clone()
        .filter(|k| mlep_contract::is_route_key(k))?;
    // External hosts are served on the endpoint's gateways only (`crate::render`): without one
    // they name nothing of the endpoint's anywhere, and a gateway virtual host of that name is
    // someone else's, never patched.
    let on_gateway = ep.spec.gateway.is_some() || ep.spec.expose == Some(true);
    let hosts: &[String] = if on_gateway { &ep.spec.hosts } else { &[] };
    let route = EndpointRoute {
        virtual_hosts: mesh_virtual_hosts(&name, &ns, cluster_domain, hosts, SERVICE_PORT),
        key,
    };
    let entry = endpoint_config(
        &name,
        &ns,
        &ep.spec,
        &weights,
        Some(allocation),
        Targets {
            shadow,
            capture: ep
                .spec
                .data_capture
                .as_ref()
                .map(|_| CallTarget::capture_istio(&name, &ns, cluster_domain)),
        },
        route,
    )
    .ok()?;
    let rollout = status
        .rollout
        .as_ref()
        .and_then(|r| crate::rollout::served_plan(ep.spec.rollout.as_ref(), r));
    let fqdn = format!("{name}.{ns}.svc.{cluster_domain}");
    let mut entry = entry;
    // Twins only once the reconcile that applied them says so: before, the VirtualService
    // serving may be one without them (an upgrade, an invalid spec asking for them).
    if let Some(s) = entry.shadow.as_mut() {
        s.mirror_routes &= status.mirror_twins;
    }
    let entry = match rollout {
        Some((plan, serving)) => apply_rollout(entry, &plan, Some(&serving), &fqdn),
        None => entry,
    };
    // Marks stay whatever rolls out: another variant's rollout must not leave a sleeping one
    // unheld (its subset has no pod), and one whose rollout began while it slept keeps its mark
    // until a pod is ready (`crate::autoscale::sleep`).
    Some(mark_asleep(entry, status, &settings.wake, &fqdn))
}

/// Mark the variants status says sleep (scaled to zero, `crate::autoscale::sleep`): the filter
/// holds their requests, wakes them through the operator (`wake`) and probes the variant's own
/// subset cluster (`outbound|80|<variant>|<fqdn>`, checked on the bed: a name Envoy does not
/// know makes the call fail at once) until it answers.
fn mark_asleep(
    mut entry: EndpointConfig,
    status: &crate::crd::ModelEndpointStatus,
    wake: &CallTarget,
    fqdn: &str,
) -> EndpointConfig {
    for v in &mut entry.variants {
        let asleep = status
            .variants
            .iter()
            .find(|s| s.name == v.name)
            .and_then(|s| s.autoscaling.as_ref())
            .is_some_and(|a| a.asleep_since_unix.is_some());
        if asleep {
            // The variant's own subset is named after it (`crate::render`'s DestinationRule);
            // only a rollout's other model has a `<variant>-<model>` subset.
            let subset = &v.name;
            v.asleep = Some(mlep_contract::WakeConfig {
                cluster: wake.cluster.clone(),
                authority: wake.authority.clone(),
                path: mlep_contract::wake::wake_path(&entry.namespace, &entry.name, &v.name),
                probe_cluster: format!("outbound|{SERVICE_PORT}|{subset}|{fqdn}"),
                probe_authority: fqdn.to_owned(),
                timeout_ms: mlep_contract::wake::DEFAULT_WAKE_TIMEOUT_MS,
            });
        }
    }
    entry
}

/// The filter objects for all these endpoints (any order; the result is sorted).
pub fn render_filters(endpoints: &[ModelEndpoint], settings: &RenderSettings) -> Aggregate {
    // What serves is what the operator accepted: a spec rejected since (another namespace's
    // host, a host held by an older endpoint) must not reach the proxies through a neighbour's
    // reconcile, which rebuilds this aggregate.
    let mut conflicts = Vec::new();
    let endpoints: Vec<ModelEndpoint> = endpoints
        .iter()
        .filter_map(|e| {
            let served = as_served(e, settings);
            if served.is_none() {
                let why = "no accepted spec, or it claims a host it may not".to_owned();
                conflicts.push((endpoint_id(e), why));
            }
            served
        })
        .collect();
    let endpoints = endpoints.as_slice();
    // An endpoint claiming a host another one, created first, keeps is not in the filter.
    let claims = host_owners(endpoints, &settings.cluster_domain);
    let entries = endpoints
        .iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
        .filter(|e| match claims.held_by_others(e).first() {
            None => true,
            Some(held) => {
                let why = format!("host {:?} is held by {}", held.host, held.holder);
                conflicts.push((endpoint_id(e), why));
                false
            }
        })
        .filter_map(|e| {
            let cfg = served_config(e, settings)?;
            Some((e.spec.filter_wiring, cfg))
        })
        .collect();
    let mut out = filters_for(entries, &wasm_only(endpoints), settings);
    out.excluded.extend(conflicts);
    out
}

/// `ep` with the spec that serves: the one its last successful reconcile accepted
/// (`status.servedSpec`). A status written before that field existed has none: then the
/// current spec, if its hosts are its own to claim. `None` (left out until a reconcile
/// accepts a spec) also when a host is no longer among `settings.allowed_hosts` (the
/// operator's policy was narrowed since).
pub fn as_served(ep: &ModelEndpoint, settings: &RenderSettings) -> Option<ModelEndpoint> {
    let ns = ep.namespace().unwrap_or_else(|| "default".to_owned());
    let name = ep.name_any();
    let who = Claimant {
        namespace: &ns,
        name: &name,
        cluster_domain: &settings.cluster_domain,
    };
    // The accepted spec's hosts are checked again: status is writable by whoever may write
    // `modelendpoints/status`, which should be the operator alone, but is not proof.
    let spec = (ep.status.as_ref())
        .and_then(|s| s.served_spec.clone())
        .unwrap_or_else(|| ep.spec.clone());
    validate_hosts(&spec, &who).ok()?;
    if first_not_permitted(&spec.hosts, &who, &settings.allowed_hosts).is_some() {
        return None;
    }
    let mut ep = ep.clone();
    ep.spec = spec;
    Some(ep)
}

/// The filter objects for these endpoint entries (any order; the result is sorted by
/// `namespace/name`). `wasm_only`: the endpoints (`namespace/name`) whose spec needs the Wasm
/// build ([`spec_needs_wasm`]); the others run on the native build where
/// `settings.native_filter` says the proxies have it.
pub fn filters_for(
    mut entries: Vec<(FilterWiring, EndpointConfig)>,
    wasm_only: &BTreeSet<String>,
    settings: &RenderSettings,
) -> Aggregate {
    entries.sort_by(|a, b| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name)));
    let mut out = Aggregate::default();
    let mut by_wiring: [(FilterWiring, Vec<EndpointConfig>); 2] = [
        (FilterWiring::EnvoyFilter, Vec::new()),
        (FilterWiring::WasmPlugin, Vec::new()),
    ];
    let mut hosts = BTreeSet::new();
    for (wiring, cfg) in entries {
        let id = format!("{}/{}", cfg.namespace, cfg.name);
        let single = FilterConfig {
            version: CONFIG_VERSION,
            endpoints: vec![cfg.clone()],
        };
        if let Err(e) = single.validate() {
            out.excluded
                .push((id, format!("the filter would reject it: {e}")));
            continue;
        }
        let claimed = cfg.virtual_hosts.clone();
        if let Some(h) = claimed.iter().find(|h| hosts.contains(*h)) {
            out.excluded
                .push((id, format!("host {h:?} is claimed by another endpoint")));
            continue;
        }
        hosts.extend(claimed);
        if let Some((_, list)) = by_wiring.iter_mut().find(|(w, _)| *w == wiring) {
            list.push(cfg);
        }
    }
    for (wiring, configs) in by_wiring {
        if !configs.is_empty() {
            out.objects
                .extend(filter_objects(wiring, configs, wasm_only, settings));
        }
    }
    out
}

/// Whether `c` runs on the native build, where the proxies have it (`available`): the
/// EnvoyFilter wiring (a WasmPlugin cannot patch virtual hosts), and neither its spec
/// (`wasm_only`) nor its current config needs the Wasm build.
fn on_native(
    wiring: FilterWiring,
    c: &EndpointConfig,
    wasm_only: &BTreeSet<String>,
    available: bool,
) -> bool {
    available
        && wiring.patches_routes()
        && !wasm_only.contains(&format!("{}/{}", c.namespace, c.name))
        && endpoint_needs_wasm(c).is_none()
}

/// The sidecars' and the gateway's filter objects of `wiring` for these entries.
fn filter_objects(
    wiring: FilterWiring,
    mut configs: Vec<EndpointConfig>,
    wasm_only: &BTreeSet<String>,
    settings: &RenderSettings,
) -> [Value; 2] {
    let mut routes = Routes::default();
    let mut own_services = Vec::new();
    let mut native = Vec::new();
    for c in &mut configs {
        // Routes carry an uncompared shadow as Envoy's own mirror where the wiring can
        // patch them (crate::mirror); the filter then leaves that shadow alone.
        let mirror = wiring
            .patches_routes()
            .then(|| NativeMirror::take(&mut c.shadow));
        if let Some(m) = mirror.flatten() {
            routes.mirrors.extend(route_mirrors(c, &m));
        }
        let on_native = on_native(wiring, c, wasm_only, settings.native_filter.is_some());
        let hosts = match on_native {
            true => &mut routes.native_hosts,
            false => &mut routes.virtual_hosts,
        };
        hosts.extend(c.virtual_hosts.iter().cloned());
        native.push(on_native);
        own_services.push(envoy::service_virtual_host(
            &c.name,
            &c.namespace,
            &settings.cluster_domain,
            SERVICE_PORT,
        ));
    }
    // A sidecar serves an endpoint on its own Service names only: its external hosts are
    // the gateway's (`crate::render`), and a virtual host of that name on a sidecar is
    // someone else's (a ServiceEntry, another team's VirtualService), never patched.
    let sidecar_routes = routes.on(&own_services);
    // The same on sidecars, where the filter knows an endpoint by its Service only (a
    // WasmPlugin runs on every virtual host there).
    let sidecar_configs: Vec<EndpointConfig> = (configs.iter().cloned())
        .map(|mut c| {
            c.virtual_hosts.retain(|v| own_services.contains(v));
            c
        })
        .collect();
    let sidecar = Builds::split(sidecar_configs, &native);
    let gateway = Builds::split(configs, &native);
    [
        filter_object(
            wiring,
            shared_meta(SIDECAR_FILTER, &settings.mesh_root_namespace, "sidecars"),
            None,
            &sidecar,
            &sidecar_routes,
            settings,
        ),
        filter_object(
            wiring,
            shared_meta(GATEWAY_FILTER, &settings.gateway_namespace, "gateway"),
            Some(&settings.gateway_selector),
            &gateway,
            &routes,
            settings,
        ),
    ]
}

/// One proxy class's filter configs: the Wasm build's and, when any endpoint runs natively,
/// the native build's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Builds {
    pub wasm: Value,
    pub native: Option<Value>,
}

impl Builds {
    /// `configs` split by `native` (one flag per config, in order).
    fn split(configs: Vec<EndpointConfig>, native: &[bool]) -> Self {
        let (on_native, on_wasm): (Vec<_>, Vec<_>) =
            (configs.into_iter().zip(native)).partition(|(_, n)| **n);
        let config = |list: Vec<(EndpointConfig, &bool)>| {
            json!(FilterConfig {
                version: CONFIG_VERSION,
                endpoints: list.into_iter().map(|(c, _)| c).collect(),
            })
        };
        Self {
            native: (!on_native.is_empty()).then(|| config(on_native)),
            wasm: config(on_wasm),
        }
    }
}

#[cfg(test)]
mod tests;
