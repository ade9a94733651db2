//! Rollout analysis judged on real metrics (issue 22): the bed's Prometheus scraping the
//! gateway's filter, the operator querying it. Beside `maxErrorRate` (the canary phase of
//! `namespaced.rs`): a BlueGreen whose green model disagrees with blue is stopped by
//! `minAgreement` (judged on its confidence bound), and a Canary to a model that answers 50 ms
//! slower is rolled back by `maxP99LatencyMs`. Namespaced phases: run with several threads.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::api::PostParams;
use mlep_cluster_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_to_a_disagreeing_model_is_stopped_by_min_agreement() {
    let Stage {
        bed: _bed,
        ns: _ns,
        t,
        s,
    } = Stage::set("agreement").await;
    // titanic-v2 answers the example's rows with other probabilities than titanic-v1: every
    // compared copy disagrees (the observability phase's MlepShadowDisagreement fault).
    let loads = BothLoads::start(&t, &s).await;
    let t0 = std::time::Instant::now();
    t.edit(rollout(
        serde_json::json!({"model": "titanic-v2", "rollout": {
        "strategy": "BlueGreen", "maxStepSeconds": 180,
        "blueGreen": {"shadowPercent": 100, "bakeSeconds": 20, "terminationWaitSeconds": 15},
        "analysis": {"minRequests": 20, "maxErrorRate": 0.05, "minAgreement": 0.9}}}),
    ))
    .await;
    let (analysis, seen) = rolled_back_on(&t, "minAgreement").await;
    measure(format!(
        "rolled back on minAgreement {:.0} s after the edit",
        (seen - t0).as_secs_f64()
    ));
    let value = analysis["value"].as_f64().unwrap();
    assert!(
        value < 0.9,
        "judged on an upper bound under the limit: {analysis}"
    );
    // Green served nobody while it baked: nothing failed, through the gateway or a sidecar.
    loads.stop_without_failures("bluegreen-disagreeing").await;
    ok(format!(
        "BlueGreen to a disagreeing model stopped by minAgreement (95 % upper bound {value} < 0.9), every user on titanic:v1, 0 failed"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_to_a_slower_model_is_rolled_back_by_max_p99_latency() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("latency-canary").await;
    // Every request to titanic-v2's pods waits 50 ms in their inbound sidecar.
    bed.istio(&t.ns, "EnvoyFilter")
        .create(
            &PostParams::default(),
            &serde_json::from_value(delay_filter("titanic-v2", 50)).unwrap(),
        )
        .await
        .unwrap();
    let loads = BothLoads::start(&t, &s).await;
    let t0 = std::time::Instant::now();
    t.edit(rollout(
        serde_json::json!({"model": "titanic-v2", "rollout": {
        "strategy": "Canary", "stepSeconds": 30, "maxStepSeconds": 180,
        "canary": {"percent": 50},
        "analysis": {"minRequests": 20, "maxErrorRate": 0.1, "maxP99LatencyMs": 40}}}),
    ))
    .await;
    let (analysis, seen) = rolled_back_on(&t, "maxP99LatencyMs").await;
    measure(format!(
        "rolled back on maxP99LatencyMs {:.0} s after the edit",
        (seen - t0).as_secs_f64()
    ));
    let value = analysis["value"].as_f64().unwrap();
    assert!(
        value >= 50.0,
        "the canary's p99 includes the 50 ms: {analysis}"
    );
    // Slow is not failed: every request was answered.
    loads.stop_without_failures("canary-slow").await;
    ok(format!(
        "Canary to a model 50 ms slower rolled back by maxP99LatencyMs (p99 {value} ms > 40), every user on titanic:v1, 0 failed"
    ));
}
