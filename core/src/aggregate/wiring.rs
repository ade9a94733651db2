//! The shared filter objects: an EnvoyFilter (ECDS) or a WasmPlugin delivering the filter
//! module and one config carrying every endpoint, for the sidecars or the gateway pods.

use super::Builds;
use crate::crd::FilterWiring;
use crate::envoy::{self, WasmCode, DYNAMIC_MODULE_TYPE_URL, FILTER_NAME, WASM_TYPE_URL};
use crate::meta::{
    istio, labels, RenderSettings, ENVOY_FILTER, FIELD_MANAGER, LABEL_FILTER, LABEL_MANAGED_BY,
    WASM_PLUGIN,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Type URL of Envoy's RBAC HTTP filter: the pass-through fallback (no rules = allow all).
pub(crate) const RBAC_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Stat prefix of the fallback, so a proxy running without the filter shows in its stats.
pub const FALLBACK_STAT_PREFIX: &str = "mlep_filter_fallback_";
/// How long Istio's agent may spend fetching the module, retries included (the whole fetch
/// shares this deadline, pkg/wasm/cache.go): how long a new proxy waits for the fallback.
const MODULE_FETCH_TIMEOUT: &str = "10s";
/// How long a listener waits for the filter's first config before serving without it.
const INITIAL_FETCH_TIMEOUT: &str = "15s";

/// What the EnvoyFilter wiring patches into routes: the endpoints' virtual hosts, the only
/// ones the filter runs on, and per virtual host an uncompared shadow's mirror policy
/// ([`crate::mirror::NativeMirror::policy`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Routes {
    /// The virtual hosts of endpoints on the Wasm build.
    pub virtual_hosts: Vec<String>,
    /// The virtual hosts of endpoints on the native build (`RenderSettings::native_filter`).
    pub native_hosts: Vec<String>,
    pub mirrors: Vec<RouteMirror>,
}

impl Routes {
    /// Only what is patched into `virtual_hosts`.
    pub fn on(&self, virtual_hosts: &[String]) -> Routes {
        let within = |list: &[String]| {
            (list.iter())
                .filter(|v| virtual_hosts.contains(v))
                .cloned()
                .collect()
        };
        Routes {
            virtual_hosts: within(&self.virtual_hosts),
            native_hosts: within(&self.native_hosts),
            mirrors: (self.mirrors.iter())
                .filter(|m| virtual_hosts.contains(&m.vhost))
                .cloned()
                .collect(),
        }
    }
}

/// Envoy's mirror on the routing routes of a virtual host: every one (`route` None), or the
/// one named `route` (a mirroring twin, `crate::mirror::MirrorOn::Twins`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RouteMirror {
    pub vhost: String,
    pub route: Option<String>,
    pub policy: Value,
}

/// A filter object of this wiring for the sidecars (`selector` None: every sidecar, outbound)
/// or for the gateway pods `selector` selects (see [`crate::aggregate`]); `routes`: what the
/// EnvoyFilter wiring patches into the endpoints' virtual hosts and routes.
pub(crate) fn filter_object(
    wiring: FilterWiring,
    metadata: ObjectMeta,
    selector: Option<&BTreeMap<String, String>>,
    builds: &Builds,
    routes: &Routes,
    settings: &RenderSettings,
) -> Value {
    let config = &builds.wasm;
    let ext = metadata
        .name
        .clone()
        .unwrap_or_else(|| FILTER_NAME.to_owned());
    let context = if selector.is_some() {
        "GATEWAY"
    } else {
        "SIDECAR_OUTBOUND"
    };
    match wiring {
        FilterWiring::EnvoyFilter => {
            let mut object = envoy_filter(metadata, selector, context, &ext, config, settings);
            if let Some(patches) = object["spec"]["configPatches"].as_array_mut() {
                patches.extend(virtual_host_patches(context, &ext, &routes.virtual_hosts));
                patches.extend(mirror_patches(context, &routes.mirrors));
                if let (Some(native), Some(module)) = (&builds.native, &settings.native_filter) {
                    let native_ext = format!("{ext}{NATIVE_SUFFIX}");
                    patches.extend(native_patches(context, &native_ext, module, native));
                    patches.extend(native_host_patches(
                        context,
                        &native_ext,
                        module,
                        &routes.native_hosts,
                    ));
                }
            }
            object
        }
        FilterWiring::WasmPlugin => wasm_plugin(metadata, selector, "CLIENT", config, settings),
    }
}

/// `outbound|<port>||<host>`: the Envoy cluster Istio builds for an in-cluster URL's Service.
fn outbound_cluster_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.to_owned()),
        _ if url.starts_with("https://") => (authority, "443".to_owned()),
        _ => (authority, "80".to_owned()),
    };
    format!("outbound|{port}||{host}")
}

/// The metadata of a shared filter object (not owned by any endpoint).
pub(crate) fn shared_meta(name: &str, namespace: &str, proxies: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels([
            (LABEL_FILTER, proxies),
            (LABEL_MANAGED_BY, FIELD_MANAGER),
        ])),
        ..ObjectMeta::default()
    }
}

/// An EnvoyFilter delivering the filter through ECDS, the form Istio's agent downloads.
///
/// Istio facts this relies on (checked in istio/istio):
/// - `pkg/wasm/convert.go` (`MaybeConvertWasmExtensionConfig`): istio-agent's xDS proxy
///   inspects every ECDS resource (`TypedExtensionConfig`); when its typed config is an Envoy
///   `envoy.extensions.filters.http.wasm.v3.Wasm` (directly or in a TypedStruct) whose
///   `vm_config.code.remote.http_uri` is set, the agent downloads the module itself (verifying
///   `sha256`, within the `http_uri` timeout), caches it and rewrites the config to a local file
///   before Envoy sees it; a failed fetch or checksum becomes an allow-all RBAC filter when
///   `fail_open`, a deny-all one otherwise. So the module must reach Envoy as
///   an ECDS resource: an `EXTENSION_CONFIG` patch carries it and the `HTTP_FILTER` patch
///   refers to it with `config_discovery` from `ads` — the two-EnvoyFilter form of Istio's
///   "Distributing WebAssembly Modules" guide (istio.io/v1.10/docs/ops/configuration/
///   extensibility/wasm-module-distribution/). An inline `remote` in a plain HTTP_FILTER patch
///   would make Envoy fetch it itself, which needs a cluster for the operator in Envoy's config.
/// - `pkg/wasm/ssrf.go`: the agent refuses link-local and cloud-metadata addresses but allows
///   private and loopback ranges, so an in-cluster URL (the operator's Service) is fine.
fn envoy_filter(
    metadata: ObjectMeta,
    selector: Option<&BTreeMap<String, String>>,
    context: &str,
    ext_name: &str,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    // Keep traffic flowing if the module cannot be loaded; the filter itself fails open on bad
    // configs too (it counts mlep_config_errors_total).
    // `fail_open`: Istio's agent reads it (pkg/wasm/convert.go `httpWasmFailOpen`): when the
    // module cannot be fetched or fails its sha256, it hands Envoy an allow-all RBAC filter
    // under this name instead of a deny-all one. `cluster`: Envoy requires one; the agent
    // rewrites the source to a local file first, and should a proxy ever fetch by itself this
    // is the cluster Istio builds for the URL's Service.
    let cluster = outbound_cluster_of(&settings.wasm_url);
    let code = WasmCode::Remote {
        uri: &settings.wasm_url,
        cluster: &cluster,
        sha256: &settings.wasm_sha256,
    };
    let mut wasm = envoy::wasm_filter(ext_name, code, &config.to_string(), true);
    wasm["config"]["vm_config"]["code"]["remote"]["http_uri"]["timeout"] =
        json!(MODULE_FETCH_TIMEOUT);
    let mut spec = json!({
        "configPatches": [
            extension_patch(ext_name, &wasm),
            chain_patch(context, ext_name, WASM_TYPE_URL),
        ],
    });
    if let Some(labels) = selector {
        spec["workloadSelector"] = json!({ "labels": labels });
    }
    istio(&ENVOY_FILTER, metadata, spec)
}

/// The ECDS resource `ext_name`: the filter's `typed_config`.
fn extension_patch(ext_name: &str, typed: &Value) -> Value {
    json!({
        "applyTo": "EXTENSION_CONFIG",
        "patch": { "operation": "ADD", "value": { "name": ext_name, "typed_config": typed } },
    })
}

/// The filter `ext_name` in the HTTP chain before the router: off in every chain (the
/// endpoints' virtual hosts turn it on: `virtual_host_patches`, `native_host_patches`,
/// `crate::envoy::EndpointRoute`), its config from ECDS as a `type_url` resource.
fn chain_patch(context: &str, ext_name: &str, type_url: &str) -> Value {
    json!({
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": context,
            "listener": { "filterChain": { "filter": {
                "name": envoy::HTTP_CONNECTION_MANAGER,
                "subFilter": { "name": envoy::ROUTER },
            } } },
        },
        "patch": {
            "operation": "INSERT_BEFORE",
            "value": {
                "name": ext_name,
                "disabled": true,
                "config_discovery": {
                    // Bounded: a listener waits at most this long for the first config, then
                    // serves with `default_config`.
                    "config_source": { "ads": {}, "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT },
                    // The agent's fallback for a Wasm module it cannot fetch is an RBAC
                    // filter: Envoy must accept that type here, or it rejects the fallback and
                    // the filter has no config: every request on the listener gets a 500
                    // (measured on the bed, docs/operator.md).
                    "type_urls": [type_url, RBAC_TYPE_URL],
                    // Until (or unless) a config arrives: pass everything, unassigned (the
                    // VirtualService's weighted default route still splits).
                    "default_config": {
                        "@type": RBAC_TYPE_URL,
                        "rules_stat_prefix": FALLBACK_STAT_PREFIX,
                    },
                },
            },
        },
    })
}

/// The native build's filter beside the Wasm one: `<ext>-native`.
pub const NATIVE_SUFFIX: &str = "-native";

/// The native build in the chain: its ECDS resource (the module at `module` on the proxy,
/// `config` the endpoints it serves) and its place before the router, off except where a
/// virtual host enables it ([`native_host_patches`]). Until its config arrives, and if the
/// module cannot be loaded (Envoy refuses the resource), the default is the same pass-through
/// RBAC filter as the Wasm build's fallback.
fn native_patches(context: &str, ext_name: &str, module: &str, config: &Value) -> [Value; 2] {
    let typed = envoy::native_filter(module, &config.to_string());
    [
        extension_patch(ext_name, &typed),
        chain_patch(context, ext_name, DYNAMIC_MODULE_TYPE_URL),
    ]
}

/// One `VIRTUAL_HOST` MERGE per virtual host of an endpoint on the native build, enabling
/// `ext_name` there with the per-route config naming the virtual host (the module's
/// endpoint identity, [`envoy::native_filter_enabled`]).
fn native_host_patches<'a>(
    context: &'a str,
    ext_name: &'a str,
    module: &'a str,
    virtual_hosts: &'a [String],
) -> impl Iterator<Item = Value> + 'a {
    virtual_hosts.iter().map(move |v| {
        host_patch(
            context,
            v,
            envoy::native_filter_enabled(ext_name, module, v),
        )
    })
}

/// One `VIRTUAL_HOST` MERGE per endpoint virtual host, enabling the filter `ext_name` there.
fn virtual_host_patches<'a>(
    context: &'a str,
    ext_name: &'a str,
    virtual_hosts: &'a [String],
) -> impl Iterator<Item = Value> + 'a {
    virtual_hosts
        .iter()
        .map(move |v| host_patch(context, v, envoy::filter_enabled(ext_name)))
}

/// A `VIRTUAL_HOST` MERGE of `per_filter` into the virtual host `vhost`'s
/// `typed_per_filter_config`. Matched by name: Istio names sidecar and gateway virtual hosts
/// `<host>:<port>` ([`envoy::virtual_host_name`]); a patch naming a virtual host a proxy lacks
/// does nothing.
fn host_patch(context: &str, vhost: &str, per_filter: Value) -> Value {
    json!({
        "applyTo": "VIRTUAL_HOST",
        "match": { "context": context, "routeConfiguration": { "vhost": { "name": vhost } } },
        "patch": { "operation": "MERGE", "value": { "typed_per_filter_config": per_filter } },
    })
}

/// One `HTTP_ROUTE` MERGE per [`RouteMirror`]: matched by the virtual host, the action
/// `ROUTE` and, for a twin, the route's name (Istio names a route after the VirtualService's
/// HTTP route, pilot/pkg/networking/core/route/route.go, and `routeMatch` in
/// pilot/pkg/networking/core/envoyfilter/rc_patch.go compares it); without a name it applies
/// to every routing route there, so the header routes and the weighted default all copy.
/// Istio's own `HTTPMirrorPolicy` cannot drop headers from the copy (istio/istio#50811); the
/// VirtualService's 0 % mirror only keeps the shadow's cluster built
/// (`crate::render::istio`), and Istio renders no policy for 0 %, so this is the only one.
fn mirror_patches<'a>(
    context: &'a str,
    mirrors: &'a [RouteMirror],
) -> impl Iterator<Item = Value> + 'a {
    mirrors.iter().map(move |m| {
        let mut route = json!({ "action": "ROUTE" });
        if let Some(name) = &m.route {
            route["name"] = json!(name);
        }
        let policy = &m.policy;
        json!({
            "applyTo": "HTTP_ROUTE",
            // Only routing routes: on a gateway, other VirtualServices of the same host share
            // the virtual host, and a `route` merged into a redirect or direct response would
            // make it an action without a cluster, which Envoy rejects with the whole config.
            "match": {
                "context": context,
                "routeConfiguration": { "vhost": { "name": m.vhost, "route": route } },
            },
            "patch": {
                "operation": "MERGE",
                "value": { "route": { "request_mirror_policies": [policy] } },
            },
        })
    })
}

/// A WasmPlugin: istiod turns it into the same ECDS resource with a remote `http_uri`, which
/// istio-agent downloads and verifies against `sha256` (see `envoy_filter`).
fn wasm_plugin(
    metadata: ObjectMeta,
    selector: Option<&BTreeMap<String, String>>,
    mode: &str,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    let mut spec = json!({
        "url": settings.wasm_url,
        "sha256": settings.wasm_sha256,
        "pluginName": FILTER_NAME,
        "phase": "STATS",
        "failStrategy": "FAIL_OPEN",
        "pluginConfig": config,
        "match": [{ "mode": mode }],
    });
    if let Some(labels) = selector {
        spec["selector"] = json!({ "matchLabels": labels });
    }
    istio(&WASM_PLUGIN, metadata, spec)
}
