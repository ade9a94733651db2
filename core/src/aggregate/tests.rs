//! Tests of the shared filter objects.

use super::*;
use crate::crd::{ModelEndpointSpec, ModelEndpointStatus, VariantSpec, VariantStatus};
use mlep_contract::Allocation;

fn endpoint(ns: &str, name: &str, host: &str, weights: (u32, u32)) -> ModelEndpoint {
    let mut e = ModelEndpoint::new(
        name,
        ModelEndpointSpec::new(
            vec![host.into()],
            vec![
                VariantSpec::new("a", "m1", weights.0),
                VariantSpec::new("b", "m2", weights.1),
            ],
        ),
    );
    e.metadata.namespace = Some(ns.into());
    // On the gateway: external hosts are served there only.
    e.spec.expose = Some(true);
    let status_variant = |n: &str, w: u32| VariantStatus {
        name: n.into(),
        model: "m".into(),
        desired_weight: w,
        current_weight: w,
        ..VariantStatus::default()
    };
    e.status = Some(ModelEndpointStatus {
        variants: vec![
            status_variant("a", weights.0),
            status_variant("b", weights.1),
        ],
        allocation: Allocation::initial(&[("a", weights.0), ("b", weights.1)]).ok(),
        route_key: Some(format!("{ns}-{name}-route-key-test")),
        ..ModelEndpointStatus::default()
    });
    e
}

/// Whether `obj` is the sidecars' filter object (else the gateway's).
fn on_sidecars(obj: &Value) -> bool {
    obj["metadata"]["name"] == SIDECAR_FILTER
}

fn config_of(obj: &Value) -> FilterConfig {
    let text = obj["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
        ["configuration"]["value"]
        .as_str()
        .unwrap();
    serde_json::from_str(text).unwrap()
}

#[test]
fn every_endpoint_shares_one_filter_per_proxy_kind() {
    let eps = [
        endpoint("ml", "titanic", "titanic.example.com", (80, 20)),
        endpoint("ml", "iris", "iris.example.com", (50, 50)),
        endpoint("other", "churn", "*.churn.example.com", (10, 90)),
    ];
    let agg = render_filters(&eps, &RenderSettings::default());
    assert!(agg.excluded.is_empty(), "{:?}", agg.excluded);
    assert_eq!(
        agg.objects.len(),
        2,
        "one for the sidecars, one for the gateway"
    );
    let sidecars = &agg.objects[0];
    assert_eq!(sidecars["metadata"]["name"], SIDECAR_FILTER);
    assert_eq!(sidecars["metadata"]["namespace"], "istio-system");
    assert!(sidecars["spec"].get("workloadSelector").is_none());
    assert_eq!(
        sidecars["spec"]["configPatches"][1]["match"]["context"],
        "SIDECAR_OUTBOUND"
    );
    let gateway = &agg.objects[1];
    assert_eq!(gateway["metadata"]["name"], GATEWAY_FILTER);
    assert_eq!(
        gateway["spec"]["workloadSelector"]["labels"],
        json!({"istio": "ingressgateway"})
    );
    for obj in &agg.objects {
        let cfg = config_of(obj);
        cfg.validate().unwrap();
        let names: Vec<_> = cfg
            .endpoints
            .iter()
            .map(|e| format!("{}/{}", e.namespace, e.name))
            .collect();
        assert_eq!(names, ["ml/iris", "ml/titanic", "other/churn"]);
    }
    // The filter is off in the chain and on for exactly the endpoints' virtual hosts.
    for obj in &agg.objects {
        let patches = obj["spec"]["configPatches"].as_array().unwrap();
        assert_eq!(patches[1]["patch"]["value"]["disabled"], true);
        let ext = patches[1]["patch"]["value"]["name"].as_str().unwrap();
        let enabled: Vec<&str> = patches[2..]
            .iter()
            .inspect(|p| {
                assert_eq!(p["applyTo"], "VIRTUAL_HOST");
                assert_eq!(p["match"]["context"], patches[1]["match"]["context"]);
                let on = &p["patch"]["value"]["typed_per_filter_config"][ext];
                assert_eq!(on["@type"], crate::envoy::FILTER_CONFIG_TYPE_URL);
                assert_eq!(on["config"]["@type"], crate::envoy::RBAC_PER_ROUTE_TYPE_URL);
            })
            .map(|p| {
                p["match"]["routeConfiguration"]["vhost"]["name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        let all = [
            "iris.ml.svc.cluster.local:80",
            "iris.example.com:80",
            "titanic.ml.svc.cluster.local:80",
            "titanic.example.com:80",
            "churn.other.svc.cluster.local:80",
            "*.churn.example.com:80",
        ];
        // A sidecar enables it on the endpoints' own Services only: external hosts are the
        // gateway's, and a sidecar's virtual host of that name is someone else's.
        assert_eq!(
            enabled,
            all.into_iter()
                .filter(|v| !on_sidecars(obj) || v.contains(".svc."))
                .collect::<Vec<_>>()
        );
    }
    // The persisted allocation and route key: the filter agrees with the status.
    let cfg = config_of(&agg.objects[0]);
    assert_eq!(cfg.endpoints[1].route_key, "ml-titanic-route-key-test");
    assert_eq!(
        Some(&cfg.endpoints[1].allocation),
        eps[0].status.as_ref().unwrap().allocation.as_ref()
    );
}

#[test]
fn an_uncompared_shadow_is_envoys_mirror_on_every_route_where_routes_can_be_patched() {
    let mut titanic = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    let mut iris = endpoint("ml", "iris", "iris.example.com", (50, 50));
    let shadow = json!({"model": "m3", "percent": 25.0, "compare": "Off"});
    titanic.spec.shadow = serde_json::from_value(shadow.clone()).ok();
    iris.spec.shadow = serde_json::from_value(json!({"model": "m3", "percent": 25.0})).ok();
    for e in [&mut titanic, &mut iris] {
        e.status.as_mut().unwrap().shadow_model = Some("m3".into());
    }
    let agg = render_filters(&[titanic.clone(), iris], &RenderSettings::default());
    for obj in &agg.objects {
        let cfg = config_of(obj);
        let shadows: Vec<_> = cfg.endpoints.iter().map(|e| e.shadow.is_some()).collect();
        assert_eq!(
            shadows,
            [true, false],
            "iris compares (the filter copies), titanic not"
        );
        let patches = obj["spec"]["configPatches"].as_array().unwrap();
        let mirrored: Vec<_> = patches
            .iter()
            .filter(|p| p["applyTo"] == "HTTP_ROUTE")
            .map(|p| {
                assert_eq!(p["match"]["context"], patches[1]["match"]["context"]);
                // Every routing route, whatever its name; never a redirect.
                assert_eq!(
                    p["match"]["routeConfiguration"]["vhost"]["route"],
                    json!({"action": "ROUTE"})
                );
                let policy = &p["patch"]["value"]["route"]["request_mirror_policies"][0];
                assert_eq!(
                    policy["cluster"],
                    "outbound|80||titanic-shadow.ml.svc.cluster.local"
                );
                assert_eq!(
                    policy["runtime_fraction"]["default_value"]["numerator"],
                    250_000
                );
                p["match"]["routeConfiguration"]["vhost"]["name"].clone()
            })
            .collect();
        let expected = if on_sidecars(obj) {
            vec!["titanic.ml.svc.cluster.local:80"]
        } else {
            vec!["titanic.ml.svc.cluster.local:80", "titanic.example.com:80"]
        };
        assert_eq!(mirrored, expected);
    }
    // A WasmPlugin cannot patch routes: its filter keeps copying.
    titanic.spec.filter_wiring = FilterWiring::WasmPlugin;
    let agg = render_filters(&[titanic.clone()], &RenderSettings::default());
    let cfg: FilterConfig =
        serde_json::from_value(agg.objects[0]["spec"]["pluginConfig"].clone()).unwrap();
    assert!(cfg.endpoints[0].shadow.is_some());
}

#[test]
fn a_sampled_comparison_stays_the_filters_and_envoy_mirrors_on_each_header_routes_twin() {
    let mut iris = endpoint("ml", "iris", "iris.example.com", (50, 50));
    iris.spec.shadow =
        serde_json::from_value(json!({"model": "m3", "percent": 25.0, "comparePercent": 10.0}))
            .ok();
    iris.status.as_mut().unwrap().shadow_model = Some("m3".into());
    // Before the reconcile that applied the twins says so (an operator upgrade, an invalid
    // spec asking for them): the routes may have none, so the filter sends every copy.
    let agg = render_filters(&[iris.clone()], &RenderSettings::default());
    for obj in &agg.objects {
        let shadow = config_of(obj).endpoints[0].shadow.clone().unwrap();
        assert!(!shadow.mirror_routes);
        let json = serde_json::to_string(obj).unwrap();
        assert!(!json.contains("request_mirror_policies"), "{json}");
    }
    let text = crate::observe::exposition([&iris]);
    assert!(!text.contains("mlep_shadow_mirrored_info{"), "{text}");
    iris.status.as_mut().unwrap().mirror_twins = true;
    let agg = render_filters(&[iris.clone()], &RenderSettings::default());
    for obj in &agg.objects {
        let shadow = config_of(obj).endpoints[0].shadow.clone().unwrap();
        assert!(
            shadow.mirror_routes,
            "the filter sends uncompared copies to the twins"
        );
        assert_eq!((shadow.percent, shadow.compare.percent), (25.0, 10.0));
        let patches = obj["spec"]["configPatches"].as_array().unwrap();
        let mut twins: Vec<(String, String)> = patches
            .iter()
            .filter(|p| p["applyTo"] == "HTTP_ROUTE")
            .map(|p| {
                let policy = &p["patch"]["value"]["route"]["request_mirror_policies"][0];
                assert_eq!(
                    policy["runtime_fraction"]["default_value"]["numerator"], 1_000_000,
                    "a twin copies every request the filter sends it"
                );
                let vhost = &p["match"]["routeConfiguration"]["vhost"];
                assert_eq!(vhost["route"]["action"], "ROUTE");
                let name = |v: &Value| v.as_str().unwrap().to_owned();
                (name(&vhost["name"]), name(&vhost["route"]["name"]))
            })
            .collect();
        twins.sort();
        let vhosts: &[&str] = if on_sidecars(obj) {
            &["iris.ml.svc.cluster.local:80"]
        } else {
            &["iris.example.com:80", "iris.ml.svc.cluster.local:80"]
        };
        let expected: Vec<(String, String)> = vhosts
            .iter()
            .flat_map(|v| {
                ["variant-a.mirror", "variant-b.mirror"].map(|r| ((*v).to_owned(), r.to_owned()))
            })
            .collect();
        assert_eq!(twins, expected);
    }
    // The mark that has the recording rules read the shadow's cluster: all its copies.
    let text = crate::observe::exposition([&iris]);
    assert!(text.contains("mlep_shadow_mirrored_info{"), "{text}");
}

#[test]
fn a_shadow_gets_copies_only_once_status_says_its_model_has_a_ready_pod() {
    let mut titanic = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    let mut iris = endpoint("ml", "iris", "iris.example.com", (50, 50));
    titanic.spec.shadow =
        serde_json::from_value(json!({"model": "m3", "percent": 25.0, "compare": "Off"})).ok();
    iris.spec.shadow = serde_json::from_value(json!({"model": "m3", "percent": 25.0})).ok();
    let copies = |eps: &[ModelEndpoint]| {
        let agg = render_filters(eps, &RenderSettings::default());
        let cfg = config_of(&agg.objects[0]);
        let filter: Vec<_> = cfg.endpoints.iter().map(|e| e.shadow.is_some()).collect();
        let mirror = serde_json::to_string(&agg.objects[0])
            .unwrap()
            .contains("request_mirror_policies");
        (filter, mirror)
    };
    // Not ready yet, or only the model the shadow had before (a swap of shadow models).
    for ready in [None, Some("m2")] {
        for e in [&mut titanic, &mut iris] {
            e.status.as_mut().unwrap().shadow_model = ready.map(Into::into);
        }
        let eps = [titanic.clone(), iris.clone()];
        assert_eq!(copies(&eps), (vec![false, false], false), "{ready:?}");
    }
    for e in [&mut titanic, &mut iris] {
        e.status.as_mut().unwrap().shadow_model = Some("m3".into());
    }
    let eps = [titanic.clone(), iris.clone()];
    assert_eq!(copies(&eps), (vec![true, false], true));
}

#[test]
fn a_sleeping_variant_is_marked_with_how_to_wake_it_and_probe_it() {
    let mut ep = endpoint("ml", "titanic", "t.example.com", (80, 20));
    if let Some(st) = ep.status.as_mut() {
        st.variants[1].autoscaling = Some(crate::crd::VariantAutoscalingStatus {
            asleep_since_unix: Some(100),
            ..Default::default()
        });
    }
    let settings = RenderSettings::default().with_module(&"ab".repeat(32), "ops");
    let cfg = served_config(&ep, &settings).unwrap();
    assert_eq!(cfg.variants[0].asleep, None);
    let fqdn = "titanic.ml.svc.cluster.local";
    assert_eq!(
        cfg.variants[1].asleep,
        Some(mlep_contract::WakeConfig {
            cluster: "outbound|8080||mlep-operator.ops.svc.cluster.local".into(),
            authority: "mlep-operator.ops.svc.cluster.local".into(),
            path: "/wake/ml/titanic/b".into(),
            probe_cluster: format!("outbound|80|b|{fqdn}"),
            probe_authority: fqdn.into(),
            timeout_ms: mlep_contract::wake::DEFAULT_WAKE_TIMEOUT_MS,
        })
    );
    // Another variant's rollout leaves the mark: b's subset still has no pod.
    if let Some(st) = ep.status.as_mut() {
        st.rollout = Some(crate::crd::RolloutStatus {
            phase: crate::crd::Phase::Progressing,
            variant: "a".into(),
            from_model: "m1".into(),
            to_model: "m3".into(),
            step: 1,
            moved_buckets: vec![mlep_contract::rollout::Span { start: 0, end: 500 }],
            step_started_unix: Some(1),
            ..Default::default()
        });
    }
    let cfg = served_config(&ep, &settings).unwrap();
    assert!(cfg.variants[0].rollout.is_some(), "a rolls out");
    assert!(
        cfg.variants[1].asleep.is_some(),
        "b is still held while a rolls out"
    );
}

#[test]
fn every_rendered_filter_object_is_a_shared_object_by_name() {
    let settings = RenderSettings {
        mesh_root_namespace: "mesh-root".into(),
        gateway_namespace: "gateways".into(),
        ..RenderSettings::default()
    };
    let mut plugin = endpoint("ml", "iris", "iris.example.com", (50, 50));
    plugin.spec.filter_wiring = FilterWiring::WasmPlugin;
    let eps = [endpoint("ml", "titanic", "t.example.com", (80, 20)), plugin];
    let agg = render_filters(&eps, &settings);
    assert_eq!(agg.objects.len(), 4, "both wirings, both proxy kinds");
    let allowed = shared_objects(&settings);
    assert_eq!(allowed.len(), 4);
    for obj in &agg.objects {
        let kind = Kind::of(
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        )
        .unwrap();
        let at = (
            obj["metadata"]["namespace"].as_str(),
            obj["metadata"]["name"].as_str(),
        );
        assert!(
            allowed
                .iter()
                .any(|s| s.kind == kind && (Some(s.namespace), Some(s.name)) == at),
            "{} {at:?} is not a shared object",
            kind.kind
        );
    }
}

#[test]
fn the_shared_filter_carries_a_running_rollout_from_status() {
    use crate::crd::{Phase, RolloutStatus};
    use mlep_contract::rollout::Span;
    let mut ep = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    let moved = vec![Span {
        start: 8000,
        end: 8500,
    }];
    let status = ep.status.as_mut().unwrap();
    status.rollout = Some(RolloutStatus {
        phase: Phase::Progressing,
        variant: "b".into(),
        from_model: "m2".into(),
        to_model: "m3".into(),
        step: 1,
        moved_buckets: moved.clone(),
        step_started_unix: Some(1),
        ..RolloutStatus::default()
    });
    let cfg = config_of(&render_filters(&[ep.clone()], &RenderSettings::default()).objects[0]);
    let b = &cfg.endpoints[0].variants[1];
    assert_eq!(
        b.model, "m2",
        "the variant's own entry serves the old model"
    );
    let split = b.rollout.as_ref().expect("the moved users' split");
    assert_eq!((split.model.as_str(), &split.buckets), ("m3", &moved));
    // A rollback clears the moved buckets: nobody stays on the new model.
    let r = ep.status.as_mut().unwrap().rollout.as_mut().unwrap();
    r.phase = Phase::RolledBack;
    r.moved_buckets.clear();
    let cfg = config_of(&render_filters(&[ep], &RenderSettings::default()).objects[0]);
    assert!(cfg.endpoints[0].variants[1].rollout.is_none());
}

#[test]
fn the_endpoint_created_first_keeps_a_contested_host_in_the_shared_filter() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut early = endpoint("z", "early", "same.example.com", (80, 20));
    early.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let mut late = endpoint("a", "late", "same.example.com", (80, 20));
    late.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:09Z".parse().unwrap()));
    let agg = render_filters(&[late.clone(), early.clone()], &RenderSettings::default());
    let names: Vec<_> = config_of(&agg.objects[0])
        .endpoints
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["early"]);
    assert_eq!(agg.excluded.len(), 1);
    assert_eq!(agg.excluded[0].0, "a/late");
    assert!(agg.excluded[0].1.contains("z/early"), "{:?}", agg.excluded);
    // The first being deleted hands the host over.
    early.metadata.deletion_timestamp = Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
    let agg = render_filters(&[late, early], &RenderSettings::default());
    assert!(agg.excluded.is_empty());
    assert_eq!(config_of(&agg.objects[0]).endpoints[0].name, "late");
}

#[test]
fn the_aggregate_does_not_depend_on_the_order_endpoints_are_seen() {
    let a = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    let b = endpoint("ml", "iris", "iris.example.com", (50, 50));
    let s = RenderSettings::default();
    assert_eq!(
        render_filters(&[a.clone(), b.clone()], &s),
        render_filters(&[b, a], &s)
    );
}

#[test]
fn an_endpoint_not_rendered_yet_or_being_deleted_is_left_out_and_a_host_clash_is_reported() {
    let mut fresh = endpoint("ml", "fresh", "fresh.example.com", (80, 20));
    fresh.status = None;
    let mut keyless = endpoint("ml", "keyless", "keyless.example.com", (80, 20));
    keyless.status.as_mut().unwrap().route_key = None;
    let mut going = endpoint("ml", "going", "going.example.com", (80, 20));
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let first = endpoint("a", "one", "same.example.com", (80, 20));
    let second = endpoint("b", "two", "same.example.com", (80, 20));
    let agg = render_filters(
        &[fresh, keyless, going, second, first],
        &RenderSettings::default(),
    );
    let names: Vec<_> = config_of(&agg.objects[0])
        .endpoints
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, ["one"]);
    assert_eq!(agg.excluded.len(), 1);
    assert_eq!(agg.excluded[0].0, "b/two");
    assert!(agg.excluded[0].1.contains("same.example.com"));
    assert!(render_filters(&[], &RenderSettings::default())
        .objects
        .is_empty());
}

/// The attack this guards against: a tenant's endpoint is accepted, then its spec claims
/// another namespace's Service (and asks for credentials on its copies). The reconcile rejects
/// it, but a neighbour's reconcile rebuilds the shared filter: it must carry the accepted
/// spec, not the rejected one.
#[test]
fn the_shared_filter_serves_the_accepted_spec_not_one_rejected_since() {
    let mut ep = endpoint("evil", "e", "e.example.com", (80, 20));
    let accepted = ep.spec.clone();
    ep.status.as_mut().unwrap().served_spec = Some(accepted);
    let foreign = "payments.team-a.svc.cluster.local";
    ep.spec.hosts.push(foreign.into());
    let agg = render_filters(&[ep.clone()], &RenderSettings::default());
    let cfg = config_of(&agg.objects[1]);
    let served = &cfg.endpoints[0];
    assert!(
        !served.virtual_hosts.iter().any(|h| h.contains("payments")),
        "{:?}",
        served.virtual_hosts
    );
    assert!(served
        .virtual_hosts
        .iter()
        .any(|h| h.starts_with("e.example.com")));
    let patched = serde_json::to_string(&agg.objects).unwrap();
    assert!(
        !patched.contains("payments.team-a"),
        "no patch names the foreign host"
    );
    // Without an accepted spec on record (a status from before `servedSpec`), a spec whose
    // hosts are not its own serves nothing.
    ep.status.as_mut().unwrap().served_spec = None;
    let agg = render_filters(&[ep], &RenderSettings::default());
    assert!(agg.objects.is_empty(), "{:?}", agg.objects);
    assert_eq!(agg.excluded.len(), 1);
    assert_eq!(agg.excluded[0].0, "evil/e");
}

#[test]
fn without_an_accepted_spec_on_record_a_spec_with_its_own_hosts_serves() {
    let ep = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    assert!(ep.status.as_ref().unwrap().served_spec.is_none());
    let cfg = config_of(&render_filters(&[ep], &RenderSettings::default()).objects[0]);
    assert_eq!(cfg.endpoints[0].name, "titanic");
}

#[test]
fn a_served_host_the_operators_policy_no_longer_allows_leaves_the_shared_filter() {
    let mut ep = endpoint("team-b", "e", "api.bank.example", (80, 20));
    let accepted = ep.spec.clone();
    ep.status.as_mut().unwrap().served_spec = Some(accepted);
    let open = render_filters(&[ep.clone()], &RenderSettings::default());
    assert_eq!(
        config_of(&open.objects[1]).endpoints.len(),
        1,
        "no policy: served"
    );
    let narrowed = RenderSettings {
        allowed_hosts: vec!["*.{namespace}.models.example.com".into()],
        ..RenderSettings::default()
    };
    let agg = render_filters(&[ep], &narrowed);
    assert!(agg.objects.is_empty(), "{:?}", agg.objects);
    assert_eq!(agg.excluded[0].0, "team-b/e");
}

#[test]
fn without_a_gateway_no_proxy_names_the_endpoints_external_hosts() {
    let mut ep = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    ep.spec.expose = None;
    let agg = render_filters(&[ep], &RenderSettings::default());
    for obj in &agg.objects {
        assert_eq!(
            config_of(obj).endpoints[0].virtual_hosts,
            ["titanic.ml.svc.cluster.local:80"]
        );
        let text = obj.to_string();
        assert!(!text.contains("titanic.example.com"), "{text}");
    }
}

#[test]
fn a_shadow_body_cap_accepted_before_the_limit_serves_on_at_the_limit() {
    let mut ep = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    ep.spec.shadow = serde_json::from_value(
        json!({"model": "m3", "percent": 10.0, "maxBodyBytes": 64 * 1024 * 1024}),
    )
    .ok();
    ep.status.as_mut().unwrap().shadow_model = Some("m3".into());
    let agg = render_filters(&[ep], &RenderSettings::default());
    assert!(agg.excluded.is_empty(), "{:?}", agg.excluded);
    let shadow = config_of(&agg.objects[0]).endpoints[0]
        .shadow
        .clone()
        .unwrap();
    assert_eq!(
        shadow.max_body_bytes,
        mlep_contract::config::MAX_SHADOW_BODY_BYTES
    );
}

/// The patches of `obj` that apply to `what`, by `applyTo`.
fn patches<'a>(obj: &'a Value, what: &str) -> Vec<&'a Value> {
    (obj["spec"]["configPatches"].as_array().unwrap().iter())
        .filter(|p| p["applyTo"] == what)
        .collect()
}

/// Where the proxies carry the native build, an endpoint whose spec needs nothing only Wasm
/// serves runs on it: a second filter in the chain (`<ext>-native`, off, its config through
/// ECDS naming only those endpoints) enabled on their virtual hosts with the per-route config
/// naming the virtual host; an endpoint with capture (or a compared shadow, or a variant that
/// may sleep) stays on the Wasm build, whose config names only it.
#[test]
fn endpoints_that_need_no_wasm_run_on_the_native_build_where_the_proxies_have_it() {
    let plain = endpoint("ml", "titanic", "titanic.example.com", (80, 20));
    let mut capturing = endpoint("ml", "iris", "iris.example.com", (50, 50));
    capturing.spec.data_capture = Some(crate::crd::DataCaptureSpec {
        enabled: None,
        sampling_percent: 10.0,
        capture: vec![],
        destination_uri: "s3://b/p".into(),
        credentials_secret: None,
        max_payload_bytes: None,
        content_types: vec![],
    });
    assert!(spec_needs_wasm(&capturing) && !spec_needs_wasm(&plain));
    let mut comparing = plain.clone();
    comparing.spec.shadow = serde_json::from_value(json!({"model": "m3", "percent": 25.0})).ok();
    assert!(
        comparing.spec.shadow.is_some() && !spec_needs_wasm(&comparing),
        "a compared shadow runs on the native build"
    );
    let module = "/usr/local/lib/mlep/libmlep_filter_native.so";
    let settings = RenderSettings {
        native_filter: Some(module.into()),
        ..RenderSettings::default()
    };
    let agg = render_filters(&[plain.clone(), capturing.clone()], &settings);
    for obj in &agg.objects {
        let ext = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let native_ext = format!("{ext}-native");
        let configs = patches(obj, "EXTENSION_CONFIG");
        assert_eq!(configs.len(), 2, "{obj}");
        let native = configs[1]["patch"]["value"].clone();
        assert_eq!(native["name"], native_ext.as_str());
        let typed = &native["typed_config"];
        assert_eq!(typed["@type"], envoy::DYNAMIC_MODULE_TYPE_URL);
        assert_eq!(
            typed["dynamic_module_config"]["module"]["local"]["filename"],
            module
        );
        let served: FilterConfig =
            serde_json::from_str(typed["filter_config"]["value"].as_str().unwrap()).unwrap();
        let names = |c: &FilterConfig| {
            c.endpoints
                .iter()
                .map(|e| e.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&served), ["titanic"]);
        assert_eq!(
            names(&config_of(obj)),
            ["iris"],
            "the Wasm build serves the rest"
        );
        let filters = patches(obj, "HTTP_FILTER");
        assert_eq!(filters[1]["patch"]["value"]["name"], native_ext.as_str());
        assert_eq!(filters[1]["patch"]["value"]["disabled"], true);
        // Each endpoint's virtual hosts enable exactly one of the two.
        for vhost in patches(obj, "VIRTUAL_HOST") {
            let name = vhost["match"]["routeConfiguration"]["vhost"]["name"]
                .as_str()
                .unwrap();
            let per_filter = vhost["patch"]["value"]["typed_per_filter_config"]
                .as_object()
                .unwrap();
            assert_eq!(per_filter.len(), 1, "{vhost}");
            match name.contains("titanic") {
                true => {
                    let c = &per_filter[&native_ext];
                    assert_eq!(c["@type"], envoy::DYNAMIC_MODULE_PER_ROUTE_TYPE_URL);
                    assert_eq!(c["filter_config"]["value"], name);
                }
                false => assert!(per_filter.contains_key(&ext), "{vhost}"),
            }
        }
    }
    // Without the setting: the Wasm build alone, as before.
    let wasm_only = render_filters(&[plain, capturing], &RenderSettings::default());
    for obj in &wasm_only.objects {
        assert_eq!(patches(obj, "EXTENSION_CONFIG").len(), 1);
        assert_eq!(config_of(obj).endpoints.len(), 2);
    }
}
