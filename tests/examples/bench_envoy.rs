//! Render the Envoy configs `scripts/bench-filter.sh` runs, with the same renderer local mode
//! uses (`mlep::envoy`):
//!   bench_envoy <mode> <dir> <listener-port> <upstream-a> <upstream-b> <upstream-shadow> <wasm> [endpoints [variants]]
//! mode: `nofilter` | `noop` (a Wasm filter that does nothing; pass the `bench-noop` build) |
//! `filter` | `unrelated` (the mlep filter in the chain, but the load's virtual host is not an
//! endpoint's: the filter stays disabled there, as for every unrelated workload's traffic) |
//! `shadow` (filter + 100% shadow, JSON comparison) | `shadow10` (10%) | `shadow-nocompare` (100 %, rendered as the product does: Envoy's mirror) |
//! `shadow-sample10` (100% shadow, 10% of the copies compared, rendered as the product does:
//! the uncompared copies go through the twin routes to Envoy's mirror) | `shadow-sample10-wasm`
//! (the same, every copy sent by the filter: the WasmPlugin wiring's way) | `capture` (filter + data
//! capture of every invocation, request and response, to the shadow upstream as the sink) |
//! `capture10` (10 % captured) |
//! `mirror` (Envoy's native request mirroring) | `floor.<steps>` (the floor filter,
//! `filter/floor`, doing only `<steps>`, e.g. `floor.key+setreq+setresp+status+record`; pass its
//! build) | `native.<steps>` (the same steps as an Envoy dynamic module, `filter/native-floor`,
//! in the filter's place; pass the module's `.so` instead of a Wasm build) | `native-filter`
//! (`filter`'s config, served by that module's native build of the filter's request path) |
//! `<mode>-native` (`<mode>`'s config on the product's native build, `filter/native`, rendered
//! as local mode renders it; pass `libmlep_filter_native.so`), e.g. `filter-native`,
//! `shadow-sample10-native`.
//! Writes `<dir>/envoy.json` (and `<dir>/ecds/filter.json`).
//! `endpoints` (default 1): the first is `titanic` on `titanic.local` (what the load targets),
//! the others `ep<i>` on `ep<i>.local`, so the filter's host table has that many entries.
//! `variants` (default 2): `a` gets 80%, the rest share 20%; variants alternate between the
//! two upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench tool: fail loudly

use mlep::envoy::{
    self, BootstrapSpec, ClusterUpstream, FilterBuilds, MirrorOn, NativeMirror, RouteEndpoint,
    RouteVariant,
};
use mlep_contract::Allocation;
use mlep_contract::ShadowConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (fixed, rest) = args.split_at(args.len().min(8));
    let [_, mode, dir, port, ua, ub, us, wasm] = fixed else {
        panic!("usage: bench_envoy <mode> <dir> <listener-port> <upstream-a> <upstream-b> <upstream-shadow> <wasm> [endpoints [variants]]")
    };
    // `<mode>-native`: the product's native build serves `<mode>`'s config.
    let (mode, on_native) = match mode.strip_suffix("-native") {
        Some(m) => (m, true),
        None => (mode.as_str(), false),
    };
    let n_endpoints: usize = rest.first().map_or(1, |s| s.parse().unwrap());
    let n_variants: usize = rest.get(1).map_or(2, |s| s.parse().unwrap());
    assert!((2..=21).contains(&n_variants), "2..=21 variants");
    let names: Vec<String> = (0..n_variants)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let rest_weight = 20 / (n_variants as u32 - 1);
    let weights: Vec<(&str, u32)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let w = match i {
                0 => 100 - rest_weight * (n_variants as u32 - 1),
                _ => rest_weight,
            };
            (n.as_str(), w)
        })
        .collect();
    let dir = PathBuf::from(dir);
    let addr = |s: &String| -> SocketAddr { s.parse().unwrap() };
    let shadow_cluster = "mlep|titanic|shadow";
    let capture_cluster = "mlep|titanic|capture";
    let config_path = dir.join("ecds").join("filter.json");
    // The floor's steps, for its Wasm build (`floor.`) or its dynamic module (`native.`).
    let floor_steps = mode
        .strip_prefix("floor.")
        .or_else(|| mode.strip_prefix("native."));
    let with_filter = floor_steps.is_some()
        || matches!(
            mode,
            "noop"
                | "filter"
                | "native-filter"
                | "unrelated"
                | "shadow"
                | "shadow10"
                | "shadow-nocompare"
                | "shadow-sample10"
                | "shadow-sample10-wasm"
                | "capture"
                | "capture10"
        );
    // The shadow as the product renders it: compared copies are the filter's, an uncompared
    // shadow is Envoy's mirror (`mlep_core::mirror`); `mirror` is Envoy's mirror, no filter.
    let mut shadow: Option<ShadowConfig> = mode.starts_with("shadow").then(|| {
        let compare = if mode == "shadow-nocompare" {
            "off"
        } else {
            "json"
        };
        let percent = if mode == "shadow10" { 10 } else { 100 };
        let compared = if mode.starts_with("shadow-sample10") {
            10
        } else {
            100
        };
        // `mirrorRoutes`: these routes get the twins (as local mode and the operator say once
        // they render them); without it the filter sends every copy itself.
        serde_json::from_value(serde_json::json!({
            "cluster": shadow_cluster, "model": "model-s", "percent": percent, "timeoutMs": 1000,
            "compare": {"mode": compare, "tolerance": 0.0, "percent": compared},
            "mirrorRoutes": mode == "shadow-sample10"
        }))
        .unwrap()
    });
    let mut mirror = match mode {
        "shadow-sample10-wasm" => None,
        _ => NativeMirror::take(&mut shadow),
    };
    if mode == "mirror" {
        mirror = Some(NativeMirror {
            cluster: shadow_cluster.into(),
            authority: None,
            percent: 100.0,
            forward_credentials: true,
            on: MirrorOn::EveryRoute,
        });
    }
    // `<mode>-native`: the product's renderer with the native build (the config needs no
    // Wasm, so the Wasm path is never loaded).
    let builds = FilterBuilds {
        wasm: PathBuf::from(wasm),
        native: on_native.then(|| PathBuf::from(wasm)),
        config_path: config_path.clone(),
    };
    let spec = BootstrapSpec {
        listener_port: port.parse().unwrap(),
        admin_port: 0,
        filter: with_filter.then(|| builds.clone()),
        endpoints: (0..n_endpoints)
            .map(|e| RouteEndpoint {
                name: endpoint_name(e),
                virtual_host: mlep_tests::virtual_host(&endpoint_name(e)),
                route_key: mlep_tests::ROUTE_KEY.into(),
                hosts: vec![format!("{}.local", endpoint_name(e))],
                variants: weights
                    .iter()
                    .enumerate()
                    .map(|(i, (n, w))| RouteVariant {
                        name: (*n).into(),
                        weight: *w,
                        upstream: addr(if i % 2 == 0 { ua } else { ub }),
                        rollout_upstream: None,
                    })
                    .collect(),
                shadow: (e == 0).then(|| ClusterUpstream {
                    cluster: shadow_cluster.into(),
                    upstream: addr(us),
                }),
                mirror: mirror.clone().filter(|_| e == 0),
                capture: (e == 0).then(|| ClusterUpstream {
                    cluster: capture_cluster.into(),
                    upstream: addr(us),
                }),
            })
            .collect(),
    };
    std::fs::create_dir_all(dir.join("ecds")).unwrap();
    let mut bootstrap = envoy::render_bootstrap(&spec).unwrap();
    if mode == "unrelated" {
        // The load's virtual host no longer enables the filter: unrelated traffic.
        bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["route_config"]["virtual_hosts"][0]
            .as_object_mut()
            .unwrap()
            .remove("typed_per_filter_config")
            .unwrap();
    }
    let filter_config = if let Some(steps) = floor_steps {
        Some(steps.to_owned())
    } else if with_filter {
        let alloc = Allocation::initial(&weights).unwrap();
        let one = |e: usize| {
            mlep_tests::filter_config(&endpoint_name(e), &weights, &alloc)["endpoints"][0].clone()
        };
        let mut cfg = mlep_tests::filter_config("titanic", &weights, &alloc);
        cfg["endpoints"] = (0..n_endpoints).map(one).collect();
        if let Some(s) = &shadow {
            cfg["endpoints"][0]["shadow"] = serde_json::json!(s);
        }
        if mode.starts_with("capture") {
            let percent = if mode == "capture10" { 10 } else { 100 };
            cfg["endpoints"][0]["capture"] = serde_json::json!({
                "cluster": capture_cluster, "percent": percent, "timeoutMs": 1000
            });
        }
        Some(cfg.to_string())
    } else {
        None
    };
    // The Wasm builds take their config through ECDS, the dynamic module inline.
    match (mode.starts_with("native."), &filter_config) {
        (true, Some(c)) => {
            native_module(&mut bootstrap, wasm, "floor", c);
        }
        (false, Some(c)) if mode == "native-filter" => {
            native_module(&mut bootstrap, wasm, "mlep", c);
        }
        (false, Some(c)) => envoy::write_filter_config(&builds, c, "1").unwrap(),
        (_, None) => {}
    }
    std::fs::write(dir.join("envoy.json"), bootstrap.to_string()).unwrap();
}

/// The dynamic module `so` in the Wasm filter's place: same name, disabled in the chain and
/// enabled by the endpoint's virtual host as the Wasm filter is.
fn native_module(bootstrap: &mut serde_json::Value, so: &str, filter: &str, config: &str) {
    let filters = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["http_filters"];
    let name = filters[0]["name"].clone();
    filters[0] = serde_json::json!({
        "name": name,
        "disabled": true,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": so}}},
            "filter_name": filter,
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config}
        }
    });
}

/// `titanic` (the endpoint the load targets), then `ep1`, `ep2`, ...
fn endpoint_name(i: usize) -> String {
    if i == 0 {
        "titanic".into()
    } else {
        format!("ep{i}")
    }
}
