use super::*;
use crate::aggregate::RBAC_TYPE_URL;
use crate::crd::FilterWiring;
use crate::crd::{Artifact, ModelEndpointSpec, ShadowSpec, VariantSpec};
use crate::envoy::{STATS_PREFIX, WASM_TYPE_URL};
use crate::filter_config::RolloutPlan;
use crate::meta::{LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION};
use crate::module;
use crate::plan::VariantPlan;
use mlep_contract::names::MODEL_DIR;
use serde_json::json;

mod autoscaling;

fn model(name: &str) -> Model {
    let mut m = Model::new(
        name,
        ModelSpec {
            image: "ghcr.io/k8smlendpoints/mlep-model-server:0.1.0".into(),
            artifact: Some(Artifact {
                uri: format!("https://example.com/{name}.tar.gz"),
                sha256: "a".repeat(64),
                credentials_secret: None,
            }),
            port: Some(9000),
            env: vec![],
            resources: None,
            pod_security_context: None,
            security_context: None,
        },
    );
    m.metadata.namespace = Some("ml".into());
    m
}

fn variant(name: &str, model: &str, weight: u32) -> VariantSpec {
    VariantSpec {
        replicas: Some(2),
        ..VariantSpec::new(name, model, weight)
    }
}

fn endpoint() -> ModelEndpoint {
    let mut e = ModelEndpoint::new(
        "titanic",
        ModelEndpointSpec::new(
            vec!["titanic.example.com".into()],
            vec![variant("a", "m1", 80), variant("b", "m2", 20)],
        ),
    );
    e.metadata.namespace = Some("ml".into());
    e.metadata.uid = Some("uid-1".into());
    e
}

/// The route key the tests render with.
const KEY: &str = "render-test-route-key";

fn models() -> BTreeMap<String, ModelSpec> {
    ["m1", "m2", "m3"]
        .iter()
        .map(|n| ((*n).to_owned(), model(n).spec))
        .collect()
}

fn render(ep: &ModelEndpoint, plan: &Plan) -> Vec<Value> {
    render_endpoint(
        ep,
        "ml",
        &models(),
        plan,
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap()
    .objects
}

/// The endpoint's objects followed by the shared filter objects (as `render_all` orders them).
fn render_with_filters(ep: &ModelEndpoint, settings: &RenderSettings) -> Vec<Value> {
    let r = render_endpoint(
        ep,
        "ml",
        &models(),
        &Plan::assume_ready(&ep.spec),
        None,
        KEY,
        settings,
    )
    .unwrap();
    let mut objs = r.objects;
    objs.extend(
        crate::aggregate::filters_for(
            vec![(ep.spec.filter_wiring, r.filter)],
            &Default::default(),
            settings,
        )
        .objects,
    );
    objs
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {:#?}",
                objs.iter()
                    .map(|o| (&o["kind"], &o["metadata"]["name"]))
                    .collect::<Vec<_>>()
            )
        })
}

#[test]
fn deployment_follows_the_sagemaker_contract_and_runs_locked_down() {
    let ep = endpoint();
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let d = find(&objs, "Deployment", "titanic-a-m1");
    let pod = &d["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(
        (&labels["app"], &labels["version"]),
        (&json!("titanic"), &json!("a"))
    );
    // Telemetry's (and Kiali's) workload and version: one node per variant and model.
    assert_eq!(
        (
            &labels[LABEL_CANONICAL_NAME],
            &labels[LABEL_CANONICAL_REVISION]
        ),
        (&json!("titanic"), &json!("a-m1"))
    );
    assert_eq!(
        (
            &labels[LABEL_ENDPOINT],
            &labels[LABEL_VARIANT],
            &labels[LABEL_MODEL]
        ),
        (&json!("titanic"), &json!("a"), &json!("m1"))
    );
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["image"], RenderSettings::default().model_init_image);
    assert!(init["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "MLEP_ARTIFACT_SHA256", "value": "a".repeat(64)})));
    assert_eq!(init["volumeMounts"][0]["mountPath"], MODEL_DIR);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["args"], json!(["serve"]));
    assert_eq!(
        c["ports"][0],
        json!({"name": "http", "containerPort": 9000, "protocol": "TCP"})
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ping");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/ping");
    assert_eq!(
        c["volumeMounts"][1],
        json!({"name": "model", "mountPath": MODEL_DIR, "readOnly": true})
    );
    for sc in [&c["securityContext"], &init["securityContext"]] {
        assert_eq!(
            (
                &sc["readOnlyRootFilesystem"],
                &sc["allowPrivilegeEscalation"],
                &sc["runAsNonRoot"]
            ),
            (&json!(true), &json!(false), &json!(true))
        );
    }
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let annotation = pod["metadata"]["annotations"]["proxy.istio.io/config"]
        .as_str()
        .unwrap();
    let cfg: Value = serde_json::from_str(annotation).unwrap();
    assert_eq!(
        cfg["proxyStatsMatcher"]["inclusionPrefixes"],
        json!([STATS_PREFIX])
    );
}

#[test]
fn object_storage_credentials_reach_model_init_by_reference_and_a_claim_is_mounted_read_only() {
    let ep = endpoint();
    let mut models = models();
    let art = |uri: &str, secret: Option<&str>| Artifact {
        uri: uri.into(),
        sha256: "a".repeat(64),
        credentials_secret: secret.map(Into::into),
    };
    models.get_mut("m1").unwrap().artifact = Some(art("s3://models/m1.tar.gz", Some("s3-creds")));
    models.get_mut("m2").unwrap().artifact = Some(art("pvc://model-store/m2/v1.tar.gz", None));
    let objs = render_endpoint(
        &ep,
        "ml",
        &models,
        &Plan::assume_ready(&ep.spec),
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap()
    .objects;
    let pod = |name: &str| find(&objs, "Deployment", name)["spec"]["template"]["spec"].clone();
    let s3 = pod("titanic-a-m1");
    let init = &s3["initContainers"][0];
    let env = init["env"].as_array().unwrap();
    // Every contract key, by reference, optional; nothing else of the Secret; no value inline.
    let from_secret: Vec<_> = env
        .iter()
        .filter(|e| e.get("valueFrom").is_some())
        .map(|e| {
            assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], "s3-creds");
            assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], e["name"]);
            assert_eq!(e["valueFrom"]["secretKeyRef"]["optional"], true);
            assert!(e.get("value").is_none());
            e["name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(from_secret, mlep_contract::names::OBJECT_STORE_ENV);
    assert!(s3
        .get("volumes")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["name"] != "artifact-pvc"));
    // The model container sees none of it.
    assert!(s3["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.get("valueFrom").is_none()));

    let pvc = pod("titanic-b-m2");
    let vol = pvc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "artifact-pvc")
        .unwrap();
    assert_eq!(
        vol["persistentVolumeClaim"],
        json!({"claimName": "model-store", "readOnly": true})
    );
    let init = &pvc["initContainers"][0];
    assert!(init["volumeMounts"].as_array().unwrap().contains(&json!({
        "name": "artifact-pvc",
        "mountPath": format!("{}/model-store", mlep_contract::names::PVC_MOUNT_ROOT),
        "readOnly": true
    })));
    assert!(init["env"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.get("valueFrom").is_none()));
    // Only the init container mounts the claim.
    assert!(pvc["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["name"] != "artifact-pvc"));
}

fn capture(destination: &str) -> crate::crd::DataCaptureSpec {
    crate::crd::DataCaptureSpec {
        enabled: None,
        sampling_percent: 10.0,
        capture: vec![],
        destination_uri: destination.into(),
        credentials_secret: Some("s3-creds".into()),
        max_payload_bytes: None,
        content_types: vec![],
    }
}

#[test]
fn data_capture_renders_its_sink_and_points_the_filter_at_it() {
    let mut ep = endpoint();
    ep.spec.data_capture = Some(capture("s3://captures/prod"));
    let r = render_endpoint(
        &ep,
        "ml",
        &models(),
        &Plan::assume_ready(&ep.spec),
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap();
    let d = find(&r.objects, "Deployment", "titanic-capture");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], RenderSettings::default().capture_sink_image);
    let env = c["env"].as_array().unwrap();
    let value = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        value("MLEP_CAPTURE_DESTINATION"),
        Some(json!("s3://captures/prod"))
    );
    assert_eq!(value("MLEP_CAPTURE_LISTEN"), Some(json!("0.0.0.0:9090")));
    let secret_keys: Vec<_> = env
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"]["name"] == "s3-creds")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(secret_keys, mlep_contract::names::OBJECT_STORE_ENV);
    let svc = find(&r.objects, "Service", "titanic-capture");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);
    let cap = r.filter.capture.as_ref().unwrap();
    assert_eq!(
        cap.cluster,
        "outbound|9090||titanic-capture.ml.svc.cluster.local"
    );
    assert_eq!((cap.percent, cap.request, cap.response), (10.0, true, true));

    // Off: no sink, no capture in the filter.
    ep.spec.data_capture = Some(crate::crd::DataCaptureSpec {
        enabled: Some(false),
        ..capture("s3://captures/prod")
    });
    let r = render_endpoint(
        &ep,
        "ml",
        &models(),
        &Plan::assume_ready(&ep.spec),
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap();
    assert!(r
        .objects
        .iter()
        .all(|o| o["metadata"]["name"] != "titanic-capture"));
    assert!(r.filter.capture.is_none());

    // A local directory cannot be a cluster's destination.
    ep.spec.data_capture = Some(capture("file:///var/captures"));
    let err = render_endpoint(
        &ep,
        "ml",
        &models(),
        &Plan::assume_ready(&ep.spec),
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.dataCapture.destinationUri");
    assert!(err.message.contains("local mode"), "{}", err.message);
}

#[test]
fn the_model_server_is_told_its_port_and_a_model_can_override_the_security_defaults() {
    let ep = endpoint();
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let c = &find(&objs, "Deployment", "titanic-a-m1")["spec"]["template"]["spec"]["containers"][0];
    // model() listens on 9000: the probes' named port and the server agree.
    assert!(c["env"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": PORT_ENV, "value": "9000"})));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    // Draining: a deleted pod keeps serving until the proxies have dropped it.
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], DRAIN_SECONDS);

    let mut m = models();
    let spec = m.get_mut("m1").unwrap();
    spec.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: PORT_ENV.into(),
        value: Some("9000".into()),
        value_from: None,
    }];
    spec.security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
        read_only_root_filesystem: Some(false),
        ..Default::default()
    });
    spec.pod_security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
        run_as_user: Some(1000),
        ..Default::default()
    });
    let objs = render_endpoint(
        &ep,
        "ml",
        &m,
        &Plan::assume_ready(&ep.spec),
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap()
    .objects;
    let pod = &find(&objs, "Deployment", "titanic-a-m1")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["env"].as_array().unwrap().len(),
        1,
        "the Model's own port env wins: {c}"
    );
    // The Model's fields replace the defaults one by one; the others stay.
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], false);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsUser"], 1000);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The init container (ours) stays locked down, as its own user.
    let init = &pod["initContainers"][0]["securityContext"];
    assert_eq!(
        (&init["readOnlyRootFilesystem"], &init["runAsUser"]),
        (&json!(true), &json!(65532))
    );
}

#[test]
fn every_rendered_pod_meets_pod_security_restricted() {
    use crate::pod_security::{pod_spec_violations, PodSecurityLevel};
    let mut ep = endpoint();
    ep.spec.shadow = Some(crate::crd::ShadowSpec::new("m3", 10.0));
    ep.spec.data_capture = Some(capture("s3://captures/prod"));
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let mut pods = 0;
    for d in objs.iter().filter(|o| o["kind"] == "Deployment") {
        let spec: k8s_openapi::api::core::v1::PodSpec =
            serde_json::from_value(d["spec"]["template"]["spec"].clone()).unwrap();
        let is_sink = d["metadata"]["name"] == "titanic-capture";
        assert!(spec.init_containers.is_some() || is_sink, "{d}");
        let found = pod_spec_violations(&spec, PodSecurityLevel::Restricted);
        assert!(found.is_empty(), "{}: {found:?}", d["metadata"]["name"]);
        pods += 1;
    }
    assert_eq!(pods, 4, "a, b, the shadow and the capture sink");
}

#[test]
fn a_model_breaking_the_pod_security_level_renders_nothing_and_names_the_field() {
    use crate::pod_security::PodSecurityLevel;
    let ep = endpoint();
    let mut m = models();
    m.get_mut("m2").unwrap().security_context = Some(k8s_openapi::api::core::v1::SecurityContext {
        privileged: Some(true),
        ..Default::default()
    });
    let plan = Plan::assume_ready(&ep.spec);
    for level in [PodSecurityLevel::Restricted, PodSecurityLevel::Baseline] {
        let settings = RenderSettings {
            pod_security: level,
            ..RenderSettings::default()
        };
        let e = render_endpoint(&ep, "ml", &m, &plan, None, KEY, &settings).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason),
            ("spec.variants[1].model", "PodSecurity")
        );
        assert!(e.message.contains("spec.securityContext.privileged"), "{e}");
    }
    // Root is fine for baseline, not for restricted.
    m.get_mut("m2").unwrap().security_context = None;
    m.get_mut("m2").unwrap().pod_security_context =
        Some(k8s_openapi::api::core::v1::PodSecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        });
    assert!(render_endpoint(&ep, "ml", &m, &plan, None, KEY, &RenderSettings::default()).is_err());
    let baseline = RenderSettings {
        pod_security: PodSecurityLevel::Baseline,
        ..RenderSettings::default()
    };
    assert!(render_endpoint(&ep, "ml", &m, &plan, None, KEY, &baseline).is_ok());
}

#[test]
fn service_ports_name_their_protocol_and_select_every_variant() {
    let ep = endpoint();
    let objs = render(&ep, &Plan::assume_ready(&ep.spec));
    let s = find(&objs, "Service", "titanic");
    assert_eq!(s["spec"]["selector"], json!({"app": "titanic"}));
    assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(s["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn routing_uses_the_variant_header_then_a_weighted_default_of_ready_variants() {
    let ep = endpoint();
    let mut plan = Plan::assume_ready(&ep.spec);
    let objs = render(&ep, &plan);
    let http = find(&objs, "VirtualService", "titanic")["spec"]["http"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(http.len(), 3);
    // Only the value the filter sets, with the route key (and, the prefix, its mirroring
    // twin's), selects b; the route puts the plain name back for the model.
    assert_eq!(
        http[1]["match"][0]["headers"]["x-mlep-variant"],
        json!({"prefix": format!("b.{KEY}")})
    );
    assert_eq!(http[1]["route"][0]["destination"]["subset"], "b");
    assert_eq!(
        http[1]["headers"],
        json!({
            "request": {"set": {"x-mlep-variant": "b"}, "remove": ["x-mlep-model"]},
            "response": {"set": {"x-mlep-variant": "b"}},
        })
    );
    let weights: Vec<(&Value, &Value)> = http[2]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (&r["destination"]["subset"], &r["weight"]))
        .collect();
    assert_eq!(
        weights,
        vec![(&json!("a"), &json!(80)), (&json!("b"), &json!(20))]
    );

    // b not ready: no header route to it, all default traffic to a.
    plan.variants[1] = VariantPlan {
        ready: false,
        weight: 0,
        ..plan.variants[1].clone()
    };
    plan.variants[0].weight = 100;
    let objs = render(&ep, &plan);
    let http = find(&objs, "VirtualService", "titanic")["spec"]["http"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(http.len(), 2);
    assert_eq!(
        http[1]["route"],
        json!([{"destination": {"host": "titanic.ml.svc.cluster.local", "subset": "a", "port": {"number": 80}}}])
    );
}

/// The routing headers a model gets through VirtualService route `route` from a request
/// carrying `sent`: Envoy removes `headers.request.remove`, then sets `headers.request.set`.
fn forwarded(route: &Value, sent: &[(&str, &str)]) -> BTreeMap<String, String> {
    let request = &route["headers"]["request"];
    let mut out: BTreeMap<String, String> = sent
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for h in request["remove"].as_array().into_iter().flatten() {
        out.remove(h.as_str().unwrap_or_default());
    }
    for (k, v) in request["set"].as_object().into_iter().flatten() {
        out.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
    }
    out
}

/// What the filter sets, key and all, that no header route may match: a targeted variant with
/// no ready pod (`b`), and a rollout's model whose route this proxy lacks.
fn keyed_routing_headers() -> [(&'static str, String); 2] {
    [
        ("x-mlep-variant", format!("b.{KEY}")),
        ("x-mlep-model", format!("m3.{KEY}")),
    ]
}

#[test]
fn the_weighted_default_route_strips_the_routing_headers_so_no_model_sees_the_route_key() {
    let ep = endpoint();
    let mut plan = Plan::assume_ready(&ep.spec);
    // b has no ready pod: no header route to it, so a request the filter targeted at b
    // (`x-mlep-variant: b.<key>`) is the weighted default's, which sends it to a.
    plan.variants[1].ready = false;
    plan.variants[1].weight = 0;
    plan.variants[0].weight = 100;
    let objs = render(&ep, &plan);
    let http = find(&objs, "VirtualService", "titanic")["spec"]["http"]
        .as_array()
        .unwrap()
        .clone();
    let default = http.last().unwrap();
    assert_eq!(default["name"], "weighted-default");
    assert_eq!(
        default["headers"],
        json!({"request": {"remove": ["x-mlep-variant", "x-mlep-model"]}}),
        "both routing headers removed, nothing set, the response left as the model sends it"
    );
    let [variant, model] = keyed_routing_headers();
    for sent in [
        vec![(variant.0, variant.1.as_str())],
        vec![(variant.0, variant.1.as_str()), (model.0, model.1.as_str())],
        vec![("x-mlep-variant", "b"), ("x-mlep-model", "m2")],
    ] {
        assert_eq!(forwarded(default, &sent), BTreeMap::new(), "{sent:?}");
    }
}

#[test]
fn a_variant_route_strips_x_mlep_model_and_no_route_forwards_the_route_key() {
    let mut ep = endpoint();
    ep.spec.variants[1].model = "m3".into();
    // A sampled comparison: every header route gets a mirroring twin too.
    ep.spec.shadow = serde_json::from_value(
        serde_json::json!({"model": "m3", "percent": 50.0, "comparePercent": 10.0}),
    )
    .ok();
    let mut plan = Plan::assume_ready(&ep.spec);
    plan.variants[1].serving_model = "m2".into();
    plan.rollout = Some(RolloutPlan {
        variant: "b".into(),
        models: Some(vec!["m2".into(), "m3".into()]),
        split: None,
        mirror: None,
        route_model: Some("m3".into()),
    });
    let objs = render(&ep, &plan);
    let http = find(&objs, "VirtualService", "titanic")["spec"]["http"]
        .as_array()
        .unwrap()
        .clone();
    let (default, header_routes) = http.split_last().unwrap();
    assert_eq!(header_routes.len(), 6, "variant, rollout and their twins");
    for r in header_routes {
        let variant = r["route"][0]["destination"]["subset"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            r["headers"],
            json!({
                "request": {"set": {"x-mlep-variant": variant}, "remove": ["x-mlep-model"]},
                "response": {"set": {"x-mlep-variant": variant}},
            }),
            "{}",
            r["name"]
        );
    }
    // Whatever a request carries into whichever route serves it, no model sees the key.
    let sent = keyed_routing_headers();
    let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for r in header_routes.iter().chain([default]) {
        let got = forwarded(r, &sent);
        assert!(
            got.values().all(|v| !v.contains(KEY)),
            "{}: {got:?}",
            r["name"]
        );
        assert!(!got.contains_key("x-mlep-model"), "{}", r["name"]);
    }
}

#[test]
fn a_retiring_variant_keeps_its_header_route_and_subset_but_no_weight_or_assignment() {
    let mut ep = endpoint();
    ep.spec.variants.truncate(1);
    ep.spec.variants[0].weight = 100;
    let mut plan = Plan::assume_ready(&ep.spec);
    plan.retiring = vec![crate::crd::RetiringVariant {
        name: "b".into(),
        model: "m2".into(),
        until_unix: 1_030,
    }];
    let r = render_endpoint(
        &ep,
        "ml",
        &models(),
        &plan,
        None,
        KEY,
        &RenderSettings::default(),
    )
    .unwrap();
    let http = find(&r.objects, "VirtualService", "titanic")["spec"]["http"].clone();
    assert_eq!(
        http[1]["match"][0]["headers"]["x-mlep-variant"]["prefix"],
        format!("b.{KEY}")
    );
    assert_eq!(http[1]["route"][0]["destination"]["subset"], "b");
    let default = http[2]["route"].as_array().unwrap();
    assert_eq!(default.len(), 1, "no weight to b: {default:?}");
    assert_eq!(default[0]["destination"]["subset"], "a");
    let subsets = &find(&r.objects, "DestinationRule", "titanic")["spec"]["subsets"];
    assert_eq!(
        subsets[1],
        json!({"name": "b", "labels": {"version": "b", LABEL_MODEL: "m2"}})
    );
    // The filter no longer assigns it.
    let names: Vec<&str> = r.filter.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    // The Deployment is not rendered (the operator leaves the running one alone until the
    // deadline; its Model may be gone already).
    assert!(!r
        .objects
        .iter()
        .any(|o| o["metadata"]["name"] == "titanic-b-m2"));
}

#[test]
fn a_swap_keeps_the_old_deployment_and_the_subset_on_the_serving_model() {
    let mut ep = endpoint();
    ep.spec.variants[1].model = "m3".into();
    let mut plan = Plan::assume_ready(&ep.spec);
    plan.variants[1].serving_model = "m2".into();
    let objs = render(&ep, &plan);
    find(&objs, "Deployment", "titanic-b-m2");
    find(&objs, "Deployment", "titanic-b-m3");
    let subsets = &find(&objs, "DestinationRule", "titanic")["spec"]["subsets"];
    assert_eq!(
        subsets[1],
        json!({"name": "b", "labels": {"version": "b", LABEL_MODEL: "m2"}})
    );
}

#[test]
fn a_rollouts_new_model_has_its_subset_before_any_route_names_it() {
    let mut ep = endpoint();
    ep.spec.variants[1].model = "m3".into();
    let mut plan = Plan::assume_ready(&ep.spec);
    plan.variants[1].serving_model = "m2".into();
    let mut rollout = RolloutPlan {
        variant: "b".into(),
        models: Some(vec!["m2".into(), "m3".into()]),
        split: None,
        mirror: None,
        route_model: None,
    };
    plan.rollout = Some(rollout.clone());
    let subset_names = |plan: &Plan| {
        let objs = render(&ep, plan);
        let dr = find(&objs, "DestinationRule", "titanic");
        let vs = find(&objs, "VirtualService", "titanic");
        let names: Vec<String> = dr["spec"]["subsets"]
            .as_array()
            .map(|s| {
                s.iter()
                    .map(|s| s["name"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let routed = vs["spec"]["http"].as_array().is_some_and(|h| {
            h.iter()
                .any(|r| r["route"][0]["destination"]["subset"] == "b-m3")
        });
        (names, routed)
    };
    // Starting (the new model not warm yet): its subset, no route.
    assert_eq!(
        subset_names(&plan),
        (vec!["a".into(), "b".into(), "b-m3".into()], false)
    );
    // Users moving: the route names the subset that was already there.
    rollout.route_model = Some("m3".into());
    plan.rollout = Some(rollout);
    assert_eq!(
        subset_names(&plan),
        (vec!["a".into(), "b".into(), "b-m3".into()], true)
    );
}

#[test]
fn a_sampled_comparison_gives_each_header_route_a_twin_matching_its_mirrored_value() {
    let mut ep = endpoint();
    ep.spec.variants[1].model = "m3".into();
    ep.spec.shadow = serde_json::from_value(
        serde_json::json!({"model": "m3", "percent": 50.0, "comparePercent": 10.0}),
    )
    .ok();
    let mut plan = Plan::assume_ready(&ep.spec);
    plan.variants[1].serving_model = "m2".into();
    plan.rollout = Some(RolloutPlan {
        variant: "b".into(),
        models: Some(vec!["m2".into(), "m3".into()]),
        split: None,
        mirror: None,
        route_model: Some("m3".into()),
    });
    let http = |ep: &ModelEndpoint| {
        find(&render(ep, &plan), "VirtualService", "titanic")["spec"]["http"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let routes = http(&ep);
    let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "variant-a.mirror",
            "variant-a",
            "rollout-b-m3.mirror",
            "rollout-b-m3",
            "variant-b.mirror",
            "variant-b",
            "weighted-default"
        ],
        "a twin first: its route's prefix match would take its value too"
    );
    for pair in routes[..6].chunks(2) {
        let (twin, plain) = (&pair[0], &pair[1]);
        let value = |r: &Value, how: &str| r["match"][0]["headers"]["x-mlep-variant"][how].clone();
        let plain_value = value(plain, "prefix")
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(plain_value.ends_with(KEY), "{plain_value}");
        assert_eq!(
            value(twin, "exact"),
            mlep_contract::mirror_twin(&plain_value)
        );
        assert_eq!(twin["route"], plain["route"], "the same destination");
        assert_eq!(
            twin["headers"], plain["headers"],
            "the plain variant name restored"
        );
        assert_eq!(
            twin["match"][0]["headers"]["x-mlep-model"],
            plain["match"][0]["headers"]["x-mlep-model"]
        );
    }
    // Every copy compared, none to compare, or no route patches: no twins.
    for shadow in [
        serde_json::json!({"model": "m3", "percent": 50.0}),
        serde_json::json!({"model": "m3", "percent": 50.0, "compare": "Off", "comparePercent": 10.0}),
    ] {
        ep.spec.shadow = serde_json::from_value(shadow).ok();
        assert_eq!(http(&ep).len(), 4);
    }
    ep.spec.shadow = serde_json::from_value(
        serde_json::json!({"model": "m3", "percent": 50.0, "comparePercent": 10.0}),
    )
    .ok();
    ep.spec.filter_wiring = crate::crd::FilterWiring::WasmPlugin;
    assert_eq!(
        http(&ep).len(),
        4,
        "a WasmPlugin's filter copies everything itself"
    );
}

#[test]
fn envoy_filter_delivers_the_module_through_ecds_with_url_and_sha256() {
    let ep = endpoint();
    let objs = render_with_filters(&ep, &RenderSettings::default());
    let ef = find(&objs, "EnvoyFilter", crate::aggregate::SIDECAR_FILTER);
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    assert_eq!(patches[0]["applyTo"], "EXTENSION_CONFIG");
    let cfg = &patches[0]["patch"]["value"]["typed_config"];
    assert_eq!(cfg["@type"], WASM_TYPE_URL);
    let remote = &cfg["config"]["vm_config"]["code"]["remote"];
    let settings = RenderSettings::default();
    assert_eq!(
        (&remote["http_uri"]["uri"], &remote["sha256"]),
        (&json!(settings.wasm_url), &json!(settings.wasm_sha256))
    );
    let filter: FilterConfig =
        serde_json::from_str(cfg["config"]["configuration"]["value"].as_str().unwrap()).unwrap();
    filter.validate().unwrap();
    assert_eq!(filter.endpoints[0].allocation.counts()["a"], 8000);
    assert_eq!(patches[1]["applyTo"], "HTTP_FILTER");
    assert_eq!(
        patches[1]["patch"]["value"]["name"],
        patches[0]["patch"]["value"]["name"]
    );
    assert_eq!(
        patches[1]["patch"]["value"]["config_discovery"]["type_urls"][0],
        json!(WASM_TYPE_URL)
    );
    assert_eq!(patches[1]["match"]["context"], "SIDECAR_OUTBOUND");
    assert!(objs
        .iter()
        .all(|o| o["kind"] != "WasmPlugin" && o["kind"] != "Gateway"));
}

#[test]
fn a_proxy_that_cannot_fetch_the_module_passes_traffic_unassigned() {
    let ep = endpoint();
    let objs = render_with_filters(&ep, &RenderSettings::default());
    let patches = find(&objs, "EnvoyFilter", crate::aggregate::GATEWAY_FILTER)["spec"]
        ["configPatches"]
        .as_array()
        .unwrap()
        .clone();
    let cfg = &patches[0]["patch"]["value"]["typed_config"]["config"];
    assert_eq!(
        cfg["fail_open"], true,
        "the agent substitutes allow-all only when fail-open"
    );
    let uri = &cfg["vm_config"]["code"]["remote"]["http_uri"];
    assert_eq!(
        uri["cluster"],
        "outbound|8081||mlep-operator.mlep-system.svc.cluster.local"
    );
    assert_eq!(uri["timeout"], "10s");
    let discovery = &patches[1]["patch"]["value"]["config_discovery"];
    assert!(
        discovery["type_urls"]
            .as_array()
            .unwrap()
            .contains(&json!(RBAC_TYPE_URL)),
        "Envoy would reject the agent's RBAC fallback"
    );
    assert_eq!(discovery["default_config"]["@type"], RBAC_TYPE_URL);
    assert!(
        discovery["default_config"].get("rules").is_none(),
        "no rules = allow all"
    );
    assert_ne!(
        discovery["config_source"]["initial_fetch_timeout"], "0s",
        "unbounded wait"
    );
}

#[test]
fn exposing_adds_a_gateway_and_a_gateway_side_filter_outside_the_namespace() {
    let mut ep = endpoint();
    ep.spec.expose = Some(true);
    ep.spec.filter_wiring = FilterWiring::WasmPlugin;
    let objs = render_with_filters(&ep, &RenderSettings::default());
    let gw = find(&objs, "Gateway", "titanic");
    assert_eq!(gw["spec"]["selector"], json!({"istio": "ingressgateway"}));
    assert_eq!(
        gw["spec"]["servers"][0]["hosts"],
        json!(["titanic.example.com"])
    );
    // The mesh knows the endpoint by its Service's names, the gateway by its hosts too.
    let mesh = find(&objs, "VirtualService", "titanic");
    assert_eq!(mesh["spec"]["gateways"], json!(["mesh"]));
    assert_eq!(
        mesh["spec"]["hosts"],
        json!(["titanic.ml.svc.cluster.local"])
    );
    let edge = find(&objs, "VirtualService", "titanic.gateway");
    assert_eq!(edge["spec"]["gateways"], json!(["ml/titanic"]));
    assert_eq!(
        edge["spec"]["hosts"],
        json!(["titanic.example.com", "titanic.ml.svc.cluster.local"])
    );
    assert_eq!(edge["spec"]["http"], mesh["spec"]["http"]);
    let local = find(&objs, "WasmPlugin", crate::aggregate::SIDECAR_FILTER);
    assert_eq!(local["spec"]["url"], RenderSettings::default().wasm_url);
    assert_eq!(
        local["spec"]["pluginConfig"]["endpoints"][0]["name"],
        "titanic"
    );
    let remote = find(&objs, "WasmPlugin", crate::aggregate::GATEWAY_FILTER);
    assert_eq!(remote["metadata"]["namespace"], "istio-system");
    assert!(
        remote["metadata"].get("ownerReferences").is_none(),
        "shared by every endpoint: owned by none"
    );
    assert_eq!(
        remote["spec"]["selector"]["matchLabels"],
        json!({"istio": "ingressgateway"})
    );
}

#[test]
fn a_shadow_gets_its_own_deployment_service_and_filter_target() {
    let mut ep = endpoint();
    ep.spec.shadow = Some(ShadowSpec::new("m3", 10.0));
    let objs = render_with_filters(&ep, &RenderSettings::default());
    let d = find(&objs, "Deployment", "titanic-shadow-m3");
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["app"],
        "titanic-shadow"
    );
    assert_eq!(
        find(&objs, "Service", "titanic-shadow")["spec"]["selector"],
        json!({"app": "titanic-shadow"})
    );
    let cfg = &find(&objs, "EnvoyFilter", crate::aggregate::SIDECAR_FILTER)["spec"]
        ["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["configuration"]["value"];
    let filter: FilterConfig = serde_json::from_str(cfg.as_str().unwrap()).unwrap();
    let shadow = filter.endpoints[0].shadow.as_ref().unwrap();
    assert_eq!(
        shadow.cluster,
        "outbound|80||titanic-shadow.ml.svc.cluster.local"
    );
    // Some route references the shadow host, so every proxy bound to the
    // VirtualService (the gateway too) builds that cluster; the mirror sends nothing.
    let http = &find(&objs, "VirtualService", "titanic")["spec"]["http"];
    let mirror = http
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r["mirrors"].as_array().and_then(|m| m.first()))
        .expect("a route referencing the shadow");
    assert_eq!(
        mirror["destination"]["host"],
        "titanic-shadow.ml.svc.cluster.local"
    );
    assert_eq!(mirror["percentage"]["value"], 0.0);
    // Envoy's mirror holds a copy for the route's timeout (60 s, as every route of the
    // endpoint), and at most the filter's bound of copies per proxy.
    let routes = http.as_array().unwrap();
    assert!(routes.len() >= 3, "{routes:?}");
    assert!(routes.iter().all(|r| r["timeout"] == "60s"), "{routes:?}");
    let dr = find(&objs, "DestinationRule", "titanic-shadow");
    assert_eq!(dr["spec"]["host"], "titanic-shadow.ml.svc.cluster.local");
    assert_eq!(
        dr["spec"]["trafficPolicy"]["connectionPool"]["http"],
        json!({"http2MaxRequests": 1024, "http1MaxPendingRequests": 1024})
    );
}

#[test]
fn a_shadow_without_a_ready_pod_runs_but_gets_no_copies_from_the_filter_or_envoy() {
    let settings = RenderSettings::default();
    for compare in ["json", "off"] {
        let mut ep = endpoint();
        let mut shadow = ShadowSpec::new("m3", 100.0);
        shadow.compare = serde_json::from_value(json!(compare)).unwrap();
        ep.spec.shadow = Some(shadow);
        for ready in [false, true] {
            let mut plan = Plan::assume_ready(&ep.spec);
            plan.shadow_ready = ready;
            let r = render_endpoint(&ep, "ml", &models(), &plan, None, KEY, &settings).unwrap();
            find(&r.objects, "Deployment", "titanic-shadow-m3");
            find(&r.objects, "Service", "titanic-shadow");
            let copies = r.filter.shadow.is_some();
            let wiring = vec![(ep.spec.filter_wiring, r.filter)];
            let shared =
                crate::aggregate::filters_for(wiring, &Default::default(), &settings).objects;
            let mirrors = serde_json::to_string(&shared)
                .unwrap()
                .contains("request_mirror_policies");
            // Ready: the endpoint's filter config names the shadow, and the aggregate hands an
            // uncompared one to Envoy's mirror.
            let expected = (ready, ready && compare == "off");
            assert_eq!(
                (copies, mirrors),
                expected,
                "compare {compare}, ready {ready}"
            );
        }
    }
}

#[test]
fn the_allocation_is_carried_from_the_previous_one() {
    let ep = endpoint();
    let prev = Allocation::initial(&[("a", 50), ("b", 50)]).unwrap();
    let r = render_endpoint(
        &ep,
        "ml",
        &models(),
        &Plan::assume_ready(&ep.spec),
        Some(&prev),
        KEY,
        &RenderSettings::default(),
    )
    .unwrap();
    // a grows from 50 to 80: every bucket a had stays a.
    assert!((0..mlep_contract::BUCKETS)
        .all(|b| prev.lookup(b) != Some("a") || r.allocation.lookup(b) == Some("a")));
    assert_eq!(r.allocation.counts()["a"], 8000);
}

#[test]
fn render_all_renders_every_endpoint_and_reports_invalid_ones_by_name() {
    let objs = render_all(
        &[model("m1"), model("m2")],
        &[endpoint()],
        &RenderSettings::default(),
        &mut || KEY.to_owned(),
    )
    .unwrap();
    assert!(objs.iter().any(|o| o["kind"] == "VirtualService"));
    // The endpoint's objects in its namespace; the shared filters in Istio's.
    assert!(objs.iter().all(|o| o["metadata"]["namespace"] == "ml"
        || o["metadata"]["labels"][crate::aggregate::LABEL_FILTER].is_string()));
    assert_eq!(
        objs.iter().filter(|o| o["kind"] == "EnvoyFilter").count(),
        2
    );
    let mut bad = endpoint();
    bad.spec.variants[1].weight = 30;
    let err = render_all(
        &[model("m1"), model("m2")],
        &[bad],
        &RenderSettings::default(),
        &mut || KEY.to_owned(),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.variants");
    assert!(err.message.contains("ModelEndpoint ml/titanic"), "{err}");
}

#[test]
fn rendered_filters_name_the_module_the_operator_serves_by_its_sha256() {
    let sha = "5e".repeat(32);
    let settings = RenderSettings::default().with_module(&sha, "mlep-system");
    let ep = endpoint();
    let objs = render_with_filters(&ep, &settings);
    let text = serde_json::to_string(&objs).unwrap();
    // The operator's Service port (manifests/operator/operator.yaml) and a versioned path.
    let url =
        format!("http://mlep-operator.mlep-system.svc.cluster.local:8081/mlep_filter/{sha}.wasm");
    assert!(text.contains(&url), "{url} not in {text}");
    assert!(text.contains(&format!("\"sha256\":\"{sha}\"")));
    assert!(!text.contains(&"0".repeat(64)));
    let manifest = include_str!("../../../manifests/operator/operator.yaml");
    assert!(
        manifest.contains(&format!("port: {}", module::OPERATOR_HTTP_PORT)),
        "manifests/operator/operator.yaml serves on another port"
    );
}

#[test]
fn conditions_are_list_maps_keyed_by_type_in_both_crds() {
    for crd in crds() {
        let v = serde_json::to_value(&crd).unwrap();
        let conditions = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{crd:?}");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        assert!(conditions["items"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("type")));
    }
}

#[test]
fn crds_carry_cel_rules_and_no_null_enum_values() {
    let text = serde_json::to_string(&crds()).unwrap();
    assert!(text.contains("self.map(v, v.weight).sum() == 100"));
    assert!(text.contains("exists_one"));
    assert!(!text.contains(",null]"), "null in an enum");
}

#[test]
fn a_virtual_service_binding_external_hosts_in_the_mesh_is_split_in_two() {
    let legacy = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "titanic", "namespace": "ml", "labels": {"mlep.dev/endpoint": "titanic"},
            "ownerReferences": [{"uid": "u"}], "resourceVersion": "7",
        },
        "spec": {
            "hosts": ["titanic.example.com", "titanic.ml.svc.cluster.local"],
            "gateways": ["mesh", "ml/titanic"],
            "http": [{"name": "default"}],
        },
    });
    let split = crate::render::unbind_external_from_mesh(&legacy, "cluster.local").unwrap();
    assert_eq!(split.len(), 2);
    let (edge, mesh) = (&split[0], &split[1]);
    assert_eq!(edge["metadata"]["name"], "titanic.gateway");
    assert_eq!(edge["spec"]["gateways"], json!(["ml/titanic"]));
    assert_eq!(edge["spec"]["hosts"], legacy["spec"]["hosts"]);
    assert_eq!(mesh["metadata"]["name"], "titanic");
    assert_eq!(mesh["spec"]["gateways"], json!(["mesh"]));
    assert_eq!(
        mesh["spec"]["hosts"],
        json!(["titanic.ml.svc.cluster.local"])
    );
    for o in &split {
        assert_eq!(o["spec"]["http"], legacy["spec"]["http"]);
        assert_eq!(o["metadata"]["ownerReferences"], json!([{"uid": "u"}]));
        assert!(o["metadata"].get("resourceVersion").is_none());
    }
    // Today's VirtualService binds no external host in the mesh: nothing to do.
    assert_eq!(
        crate::render::unbind_external_from_mesh(mesh, "cluster.local"),
        None
    );
    // A mesh-only one keeps its own names and loses the rest.
    let mut mesh_only = legacy.clone();
    mesh_only["spec"]["gateways"] = json!(["mesh"]);
    let split = crate::render::unbind_external_from_mesh(&mesh_only, "cluster.local").unwrap();
    assert_eq!(split.len(), 1);
    assert_eq!(
        split[0]["spec"]["hosts"],
        json!(["titanic.ml.svc.cluster.local"])
    );
}
