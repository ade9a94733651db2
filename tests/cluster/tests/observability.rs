//! The shipped dashboard and alert rules against the bed's real Prometheus (issue 19, item 2):
//! the rules in manifests/observability/alerts.rules.yaml load; under load, every query of
//! manifests/observability/grafana-dashboard.json returns series; each alert fires under its
//! fault and resolves after it:
//! - a failing model (a canary to `titanic-batch1`, held on a failed check: 5xx on its users)
//!   -> `MlepHighErrorRate`;
//! - a slow model (a fault filter delaying `titanic-v1`'s inbound sidecar by 700 ms)
//!   -> `MlepHighLatencyP99`;
//! - a disagreeing shadow (`titanic-v2` shadowing `titanic-v1`, compared as JSON)
//!   -> `MlepShadowDisagreement`;
//! - a crash-looping model (a second endpoint whose model server exits at start)
//!   -> `MlepModelFailing`;
//! - the same model as the shadow of a third endpoint that serves from a healthy model
//!   -> `MlepShadowFailing` (`ShadowReady` names the failure; `Ready` stays the variants').
//!
//! (`MlepRolloutRolledBack` fires and resolves in the canary test, tests/namespaced.rs.) The
//! shipped Istio `Telemetry` passes the bed's Telemetry CRD schema (a server-side dry run).
//!
//! ```text
//! eval "$(scripts/cluster.sh env | sed 's/^/export /')"
//! scripts/cluster.sh alert-rules     # this tree's rules into the bed's Prometheus
//! cargo test -p mlep-cluster-e2e --test observability -- --nocapture
//! ```

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::api::PostParams;
use mlep_cluster_e2e::*;
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_tests::load::{Load, Shape};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Rules with `for: 1m` over 2-minute rates: firing within 1 min of enough bad samples, plus
/// scrapes and evaluations (5 s each on the bed).
const FIRES_WITHIN: Duration = Duration::from_secs(300);
/// Resolving waits for the bad samples to leave the 2-minute windows.
const RESOLVES_WITHIN: Duration = Duration::from_secs(330);

/// The alert names of the shipped rules file.
fn shipped_alerts() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(repo().join("manifests/observability/alerts.rules.yaml")).unwrap();
    let rules: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

/// Every `expr` of the shipped dashboard with its panel title, Grafana's variables replaced
/// for `ns`/`endpoint` (all variants, a 1-minute rate window).
fn dashboard_queries(ns: &str, endpoint: &str) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo().join("manifests/observability/grafana-dashboard.json"))
            .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"].as_array().unwrap().iter().map(move |t| {
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$namespace", ns)
                    .replace("$endpoint", endpoint)
                    .replace("$variant", ".*")
                    .replace("$__rate_interval", "1m");
                (title.clone(), expr)
            })
        })
        .collect()
}

/// Reload the bed's Prometheus and wait until it evaluates exactly the shipped alerts.
async fn rules_loaded(bed: &Bed) {
    let want = shipped_alerts();
    assert!(want.len() >= 6, "{want:?}");
    let addr = prometheus(bed).await.expect("the bed's Prometheus");
    eventually(
        Duration::from_secs(150),
        "Prometheus evaluates the shipped alert rules",
        || async {
            // The ConfigMap's new content reaches the pod within the kubelet's sync period.
            let _ = tokio::process::Command::new("curl")
                .args(["-sf", "-X", "POST", &format!("http://{addr}/-/reload")])
                .output()
                .await;
            let body = mlep_tests::load::get(addr, "/api/v1/rules?type=alert")
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let loaded: BTreeSet<String> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["health"] == "ok")
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect();
            (loaded == want).then_some(())
        },
    )
    .await;
}

/// A second endpoint `broken` whose only model's server exits at start, again and again.
async fn crash_looping_endpoint(t: &Titanic) {
    let exits = t.exiting_model();
    t.bed
        .api::<Model>(&t.ns)
        .create(&PostParams::default(), &exits)
        .await
        .unwrap();
    // The model serving an endpoint, and as the shadow of one that serves from a healthy one.
    let variant = |model: &str| serde_json::json!([{"name": "a", "model": model, "weight": 100}]);
    let specs = [
        ("broken", variant("titanic-exits"), None),
        ("shadowed", variant("titanic-v1"), Some("titanic-exits")),
    ];
    for (name, variants, shadow) in specs {
        let mut spec = serde_json::json!({
            "hosts": [format!("{name}.{}.mlep.test", t.ns)], "variants": variants,
        });
        if let Some(model) = shadow {
            spec["shadow"] = serde_json::json!({"model": model, "percent": 100.0});
        }
        let e: ModelEndpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "mlep.dev/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        t.bed
            .api::<ModelEndpoint>(&t.ns)
            .create(&PostParams::default(), &e)
            .await
            .unwrap();
    }
}

/// Load through the gateway that keeps every variant busy: four senders, returning users.
fn load(t: &Titanic) -> Load {
    let mut shape = Shape::returning(false);
    shape.workers = 4;
    Load::start_shaped(t.gateway.clone(), shape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_dashboard_and_alerts_work_on_real_prometheus() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "observe").await;
    let t = Titanic::deploy(&bed, &ns).await;
    rules_loaded(&bed).await;
    ok("the bed's Prometheus evaluates every shipped alert rule (health ok)");
    let telemetry = repo().join("manifests/observability/istio-telemetry.yaml");
    let (accepted, out, err) = kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        telemetry.to_str().unwrap(),
    ])
    .await;
    assert!(accepted, "the Telemetry object: {out} {err}");
    ok("the shipped Istio Telemetry passes the bed's Telemetry CRD schema (server-side dry run)");
    assert!(
        firing_alerts(&bed, &t.ns).await.is_empty(),
        "nothing fires before a fault"
    );

    // The faults, all at once.
    t.create_batch1_model().await;
    t.edit(|spec| {
        spec.variants[1].model = "titanic-batch1".into();
        spec.rollout = serde_json::from_value(serde_json::json!({
            "strategy": "Canary", "stepSeconds": 30, "maxStepSeconds": 600,
            "canary": {"percent": 50}, "autoRollback": false,
            "analysis": {"minRequests": 10, "maxErrorRate": 0.1}}))
        .unwrap();
        spec.shadow = serde_json::from_value(serde_json::json!({
            "model": "titanic-v2", "percent": 100.0, "compare": "Json"}))
        .unwrap();
    })
    .await;
    let filters = bed.istio(&t.ns, "EnvoyFilter");
    filters
        .create(
            &PostParams::default(),
            &serde_json::from_value(delay_filter("titanic-v1", 700)).unwrap(),
        )
        .await
        .unwrap();
    crash_looping_endpoint(&t).await;
    let t_fault = Instant::now();
    let running = load(&t);
    let want: BTreeSet<(String, String)> = [
        ("MlepHighErrorRate", "b"),
        ("MlepHighLatencyP99", "a"),
        ("MlepShadowDisagreement", ""),
        ("MlepModelFailing", ""),
        ("MlepShadowFailing", ""),
    ]
    .iter()
    .map(|(a, v)| ((*a).to_owned(), (*v).to_owned()))
    .collect();
    let fired = eventually(FIRES_WITHIN, "each alert fires under its fault", || async {
        let now = firing_alerts(&bed, &t.ns).await;
        want.is_subset(&now).then_some(now)
    })
    .await;
    measure(format!(
        "alerts firing {:.0} s after the faults: {fired:?}",
        t_fault.elapsed().as_secs_f64()
    ));
    // The failing shadow is named on ShadowReady; Ready stays its healthy variant's.
    let (ready, shadow) = eventually(FIRES_WITHIN, "the shadowed endpoint Ready", || async {
        let e = bed.api::<ModelEndpoint>(&t.ns).get("shadowed").await.ok()?;
        let ready = condition(&e, "Ready")?.clone();
        let shadow = condition(&e, "ShadowReady")?.clone();
        (ready.status == "True").then_some((ready, shadow))
    })
    .await;
    assert_eq!(shadow.status, "False", "{shadow:?}");
    assert!(
        shadow.message.contains("titanic-exits") && shadow.reason != "WaitingForReplicas",
        "{shadow:?}"
    );
    ok(format!(
        "a crash-looping shadow: ShadowReady {} ({}), Ready {} ({})",
        shadow.status, shadow.reason, ready.status, ready.reason
    ));

    // The latency breakdown in the cluster: the 700 ms the mesh adds in front of titanic-v1 is
    // overhead, not model latency (the model server reports its own time in Server-Timing).
    let p50 = |metric: &str| {
        format!(
            "histogram_quantile(0.5, sum by (le) (rate({metric}_bucket{{namespace=\"{}\", endpoint=\"{ENDPOINT}\", variant=\"a\"}}[1m])))",
            t.ns
        )
    };
    let model_us = prom_value(&bed, &p50(mlep_contract::metrics::MODEL_LATENCY_US)).await;
    let overhead_us = prom_value(&bed, &p50(mlep_contract::metrics::OVERHEAD_LATENCY_US)).await;
    measure(format!(
        "variant a behind a 700 ms mesh delay: p50 model latency {model_us:?} µs, overhead {overhead_us:?} µs"
    ));
    assert!(
        model_us.is_some_and(|m| m < 100_000.0) && overhead_us.is_some_and(|o| o >= 500_000.0),
        "model {model_us:?} µs, overhead {overhead_us:?} µs"
    );
    ok("the mesh's delay shows in overhead latency, the model's own time in model latency");

    // With traffic, faults and a rollout in place, every panel's query has series.
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries(&t.ns, ENDPOINT) {
        let series = prom_query(&bed, &expr).await.unwrap_or_default();
        println!("    {title}: {} series", series.len());
        if series.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without series:\n{}",
        empty.join("\n")
    );
    ok("every query of the shipped Grafana dashboard returns series from the bed's Prometheus");
    let report = running.stop().await;
    assert!(report.succeeded() > 0, "{}", report.summary());

    // The faults removed: the canary's model back (the rollout aborts), no delay, no shadow,
    // the crash-looping endpoint gone.
    t.edit(|spec| {
        spec.variants[1].model = "titanic-v2".into();
        spec.shadow = None;
    })
    .await;
    filters
        .delete("slow-model", &Default::default())
        .await
        .unwrap();
    for name in ["broken", "shadowed"] {
        bed.api::<ModelEndpoint>(&t.ns)
            .delete(name, &Default::default())
            .await
            .unwrap();
    }
    let t_fix = Instant::now();
    let running = load(&t);
    eventually(RESOLVES_WITHIN, "every alert resolves", || async {
        let now = firing_alerts(&bed, &t.ns).await;
        now.is_disjoint(&want).then_some(())
    })
    .await;
    measure(format!(
        "alerts resolved {:.0} s after the faults were removed",
        t_fix.elapsed().as_secs_f64()
    ));
    let report = running.stop().await;
    assert!(report.succeeded() > 0, "{}", report.summary());
}
