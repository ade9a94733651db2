//! Render the Envoy configs `scripts/bench-filter.sh` runs, with the same renderer local mode
//! uses (`mlep::envoy`):
//!   bench_envoy <mode> <dir> <listener-port> <upstream-a> <upstream-b> <upstream-shadow> <wasm>
//! mode: `nofilter` | `noop` (a Wasm filter that does nothing; pass the `bench-noop` build) |
//! `filter` | `shadow` (filter + 100% shadow, JSON comparison) | `shadow-nocompare` |
//! `mirror` (Envoy's native request mirroring). Writes `<dir>/envoy.json` (and `<dir>/ecds/filter.json`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench tool: fail loudly

use mlep::envoy::{
    self, BootstrapSpec, Mirroring, RouteEndpoint, RouteVariant, ShadowUpstream, WasmFilter,
};
use mlep_contract::Allocation;
use std::net::SocketAddr;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, dir, port, ua, ub, us, wasm] = args.as_slice() else {
        panic!("usage: bench_envoy <mode> <dir> <listener-port> <upstream-a> <upstream-b> <upstream-shadow> <wasm>")
    };
    let dir = PathBuf::from(dir);
    let addr = |s: &String| -> SocketAddr { s.parse().unwrap() };
    let shadow_cluster = "mlep|titanic|shadow";
    let config_path = dir.join("ecds").join("filter.json");
    let with_filter = matches!(
        mode.as_str(),
        "noop" | "filter" | "shadow" | "shadow-nocompare"
    );
    let spec = BootstrapSpec {
        listener_port: port.parse().unwrap(),
        admin_port: 0,
        filter: with_filter.then(|| WasmFilter {
            wasm: PathBuf::from(wasm),
            config_path: config_path.clone(),
        }),
        endpoints: vec![RouteEndpoint {
            name: "titanic".into(),
            hosts: vec!["titanic.local".into()],
            variants: vec![
                RouteVariant {
                    name: "a".into(),
                    weight: 80,
                    upstream: addr(ua),
                    rollout_upstream: None,
                },
                RouteVariant {
                    name: "b".into(),
                    weight: 20,
                    upstream: addr(ub),
                    rollout_upstream: None,
                },
            ],
            shadow: Some(ShadowUpstream {
                cluster: shadow_cluster.into(),
                upstream: addr(us),
            }),
        }],
        mirroring: if mode == "mirror" {
            Mirroring::Native
        } else {
            Mirroring::Filter
        },
    };
    std::fs::create_dir_all(dir.join("ecds")).unwrap();
    let bootstrap = envoy::render_bootstrap(&spec).unwrap();
    std::fs::write(dir.join("envoy.json"), bootstrap.to_string()).unwrap();
    if with_filter {
        let alloc = Allocation::initial(&[("a", 80), ("b", 20)]).unwrap();
        let mut cfg = mlep_tests::filter_config(
            "titanic",
            &["titanic.local"],
            &[("a", 80), ("b", 20)],
            &alloc,
        );
        if mode.starts_with("shadow") {
            let compare = if mode == "shadow" { "json" } else { "off" };
            cfg["endpoints"][0]["shadow"] = serde_json::json!({
                "cluster": shadow_cluster, "model": "model-s", "percent": 100, "timeoutMs": 1000,
                "compare": {"mode": compare, "tolerance": 0.0}
            });
        }
        envoy::write_filter_config(&config_path, &PathBuf::from(wasm), &cfg.to_string(), "1")
            .unwrap();
    }
}
