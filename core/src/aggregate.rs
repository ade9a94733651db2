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
use crate::host_claims::{endpoint_id, host_owners};
use crate::meta::{Kind, RenderSettings, KINDS, SERVICE_PORT};
use crate::mirror::{MirrorOn, NativeMirror};
use kube_core::ResourceExt;
use mlep_contract::{EndpointConfig, FilterConfig, CONFIG_VERSION};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use wiring::{filter_object, shared_meta, RouteMirror, Routes};

mod wiring;

pub use crate::meta::LABEL_FILTER;
pub use wiring::FALLBACK_STAT_PREFIX;
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
    let route = EndpointRoute {
        virtual_hosts: mesh_virtual_hosts(&name, &ns, cluster_domain, &ep.spec.hosts, SERVICE_PORT),
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
    // An endpoint claiming a host another one, created first, keeps is not in the filter.
    let claims = host_owners(endpoints, &settings.cluster_domain);
    let mut conflicts = Vec::new();
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
    let mut out = filters_for(entries, settings);
    out.excluded.extend(conflicts);
    out
}

/// The filter objects for these endpoint entries (any order; the result is sorted by
/// `namespace/name`).
pub fn filters_for(
    mut entries: Vec<(FilterWiring, EndpointConfig)>,
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
    for (wiring, mut configs) in by_wiring {
        if configs.is_empty() {
            continue;
        }
        let mut routes = Routes::default();
        for c in &mut configs {
            // Routes carry an uncompared shadow as Envoy's own mirror where the wiring can
            // patch them (crate::mirror); the filter then leaves that shadow alone.
            let mirror = wiring
                .patches_routes()
                .then(|| NativeMirror::take(&mut c.shadow));
            if let Some(m) = mirror.flatten() {
                routes.mirrors.extend(route_mirrors(c, &m));
            }
            routes.virtual_hosts.extend(c.virtual_hosts.iter().cloned());
        }
        let config = json!(FilterConfig {
            version: CONFIG_VERSION,
            endpoints: configs,
        });
        out.objects.push(filter_object(
            wiring,
            shared_meta(SIDECAR_FILTER, &settings.mesh_root_namespace, "sidecars"),
            None,
            &config,
            &routes,
            settings,
        ));
        out.objects.push(filter_object(
            wiring,
            shared_meta(GATEWAY_FILTER, &settings.gateway_namespace, "gateway"),
            Some(&settings.gateway_selector),
            &config,
            &routes,
            settings,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ModelEndpointSpec, ModelEndpointStatus, VariantSpec, VariantStatus};
    use mlep_contract::Allocation;

    fn endpoint(ns: &str, name: &str, host: &str, weights: (u32, u32)) -> ModelEndpoint {
        let mut e = ModelEndpoint::new(
            name,
            ModelEndpointSpec::new(
                vec![host.into()],
                vec![
                    VariantSpec::new("a", "m1", weights.0),
                    VariantSpec::new("b", "m2", weights.1),
                ],
            ),
        );
        e.metadata.namespace = Some(ns.into());
        let status_variant = |n: &str, w: u32| VariantStatus {
            name: n.into(),
            model: "m".into(),
            desired_weight: w,
            current_weight: w,
            ..VariantStatus::default()
        };
        e.status = Some(ModelEndpointStatus {
            variants: vec![
                status_variant("a", weights.0),
                status_variant("b", weights.1),
            ],
            allocation: Allocation::initial(&[("a", weights.0), ("b", weights.1)]).ok(),
            route_key: Some(format!("{ns}-{name}-route-key-test")),
            ..ModelEndpointStatus::default()
        });
        e
    }

    fn config_of(obj: &Value) -> FilterConfig {
        let text = obj["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
            ["configuration"]["value"]
            .as_str()
            .unwrap();
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn every_endpoint_shares_one_filter_per_proxy_kind() {
        let eps = [
            endpoint("ml", "titanic", "titanic.example.com", (80, 20)),
            endpoint("ml", "iris", "iris.example.com", (50, 50)),
            endpoint("other", "churn", "*.churn.example.com", (10, 90)),
        ];
        let agg = render_filters(&eps, &RenderSettings::default());
        assert!(agg.excluded.is_empty(), "{:?}", agg.excluded);
        assert_eq!(
            agg.objects.len(),
            2,
            "one for the sidecars, one for the gateway"
        );
        let sidecars = &agg.objects[0];
        assert_eq!(sidecars["metadata"]["name"], SIDECAR_FILTER);
        assert_eq!(sidecars["metadata"]["namespace"], "istio-system");
        assert!(sidecars["spec"].get("workloadSelector").is_none());
        assert_eq!(
            sidecars["spec"]["configPatches"][1]["match"]["context"],
            "SIDECAR_OUTBOUND"
        );
        let gateway = &agg.objects[1];
        assert_eq!(gateway["metadata"]["name"], GATEWAY_FILTER);
        assert_eq!(
            gateway["spec"]["workloadSelector"]["labels"],
            json!({"istio": "ingressgateway"})
        );
        for obj in &agg.objects {
            let cfg = config_of(obj);
            cfg.validate().unwrap();
            let names: Vec<_> = cfg
                .endpoints
                .iter()
                .map(|e| format!("{}/{}", e.namespace, e.name))
                .collect();
            assert_eq!(names, ["ml/iris", "ml/titanic", "other/churn"]);
        }
        // The filter is off in the chain and on for exactly the endpoints' virtual hosts.
        for obj in &agg.objects {
            let patches = obj["spec"]["configPatches"].as_array().unwrap();
            assert_eq!(patches[1]["patch"]["value"]["disabled"], true);
            let ext = patches[1]["patch"]["value"]["name"].as_str().unwrap();
            let enabled: Vec<&str> = patches[2..]
                .iter()
                .inspect(|p| {
                    assert_eq!(p["applyTo"], "VIRTUAL_HOST");
                    assert_eq!(p["match"]["context"], patches[1]["match"]["context"]);
                    let on = &p["patch"]["value"]["typed_per_filter_config"][ext];
                    assert_eq!(on["@type"], crate::envoy::FILTER_CONFIG_TYPE_URL);
                    assert_eq!(on["config"]["@type"], crate::envoy::RBAC_PER_ROUTE_TYPE_URL);
                })
                .map(|p| {
                    p["match"]["routeConfiguration"]["vhost"]["name"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            assert_eq!(
                enabled,
                [
                    "iris.ml.svc.cluster.local:80",
                    "iris.example.com:80",
                    "titanic.ml.svc.cluster.local:80",
                    "titanic.example.com:80",
                    "churn.other.svc.cluster.local:80",
                    "*.churn.example.com:80",
                ]
            );
        }
        // The persisted allocation and route key: the filter agrees with the status.
        let cfg = config_of(&agg.objects[0]);
        assert_eq!(cfg.endpoints[1].route_key, "ml-titanic-route-key-test");
        assert_eq!(
            Some(&cfg.endpoints[1].allocation),
            eps[0].status.as_ref().unwrap().allocation.as_ref()
        );
    }

    #[test]
    fn an_uncompared_shadow_is_envoys_mirror_on_every_route_where_routes_can_be_patched() {
        let mut titanic = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
        let mut iris = endpoint("ml", "iris", "iris.example.com", (50, 50));
        let shadow = json!({"model": "m3", "percent": 25.0, "compare": "Off"});
        titanic.spec.shadow = serde_json::from_value(shadow.clone()).ok();
        iris.spec.shadow = serde_json::from_value(json!({"model": "m3", "percent": 25.0})).ok();
        for e in [&mut titanic, &mut iris] {
            e.status.as_mut().unwrap().shadow_model = Some("m3".into());
        }
        let agg = render_filters(&[titanic.clone(), iris], &RenderSettings::default());
        for obj in &agg.objects {
            let cfg = config_of(obj);
            let shadows: Vec<_> = cfg.endpoints.iter().map(|e| e.shadow.is_some()).collect();
            assert_eq!(
                shadows,
                [true, false],
                "iris compares (the filter copies), titanic not"
            );
            let patches = obj["spec"]["configPatches"].as_array().unwrap();
            let mirrored: Vec<_> = patches
                .iter()
                .filter(|p| p["applyTo"] == "HTTP_ROUTE")
                .map(|p| {
                    assert_eq!(p["match"]["context"], patches[1]["match"]["context"]);
                    // Every routing route, whatever its name; never a redirect.
                    assert_eq!(
                        p["match"]["routeConfiguration"]["vhost"]["route"],
                        json!({"action": "ROUTE"})
                    );
                    let policy = &p["patch"]["value"]["route"]["request_mirror_policies"][0];
                    assert_eq!(
                        policy["cluster"],
                        "outbound|80||titanic-shadow.ml.svc.cluster.local"
                    );
                    assert_eq!(
                        policy["runtime_fraction"]["default_value"]["numerator"],
                        250_000
                    );
                    p["match"]["routeConfiguration"]["vhost"]["name"].clone()
                })
                .collect();
            assert_eq!(
                mirrored,
                ["titanic.ml.svc.cluster.local:80", "titanic.example.com:80"]
            );
        }
        // A WasmPlugin cannot patch routes: its filter keeps copying.
        titanic.spec.filter_wiring = FilterWiring::WasmPlugin;
        let agg = render_filters(&[titanic.clone()], &RenderSettings::default());
        let cfg: FilterConfig =
            serde_json::from_value(agg.objects[0]["spec"]["pluginConfig"].clone()).unwrap();
        assert!(cfg.endpoints[0].shadow.is_some());
    }

    #[test]
    fn a_sampled_comparison_stays_the_filters_and_envoy_mirrors_on_each_header_routes_twin() {
        let mut iris = endpoint("ml", "iris", "iris.example.com", (50, 50));
        iris.spec.shadow =
            serde_json::from_value(json!({"model": "m3", "percent": 25.0, "comparePercent": 10.0}))
                .ok();
        iris.status.as_mut().unwrap().shadow_model = Some("m3".into());
        // Before the reconcile that applied the twins says so (an operator upgrade, an invalid
        // spec asking for them): the routes may have none, so the filter sends every copy.
        let agg = render_filters(&[iris.clone()], &RenderSettings::default());
        for obj in &agg.objects {
            let shadow = config_of(obj).endpoints[0].shadow.clone().unwrap();
            assert!(!shadow.mirror_routes);
            let json = serde_json::to_string(obj).unwrap();
            assert!(!json.contains("request_mirror_policies"), "{json}");
        }
        let text = crate::observe::exposition([&iris]);
        assert!(!text.contains("mlep_shadow_mirrored_info{"), "{text}");
        iris.status.as_mut().unwrap().mirror_twins = true;
        let agg = render_filters(&[iris.clone()], &RenderSettings::default());
        for obj in &agg.objects {
            let shadow = config_of(obj).endpoints[0].shadow.clone().unwrap();
            assert!(
                shadow.mirror_routes,
                "the filter sends uncompared copies to the twins"
            );
            assert_eq!((shadow.percent, shadow.compare.percent), (25.0, 10.0));
            let patches = obj["spec"]["configPatches"].as_array().unwrap();
            let mut twins: Vec<(String, String)> = patches
                .iter()
                .filter(|p| p["applyTo"] == "HTTP_ROUTE")
                .map(|p| {
                    let policy = &p["patch"]["value"]["route"]["request_mirror_policies"][0];
                    assert_eq!(
                        policy["runtime_fraction"]["default_value"]["numerator"], 1_000_000,
                        "a twin copies every request the filter sends it"
                    );
                    let vhost = &p["match"]["routeConfiguration"]["vhost"];
                    assert_eq!(vhost["route"]["action"], "ROUTE");
                    let name = |v: &Value| v.as_str().unwrap().to_owned();
                    (name(&vhost["name"]), name(&vhost["route"]["name"]))
                })
                .collect();
            twins.sort();
            let expected: Vec<(String, String)> =
                ["iris.example.com:80", "iris.ml.svc.cluster.local:80"]
                    .iter()
                    .flat_map(|v| {
                        ["variant-a.mirror", "variant-b.mirror"]
                            .map(|r| ((*v).to_owned(), r.to_owned()))
                    })
                    .collect();
            assert_eq!(twins, expected);
        }
        // The mark that has the recording rules read the shadow's cluster: all its copies.
        let text = crate::observe::exposition([&iris]);
        assert!(text.contains("mlep_shadow_mirrored_info{"), "{text}");
    }

    #[test]
    fn a_shadow_gets_copies_only_once_status_says_its_model_has_a_ready_pod() {
        let mut titanic = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
        let mut iris = endpoint("ml", "iris", "iris.example.com", (50, 50));
        titanic.spec.shadow =
            serde_json::from_value(json!({"model": "m3", "percent": 25.0, "compare": "Off"})).ok();
        iris.spec.shadow = serde_json::from_value(json!({"model": "m3", "percent": 25.0})).ok();
        let copies = |eps: &[ModelEndpoint]| {
            let agg = render_filters(eps, &RenderSettings::default());
            let cfg = config_of(&agg.objects[0]);
            let filter: Vec<_> = cfg.endpoints.iter().map(|e| e.shadow.is_some()).collect();
            let mirror = serde_json::to_string(&agg.objects[0])
                .unwrap()
                .contains("request_mirror_policies");
            (filter, mirror)
        };
        // Not ready yet, or only the model the shadow had before (a swap of shadow models).
        for ready in [None, Some("m2")] {
            for e in [&mut titanic, &mut iris] {
                e.status.as_mut().unwrap().shadow_model = ready.map(Into::into);
            }
            let eps = [titanic.clone(), iris.clone()];
            assert_eq!(copies(&eps), (vec![false, false], false), "{ready:?}");
        }
        for e in [&mut titanic, &mut iris] {
            e.status.as_mut().unwrap().shadow_model = Some("m3".into());
        }
        let eps = [titanic.clone(), iris.clone()];
        assert_eq!(copies(&eps), (vec![true, false], true));
    }

    #[test]
    fn a_sleeping_variant_is_marked_with_how_to_wake_it_and_probe_it() {
        let mut ep = endpoint("ml", "titanic", "t.example.com", (80, 20));
        if let Some(st) = ep.status.as_mut() {
            st.variants[1].autoscaling = Some(crate::crd::VariantAutoscalingStatus {
                asleep_since_unix: Some(100),
                ..Default::default()
            });
        }
        let settings = RenderSettings::default().with_module(&"ab".repeat(32), "ops");
        let cfg = served_config(&ep, &settings).unwrap();
        assert_eq!(cfg.variants[0].asleep, None);
        let fqdn = "titanic.ml.svc.cluster.local";
        assert_eq!(
            cfg.variants[1].asleep,
            Some(mlep_contract::WakeConfig {
                cluster: "outbound|8080||mlep-operator.ops.svc.cluster.local".into(),
                authority: "mlep-operator.ops.svc.cluster.local".into(),
                path: "/wake/ml/titanic/b".into(),
                probe_cluster: format!("outbound|80|b|{fqdn}"),
                probe_authority: fqdn.into(),
                timeout_ms: mlep_contract::wake::DEFAULT_WAKE_TIMEOUT_MS,
            })
        );
        // Another variant's rollout leaves the mark: b's subset still has no pod.
        if let Some(st) = ep.status.as_mut() {
            st.rollout = Some(crate::crd::RolloutStatus {
                phase: crate::crd::Phase::Progressing,
                variant: "a".into(),
                from_model: "m1".into(),
                to_model: "m3".into(),
                step: 1,
                moved_buckets: vec![mlep_contract::rollout::Span { start: 0, end: 500 }],
                step_started_unix: Some(1),
                ..Default::default()
            });
        }
        let cfg = served_config(&ep, &settings).unwrap();
        assert!(cfg.variants[0].rollout.is_some(), "a rolls out");
        assert!(
            cfg.variants[1].asleep.is_some(),
            "b is still held while a rolls out"
        );
    }

    #[test]
    fn every_rendered_filter_object_is_a_shared_object_by_name() {
        let settings = RenderSettings {
            mesh_root_namespace: "mesh-root".into(),
            gateway_namespace: "gateways".into(),
            ..RenderSettings::default()
        };
        let mut plugin = endpoint("ml", "iris", "iris.example.com", (50, 50));
        plugin.spec.filter_wiring = FilterWiring::WasmPlugin;
        let eps = [endpoint("ml", "titanic", "t.example.com", (80, 20)), plugin];
        let agg = render_filters(&eps, &settings);
        assert_eq!(agg.objects.len(), 4, "both wirings, both proxy kinds");
        let allowed = shared_objects(&settings);
        assert_eq!(allowed.len(), 4);
        for obj in &agg.objects {
            let kind = Kind::of(
                obj["apiVersion"].as_str().unwrap(),
                obj["kind"].as_str().unwrap(),
            )
            .unwrap();
            let at = (
                obj["metadata"]["namespace"].as_str(),
                obj["metadata"]["name"].as_str(),
            );
            assert!(
                allowed
                    .iter()
                    .any(|s| s.kind == kind && (Some(s.namespace), Some(s.name)) == at),
                "{} {at:?} is not a shared object",
                kind.kind
            );
        }
    }

    #[test]
    fn the_shared_filter_carries_a_running_rollout_from_status() {
        use crate::crd::{Phase, RolloutStatus};
        use mlep_contract::rollout::Span;
        let mut ep = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
        let moved = vec![Span {
            start: 8000,
            end: 8500,
        }];
        let status = ep.status.as_mut().unwrap();
        status.rollout = Some(RolloutStatus {
            phase: Phase::Progressing,
            variant: "b".into(),
            from_model: "m2".into(),
            to_model: "m3".into(),
            step: 1,
            moved_buckets: moved.clone(),
            step_started_unix: Some(1),
            ..RolloutStatus::default()
        });
        let cfg = config_of(&render_filters(&[ep.clone()], &RenderSettings::default()).objects[0]);
        let b = &cfg.endpoints[0].variants[1];
        assert_eq!(
            b.model, "m2",
            "the variant's own entry serves the old model"
        );
        let split = b.rollout.as_ref().expect("the moved users' split");
        assert_eq!((split.model.as_str(), &split.buckets), ("m3", &moved));
        // A rollback clears the moved buckets: nobody stays on the new model.
        let r = ep.status.as_mut().unwrap().rollout.as_mut().unwrap();
        r.phase = Phase::RolledBack;
        r.moved_buckets.clear();
        let cfg = config_of(&render_filters(&[ep], &RenderSettings::default()).objects[0]);
        assert!(cfg.endpoints[0].variants[1].rollout.is_none());
    }

    #[test]
    fn the_endpoint_created_first_keeps_a_contested_host_in_the_shared_filter() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let mut early = endpoint("z", "early", "same.example.com", (80, 20));
        early.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let mut late = endpoint("a", "late", "same.example.com", (80, 20));
        late.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:09Z".parse().unwrap()));
        let agg = render_filters(&[late.clone(), early.clone()], &RenderSettings::default());
        let names: Vec<_> = config_of(&agg.objects[0])
            .endpoints
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["early"]);
        assert_eq!(agg.excluded.len(), 1);
        assert_eq!(agg.excluded[0].0, "a/late");
        assert!(agg.excluded[0].1.contains("z/early"), "{:?}", agg.excluded);
        // The first being deleted hands the host over.
        early.metadata.deletion_timestamp = Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
        let agg = render_filters(&[late, early], &RenderSettings::default());
        assert!(agg.excluded.is_empty());
        assert_eq!(config_of(&agg.objects[0]).endpoints[0].name, "late");
    }

    #[test]
    fn the_aggregate_does_not_depend_on_the_order_endpoints_are_seen() {
        let a = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
        let b = endpoint("ml", "iris", "iris.example.com", (50, 50));
        let s = RenderSettings::default();
        assert_eq!(
            render_filters(&[a.clone(), b.clone()], &s),
            render_filters(&[b, a], &s)
        );
    }

    #[test]
    fn an_endpoint_not_rendered_yet_or_being_deleted_is_left_out_and_a_host_clash_is_reported() {
        let mut fresh = endpoint("ml", "fresh", "fresh.example.com", (80, 20));
        fresh.status = None;
        let mut keyless = endpoint("ml", "keyless", "keyless.example.com", (80, 20));
        keyless.status.as_mut().unwrap().route_key = None;
        let mut going = endpoint("ml", "going", "going.example.com", (80, 20));
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        let first = endpoint("a", "one", "same.example.com", (80, 20));
        let second = endpoint("b", "two", "same.example.com", (80, 20));
        let agg = render_filters(
            &[fresh, keyless, going, second, first],
            &RenderSettings::default(),
        );
        let names: Vec<_> = config_of(&agg.objects[0])
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names, ["one"]);
        assert_eq!(agg.excluded.len(), 1);
        assert_eq!(agg.excluded[0].0, "b/two");
        assert!(agg.excluded[0].1.contains("same.example.com"));
        assert!(render_filters(&[], &RenderSettings::default())
            .objects
            .is_empty());
    }
}
