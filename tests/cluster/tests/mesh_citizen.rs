//! A good citizen of a shared mesh (issue 17): the filter knows an endpoint by the virtual host
//! Envoy routed a request to, and only the filter can produce the header values the routes obey.
//! Each test runs in its own namespace(s); see tests/cluster/src/lib.rs.

use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;
use mlep_cluster_e2e::load::Outcome;
use mlep_cluster_e2e::*;
use mlep_contract::metrics as m;
use mlep_core::aggregate::SIDECAR_FILTER;
use std::time::Duration;

/// One request from `pod` (container `client`) to `url`; the response's status line and
/// headers, lowercased, without a retry.
async fn response_headers(ns: &str, pod: &str, url: &str, headers: &[(&str, &str)]) -> String {
    let mut args: Vec<String> = [
        "-n",
        ns,
        "exec",
        pod,
        "-c",
        "client",
        "--",
        "curl",
        "-sS",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-X",
        "POST",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for (k, v) in headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    args.push(url.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, out, err) = kubectl(&args).await;
    assert!(!out.is_empty(), "no response from {url}: {err}");
    out.to_ascii_lowercase()
}

/// Every name and address Istio reaches the Service by (FQDN, `name.ns`, `name.ns.svc`, the
/// short name from its own namespace, the ClusterIP; with and without the port) gets the same
/// assignment as the gateway for the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_and_the_cluster_ip_get_the_gateways_assignment() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("names").await;
    let svc = bed.api::<Service>(&t.ns).get(ENDPOINT).await.unwrap();
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let ns = &t.ns;
    let names = [
        format!("{ENDPOINT}.{ns}.svc.cluster.local"),
        format!("{ENDPOINT}.{ns}.svc.cluster.local:80"),
        format!("{ENDPOINT}.{ns}"),
        format!("{ENDPOINT}.{ns}.svc"),
        ENDPOINT.to_owned(),
        ip.clone(),
        format!("{ip}:80"),
    ];
    let six = keys("names", 6);
    let via_gateway = t.gateway.assign(&six).await;
    let mut differ = Vec::new();
    for name in &names {
        let caller = Sidecar {
            url: format!("http://{name}/invocations"),
            ..s.clone()
        };
        for k in &six {
            let o = caller.invoke(&[("x-user-id", k)]).await;
            if (o.status(), o.variant()) != (Some(200), Some(via_gateway[k].as_str())) {
                differ.push(format!(
                    "{name} {k}: gateway {}, here {o:?}",
                    via_gateway[k]
                ));
            }
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
    ok(format!(
        "{} names and addresses x 6 keys: the gateway's assignment every time (ClusterIP {ip} included)",
        names.len()
    ));
}

/// A Service named like the endpoint in the callers' namespace is another Service: its
/// callers get no assignment header, no cookie and no 400 for an unknown target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_named_service_in_another_namespace_is_untouched() {
    let Stage {
        bed, ns: _ns, t, ..
    } = Stage::set("owner").await;
    let other = TempNs::create(&bed, "namesake").await;
    // An unrelated HTTP server (the artifact server) behind a Service called like the endpoint.
    let o = Titanic::artifacts_only(&bed, &other).await;
    let svc: Service = serde_yaml::from_str(&format!(
        "metadata: {{name: {ENDPOINT}}}\nspec:\n  selector: {{app: artifacts}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
    ))
    .unwrap();
    bed.api::<Service>(&o.ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let caller = Sidecar::start(&bed, &o.ns, "caller", "").await;
    let url = format!("http://{ENDPOINT}/titanic-v1.tar.gz");
    let headers = eventually(
        Duration::from_secs(120),
        "the namesake answers through the caller's sidecar",
        || async {
            let h = response_headers(
                &o.ns,
                &caller.pod,
                &url,
                &[(m::DEFAULT_TARGET_HEADER, "nope")],
            )
            .await;
            h.starts_with("http/1.1 200").then_some(h)
        },
    )
    .await;
    assert!(!headers.contains(m::VARIANT_HEADER), "{headers}");
    assert!(!headers.contains("set-cookie"), "{headers}");
    ok("a same-named Service elsewhere: 200 from its own server, no variant, no cookie, no 400");
    // Meanwhile the endpoint's own callers in the mesh still get assignments.
    let mine = format!("http://{ENDPOINT}.{}/invocations", t.ns);
    let h = response_headers(&o.ns, &caller.pod, &mine, &[("x-user-id", "u1")]).await;
    assert!(h.contains(m::VARIANT_HEADER), "{h}");
}

/// The model that answers (the server's own `x-mlep-model`) for `key` when the client sends
/// every routing header naming variant b and its model, plain and in the routed form with a
/// guessed key.
async fn steered(invoke: impl AsyncFn(&[(&str, &str)]) -> Outcome, key: &str) -> Vec<String> {
    let guesses: [&[(&str, &str)]; 3] = [
        &[(m::VARIANT_HEADER, "b")],
        &[(m::VARIANT_HEADER, "b"), (m::MODEL_HEADER, "titanic-v2")],
        &[
            (m::VARIANT_HEADER, "b.guessed-route-key-0001"),
            (m::MODEL_HEADER, "titanic-v2.guessed-route-key-0001"),
        ],
    ];
    let mut models = Vec::new();
    for g in guesses {
        let mut h = vec![("x-user-id", key)];
        h.extend_from_slice(g);
        let o = invoke(&h).await;
        assert_eq!(o.status(), Some(200), "{o:?}");
        models.push(o.model().unwrap_or("none").to_owned());
    }
    models
}

/// No client can choose a variant or model by sending `x-mlep-variant` / `x-mlep-model`:
/// with the filter (gateway and sidecar) the request is assigned as without them; on a proxy
/// where the filter does not run for the endpoint (as when its module could not be fetched,
/// or before a new proxy has its config), the routes ignore them and the weighted default
/// serves. Proven by the model that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_sent_header_picks_a_variant_or_model() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("steer").await;
    let a_model = t.gateway.invoke(&[(m::DEFAULT_TARGET_HEADER, "a")]).await;
    let a_model = a_model.model().expect("a's model names itself").to_owned();
    let on_a: Vec<String> = t
        .gateway
        .assign(&keys("steer", 40))
        .await
        .into_iter()
        .filter(|(_, v)| v == "a")
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(!on_a.is_empty());
    for k in &on_a {
        let g = steered(async |h: &[(&str, &str)]| t.gateway.invoke(h).await, k).await;
        assert!(g.iter().all(|x| *x == a_model), "gateway {k}: {g:?}");
        let s2 = steered(async |h: &[(&str, &str)]| s.invoke(h).await, k).await;
        assert!(s2.iter().all(|x| *x == a_model), "sidecar {k}: {s2:?}");
    }
    ok(format!(
        "filter loaded: {} users of a sending b's variant and model headers (plain and keyed) are served by {a_model}, gateway and sidecar",
        on_a.len()
    ));

    // All weight on a; a caller whose proxy has the filter off for the endpoint's virtual host.
    t.edit(|spec| {
        spec.variants[0].weight = 100;
        spec.variants[1].weight = 0;
    })
    .await;
    eventually(
        Duration::from_secs(120),
        "the weighted default is a's alone",
        || async {
            let vs = t.istio_object("VirtualService").await?;
            let default = vs["spec"]["http"].as_array()?.last()?["route"]
                .as_array()?
                .clone();
            (default.len() == 1).then_some(())
        },
    )
    .await;
    let vhost = format!("{ENDPOINT}.{}.svc.cluster.local:80", t.ns);
    let native = format!("{SIDECAR_FILTER}{}", mlep_core::aggregate::NATIVE_SUFFIX);
    let off: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": "filter-off", "namespace": t.ns},
        "spec": {
            "workloadSelector": {"labels": {"app": "nofilter"}},
            "configPatches": [{
                "applyTo": "VIRTUAL_HOST",
                "match": {"context": "SIDECAR_OUTBOUND", "routeConfiguration": {"vhost": {"name": vhost}}},
                // Both builds off (where the proxies have the native one, it serves the endpoint).
                "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {
                    SIDECAR_FILTER: {"@type": mlep_core::envoy::FILTER_CONFIG_TYPE_URL, "disabled": true},
                    native: {"@type": mlep_core::envoy::FILTER_CONFIG_TYPE_URL, "disabled": true}}}},
            }],
        }}))
    .unwrap();
    bed.istio(&t.ns, "EnvoyFilter")
        .create(&PostParams::default(), &off)
        .await
        .unwrap();
    let bare = Sidecar::start(&bed, &t.ns, "nofilter", &t.mesh_url()).await;
    eventually(
        Duration::from_secs(120),
        "the filter is off on that proxy",
        || async {
            let o = bare.invoke(&[("x-user-id", "probe")]).await;
            (o.status() == Some(200) && o.variant().is_none()).then_some(())
        },
    )
    .await;
    let mut served = Vec::new();
    for k in keys("bare", 5) {
        served.extend(steered(async |h: &[(&str, &str)]| bare.invoke(h).await, &k).await);
    }
    assert!(served.iter().all(|x| *x == a_model), "{served:?}");
    ok(format!(
        "filter off on the caller's proxy: {} requests naming b's variant and model (plain and keyed) all served by {a_model}",
        served.len()
    ));
}

/// Where the operator knows the proxies carry the filter's native build (the bed's proxy image
/// does, and scripts/test-cluster-e2e.sh tells the operator, `MLEP_NATIVE_FILTER_PATH`), the
/// example endpoint, which needs nothing only the Wasm build serves, runs on it: the gateway's
/// native filter (`mlep-gateway-native`, an Envoy dynamic module) has its config, sidecar
/// callers get the gateway's assignment for every key, and Prometheus counts the requests under
/// the Wasm build's metric names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_on_the_native_build() {
    let Stage { bed, ns: _ns, t, s } = Stage::set("native").await;
    let mine = format!("\"namespace\":\"{}\"", t.ns);
    eventually(
        SETTLE,
        "the gateway's native filter serves the endpoint",
        || async { gateway_native_config_has(&bed, &[mine.as_str()]).await },
    )
    .await;
    let twenty = keys("native", 20);
    let via_gateway = t.gateway.assign(&twenty).await;
    for k in &twenty {
        let o = s.invoke(&[("x-user-id", k)]).await;
        assert_eq!(
            (o.status(), o.variant()),
            (Some(200), Some(via_gateway[k].as_str())),
            "key {k}"
        );
    }
    let query = format!("sum(mlep_requests_total{{namespace=\"{}\"}})", t.ns);
    let counted = eventually(SETTLE, "Prometheus counts the requests", || async {
        prom_value(&bed, &query).await.filter(|v| *v >= 40.0)
    })
    .await;
    ok(format!(
        "on the native build: the gateway's {}{} serves it, 20 keys assigned alike through \
         the gateway and a sidecar, {counted} requests counted in Prometheus",
        mlep_core::aggregate::GATEWAY_FILTER,
        mlep_core::aggregate::NATIVE_SUFFIX
    ));
}
