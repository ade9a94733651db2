//! docs/architecture.md: local mode renders "an Envoy bootstrap equivalent to what Istio + the operator
//! produce". This renders one endpoint both ways — the operator's objects (`mlep render`, the
//! rendering the operator applies) and local mode's bootstrap + ECDS file (the functions
//! `mlep local up` calls) — and checks that the filter gets the same configuration in the same
//! Wasm envelope, that the routes on `x-mlep-variant` and the weighted default agree, and that
//! both shadow targets lead to the shadow model's servers.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mlep::envoy::{self, BootstrapSpec, FilterBuilds};
use mlep::plan::{self, Role};
use mlep_contract::metrics::MODEL_HEADER;
use mlep_contract::{EndpointConfig, FilterConfig};
use mlep_core::envoy::CallTarget;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

const INPUT: &str = r#"
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata: {name: titanic-v1, namespace: ml}
spec:
  image: ghcr.io/k8smlendpoints/mlep-model-server:0.1.0
  artifact: {uri: "https://example.com/v1.tar.gz", sha256: "1111111111111111111111111111111111111111111111111111111111111111"}
---
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata: {name: titanic-v2, namespace: ml}
spec:
  image: ghcr.io/k8smlendpoints/mlep-model-server:0.1.0
  artifact: {uri: "https://example.com/v2.tar.gz", sha256: "2222222222222222222222222222222222222222222222222222222222222222"}
---
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata: {name: titanic-v3, namespace: ml}
spec:
  image: ghcr.io/k8smlendpoints/mlep-model-server:0.1.0
---
apiVersion: mlep.dev/v1alpha1
kind: ModelEndpoint
metadata: {name: titanic, namespace: ml}
spec:
  hosts: [titanic.example.com]
  variants:
    - {name: a, model: titanic-v1, weight: 70}
    - {name: b, model: titanic-v2, weight: 30}
  routing:
    sticky: {header: x-user-id}
    unknownTarget: Ignore
  shadow: {model: titanic-v3, percent: 25, compare: Exact, timeoutMs: 700}
"#;

/// The operator's side: every object `mlep render` prints (what the operator applies).
fn operator_objects(dir: &Path) -> Vec<Value> {
    let module = mlep::render::Module::Sha256("ab".repeat(32));
    let yaml = mlep::render::render_input(dir, &module, "mlep-system").unwrap();
    yaml.split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The configuration string inside a Wasm filter envelope, parsed.
fn config_in(wasm: &Value) -> FilterConfig {
    FilterConfig::from_json(
        wasm["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .as_bytes(),
    )
    .unwrap()
}

/// The envelope without what legitimately differs: where the module comes from, the
/// extension's name, the failure policy (Istio's agent fetches remotely and falls back to
/// allow-all; local mode loads a file and reloads a crashed VM).
fn envelope(wasm: &Value) -> Value {
    let mut w = wasm.clone();
    let c = w["config"].as_object_mut().unwrap();
    // Local mode reloads a crashed VM (FAIL_RELOAD); in Istio the agent's fail-open fallback
    // applies instead (docs/operator.md).
    for k in [
        "name",
        "fail_open",
        "failure_policy",
        "reload_config",
        "configuration",
    ] {
        c.remove(k);
    }
    c["vm_config"].as_object_mut().unwrap().remove("code");
    w
}

struct Local {
    bootstrap: Value,
    ecds: Value,
    shadow_addr: SocketAddr,
}

/// Local mode's side, with every server set given its own fake address.
fn local(dir: &Path) -> Local {
    let input = mlep::load::load(dir).unwrap();
    let d = plan::desired(&input).unwrap();
    let cfg = plan::filter_config(&d, &BTreeMap::new(), "equivalence-local-key").unwrap();
    let addr_of = |role: &Role| -> SocketAddr {
        match role {
            Role::Variant(v) if v == "a" => "127.0.0.1:9001",
            Role::Variant(_) => "127.0.0.1:9002",
            Role::Shadow => "127.0.0.1:9003",
        }
        .parse()
        .unwrap()
    };
    let endpoints = plan::route_endpoints(&d, &cfg, |_, set| Some(addr_of(&set.role))).unwrap();
    let bootstrap = envoy::render_bootstrap(&BootstrapSpec {
        listener_port: 0,
        admin_port: 0,
        filter: Some(builds()),
        endpoints,
    })
    .unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    let ecds = envoy::render_filter_config(&builds(), &json, "1");
    Local {
        bootstrap,
        ecds,
        shadow_addr: addr_of(&Role::Shadow),
    }
}

/// Local mode's filter: the Wasm build only, the one the operator's wiring runs.
fn builds() -> FilterBuilds {
    FilterBuilds {
        wasm: "/x/mlep_filter.wasm".into(),
        native: None,
        config_path: "/cfg/filter.json".into(),
    }
}

fn input_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mlep-equivalence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("input.yaml"), INPUT).unwrap();
    dir
}

/// What a route does to the headers: `(set on the request, removed from the request, set on
/// the response)`.
type Rewrite = (Vec<(String, String)>, Vec<String>, Vec<(String, String)>);

/// `(route name, x-mlep-variant value without the route key, variant routed to, rewrite)` and
/// the default's `(variant, weight)` and rewrite.
type Routes = (
    Vec<(String, String, String, Rewrite)>,
    Vec<(String, u64)>,
    Rewrite,
);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// A VirtualService route's `headers`.
fn istio_rewrite(route: &Value) -> Rewrite {
    let set = |v: &Value| -> Vec<(String, String)> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    };
    let h = &route["headers"];
    (
        set(&h["request"]["set"]),
        strings(&h["request"]["remove"]),
        set(&h["response"]["set"]),
    )
}

/// An Envoy route's header fields (all overwriting, as Istio's `set` renders).
fn envoy_rewrite(route: &Value) -> Rewrite {
    let set = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                assert_eq!(a["append_action"], "OVERWRITE_IF_EXISTS_OR_ADD");
                let h = &a["header"];
                let s = |k: &str| h[k].as_str().unwrap().to_owned();
                (s("key"), s("value"))
            })
            .collect()
    };
    (
        set(&route["request_headers_to_add"]),
        strings(&route["request_headers_to_remove"]),
        set(&route["response_headers_to_add"]),
    )
}

/// The variant of a header route's match value, which must carry `key`.
fn unkeyed(value: &Value, key: &str) -> String {
    let v = value.as_str().unwrap();
    v.strip_suffix(&format!(".{key}"))
        .unwrap_or_else(|| panic!("{v:?} does not carry the route key {key:?}"))
        .to_owned()
}

fn istio_routes(vs: &Value, key: &str) -> Routes {
    let http = vs["spec"]["http"].as_array().unwrap();
    let (default, by_header) = http.split_last().unwrap();
    let by_header = by_header
        .iter()
        .map(|r| {
            let m = &r["match"][0]["headers"]["x-mlep-variant"]["prefix"];
            let subset = &r["route"][0]["destination"]["subset"];
            (
                r["name"].as_str().unwrap().to_owned(),
                unkeyed(m, key),
                subset.as_str().unwrap().to_owned(),
                istio_rewrite(r),
            )
        })
        .collect();
    let weighted = default["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let subset = r["destination"]["subset"].as_str().unwrap().to_owned();
            (subset, r["weight"].as_u64().unwrap_or(100))
        })
        .collect();
    (by_header, weighted, istio_rewrite(default))
}

fn envoy_routes(bootstrap: &Value, endpoint: &str, virtual_host: &str, key: &str) -> Routes {
    let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let vhost = hcm["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == virtual_host)
        .unwrap();
    let variant_of = |cluster: &Value| {
        let c = cluster.as_str().unwrap();
        let v = c.rsplit('|').next().unwrap().to_owned();
        assert_eq!(c, envoy::variant_cluster(endpoint, &v));
        v
    };
    let routes = vhost["routes"].as_array().unwrap();
    let (default, by_header) = routes.split_last().unwrap();
    // Local mode keeps a standby rollout route per variant (it matches only requests the filter
    // marks with the model header, i.e. users a rollout moved), so starting a rollout is an EDS
    // and filter-config change, never an Envoy restart. With no rollout it can match nothing;
    // the operator adds its rollout route only while a rollout runs.
    let by_model = |r: &&Value| {
        r["match"]["headers"]
            .as_array()
            .is_some_and(|hs| hs.iter().any(|h| h["name"] == MODEL_HEADER))
    };
    let by_header = by_header
        .iter()
        .filter(|r| !by_model(r))
        .map(|r| {
            let h = &r["match"]["headers"][0];
            assert_eq!(h["name"], "x-mlep-variant");
            (
                r["name"].as_str().unwrap().to_owned(),
                unkeyed(&h["string_match"]["prefix"], key),
                variant_of(&r["route"]["cluster"]),
                envoy_rewrite(r),
            )
        })
        .collect();
    let weighted = default["route"]["weighted_clusters"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (variant_of(&c["name"]), c["weight"].as_u64().unwrap()))
        .collect();
    (by_header, weighted, envoy_rewrite(default))
}

#[test]
fn operator_and_local_mode_render_the_same_filter_config_routes_and_shadow_target() {
    let dir = input_dir();
    let objs = operator_objects(&dir);
    let local = local(&dir);
    let _ = std::fs::remove_dir_all(&dir);

    // The same Wasm envelope (runtime, root and VM ids, type) around the configuration.
    let patches =
        &find(&objs, "EnvoyFilter", mlep_core::aggregate::SIDECAR_FILTER)["spec"]["configPatches"];
    let istio_wasm = &patches[0]["patch"]["value"]["typed_config"];
    let local_wasm = &local.ecds["resources"][0]["typed_config"];
    assert_eq!(envelope(istio_wasm), envelope(local_wasm));

    // The same filter config, apart from the shadow target (each world's cluster naming) and
    // the route keys (each chosen at random): local mode serves the endpoint on one virtual
    // host, named as its Service's in the mesh, which is all the sidecars know it by (its
    // external hosts are the gateway's).
    let mut istio: EndpointConfig = config_in(istio_wasm).endpoints.remove(0);
    let mut local_cfg: EndpointConfig = config_in(local_wasm).endpoints.remove(0);
    assert_eq!(istio.virtual_hosts, ["titanic.ml.svc.cluster.local:80"]);
    assert_eq!(local_cfg.virtual_hosts, istio.virtual_hosts);
    let gateway = find(&objs, "EnvoyFilter", mlep_core::aggregate::GATEWAY_FILTER);
    let at_gateway =
        config_in(&gateway["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]);
    assert_eq!(
        at_gateway.endpoints[0].virtual_hosts,
        ["titanic.ml.svc.cluster.local:80", "titanic.example.com:80"]
    );
    let keys = (
        std::mem::take(&mut istio.route_key),
        std::mem::take(&mut local_cfg.route_key),
    );
    assert!(mlep_contract::is_route_key(&keys.0) && mlep_contract::is_route_key(&keys.1));
    assert_ne!(keys.0, keys.1, "independently chosen");
    // The filter runs exactly on those virtual hosts: off in the chain, enabled there.
    let enabled: Vec<&Value> = patches
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["applyTo"] == "VIRTUAL_HOST")
        .map(|p| &p["match"]["routeConfiguration"]["vhost"]["name"])
        .collect();
    assert_eq!(enabled, istio.virtual_hosts.iter().collect::<Vec<_>>());
    assert_eq!(patches[1]["patch"]["value"]["disabled"], true);
    let hcm = &local.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"];
    assert_eq!(hcm["http_filters"][0]["disabled"], true);
    let local_vhost = &hcm["route_config"]["virtual_hosts"][0];
    assert_eq!(local_vhost["name"], "titanic.ml.svc.cluster.local:80");
    assert_eq!(
        local_vhost["typed_per_filter_config"],
        patches[2]["patch"]["value"]["typed_per_filter_config"]
            .as_object()
            .map(|m| serde_json::json!({ envoy::FILTER_NAME: m.values().next().unwrap() }))
            .unwrap()
    );
    let istio_target = istio.shadow.as_mut().unwrap();
    let local_target = local_cfg.shadow.as_mut().unwrap();
    let shadow_in_istio = (
        std::mem::take(&mut istio_target.cluster),
        istio_target.authority.take(),
    );
    let shadow_locally = (
        std::mem::take(&mut local_target.cluster),
        local_target.authority.take(),
    );
    assert_eq!(istio, local_cfg);
    assert_eq!(istio.shadow.as_ref().unwrap().model, "titanic-v3");
    assert_eq!(istio.variants[1].weight, 30);

    // The same routes: by header to every (ready) variant, then the same weighted default,
    // each doing the same to the routing headers (none forwards the route key).
    let istio_routes = istio_routes(find(&objs, "VirtualService", "titanic"), &keys.0);
    let local_routes = envoy_routes(
        &local.bootstrap,
        "titanic",
        "titanic.ml.svc.cluster.local:80",
        &keys.1,
    );
    assert_eq!(istio_routes, local_routes);
    let plain = |v: &str| vec![("x-mlep-variant".to_owned(), v.to_owned())];
    for (name, variant, _, rewrite) in &istio_routes.0 {
        let model_removed = vec![MODEL_HEADER.to_owned()];
        assert_eq!(
            rewrite,
            &(plain(variant), model_removed, plain(variant)),
            "{name}"
        );
    }
    assert_eq!(
        istio_routes.2,
        (
            vec![],
            vec!["x-mlep-variant".to_owned(), MODEL_HEADER.to_owned()],
            vec![]
        ),
        "the weighted default removes both routing headers"
    );
    assert_eq!(
        istio_routes.1,
        istio
            .variants
            .iter()
            .map(|v| (v.name.clone(), u64::from(v.weight)))
            .collect::<Vec<_>>()
    );

    // The shadow targets both lead to the shadow model. In the mesh: Istio's outbound cluster
    // of the shadow Service, which selects the pods of the Deployment running titanic-v3.
    let want = CallTarget::shadow_istio("titanic", "ml", "cluster.local", 80);
    assert_eq!(shadow_in_istio, (want.cluster, Some(want.authority)));
    let service = find(&objs, "Service", "titanic-shadow");
    let deployment = find(&objs, "Deployment", "titanic-shadow-titanic-v3");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(service["spec"]["selector"]["app"], pod_labels["app"]);
    assert_eq!(pod_labels["mlep.dev/model"], "titanic-v3");
    assert_eq!(
        shadow_in_istio.1.as_deref(),
        Some("titanic-shadow.ml.svc.cluster.local")
    );
    // Locally: a cluster of the bootstrap whose upstream is the shadow model's server.
    let want = CallTarget::shadow_local("titanic", "ml");
    assert_eq!(shadow_locally, (want.cluster.clone(), Some(want.authority)));
    let cluster = local.bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == want.cluster.as_str())
        .unwrap();
    let addr = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(
        format!(
            "{}:{}",
            addr["address"].as_str().unwrap(),
            addr["port_value"]
        ),
        local.shadow_addr.to_string()
    );
}
