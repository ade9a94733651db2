//! Operator benchmark against a real kube-apiserver (run by `scripts/bench-operator.sh`):
//! apply N endpoints (default 500) and measure, with the real `mlep-operator` binary:
//! - time from apply to all children present (median and p90 over endpoints),
//! - API writes to create an endpoint, and per reconcile of unchanged endpoints (after a
//!   restart every endpoint is reconciled again),
//! - operator memory (VmRSS) with N endpoints.
//!
//! Numbers go in docs/operator.md. Not a test: it asserts nothing about speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::meta;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

fn dynamic(
    client: &Client,
    ns: &str,
    api_version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, kind), plural),
    )
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    Some(buf)
}

async fn metric(port: u16, name: &str) -> u64 {
    let text = http_get(port, "/metrics").await.unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name} "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn spawn_operator(ns: &str, port: u16, wasm: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mlep-operator"))
        .env("POD_NAMESPACE", ns)
        .env("MLEP_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("MLEP_WASM_PATH", wasm)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Wait until the operator's write counter has not moved for `quiet` (unsettled endpoints
/// keep being re-checked, so reconciles never stop; writes do once everything converged).
/// Returns (reconciles, writes).
async fn settle(port: u16, quiet: Duration) -> (u64, u64) {
    let mut last = metric(port, "mlep_operator_api_writes_total").await;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = metric(port, "mlep_operator_api_writes_total").await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return (metric(port, "mlep_operator_reconciles_total").await, now);
        }
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("MLEP_BENCH_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG (scripts/bench-operator.sh sets it)");
    support::install_crds(&client, "mlep-bench").await;
    let ns = format!("bench-{}", std::process::id());
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nsapi
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();

    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    for m in ["m1", "m2"] {
        let body = json!({"apiVersion": "mlep.dev/v1alpha1", "kind": "Model", "metadata": {"name": m},
            "spec": {"image": "ghcr.io/k8smlendpoints/mlep-model-server:0.1.0",
                     "artifact": {"uri": format!("https://example.com/{m}.tar.gz"), "sha256": "a".repeat(64)}}});
        models
            .patch(m, &PatchParams::apply("bench"), &Patch::Apply(&body))
            .await
            .unwrap();
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let wasm = std::env::temp_dir().join(format!("mlep-bench-{}.wasm", std::process::id()));
    std::fs::write(&wasm, vec![0u8; 1 << 20]).unwrap();
    let mut op = spawn_operator(&ns, port, &wasm);
    while http_get(port, "/healthz").await.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = rss_kib(op.id().unwrap_or(0));

    // Apply N endpoints; poll children until every endpoint has all of them.
    let eps: Api<ModelEndpoint> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let mut applied_at = BTreeMap::new();
    for i in 0..n {
        let name = format!("ep{i}");
        let body = json!({"apiVersion": "mlep.dev/v1alpha1", "kind": "ModelEndpoint", "metadata": {"name": name},
            "spec": {"hosts": [format!("{name}.example.com")], "variants": [
                {"name": "a", "model": "m1", "weight": 80}, {"name": "b", "model": "m2", "weight": 20}],
                "routing": {"sticky": {"header": "x-user-id"}}}});
        eps.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&body))
            .await
            .unwrap();
        applied_at.insert(name, started.elapsed());
    }
    // Children per endpoint: 2 Deployments, Service, DestinationRule, VirtualService, EnvoyFilter.
    let kinds = [
        (&meta::DEPLOYMENT, 2usize),
        (&meta::SERVICE, 1),
        (&meta::DESTINATION_RULE, 1),
        (&meta::VIRTUAL_SERVICE, 1),
        (&meta::ENVOY_FILTER, 1),
    ];
    let mut done_at: BTreeMap<String, Duration> = BTreeMap::new();
    while done_at.len() < n {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for (kind, _) in kinds {
            for o in dynamic(&client, &ns, kind.api_version, kind.kind, kind.plural)
                .list_metadata(&ListParams::default())
                .await
                .unwrap()
                .items
            {
                if let Some(ep) = o
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("mlep.dev/endpoint"))
                {
                    *count.entry(ep.clone()).or_default() += 1;
                }
            }
        }
        let t = started.elapsed();
        for (ep, c) in count {
            if c == 6 {
                done_at.entry(ep).or_insert(t);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "children did not appear in 15 min"
        );
        // Polling is itself API load: keep it light (latency resolution +-250 ms).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut latencies: Vec<f64> = done_at
        .iter()
        .map(|(ep, t)| (t.saturating_sub(applied_at[ep])).as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let total = started.elapsed();
    let (reconciles, writes) = settle(port, Duration::from_secs(3)).await;
    let rss_loaded = rss_kib(op.id().unwrap_or(0));
    op.start_kill().ok();
    let _ = op.wait().await;

    // Restart: every endpoint is reconciled again; count writes.
    let mut op = spawn_operator(&ns, port, &wasm);
    while http_get(port, "/healthz").await.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while metric(port, "mlep_operator_reconciles_total").await < n as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (re_reconciles, re_writes) = settle(port, Duration::from_secs(3)).await;
    let rss_restarted = rss_kib(op.id().unwrap_or(0));
    op.start_kill().ok();
    let _ = op.wait().await;
    let _ = std::fs::remove_file(&wasm);

    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!("endpoints: {n}");
    println!("apply -> all children present: median {:.0} ms, p90 {:.0} ms, max {:.0} ms (all {n} in {:.1} s)", pct(0.5), pct(0.9), pct(1.0), total.as_secs_f64());
    println!(
        "first pass: {reconciles} reconciles, {writes} API writes = {:.1} writes per endpoint",
        writes as f64 / n as f64
    );
    println!("after restart: {re_reconciles} reconciles of unchanged endpoints, {re_writes} API writes = {:.2} writes per reconcile", re_writes as f64 / re_reconciles.max(1) as f64);
    println!("operator RSS: {} MiB idle, {} MiB with {n} endpoints, {} MiB after a restart with {n} endpoints", rss_idle / 1024, rss_loaded / 1024, rss_restarted / 1024);
}
