//! Autoscaling on the bed (issue 20): a variant follows its own load while the other stays put,
//! first on CPU (a HorizontalPodAutoscaler reading metrics-server through the API server's
//! aggregation layer, `scripts/cluster/addons/metrics-server.yaml`), then on requests per second
//! per replica (the operator's own scaler reading the filter's `mlep_requests_total` from
//! Prometheus). Load through the gateway, never retried; a steady trickle runs while pods come
//! and go, and not one of its requests may fail (scale-down drains).
//!
//! ```text
//! eval "$(scripts/cluster.sh env | sed 's/^/export /')"
//! cargo test -p mlep-cluster-e2e --test autoscaling -- --nocapture
//! ```

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use mlep_cluster_e2e::*;
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_tests::load::{Load, Report, Shape};
use std::time::{Duration, Instant};

/// How a variant scales in each phase: the same bounds, one target or the other.
const BOUNDS: &str = "minReplicas: 1, maxReplicas: 3, scaleDownStabilizationSeconds: 30";

fn endpoint(host: &str, b_target: &str) -> ModelEndpoint {
    serde_yaml::from_str(&format!(
        r#"
metadata: {{name: {ENDPOINT}}}
spec:
  hosts: [{host}]
  expose: true
  variants:
    - name: a
      model: titanic-v1
      weight: 80
      resources: {{requests: {{cpu: 50m, memory: 64Mi}}}}
      autoscaling: {{{BOUNDS}, targetCPUUtilizationPercentage: 50}}
    - name: b
      model: titanic-v2
      weight: 20
      resources: {{requests: {{cpu: 50m, memory: 64Mi}}}}
      autoscaling: {{{BOUNDS}, {b_target}}}
  routing: {{sticky: {{header: x-user-id}}}}
"#
    ))
    .unwrap()
}

/// The example Models and the endpoint `endpoint(host)` in `ns`, once it is Ready and the
/// gateway assigns its requests.
async fn serving(bed: &Bed, ns: &TempNs, endpoint: impl Fn(&str) -> ModelEndpoint) -> Titanic {
    let t = Titanic::artifacts_only(bed, ns).await;
    let models: Api<Model> = bed.api(&ns.name);
    for m in t.example_models() {
        models.create(&PostParams::default(), &m).await.unwrap();
    }
    t.endpoints()
        .create(&PostParams::default(), &endpoint(&t.host))
        .await
        .unwrap();
    t.wait_ready(Duration::from_secs(300)).await;
    eventually(Duration::from_secs(180), "the gateway assigns", || async {
        gateway_assigns(&t).await.then_some(())
    })
    .await;
    t
}

/// The label selector of variant `v`'s objects.
fn of_variant(v: &str) -> String {
    format!("mlep.dev/endpoint={ENDPOINT},mlep.dev/variant={v}")
}

/// Variant `v`'s serving Deployment: (desired replicas, ready replicas).
async fn replicas(t: &Titanic, v: &str) -> (i32, i32) {
    let api: Api<Deployment> = t.bed.api(&t.ns);
    let d = api
        .list(&ListParams::default().labels(&of_variant(v)))
        .await
        .unwrap()
        .items;
    assert_eq!(d.len(), 1, "one Deployment serves {v}");
    let want = d[0].spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d[0]
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (want, ready)
}

/// Pods of variant `v`, terminating ones included.
async fn pods_of(t: &Titanic, v: &str) -> usize {
    t.bed
        .api::<Pod>(&t.ns)
        .list(&ListParams::default().labels(&of_variant(v)))
        .await
        .unwrap()
        .items
        .len()
}

/// The endpoint's status for variant `v` (as `kubectl get mle -o yaml` shows it).
async fn variant_status(t: &Titanic, v: &str) -> serde_json::Value {
    let e = serde_json::to_value(t.endpoint().await).unwrap();
    e["status"]["variants"]
        .as_array()
        .and_then(|vs| vs.iter().find(|s| s["name"] == v).cloned())
        .unwrap_or_default()
}

/// Load on `b` only (targeted), several senders on kept-alive connections.
fn heavy_on_b(t: &Titanic) -> Load {
    let mut shape = Shape::fresh_users(3).header("x-mlep-target-variant", "b");
    shape.keep_alive = true;
    Load::start_shaped(t.gateway.clone(), shape)
}

/// A steady 4 requests a second to `b`, on a kept-alive connection.
fn trickle_to_b(t: &Titanic) -> Load {
    let mut shape = Shape::fresh_users(1).header("x-mlep-target-variant", "b");
    shape.keep_alive = true;
    Load::start_paced(t.gateway.clone(), shape, 4.0)
}

/// Under load on `b` alone, `b` grows past one ready replica while `a` stays at one; then, with
/// only a trickle left, `b` shrinks back to one pod. Returns the trickle's report (every request
/// it made while pods came and went).
async fn b_follows_its_load(t: &Titanic, phase: &str) -> Report {
    let t0 = Instant::now();
    let load = heavy_on_b(t);
    let a_most = &std::sync::atomic::AtomicI32::new(0);
    let grown = eventually(
        Duration::from_secs(240),
        &format!("{phase}: b scaled up"),
        move || async move {
            let a = replicas(t, "a").await;
            a_most.fetch_max(a.0, std::sync::atomic::Ordering::Relaxed);
            let b = replicas(t, "b").await;
            (b.0 >= 2 && b.1 >= 2).then_some(b)
        },
    )
    .await;
    let up = t0.elapsed().as_secs_f64();
    let trickle = trickle_to_b(t);
    let heavy = load.stop().await;
    measure(format!(
        "{phase}: load on b -> {} replicas ({} ready) in {up:.1} s; load {}",
        grown.0,
        grown.1,
        heavy.summary()
    ));
    heavy.assert_no_failures(&format!("{phase}: load on b while it scaled up"));
    assert_eq!(
        a_most.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "{phase}: a has no load of its own and stays at one replica"
    );
    // The operator writes status when b's Deployment changes: shortly after, not at once.
    let s = eventually(
        Duration::from_secs(30),
        &format!("{phase}: the endpoint's status shows b's replicas"),
        || async {
            let s = variant_status(t, "b").await;
            (s["replicas"].as_i64().unwrap_or(0) >= 2).then_some(s)
        },
    )
    .await;
    measure(format!("{phase}: b's status {s}"));
    ok(format!(
        "{phase}: b scaled up to {} under its load in {up:.0} s; a stayed at 1",
        grown.0
    ));

    let t1 = Instant::now();
    eventually(
        Duration::from_secs(240),
        &format!("{phase}: b back to one pod"),
        || async {
            let b = replicas(t, "b").await;
            (b == (1, 1) && pods_of(t, "b").await == 1).then_some(())
        },
    )
    .await;
    let down = t1.elapsed().as_secs_f64();
    let report = trickle.stop().await;
    measure(format!(
        "{phase}: load removed -> b at one pod in {down:.1} s; trickle {}",
        report.summary()
    ));
    report.assert_no_failures(&format!("{phase}: trickle to b while its pods went"));
    assert_eq!(
        replicas(t, "a").await.0,
        1,
        "{phase}: a stayed at one replica"
    );
    ok(format!(
        "{phase}: b back to one pod {down:.0} s after its load went, no request failed"
    ));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_follows_its_load_on_cpu_then_on_requests_per_second() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "autoscale").await;
    let t = serving(&bed, &ns, |host| {
        endpoint(host, "targetCPUUtilizationPercentage: 50")
    })
    .await;

    // CPU: the HPA reads b's utilisation from metrics-server (the whole pipeline works).
    let hpas: Api<HorizontalPodAutoscaler> = bed.api(&ns.name);
    let t0 = Instant::now();
    let idle = eventually(
        Duration::from_secs(180),
        "the HPA of b reads its CPU utilisation",
        || async {
            let h = hpas
                .get_opt(&format!("{ENDPOINT}-b-titanic-v2"))
                .await
                .ok()??;
            let m = h.status?.current_metrics?;
            m.first()?.resource.as_ref()?.current.average_utilization
        },
    )
    .await;
    measure(format!(
        "metrics pipeline: Ready -> b's HPA reads CPU ({idle} % idle) in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    b_follows_its_load(&t, "cpu").await;

    // Requests per second: the operator's scaler; b's HPA goes (one scaler per variant).
    t.edit(|s| {
        let a = s.variants[1].autoscaling.as_mut().unwrap();
        a.target_cpu_utilization_percentage = None;
        a.target_requests_per_second = Some(10.0);
    })
    .await;
    eventually(Duration::from_secs(60), "b's HPA removed", || async {
        hpas.get_opt(&format!("{ENDPOINT}-b-titanic-v2"))
            .await
            .ok()
            .and_then(|h| h.is_none().then_some(()))
    })
    .await;
    assert!(
        hpas.get_opt(&format!("{ENDPOINT}-a-titanic-v1"))
            .await
            .unwrap()
            .is_some(),
        "a keeps its CPU autoscaler"
    );
    b_follows_its_load(&t, "rps").await;
}

/// An endpoint whose `b` and `c` scale to zero after 30 s without a request (the shortest
/// idle time the API takes); `a` keeps one replica.
fn sleepy_endpoint(host: &str) -> ModelEndpoint {
    let zero = "minReplicas: 0, maxReplicas: 2, targetRequestsPerSecond: 10, \
                scaleToZeroAfterSeconds: 30, scaleDownStabilizationSeconds: 0";
    serde_yaml::from_str(&format!(
        r#"
metadata: {{name: {ENDPOINT}}}
spec:
  hosts: [{host}]
  expose: true
  variants:
    - {{name: a, model: titanic-v1, weight: 50}}
    - {{name: b, model: titanic-v2, weight: 25, autoscaling: {{{zero}}}}}
    - {{name: c, model: titanic-v1, weight: 25, autoscaling: {{{zero}}}}}
  routing: {{sticky: {{header: x-user-id}}}}
"#
    ))
    .unwrap()
}

/// Wake-ups of one variant measured on the bed.
const WAKE_UPS: usize = 5;

/// Requests sent at once on a variant's last wake-up: the proxy holds each and makes a wake call
/// for each; the operator's replicas share one wait per variant among the calls.
const BURST: usize = 8;

/// `WAKE_UPS` times: wait until `v` sleeps with no pod left, then send it one request (targeted
/// on even rounds, by its sticky `key` on odd ones; [`BURST`] targeted requests at once on the
/// last) and time its answer, which `model` (the server's `x-mlep-model`) must give. Returns the
/// cold-start latencies in ms (the slowest of a burst).
async fn wake_ups(t: &Titanic, v: &str, model: &str, key: &str) -> Vec<f64> {
    let mut cold = Vec::new();
    for i in 0..WAKE_UPS {
        let t0 = Instant::now();
        eventually(
            Duration::from_secs(300),
            &format!("{v} asleep with no pod (round {i})"),
            || async {
                let s = variant_status(t, v).await;
                let asleep = s["autoscaling"]["asleepSinceUnix"].as_i64().is_some();
                (asleep && replicas(t, v).await.0 == 0 && pods_of(t, v).await == 0).then_some(())
            },
        )
        .await;
        let idle = t0.elapsed().as_secs_f64();
        let header = if i % 2 == 0 {
            ("x-mlep-target-variant", v)
        } else {
            ("x-user-id", key)
        };
        let n = if i + 1 == WAKE_UPS { BURST } else { 1 };
        let started = Instant::now();
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (gateway, header) = (t.gateway.clone(), (header.0, header.1.to_owned()));
            burst.spawn(async move {
                let headers = [(header.0, header.1.as_str())];
                gateway
                    .invoke_within(&headers, Duration::from_secs(150))
                    .await
            });
        }
        let answers = burst.join_all().await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        for o in &answers {
            assert_eq!(o.status(), Some(200), "{v}, wake-up {i}: {o:?}");
            assert_eq!(o.variant(), Some(v), "{v}, wake-up {i}: assigned to {v}");
            assert_eq!(
                o.model(),
                Some(model),
                "{v}, wake-up {i}: answered by {v}'s model"
            );
        }
        measure(format!(
            "{v}: wake-up {i}: asleep with 0 pods {idle:.0} s after the round began; {n} held \
             request(s) answered 200 by {model} within {ms:.0} ms"
        ));
        cold.push(ms);
    }
    cold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_variants_go_to_zero_and_a_held_request_wakes_them() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "zero").await;
    let t = serving(&bed, &ns, sleepy_endpoint).await;
    // Keys the gateway assigns to b and to c (sticky: they keep them while asleep).
    let ks = keys("zero", 64);
    let assigned = t.variants_of(&ks).await;
    let key_of = |v: &str| {
        ks.iter()
            .zip(&assigned)
            .find(|(_, a)| a.as_deref() == Some(v))
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| panic!("no key of 64 assigned to {v}: {assigned:?}"))
    };
    let (kb, kc) = (key_of("b"), key_of("c"));

    // a never sleeps and never waits: a paced trickle runs the whole time.
    let mut shape = Shape::fresh_users(1).header("x-mlep-target-variant", "a");
    shape.keep_alive = true;
    let trickle = Load::start_paced(t.gateway.clone(), shape, 2.0);
    let calls = || op_metric_sum(&bed, "mlep_operator_wake_calls_total", &[("code", "200")]);
    let waits = || op_metric_sum(&bed, "mlep_operator_wake_waits_total", &[]);
    let (calls0, waits0) = (calls().await, waits().await);
    let (b, c) = tokio::join!(
        wake_ups(&t, "b", "titanic:v2", &kb),
        wake_ups(&t, "c", "titanic:v1", &kc)
    );
    let a = trickle.stop().await;

    let mut cold: Vec<f64> = b.into_iter().chain(c).collect();
    assert_eq!(cold.len(), 2 * WAKE_UPS);
    cold.sort_by(f64::total_cmp);
    let median = (cold[WAKE_UPS - 1] + cold[WAKE_UPS]) / 2.0;
    let max = cold[cold.len() - 1];
    measure(format!(
        "scale to zero: {} wake-ups, cold start median {median:.0} ms, max {max:.0} ms, 0 failed",
        cold.len()
    ));
    let (calls, waits) = (calls().await - calls0, waits().await - waits0);
    measure(format!(
        "the operator answered {calls} wake calls with {waits} waits for a ready pod"
    ));
    let held = (2 * (WAKE_UPS - 1 + BURST)) as f64;
    assert!(
        calls >= held,
        "every held request made a wake call answered 200: {calls} of {held}"
    );
    assert!(
        waits < calls,
        "calls for one variant share a wait: {waits} waits for {calls} calls"
    );
    a.assert_no_failures("a while b and c slept and woke");
    let a_max = a.latencies_ms.iter().copied().fold(0.0, f64::max);
    measure(format!("a meanwhile: {}, max {a_max:.0} ms", a.summary()));
    assert_eq!(
        a.by_variant.keys().collect::<Vec<_>>(),
        ["a"],
        "only a was asked"
    );
    assert!(
        a_max < 2000.0,
        "a's requests never wait for b or c to wake: slowest {a_max:.0} ms"
    );
    let reasons: Vec<String> = endpoint_events(&bed, &ns.name)
        .await
        .into_iter()
        .map(|(_, r, _)| r)
        .collect();
    for r in ["FellAsleep", "ScaledToZero", "Woke"] {
        assert!(reasons.iter().any(|x| x == r), "a {r} Event: {reasons:?}");
    }
    ok(format!(
        "b and c went to zero {} times and every held request was answered (median {median:.0} ms, max {max:.0} ms); a never waited",
        cold.len()
    ));
}
