use super::*;
use crate::crd::{Artifact, ShadowSpec, VariantSpec};
use std::collections::BTreeMap;

fn model() -> ModelSpec {
    ModelSpec {
        image: "ghcr.io/k8smlendpoints/mlep-model-server:0.1.0".into(),
        artifact: Some(Artifact {
            uri: "https://example.com/m.tar.gz".into(),
            sha256: "a".repeat(64),
            credentials_secret: None,
        }),
        port: None,
        env: vec![],
        resources: None,
        pod_security_context: None,
        security_context: None,
    }
}

fn endpoint() -> ModelEndpointSpec {
    ModelEndpointSpec::new(
        vec!["titanic.example.com".into()],
        vec![
            VariantSpec::new("a", "m1", 80),
            VariantSpec::new("b", "m2", 20),
        ],
    )
}

fn check(spec: &ModelEndpointSpec) -> Result<(), SpecError> {
    let models: BTreeMap<&str, ModelSpec> =
        [("m1", model()), ("m2", model())].into_iter().collect();
    validate_endpoint(spec, |n| models.get(n))
}

#[test]
fn a_valid_endpoint_passes() {
    check(&endpoint()).unwrap();
}

#[test]
fn weights_not_summing_to_100_name_the_variants_field() {
    let mut e = endpoint();
    e.variants[1].weight = 30;
    let err = check(&e).unwrap_err();
    assert_eq!(err.field, "spec.variants");
    assert!(
        err.message.contains("sum to 110") && err.message.contains("a=80,b=30"),
        "{err}"
    );
}

#[test]
fn duplicate_and_malformed_variant_names_are_rejected() {
    let mut e = endpoint();
    e.variants[1].name = "a".into();
    assert_eq!(check(&e).unwrap_err().field, "spec.variants[1].name");
    e.variants[1].name = "B_2".into();
    assert_eq!(check(&e).unwrap_err().field, "spec.variants[1].name");
}

#[test]
fn unknown_models_are_reported_with_their_own_reason() {
    let mut e = endpoint();
    e.variants[0].model = "nope".into();
    let err = check(&e).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason),
        ("spec.variants[0].model", REASON_MODEL_NOT_FOUND)
    );
    let mut e = endpoint();
    e.shadow = Some(ShadowSpec::new("ghost", 10.0));
    assert_eq!(check(&e).unwrap_err().field, "spec.shadow.model");
}

#[test]
fn shadow_percent_must_be_within_0_and_100() {
    let mut e = endpoint();
    e.shadow = Some(ShadowSpec::new("m2", 150.0));
    assert_eq!(check(&e).unwrap_err().field, "spec.shadow.percent");
    for bad in [-1.0, 100.5, f64::NAN] {
        e.shadow = Some(ShadowSpec {
            compare_percent: Some(bad),
            ..ShadowSpec::new("m2", 50.0)
        });
        assert_eq!(
            check(&e).unwrap_err().field,
            "spec.shadow.comparePercent",
            "{bad}"
        );
    }
    e.shadow = Some(ShadowSpec {
        compare_percent: Some(10.0),
        ..ShadowSpec::new("m2", 50.0)
    });
    assert!(check(&e).is_ok());
}

#[test]
fn a_shadow_body_cap_over_the_limit_is_an_invalid_spec_naming_the_field() {
    let max = mlep_contract::config::MAX_SHADOW_BODY_BYTES;
    let mut e = endpoint();
    e.shadow = Some(ShadowSpec {
        max_body_bytes: Some(max),
        ..ShadowSpec::new("m2", 50.0)
    });
    assert!(check(&e).is_ok());
    for over in [max + 1, u32::MAX] {
        e.shadow = Some(ShadowSpec {
            max_body_bytes: Some(over),
            ..ShadowSpec::new("m2", 50.0)
        });
        let err = check(&e).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason),
            ("spec.shadow.maxBodyBytes", REASON_INVALID_SPEC)
        );
        assert!(err.message.contains(&max.to_string()), "{err}");
    }
}

#[test]
fn malformed_sha256_and_uris_are_rejected() {
    let mut m = model();
    m.artifact = Some(Artifact {
        uri: "https://x/m".into(),
        sha256: "ABC".into(),
        credentials_secret: None,
    });
    assert_eq!(
        validate_model(&m).unwrap_err().field,
        "spec.artifact.sha256"
    );
    for uri in [
        "ftp://x/m",
        "file://relative/m",
        "s3://bucket",
        "pvc://claim/../m",
        "https:///m",
        "m.tar.gz",
    ] {
        m.artifact = Some(Artifact {
            uri: uri.into(),
            sha256: "0".repeat(64),
            credentials_secret: None,
        });
        assert_eq!(
            validate_model(&m).unwrap_err().field,
            "spec.artifact.uri",
            "{uri}"
        );
    }
    for uri in [
        "file:///models/m.tar.gz",
        "s3://models/titanic/v1.tar.gz",
        "gs://models/m.onnx",
        "pvc://model-store/titanic/v1.tar.gz",
    ] {
        m.artifact = Some(Artifact {
            uri: uri.into(),
            sha256: "0".repeat(64),
            credentials_secret: Some("s3-creds".into()),
        });
        validate_model(&m).unwrap();
    }
    m.artifact = Some(Artifact {
        uri: "s3://models/m".into(),
        sha256: "0".repeat(64),
        credentials_secret: Some("S3_Creds".into()),
    });
    assert_eq!(
        validate_model(&m).unwrap_err().field,
        "spec.artifact.credentialsSecret"
    );
}

#[test]
fn data_capture_needs_a_share_a_destination_and_sane_limits() {
    use crate::crd::{CaptureMode, DataCaptureSpec};
    let models: BTreeMap<&str, ModelSpec> =
        [("m1", model()), ("m2", model())].into_iter().collect();
    let check = |d: DataCaptureSpec| {
        let mut e = endpoint();
        e.data_capture = Some(d);
        validate_endpoint(&e, |n| models.get(n)).map_err(|e| e.field)
    };
    let good = DataCaptureSpec {
        enabled: None,
        sampling_percent: 10.0,
        capture: vec![CaptureMode::Input, CaptureMode::Output],
        destination_uri: "s3://captures/prod".into(),
        credentials_secret: Some("s3-creds".into()),
        max_payload_bytes: Some(1 << 20),
        content_types: vec!["application/json".into(), "text/csv".into()],
    };
    assert_eq!(check(good.clone()), Ok(()));
    let with = |f: &dyn Fn(&mut DataCaptureSpec)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    let bad = [
        (with(&|d| d.sampling_percent = 100.5), "samplingPercent"),
        (
            with(&|d| d.destination_uri = "ftp://x/y".into()),
            "destinationUri",
        ),
        (
            with(&|d| d.destination_uri = "s3://B/y".into()),
            "destinationUri",
        ),
        (
            with(&|d| d.credentials_secret = Some("No".into())),
            "credentialsSecret",
        ),
        (
            with(&|d| d.max_payload_bytes = Some(5 << 20)),
            "maxPayloadBytes",
        ),
        (
            with(&|d| d.capture = vec![CaptureMode::Input, CaptureMode::Input]),
            "capture",
        ),
        (
            with(&|d| d.content_types = vec!["json".into()]),
            "contentTypes",
        ),
    ];
    for (d, field) in bad {
        assert_eq!(
            check(d),
            Err(format!("spec.dataCapture.{field}")),
            "{field}"
        );
    }
}

#[test]
fn an_invalid_model_makes_the_endpoint_invalid_naming_the_variant() {
    let mut bad = model();
    bad.image = " ".into();
    let models: BTreeMap<&str, ModelSpec> = [("m1", model()), ("m2", bad)].into_iter().collect();
    let err = validate_endpoint(&endpoint(), |n| models.get(n)).unwrap_err();
    assert_eq!(err.field, "spec.variants[1].model");
    assert!(err.message.contains("spec.image"), "{err}");
}

const WHO: Claimant = Claimant {
    namespace: "team-b",
    name: "titanic",
    cluster_domain: "cluster.local",
};

#[test]
fn an_endpoint_may_not_take_the_name_of_another_ones_shadow_objects() {
    let who = Claimant {
        name: "titanic-shadow",
        ..WHO
    };
    let err = validate_hosts(&endpoint(), &who).unwrap_err();
    assert_eq!(err.field, "metadata.name");
    assert!(err.message.contains("\"titanic\"'s shadow"), "{err}");
    for name in ["shadow", "titanic-shadows", "shadow-titanic"] {
        let who = Claimant { name, ..WHO };
        assert!(validate_hosts(&endpoint(), &who).is_ok(), "{name}");
    }
}

#[test]
fn an_endpoint_may_not_take_the_name_of_another_ones_capture_sink() {
    // The name of the sink's Deployment and Service, as rendered: `titanic-capture`.
    let sink = crate::envoy::capture_service("titanic");
    let who = Claimant { name: &sink, ..WHO };
    let err = validate_hosts(&endpoint(), &who).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason),
        ("metadata.name", REASON_INVALID_SPEC)
    );
    assert!(
        err.message.contains("\"-capture\"")
            && err.message.contains("\"titanic\"'s data capture sink"),
        "{err}"
    );
    for name in ["capture", "titanic-captures", "capture-titanic"] {
        let who = Claimant { name, ..WHO };
        assert!(validate_hosts(&endpoint(), &who).is_ok(), "{name}");
    }
}

#[test]
fn a_host_naming_another_namespaces_service_is_refused_naming_the_field_and_the_host() {
    let mut e = endpoint();
    e.hosts = vec![
        "titanic.example.com".into(),
        "titanic.team-b".into(),
        "alpha.team-a.svc.cluster.local".into(),
    ];
    let err = validate_hosts(&e, &WHO).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason),
        ("spec.hosts[2]", REASON_INVALID_SPEC)
    );
    assert!(
        err.message.contains("\"alpha.team-a.svc.cluster.local\""),
        "{err}"
    );
    assert!(
        err.message.contains("namespace") || err.message.contains("in-cluster"),
        "{err}"
    );
    e.hosts.truncate(2);
    validate_hosts(&e, &WHO).unwrap();
}

#[test]
fn a_host_naming_another_service_of_the_own_namespace_or_every_host_is_refused() {
    for (host, says) in [
        ("iris", "\"iris\""),
        ("iris.team-b", "\"iris\""),
        ("*", "every host"),
    ] {
        let mut e = endpoint();
        e.hosts.push(host.into());
        let err = validate_hosts(&e, &WHO).unwrap_err();
        assert_eq!(err.field, "spec.hosts[1]", "{host}");
        assert!(err.message.contains(says), "{host}: {err}");
    }
}

#[test]
fn a_host_held_by_an_endpoint_created_first_is_a_host_conflict_naming_both() {
    use crate::host_claims::host_owners;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let make = |ns: &str, created: &str| {
        let mut spec = endpoint();
        spec.hosts = vec!["own.example.com".into(), "Titanic.Example.com".into()];
        let mut ep = ModelEndpoint::new("titanic", spec);
        ep.metadata.namespace = Some(ns.into());
        ep.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        ep
    };
    let mut first = make("team-a", "2026-01-01T00:00:00Z");
    first.spec.hosts.remove(0);
    let second = make("team-b", "2026-01-01T00:01:00Z");
    let claims = host_owners(&[second.clone(), first.clone()], "cluster.local");
    host_conflict(&first, &claims).unwrap();
    let err = host_conflict(&second, &claims).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason),
        ("spec.hosts[1]", REASON_HOST_CONFLICT)
    );
    assert!(
        err.message.contains("\"Titanic.Example.com\"") && err.message.contains("team-a/titanic"),
        "{err}"
    );
}

/// A shadow's model is looked up in the endpoint's own namespace, and its copies go to the
/// operator's `<endpoint>-shadow` Service of that namespace: forwarded credentials cannot
/// leave it. A model "name" pointing elsewhere is simply not found.
#[test]
fn a_shadow_always_targets_a_service_of_the_endpoints_own_namespace() {
    use crate::envoy::CallTarget;
    let t = CallTarget::shadow_istio("titanic", "team-b", "cluster.local", 8080);
    assert_eq!(t.authority, "titanic-shadow.team-b.svc.cluster.local");
    assert_eq!(
        t.cluster,
        "outbound|8080||titanic-shadow.team-b.svc.cluster.local"
    );
    for elsewhere in ["team-a/m2", "m2.team-a", "m2.team-a.svc.cluster.local"] {
        let mut e = endpoint();
        let mut shadow = ShadowSpec::new(elsewhere, 10.0);
        shadow.forward_credentials = Some(true);
        e.shadow = Some(shadow);
        let err = check(&e).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason),
            ("spec.shadow.model", REASON_MODEL_NOT_FOUND)
        );
    }
}

#[test]
fn hosts_and_gateway_are_checked() {
    let mut e = endpoint();
    e.hosts = vec!["bad host".into()];
    assert_eq!(check(&e).unwrap_err().field, "spec.hosts[0]");
    let mut e = endpoint();
    e.gateway = Some("gw".into());
    assert_eq!(check(&e).unwrap_err().field, "spec.gateway");
    e.gateway = Some("istio-system/ingressgateway".into());
    check(&e).unwrap();
}

fn autoscaled(
    cpu: Option<i32>,
    rps: Option<f64>,
    f: impl FnOnce(&mut AutoscalingSpec),
) -> ModelEndpointSpec {
    let mut a = AutoscalingSpec {
        min_replicas: 1,
        max_replicas: 4,
        target_cpu_utilization_percentage: cpu,
        target_requests_per_second: rps,
        scale_down_stabilization_seconds: None,
        scale_to_zero_after_seconds: None,
    };
    f(&mut a);
    let mut e = endpoint();
    e.variants[1].autoscaling = Some(a);
    e
}

fn cpu_request(cpu: &str) -> k8s_openapi::api::core::v1::ResourceRequirements {
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some([("cpu".to_owned(), Quantity(cpu.into()))].into()),
        ..Default::default()
    }
}

#[test]
fn autoscaling_takes_one_target_and_names_the_field() {
    let err = check(&autoscaled(Some(70), Some(5.0), |_| {})).unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.reason),
        ("spec.variants[1].autoscaling", REASON_INVALID_SPEC)
    );
    assert_eq!(
        err.message,
        "set one target: targetCPUUtilizationPercentage or targetRequestsPerSecond"
    );
    check(&autoscaled(None, Some(5.0), |_| {})).unwrap();
}

#[test]
fn autoscaling_bounds_targets_and_window_are_checked() {
    let at = "spec.variants[1].autoscaling";
    let field = |e: ModelEndpointSpec| check(&e).map_err(|e| (e.field, e.message));
    let (f, _) = field(autoscaled(None, Some(1.0), |a| a.min_replicas = -1)).unwrap_err();
    assert_eq!(f, format!("{at}.minReplicas"));
    let (f, _) = field(autoscaled(None, Some(1.0), |a| a.max_replicas = 0)).unwrap_err();
    assert_eq!(f, format!("{at}.maxReplicas"));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let (f, _) = field(autoscaled(None, Some(bad), |_| {})).unwrap_err();
        assert_eq!(f, format!("{at}.targetRequestsPerSecond"), "{bad}");
    }
    for bad in [-1, 3601] {
        let e = autoscaled(None, Some(1.0), |a| {
            a.scale_down_stabilization_seconds = Some(bad)
        });
        let (f, _) = field(e).unwrap_err();
        assert_eq!(f, format!("{at}.scaleDownStabilizationSeconds"), "{bad}");
    }
    for ok in [0, 3600] {
        let e = autoscaled(None, Some(1.0), |a| {
            a.scale_down_stabilization_seconds = Some(ok)
        });
        assert_eq!(field(e), Ok(()), "{ok}");
    }
    let (f, _) = field(autoscaled(Some(0), None, |_| {})).unwrap_err();
    assert_eq!(f, format!("{at}.targetCPUUtilizationPercentage"));
}

#[test]
fn scale_to_zero_needs_a_request_rate_target_and_a_sane_idle_time() {
    let at = "spec.variants[1].autoscaling";
    let field = |e: ModelEndpointSpec| check(&e).map_err(|e| (e.field, e.message));
    let zero = |a: &mut AutoscalingSpec| a.min_replicas = 0;
    assert_eq!(field(autoscaled(None, Some(1.0), zero)), Ok(()));
    let mut cpu = autoscaled(Some(60), None, zero);
    cpu.variants[1].resources = Some(cpu_request("100m"));
    let (f, m) = field(cpu).unwrap_err();
    assert_eq!(f, format!("{at}.minReplicas"));
    assert!(m.contains("needs targetRequestsPerSecond"), "{m}");
    for bad in [29, 86_401] {
        let e = autoscaled(None, Some(1.0), |a| {
            a.min_replicas = 0;
            a.scale_to_zero_after_seconds = Some(bad);
        });
        let (f, _) = field(e).unwrap_err();
        assert_eq!(f, format!("{at}.scaleToZeroAfterSeconds"), "{bad}");
    }
}

#[test]
fn a_cpu_target_needs_a_cpu_request_on_the_variant_or_its_model() {
    // The default target is CPU: without a request the HPA could never compute utilisation.
    for spec in [
        autoscaled(None, None, |_| {}),
        autoscaled(Some(60), None, |_| {}),
    ] {
        let err = check(&spec).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason),
            (
                "spec.variants[1].resources.requests.cpu",
                REASON_INVALID_SPEC
            )
        );
        assert!(
            err.message.contains("cannot compute utilisation") && err.message.contains("\"m2\""),
            "{err}"
        );
    }
    // The variant's own request, or the Model's, or a limit (the request defaults to it).
    let mut e = autoscaled(None, None, |_| {});
    e.variants[1].resources = Some(cpu_request("500m"));
    check(&e).unwrap();
    let mut with_request = model();
    with_request.resources = Some(cpu_request("1"));
    let models: BTreeMap<&str, ModelSpec> = [("m1", model()), ("m2", with_request)]
        .into_iter()
        .collect();
    validate_endpoint(&autoscaled(None, None, |_| {}), |n| models.get(n)).unwrap();
    let mut e = autoscaled(None, None, |_| {});
    e.variants[1].resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        limits: Some([("cpu".to_owned(), Quantity("2".into()))].into()),
        ..Default::default()
    });
    check(&e).unwrap();
    // Memory alone is no CPU request.
    let mut e = autoscaled(None, None, |_| {});
    e.variants[1].resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some([("memory".to_owned(), Quantity("1Gi".into()))].into()),
        ..Default::default()
    });
    assert_eq!(
        check(&e).unwrap_err().field,
        "spec.variants[1].resources.requests.cpu"
    );
    // A request-rate target needs none.
    check(&autoscaled(None, Some(3.0), |_| {})).unwrap();
}
