//! The phases that touch only their own namespace (and read the shared gateway's stats by
//! their namespace's label): run with several threads. The crate's doc lists every check.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use mlep::table::sum_of;
use mlep_cluster_e2e::load::Load;
use mlep_cluster_e2e::*;
use mlep_contract::metrics as m;
use mlep_core::aggregate::SIDECAR_FILTER;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

// --- 2. the example -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_gets_ready_with_verified_artifacts() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "example").await;
    let t = Titanic::deploy(&bed, &ns).await;
    let pods = t.model_pods().await;
    let phases: Vec<_> = pods
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        phases.len() >= 2 && phases.iter().all(|p| p == "Running"),
        "model pods not all Running: {phases:?}"
    );
    let inits = pods
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.name == "model-init"
                            && c.state
                                .as_ref()
                                .and_then(|s| s.terminated.as_ref())
                                .is_some_and(|t| t.reason.as_deref() == Some("Completed"))
                    })
                })
        })
        .count();
    assert!(inits >= 2, "model-init completed in {inits} pods");
    let v1 = pods
        .iter()
        .find(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("titanic-a-titanic-v1"))
        })
        .and_then(|p| p.metadata.name.clone())
        .expect("a pod of titanic-a-titanic-v1");
    let log = logs(&bed, &t.ns, &v1, "model-init").await;
    assert!(
        log.to_lowercase().contains("sha256"),
        "model-init's log does not mention the verified sha256: {log}"
    );
    ok("endpoint Ready, model pods Running, model-init fetched and verified the artifact over HTTP");

    let (_, cols, _) = kubectl(&["-n", &t.ns, "get", "mle", ENDPOINT, "--no-headers"]).await;
    println!("    kubectl get mle: {}", cols.trim());
    assert!(
        cols.contains("80") && cols.contains("20"),
        "no weights: {cols}"
    );
    let (_, explain, _) = kubectl(&["explain", "mle.spec.variants"]).await;
    assert!(explain.to_lowercase().contains("weight"), "{explain}");
    ok("kubectl get mle shows weights; kubectl explain documents the variants");

    let mut bad = t.endpoint().await;
    bad.metadata = meta("invalid");
    bad.status = None;
    bad.spec.hosts = vec!["invalid.mlep.test".into()];
    bad.spec.variants[1].weight = 30;
    let err = t
        .endpoints()
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &bad,
        )
        .await
        .expect_err("weights summing to 110 admitted");
    let msg = err.to_string();
    assert!(
        msg.contains("100") && msg.to_lowercase().contains("invalid"),
        "{msg}"
    );
    ok(format!(
        "CEL rejects weights summing to 110 at admission: {msg}"
    ));
}

// --- 3. through the ingress gateway -------------------------------------------------------------

fn expected_matches(probabilities: &[f64]) -> bool {
    let e: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("examples/titanic/expected.json")).unwrap(),
    )
    .unwrap();
    let tol = e["tolerance"].as_f64().unwrap();
    probabilities.len() == 2
        && e["versions"].as_object().unwrap().values().any(|v| {
            v["predictions"].as_array().unwrap()[..2]
                .iter()
                .zip(probabilities)
                .all(|(w, g)| (w["probability"].as_f64().unwrap() - g).abs() <= tol)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_predicts_sticks_splits_targets_and_sets_cookies() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "gateway").await;
    let t = Titanic::deploy(&bed, &ns).await;
    let gw = &t.gateway;
    eventually(Duration::from_secs(180), "the gateway assigns", || async {
        gateway_assigns(&t).await.then_some(())
    })
    .await;
    let o = gw.invoke(&[("x-user-id", "probe")]).await;
    assert!(expected_matches(&o.probabilities()), "{o:?}");
    ok(format!(
        "prediction through the gateway (x-mlep-variant: {:?})",
        o.variant()
    ));

    let sticky = keys("sticky", 20);
    let first = gw.assign(&sticky).await;
    let second = gw.assign(&sticky).await;
    assert_eq!(first, second, "assignments changed between rounds");
    assert!(first.values().all(|v| !v.starts_with("none")), "{first:?}");
    ok("sticky per x-user-id (20 keys, two rounds, same variants)");

    let split = gw.split("split-user", 2000).await;
    let share_a = 100.0 * split.get("a").copied().unwrap_or(0) as f64 / 2000.0;
    measure(format!(
        "split over 2000 keys: {split:?} (a = {share_a:.2} %)"
    ));
    assert!(
        (share_a - 80.0).abs() <= 3.0,
        "split a={share_a}% not within 80±3"
    );
    ok(format!("80/20 over 2,000 keys: a={share_a:.2} %"));

    let o = gw
        .invoke(&[("x-user-id", "sticky-1"), (m::DEFAULT_TARGET_HEADER, "b")])
        .await;
    assert_eq!((o.status(), o.variant()), (Some(200), Some("b")), "{o:?}");
    let o = gw.invoke(&[(m::DEFAULT_TARGET_HEADER, "nosuch")]).await;
    assert!(
        o.status() == Some(400) && o.body().contains("nosuch"),
        "{o:?}"
    );
    ok("targeting b works; an unknown variant gets 400");

    let o = gw.invoke(&[]).await;
    assert_eq!(o.status(), Some(200), "keyless request: {o:?}");
    let cookie = o
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with(&format!("{}{ENDPOINT}=", m::COOKIE_PREFIX)),
        "{cookie:?}"
    );
    for _ in 0..3 {
        let again = gw.invoke(&[("cookie", &cookie)]).await;
        assert_eq!(
            again.variant(),
            o.variant(),
            "the cookie did not stick: {again:?}"
        );
    }
    ok(format!(
        "keyless client gets {cookie} and sticks to {:?}",
        o.variant()
    ));

    let stats = gateway_stats(&bed).await;
    let labels = [
        (m::LABEL_NAMESPACE, t.ns.as_str()),
        (m::LABEL_ENDPOINT, ENDPOINT),
        (m::LABEL_VARIANT, "a"),
        (m::LABEL_MODEL, "titanic-v1"),
        (m::LABEL_CODE_CLASS, "2xx"),
    ];
    let n = sum_of(&stats, m::REQUESTS_TOTAL, &labels);
    assert!(
        n > 0.0,
        "no labelled {} {labels:?} on the gateway",
        m::REQUESTS_TOTAL
    );
    ok(format!(
        "the gateway's /stats/prometheus: {} {labels:?} = {n}",
        m::REQUESTS_TOTAL
    ));
}

// --- 4. in the mesh -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_assigns_like_the_gateway() {
    let Stage { ns: _ns, t, s, .. } = Stage::set("mesh").await;
    let ten = keys("sticky", 10);
    let via_gateway = t.gateway.assign(&ten).await;
    let mut mismatched = Vec::new();
    for k in &ten {
        let o = s.invoke(&[("x-user-id", k)]).await;
        if o.variant() != Some(via_gateway[k].as_str()) {
            mismatched.push(format!(
                "{k}: gateway {}, sidecar {:?}",
                via_gateway[k],
                o.variant()
            ));
        }
    }
    assert!(mismatched.is_empty(), "{mismatched:?}");
    ok("the sidecar assigns the same variant as the gateway for the same key (10 keys)");
    let o = s
        .invoke(&[("x-user-id", "sticky-1"), (m::DEFAULT_TARGET_HEADER, "b")])
        .await;
    assert_eq!((o.status(), o.variant()), (Some(200), Some("b")), "{o:?}");
    let ka = via_gateway
        .iter()
        .find(|(_, v)| *v == "a")
        .map(|(k, _)| k.clone())
        .expect("a key on a");
    let o = s
        .invoke(&[("x-user-id", &ka), (m::VARIANT_HEADER, "b")])
        .await;
    assert_eq!((o.status(), o.variant()), (Some(200), Some("a")), "{o:?}");
    ok("targeting works in the mesh; a client-sent x-mlep-variant is overwritten");
}

// --- 5. changes under load ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_under_load_moves_users_only_from_a_to_b() {
    let Stage { ns: _ns, t, s, .. } = Stage::set("weights").await;
    let sticky = keys("sticky", 20);
    let before = t.gateway.assign(&sticky).await;
    let loads = BothLoads::start(&t, &s).await;
    t.edit(|spec| {
        spec.variants[0].weight = 50;
        spec.variants[1].weight = 50;
    })
    .await;
    eventually(SETTLE, "weights a=50,b=50 applied", || async {
        (weights(&t.endpoint().await) == "a=50,b=50" && t.split_near("a", 50.0).await).then_some(())
    })
    .await;
    loads.stop_without_failures("weights").await;
    let after = t.gateway.assign(&sticky).await;
    let moved: Vec<_> = sticky
        .iter()
        .filter(|k| before[*k] != after[*k] && !(before[*k] == "a" && after[*k] == "b"))
        .collect();
    assert!(moved.is_empty(), "users moved other than a -> b: {moved:?}");
    ok("80/20 -> 50/50 moved users only from a to b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_under_load_fails_nothing() {
    let Stage { ns: _ns, t, s, .. } = Stage::set("swap").await;
    let loads = BothLoads::start(&t, &s).await;
    t.edit(|spec| spec.variants[1].model = "titanic-v1".into())
        .await;
    eventually(SETTLE, "b swapped to titanic-v1", || async {
        let e = t.endpoint().await;
        let swapped = e
            .status
            .as_ref()
            .is_some_and(|s| s.variants.get(1).is_some_and(|v| v.model == "titanic-v1"));
        let ready = condition(&e, "Ready").is_some_and(|c| c.status == "True");
        (swapped && ready && !t.deployment_exists("titanic-b-titanic-v2").await).then_some(())
    })
    .await;
    loads.stop_without_failures("swap").await;
    ok("the old Deployment of b is gone after the swap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_added_under_load_is_sent_copies_and_compared() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("shadow").await;
    let loads = BothLoads::start(&t, &s).await;
    let mine = [(m::LABEL_NAMESPACE, t.ns.as_str())];
    // The gateway's counters outlive a namespace of the same name (a rerun on the same bed).
    let by_outcome = |stats: &[mlep::table::Sample], outcome| {
        sum_of(
            stats,
            m::SHADOW_REQUESTS_TOTAL,
            &[mine[0], (m::LABEL_OUTCOME, outcome)],
        )
    };
    let counts = |stats: &[mlep::table::Sample]| {
        let failed = by_outcome(stats, "error") + by_outcome(stats, "timeout");
        (by_outcome(stats, "ok"), failed)
    };
    let before = counts(&gateway_stats(&bed).await);
    t.edit(|spec| {
        spec.shadow =
            serde_json::from_value(serde_json::json!({"model": "titanic-v2", "percent": 100.0}))
                .unwrap()
    })
    .await;
    eventually(
        SETTLE,
        "shadow Deployment ready and copies sent",
        || async {
            let d = bed
                .api::<Deployment>(&t.ns)
                .get_opt("titanic-shadow-titanic-v2")
                .await
                .ok()??;
            let ready = d.status?.ready_replicas == Some(1);
            let stats = gateway_stats(&bed).await;
            let sent = sum_of(
                &stats,
                m::SHADOW_REQUESTS_TOTAL,
                &[mine[0], (m::LABEL_OUTCOME, "ok")],
            );
            (ready && sent > 0.0).then_some(())
        },
    )
    .await;
    loads.stop_without_failures("shadow").await;
    // A comparison is counted by whichever side finished last; a stream's count reaches Envoy
    // up to a second later than the copy's outcome.
    let (sent, compared) = eventually(SETTLE, "shadow agreement counted", || async {
        let stats = gateway_stats(&bed).await;
        let compared = sum_of(&stats, m::SHADOW_AGREEMENT_TOTAL, &mine);
        let sent = sum_of(&stats, m::SHADOW_REQUESTS_TOTAL, &mine);
        (compared > 0.0).then_some((sent, compared))
    })
    .await;
    measure(format!("shadow: {sent} copies sent, {compared} compared"));
    assert!(
        compared > 0.0,
        "no shadow agreement counted ({sent} copies sent)"
    );
    // The bed's proxies carry the native build and the operator is told so: the gateway
    // compares this endpoint's copies there (sent from Envoy's main thread).
    let mine = format!("\"namespace\":\"{}\"", t.ns);
    assert!(
        gateway_native_config_has(&bed, &[&mine, "\"shadow\":"])
            .await
            .is_some(),
        "the gateway's native filter does not hold the endpoint's shadow"
    );
    // Copies start only once the shadow has a ready pod (`Plan::shadow_ready`): the load ran
    // while its pod started, and not one copy met a Service without endpoints (a 503, counted
    // as `error`) or waited out its timeout.
    let after = counts(&gateway_stats(&bed).await);
    let (answered, failed) = (after.0 - before.0, after.1 - before.1);
    assert!(
        answered > 0.0 && failed == 0.0,
        "copies answered {answered}, failed {failed}"
    );
    let e = t.endpoint().await;
    let shadow_ready = condition(&e, "ShadowReady");
    assert!(
        shadow_ready.is_some_and(|c| c.status == "True"),
        "{shadow_ready:?}"
    );
    ok(format!(
        "shadow copies sent ({sent}, none failed while its pod started) and agreement \
         counted ({compared}) by the gateway's native build; ShadowReady True"
    ));

    native_mirror_copies_without_credentials(&bed, &t).await;
}

/// Comparison off: Envoy's own mirror copies (`mlep_core::mirror`: an HTTP_ROUTE patch on the
/// endpoint's virtual hosts), the filter none, and the copies carry no credentials. A policy
/// on the shadow's pods refuses requests that carry `authorization`: with
/// `forwardCredentials: true` the copies are refused (so the policy is in force), then
/// without it they are answered. The gateway's shadow cluster counts the copies by status
/// (manifests/istio/mesh.yaml lets its stats through).
async fn native_mirror_copies_without_credentials(bed: &Bed, t: &Titanic) {
    let policy = serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "shadow-refuses-credentials"},
        "spec": {
            "selector": {"matchLabels": {"mlep.dev/endpoint": "titanic", "mlep.dev/variant": "shadow"}},
            "action": "DENY",
            "rules": [{"when": [{"key": "request.headers[authorization]", "values": ["*"]}]}],
        },
    });
    let ar = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
    ));
    let policies: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(bed.client.clone(), &t.ns, &ar);
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(policy).unwrap(),
        )
        .await
        .unwrap();
    let mine = [(m::LABEL_NAMESPACE, t.ns.as_str())];
    let cluster = format!("titanic-shadow.{}.svc", t.ns);
    // Copies answered by the shadow cluster, refused (4xx) or not.
    let copies = |stats: &[mlep::table::Sample], refused: bool| -> f64 {
        stats
            .iter()
            .filter(|x| x.name.ends_with("cluster_upstream_rq"))
            .filter(|x| x.labels.values().any(|v| v.contains(&cluster)))
            .filter(|x| {
                let code = x
                    .labels
                    .iter()
                    .find(|(k, _)| k.ends_with("response_code"))
                    .and_then(|(_, v)| v.parse::<u16>().ok());
                code.is_some_and(|c| (400..500).contains(&c) == refused)
            })
            .map(|x| x.value)
            .sum()
    };
    const BATCH: usize = 10;
    let batch = |refused: bool| async move {
        let before = gateway_stats(bed).await;
        for i in 0..BATCH {
            let key = format!("native-{i}");
            let o = t
                .gateway
                .invoke(&[("x-user-id", &key), ("authorization", "Bearer secret")])
                .await;
            assert_eq!(o.status(), Some(200), "{o:?}");
        }
        let after = gateway_stats(bed).await;
        let delta = |refused| copies(&after, refused) - copies(&before, refused);
        let by_filter = sum_of(&after, m::SHADOW_REQUESTS_TOTAL, &mine)
            - sum_of(&before, m::SHADOW_REQUESTS_TOTAL, &mine);
        let n = BATCH as f64;
        (delta(refused) >= n && delta(!refused) == 0.0 && by_filter == 0.0)
            .then_some(delta(refused))
    };
    let compare_off = |forward: bool| {
        move |spec: &mut mlep_core::crd::ModelEndpointSpec| {
            if let Some(s) = spec.shadow.as_mut() {
                s.compare = Some(mlep_contract::CompareMode::Off);
                s.forward_credentials = Some(forward);
            }
        }
    };
    t.edit(compare_off(true)).await;
    let refused = eventually(SETTLE, "credentialed copies refused", || batch(true)).await;
    t.edit(compare_off(false)).await;
    let answered = eventually(SETTLE, "copies without credentials answered", || {
        batch(false)
    })
    .await;
    ok(format!(
        "comparison off: Envoy's mirror copied every request, none by the filter; with \
         credentials {refused} of {BATCH} refused by the shadow's policy, without them \
         {answered} of {BATCH} answered"
    ));
    mirror_is_bounded(bed, t).await;
    // Prometheus counts them under the filter's name and labels: the shipped recording rules
    // (manifests/observability) join the shadow cluster's stats with the operator's
    // `mlep_shadow_mirrored_info`, which names the model. Every answered copy the proxies
    // counted (the native ones above among them) is recorded, no more, no less.
    let recorded_q = format!(
        "sum({}{{namespace=\"{}\",variant=\"shadow\",model=\"titanic-v2\",outcome=\"ok\",cluster_name!=\"\"}})",
        m::SHADOW_REQUESTS_TOTAL,
        t.ns
    );
    let raw_q = format!(
        "sum(envoy_cluster_upstream_rq{{cluster_name=~\"outbound\\\\|80\\\\|\\\\|titanic-shadow\\\\.{}\\\\.svc\\\\..+\",response_code=~\"[2-4][0-9][0-9]\"}})",
        t.ns
    );
    let want = refused + answered;
    let recorded = eventually(SETTLE, "native copies recorded by Prometheus", || async {
        let recorded = prom_value(bed, &recorded_q).await?;
        let raw = prom_value(bed, &raw_q).await?;
        (recorded == raw && recorded >= want).then_some(recorded)
    })
    .await;
    ok(format!(
        "Prometheus: all {recorded} answered copies the proxies counted as {} (outcome ok)",
        m::SHADOW_REQUESTS_TOTAL
    ));
    a_sampled_comparison_copies_each_request_once(bed, t).await;
}

/// Comparison on a sample (`comparePercent: 20`, `mlep_core::mirror`): the filter copies and
/// compares the sampled requests and routes the other copied ones to their route's mirroring
/// twin, where Envoy's mirror copies them. Once the gateway has the twins (with the mirror)
/// and the filter config that uses them, each of a batch of requests is copied exactly once
/// (the gateway's shadow cluster answers as many copies as requests), some are compared, and
/// the filter counts no outcome (the cluster counts every copy).
async fn a_sampled_comparison_copies_each_request_once(bed: &Bed, t: &Titanic) {
    t.edit(|spec| {
        if let Some(s) = spec.shadow.as_mut() {
            s.compare = None;
            s.compare_percent = Some(20.0);
            s.forward_credentials = Some(false);
        }
    })
    .await;
    let shadow = format!("outbound|80||titanic-shadow.{}.svc.cluster.local", t.ns);
    let twins = eventually(
        SETTLE,
        "twin routes and a filter config using them",
        || async {
            let dump: serde_json::Value =
                serde_json::from_str(&gateway_admin(bed, "config_dump").await).ok()?;
            let (mut twins, mut plain, mut uses_twins) = (0, 0, false);
            for v in every_value(&dump) {
                match v {
                    serde_json::Value::Object(o) => {
                        let mirrors = (o.get("route"))
                            .and_then(|r| r["request_mirror_policies"].as_array())
                            .is_some_and(|m| m.iter().any(|p| p["cluster"] == shadow.as_str()));
                        let name = o.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                        match (mirrors, name.ends_with(mlep_contract::MIRROR_TWIN_SUFFIX)) {
                            (true, true) => twins += 1,
                            (true, false) => plain += 1,
                            _ => {}
                        }
                    }
                    // The filter's config, a JSON string inside the ECDS resource.
                    serde_json::Value::String(text) if text.contains("\"routeKey\"") => {
                        let cfg: mlep_contract::FilterConfig = serde_json::from_str(text).ok()?;
                        uses_twins |= cfg.endpoints.iter().any(|e| {
                            e.namespace == t.ns
                                && e.shadow.as_ref().is_some_and(|s| s.mirror_routes)
                        });
                    }
                    _ => {}
                }
            }
            (twins >= 2 && plain == 0 && uses_twins).then_some(twins)
        },
    )
    .await;
    const BATCH: usize = 100;
    let mine = [(m::LABEL_NAMESPACE, t.ns.as_str())];
    let cluster = format!("titanic-shadow.{}.svc", t.ns);
    let of_shadow = |stats: &[mlep::table::Sample], suffix: &str| -> f64 {
        stats
            .iter()
            .filter(|x| x.name.ends_with(suffix))
            .filter(|x| x.labels.values().any(|v| v.contains(&cluster)))
            .map(|x| x.value)
            .sum()
    };
    let counts = |stats: &[mlep::table::Sample]| {
        (
            of_shadow(stats, "cluster_upstream_rq_completed"),
            sum_of(stats, m::SHADOW_AGREEMENT_TOTAL, &mine),
            sum_of(stats, m::SHADOW_REQUESTS_TOTAL, &mine),
            sum_of(stats, m::REQUESTS_TOTAL, &mine),
        )
    };
    let before = counts(&gateway_stats(bed).await);
    for i in 0..BATCH {
        let key = format!("sampled-{i}");
        let o = (t.gateway)
            .invoke(&[("x-user-id", &key), ("authorization", "Bearer secret")])
            .await;
        assert_eq!(o.status(), Some(200), "{o:?}");
    }
    // Settled: no copy in flight, and every request counted: a comparison the stream counts
    // (its copy answered before the primary's body ended) reaches Envoy with the request's
    // own count, batched, up to a second later; the root counts the others at once.
    let (copies, compared, by_filter) = eventually(SETTLE, "every copy answered", || async {
        let stats = gateway_stats(bed).await;
        let in_flight = of_shadow(&stats, "cluster_upstream_rq_active")
            + of_shadow(&stats, "cluster_upstream_rq_pending_active");
        let now = counts(&stats);
        let delta = (now.0 - before.0, now.1 - before.1, now.2 - before.2);
        let counted = now.3 - before.3;
        (in_flight == 0.0 && delta.0 >= BATCH as f64 && delta.1 > 0.0 && counted >= BATCH as f64)
            .then_some(delta)
    })
    .await;
    measure(format!(
        "sampled comparison at 20 %: {copies} copies of {BATCH} requests, {compared} compared"
    ));
    assert_eq!(copies, BATCH as f64, "each request copied exactly once");
    assert_eq!(
        by_filter, 0.0,
        "the shadow's cluster counts the copies, not the filter"
    );
    // 20 % of 100: a binomial count far outside 20 +- 17 means the share is wrong.
    assert!(
        (3.0..=37.0).contains(&compared),
        "{compared} compared of {BATCH}"
    );
    ok(format!(
        "comparison on a 20 % sample: {twins} twin routes mirror in the gateway; each of \
         {BATCH} requests copied once ({compared} compared by the filter, the rest by Envoy)"
    ));
}

/// What bounds the copies Envoy's mirror holds for a shadow that stops answering, as the
/// gateway has it: every route that mirrors has the endpoint's 60 s timeout (the copy's
/// too), and the shadow's cluster has circuit breakers at the filter's 1,024 (the shadow's
/// DestinationRule; Istio's defaults are unlimited).
async fn mirror_is_bounded(bed: &Bed, t: &Titanic) {
    let dump: serde_json::Value =
        serde_json::from_str(&gateway_admin(bed, "config_dump").await).unwrap();
    let shadow = format!("outbound|80||titanic-shadow.{}.svc.cluster.local", t.ns);
    let mut routes = Vec::new();
    let mut thresholds = None;
    for o in every_value(&dump).into_iter().filter_map(|v| v.as_object()) {
        let mirrors_to_shadow = (o.get("request_mirror_policies"))
            .and_then(|m| m.as_array())
            .is_some_and(|m| m.iter().any(|p| p["cluster"] == shadow.as_str()));
        if mirrors_to_shadow {
            routes.push(o.get("timeout").cloned().unwrap_or_default());
        }
        if o.get("name").is_some_and(|n| n == shadow.as_str()) && o.contains_key("type") {
            let breakers = o.get("circuit_breakers").cloned().unwrap_or_default();
            thresholds = Some(breakers["thresholds"][0].clone());
        }
    }
    assert!(
        !routes.is_empty(),
        "no route of the gateway mirrors to {shadow}"
    );
    assert!(routes.iter().all(|r| r == "60s"), "{routes:?}");
    let thresholds = thresholds.unwrap_or_else(|| panic!("no cluster {shadow} in the gateway"));
    assert_eq!(
        (
            &thresholds["max_requests"],
            &thresholds["max_pending_requests"]
        ),
        (&serde_json::json!(1024), &serde_json::json!(1024)),
        "{thresholds}"
    );
    ok(format!(
        "the gateway's {} mirroring routes time out at 60 s; the shadow's cluster holds at \
         most 1024 copies",
        routes.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_variant_under_load_retires_it_then_removes_it() {
    let Stage { ns: _ns, t, s, .. } = Stage::set("remove").await;
    let loads = BothLoads::start(&t, &s).await;
    let t_rm = Instant::now();
    t.edit(|spec| {
        spec.variants.remove(1);
        spec.variants[0].weight = 100;
    })
    .await;
    // Ordered removal: first nobody is assigned b while its route, subset and pods stay.
    eventually(Duration::from_secs(60), "b is retiring", || async {
        let e = t.endpoint().await;
        e.status?
            .retiring
            .first()
            .filter(|r| r.name == "b")
            .map(|_| ())
    })
    .await;
    let routes = t.route_names().await;
    let subsets = t.subset_names().await;
    let b_pods = t.deployments("mlep.dev/variant=b").await;
    assert!(
        routes.iter().any(|r| r == "variant-b") && subsets.iter().any(|s| s == "b") && !b_pods.is_empty(),
        "b's route, subset or Deployment went with the spec edit (routes {routes:?}, subsets {subsets:?})"
    );
    eventually(Duration::from_secs(60), "nobody assigned b", || async {
        t.split_near("a", 100.0).await.then_some(())
    })
    .await;
    println!("    retiring b: routes {routes:?}, subsets {subsets:?}, Deployment kept; new requests all on a");
    eventually(SETTLE, "b removed", || async {
        let e = t.endpoint().await;
        let gone = weights(&e) == "a=100"
            && e.status.as_ref().is_some_and(|s| s.retiring.is_empty())
            && t.deployments("mlep.dev/variant=b").await.is_empty()
            && !t.route_names().await.iter().any(|r| r == "variant-b");
        (gone && t.split_near("a", 100.0).await).then_some(())
    })
    .await;
    measure(format!(
        "variant b removed: route, subset and Deployment gone {:.0} s after the edit (grace 30 s)",
        t_rm.elapsed().as_secs_f64()
    ));
    loads.stop_without_failures("remove-variant").await;
}

// --- 5b. progressive delivery, analysed by Prometheus -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_to_a_failing_model_rolls_back() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("canary").await;
    t.create_batch1_model().await;
    // Prometheus has the filter's labelled metrics (the analysis reads them).
    Load::run_for(t.gateway.clone(), true, Duration::from_secs(2)).await;
    let q = format!(
        "sum({}{{namespace=\"{}\",endpoint=\"{ENDPOINT}\",variant=\"a\",model=\"titanic-v1\"}})",
        m::REQUESTS_TOTAL,
        t.ns
    );
    eventually(
        Duration::from_secs(120),
        "Prometheus has mlep_requests_total{variant=a}",
        || async { (prom_value(&bed, &q).await? > 0.0).then_some(()) },
    )
    .await;
    ok("Prometheus scrapes the gateway's filter metrics with their labels");

    let loads = BothLoads::start(&t, &s).await;
    let t_c = Instant::now();
    t.edit(rollout(
        serde_json::json!({"model": "titanic-batch1", "rollout": {
        "strategy": "Canary", "stepSeconds": 30, "maxStepSeconds": 120,
        "canary": {"percent": 50}, "analysis": {"minRequests": 20, "maxErrorRate": 0.1}}}),
    ))
    .await;
    eventually(
        Duration::from_secs(180),
        "the canary moves 50 % of a's users",
        || async {
            let r = rollout_status(&t).await;
            (r["phase"] == "Progressing" && r["movedPercent"] == 50).then_some(())
        },
    )
    .await;
    let moved = t_c.elapsed();
    let (analysis, seen) = rolled_back_on(&t, "maxErrorRate").await;
    measure(format!(
        "canary: 50 % moved {:.0} s after the edit, rolled back {:.0} s later",
        moved.as_secs_f64(),
        (seen - t_c).as_secs_f64() - moved.as_secs_f64()
    ));
    let (g, sc) = loads.stop("canary").await;
    for (via, rep) in [("gateway", &g), ("sidecar", &sc)] {
        assert!(rep.requests > 0, "no canary load through the {via}");
        let not_canary: BTreeMap<_, _> = rep
            .failures_by_model
            .iter()
            .filter(|(model, _)| model.as_str() != "titanic:batch1")
            .collect();
        assert!(
            not_canary.is_empty(),
            "failures through the {via} not from the canary's model: {not_canary:?} ({:?})",
            rep.failures
        );
    }
    assert!(
        g.failed() + sc.failed() > 0,
        "the failing canary failed no request"
    );
    ok(format!(
        "Canary to a failing model rolled back on maxErrorRate (measured {}): every user of a back on titanic:v1; every failure answered by titanic:batch1",
        analysis["value"]
    ));
    eventually(
        Duration::from_secs(90),
        "no route, subset or Deployment of titanic-batch1 left",
        || async {
            let stale = t.deployment_exists("titanic-a-titanic-batch1").await
                || t.subset_names().await.iter().any(|s| s.contains("batch1"))
                || t.istio_object("VirtualService")
                    .await
                    .is_some_and(|v| v.to_string().contains("batch1"));
            (!stale).then_some(())
        },
    )
    .await;
    let after = Load::run_for(t.gateway.clone(), true, Duration::from_secs(5)).await;
    after.assert_no_failures("after the rollback");
    ok("after the rollback: no stale route, subset or Deployment; 5 s of load, 0 failed");
    rollout_events_are_listed(&t).await;
    rolled_back_alert_fires_then_resolves(&t).await;
}

/// The shipped `MlepRolloutRolledBack` alert fires on the rollback (the operator's
/// `mlep_endpoint_condition`), and resolves once the spec names the old model again.
async fn rolled_back_alert_fires_then_resolves(t: &Titanic) {
    let alert = || ("MlepRolloutRolledBack".to_owned(), String::new());
    eventually(
        Duration::from_secs(120),
        "MlepRolloutRolledBack fires",
        || async {
            firing_alerts(&t.bed, &t.ns)
                .await
                .contains(&alert())
                .then_some(())
        },
    )
    .await;
    t.edit(|spec| spec.variants[0].model = "titanic-v1".into())
        .await;
    eventually(
        Duration::from_secs(120),
        "MlepRolloutRolledBack resolves",
        || async { (!firing_alerts(&t.bed, &t.ns).await.contains(&alert())).then_some(()) },
    )
    .await;
    ok("the shipped MlepRolloutRolledBack alert fired on the rollback and resolved once the spec named titanic-v1 again");
}

/// The canary's Events on the endpoint: its 50 % step and the rollback with the measured value
/// against its limit; `kubectl describe mle` lists them.
async fn rollout_events_are_listed(t: &Titanic) {
    let events = endpoint_events(&t.bed, &t.ns).await;
    assert!(
        events
            .iter()
            .any(|(_, r, n)| r == "RolloutStep" && n.contains("50% of a's users")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(ty, r, n)| ty == "Warning"
            && r == "RolledBack"
            && n.contains("maxErrorRate: measured ")
            && n.contains("against a limit of 0.1")),
        "{events:?}"
    );
    let (_, described, _) = kubectl(&["-n", &t.ns, "describe", "mle", ENDPOINT]).await;
    assert!(
        described.contains("RolloutStep") && described.contains("RolledBack"),
        "{described}"
    );
    ok("Events on the endpoint: RolloutStep and RolledBack (measured against its limit); kubectl describe lists them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_bakes_then_promotes() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("bluegreen").await;
    let loads = BothLoads::start(&t, &s).await;
    t.edit(rollout(
        serde_json::json!({"model": "titanic-v2", "rollout": {
        "strategy": "BlueGreen", "maxStepSeconds": 120,
        "blueGreen": {"shadowPercent": 100, "bakeSeconds": 20, "terminationWaitSeconds": 15},
        "analysis": {"minRequests": 20, "maxErrorRate": 0.05}}}),
    ))
    .await;
    eventually(Duration::from_secs(180), "green ready, baking", || async {
        (rollout_status(&t).await["phase"] == "Baking").then_some(())
    })
    .await;
    let t_bake = Instant::now();
    let bake = std::sync::Mutex::new(serde_json::Value::Null);
    eventually(
        SETTLE,
        "promoted, every user on titanic:v2, blue removed",
        || {
            let (bake, t) = (&bake, &t);
            async move {
                // After the switch, `lastAnalysis` shows the bake's check that let it
                // promote (only a failing check replaces it during the wait).
                let r = rollout_status(t).await;
                if r["phase"] == "Promoted" {
                    *bake.lock().unwrap() = r["lastAnalysis"].clone();
                }
                (r["phase"] == "Promoted"
                    && t.a_all_on("titanic:v2").await
                    && !t.deployment_exists("titanic-a-titanic-v1").await)
                    .then_some(())
            }
        },
    )
    .await;
    measure(format!(
        "blue/green: promoted and blue removed {:.0} s after the bake began (bake 20 s + wait 15 s)",
        t_bake.elapsed().as_secs_f64()
    ));
    loads.stop_without_failures("bluegreen").await;
    let win = t_bake.elapsed().as_secs() + 10;
    let sel = format!(
        "namespace=\"{}\",endpoint=\"{ENDPOINT}\",model=\"titanic-v2\"",
        t.ns
    );
    let mirrored = prom_value(
        &bed,
        &format!(
            "sum(increase({}{{{sel}}}[{win}s]))",
            m::SHADOW_REQUESTS_TOTAL
        ),
    )
    .await;
    let compared = prom_value(
        &bed,
        &format!(
            "sum(increase({}{{{sel}}}[{win}s]))",
            m::SHADOW_AGREEMENT_TOTAL
        ),
    )
    .await;
    measure(format!(
        "blue/green bake in Prometheus (last {win} s): {mirrored:?} copies mirrored to titanic-v2, {compared:?} compared"
    ));
    assert!(
        compared.unwrap_or(0.0) > 0.0,
        "no compared mirror copies in Prometheus"
    );
    let bake = bake.into_inner().unwrap();
    println!("    the bake's analysis: {bake}");
    assert_eq!(
        bake["passed"], true,
        "the promotion does not show a passed bake analysis: {bake}"
    );
    ok("BlueGreen baked (mirrored copies compared), promoted with 0 failed requests, every user on titanic:v2, blue removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linear_rollout_promotes_step_by_step() {
    let Stage { ns: _ns, t, s, .. } = Stage::set("linear").await;
    let loads = BothLoads::start(&t, &s).await;
    t.edit(rollout(
        serde_json::json!({"model": "titanic-v2", "rollout": {
        "strategy": "Linear", "stepSeconds": 10, "maxStepSeconds": 120,
        "linear": {"stepPercent": 50}, "analysis": {"minRequests": 20, "maxErrorRate": 0.05}}}),
    ))
    .await;
    let steps = std::sync::Mutex::new(std::collections::BTreeSet::new());
    eventually(
        SETTLE,
        "promoted, every user on titanic:v2, the old Deployment removed",
        || {
            let (steps, t) = (&steps, &t);
            async move {
                let r = rollout_status(t).await;
                if r["phase"] == "Progressing" {
                    steps
                        .lock()
                        .unwrap()
                        .insert(r["movedPercent"].as_u64().unwrap_or(0));
                }
                (r["phase"] == "Promoted"
                    && t.a_all_on("titanic:v2").await
                    && !t.deployment_exists("titanic-a-titanic-v1").await)
                    .then_some(())
            }
        },
    )
    .await;
    let steps = steps.into_inner().unwrap();
    measure(format!(
        "linear: moved shares seen while progressing: {steps:?}"
    ));
    assert!(steps.contains(&50), "no 50 % step seen: {steps:?}");
    loads.stop_without_failures("linear").await;
    ok(format!(
        "Linear promoted step by step (moved % seen: {steps:?}), every user on titanic:v2"
    ));
}

// --- 6. faults ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_failing_its_checksum_fails_open() {
    let bed = Bed::connect().await;
    let ns = TempNs::create(&bed, "badsha").await;
    // An endpoint, so that the operator's shared sidecar filter exists to copy.
    let t = Titanic::deploy(&bed, &ns).await;
    let shared = bed
        .istio("istio-system", "EnvoyFilter")
        .get(SIDECAR_FILTER)
        .await
        .unwrap();
    let mut spec = shared.data["spec"].clone();
    spec["workloadSelector"] = serde_json::json!({"labels": {"app": "badsha"}});
    // The Wasm filter's patches only: where the proxies have the native build, the endpoint's
    // own virtual hosts enable the native filter (its patches stay the shared object's).
    let native = format!("{SIDECAR_FILTER}{}", mlep_core::aggregate::NATIVE_SUFFIX);
    if let Some(patches) = spec["configPatches"].as_array_mut() {
        patches.retain(|p| !p.to_string().contains(&native));
    }
    for p in spec["configPatches"].as_array_mut().unwrap() {
        let v = &mut p["patch"]["value"];
        if let Some(on) = v
            .get_mut("typed_per_filter_config")
            .and_then(|t| t.as_object_mut())
        {
            // A virtual host enabling the filter: enable the copy under its own name.
            if let Some(cfg) = on.remove(SIDECAR_FILTER) {
                on.insert("badsha".into(), cfg);
            }
            continue;
        }
        v["name"] = "badsha".into();
        if v.get("typed_config").is_some() {
            v["typed_config"]["config"]["name"] = "badsha".into();
            v["typed_config"]["config"]["vm_config"]["code"]["remote"]["sha256"] =
                "0".repeat(64).into();
        }
    }
    let copy: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": "badsha", "namespace": t.ns}, "spec": spec}))
    .unwrap();
    bed.istio(&t.ns, "EnvoyFilter")
        .create(&PostParams::default(), &copy)
        .await
        .unwrap();
    let url = format!("{}/titanic-v1.tar.gz", t.artifacts);
    client_pod(&bed, &t.ns, "badsha").await;
    let (_, code, err) = kubectl(&[
        "-n",
        &t.ns,
        "exec",
        "badsha",
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-m",
        "30",
        &url,
    ])
    .await;
    assert_eq!(
        code, "200",
        "a proxy whose module failed its checksum: {code} {err}"
    );
    eventually(
        Duration::from_secs(30),
        "the agent logs the checksum fallback",
        || async {
            let log = logs(&bed, &t.ns, "badsha", "istio-proxy").await;
            log.lines()
                .any(|l| l.contains("does not match") && l.contains("applying allow RBAC filter"))
                .then_some(())
        },
    )
    .await;
    ok("a sha256 mismatch: the agent falls back to allow-all and the pod's outbound HTTP answers 200");
}
