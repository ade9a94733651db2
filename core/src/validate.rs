//! Spec validation, shared by the operator and `mlep` (local mode, render). Real clusters also
//! enforce the OpenAPI constraints of the CRD, but not every API server does (no CEL before
//! 1.25, and some checks need other objects, like "the model exists"), so every check lives here.

use crate::crd::conditions::{REASON_HOST_CONFLICT, REASON_INVALID_SPEC, REASON_MODEL_NOT_FOUND};
use crate::crd::{
    AnalysisSpec, ModelEndpoint, ModelEndpointSpec, ModelSpec, RolloutStrategy, RoutingSpec,
    ShadowSpec,
};
use crate::host_claims::{classify, Claimant, HostClaims};
use mlep_contract::artifact::ArtifactLocation;
use mlep_contract::metrics::SHADOW_VARIANT_LABEL;
use mlep_contract::{is_cookie_name, is_dns_label, is_header_name};
use std::collections::BTreeSet;

/// A spec problem: the field (`spec.variants[1].weight`), what is wrong, and the condition
/// reason to report it under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
    pub reason: &'static str,
}

impl SpecError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            reason: REASON_INVALID_SPEC,
        }
    }
}

pub fn validate_model(spec: &ModelSpec) -> Result<(), SpecError> {
    if spec.image.trim().is_empty() {
        return Err(SpecError::invalid(
            "spec.image",
            "must name a container image",
        ));
    }
    if spec.port == Some(0) {
        return Err(SpecError::invalid("spec.port", "must be 1..65535"));
    }
    if let Some(a) = &spec.artifact {
        if a.sha256.len() != 64
            || !a
                .sha256
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(SpecError::invalid(
                "spec.artifact.sha256",
                format!("{:?} is not 64 lowercase hex digits", a.sha256),
            ));
        }
        if let Err(reason) = ArtifactLocation::parse(&a.uri) {
            return Err(SpecError::invalid(
                "spec.artifact.uri",
                format!("{:?}: {reason}", a.uri),
            ));
        }
        secret_name("spec.artifact.credentialsSecret", &a.credentials_secret)?;
    }
    Ok(())
}

/// A Secret name field, when set: a DNS subdomain (RFC 1123), what Kubernetes accepts.
fn secret_name(field: &str, name: &Option<String>) -> Result<(), SpecError> {
    match name {
        Some(n) if n.len() > 253 || !n.split('.').all(is_dns_label) => Err(SpecError::invalid(
            field,
            format!("{n:?} is not a Secret name"),
        )),
        _ => Ok(()),
    }
}

fn is_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Validate an endpoint against its own rules and the models it names. `model` looks a Model
/// up by name in the endpoint's namespace.
pub fn validate_endpoint<'a>(
    spec: &ModelEndpointSpec,
    model: impl Fn(&str) -> Option<&'a ModelSpec>,
) -> Result<(), SpecError> {
    validate_exposure(spec)?;
    validate_rollout(spec)?;
    validate_variants(spec, &model)?;
    validate_routing(&spec.routing)?;
    if let Some(s) = &spec.shadow {
        validate_shadow(s, &model)?;
    }
    if let Some(d) = &spec.data_capture {
        validate_capture(d)?;
    }
    Ok(())
}

/// `spec.dataCapture`: a share, a destination the sink can write to, sane limits.
fn validate_capture(d: &crate::crd::DataCaptureSpec) -> Result<(), SpecError> {
    if !(0.0..=100.0).contains(&d.sampling_percent) {
        return Err(SpecError::invalid(
            "spec.dataCapture.samplingPercent",
            format!("{} must be within 0..=100", d.sampling_percent),
        ));
    }
    if let Err(reason) = mlep_contract::capture::Destination::parse(&d.destination_uri) {
        return Err(SpecError::invalid(
            "spec.dataCapture.destinationUri",
            format!("{:?}: {reason}", d.destination_uri),
        ));
    }
    secret_name("spec.dataCapture.credentialsSecret", &d.credentials_secret)?;
    let max = mlep_contract::config::MAX_CAPTURE_PAYLOAD_BYTES;
    if d.max_payload_bytes.is_some_and(|b| b > max) {
        return Err(SpecError::invalid(
            "spec.dataCapture.maxPayloadBytes",
            format!("at most {max}"),
        ));
    }
    let mut modes = d.capture.clone();
    modes.dedup();
    if modes.len() != d.capture.len() {
        return Err(SpecError::invalid(
            "spec.dataCapture.capture",
            "lists a side twice",
        ));
    }
    if let Some(t) = d.content_types.iter().find(|t| {
        t.split_once('/')
            .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
    }) {
        return Err(SpecError::invalid(
            "spec.dataCapture.contentTypes",
            format!("{t:?} is not a media type (type/subtype)"),
        ));
    }
    Ok(())
}

/// Hosts, gateway and expose.
fn validate_exposure(spec: &ModelEndpointSpec) -> Result<(), SpecError> {
    if spec.hosts.is_empty() {
        return Err(SpecError::invalid(
            "spec.hosts",
            "must name at least one host",
        ));
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if !is_host(h) {
            return Err(SpecError::invalid(
                format!("spec.hosts[{i}]"),
                format!("{h:?} is not a DNS host name"),
            ));
        }
    }
    if let Some(g) = &spec.gateway {
        let ok = matches!(g.split_once('/'), Some((ns, name)) if is_dns_label(ns) && !name.is_empty() && !name.contains('/'));
        if !ok {
            return Err(SpecError::invalid(
                "spec.gateway",
                format!("{g:?} must be namespace/name"),
            ));
        }
    }
    if spec.gateway.is_some() && spec.expose == Some(true) {
        return Err(SpecError::invalid(
            "spec.expose",
            "set either gateway (a shared Gateway) or expose, not both",
        ));
    }
    Ok(())
}

/// Check that every host of `spec.hosts` is one `who` may claim (`crate::host_claims`): its own
/// Service names and external hosts, never another Service of the cluster.
pub fn validate_hosts(spec: &ModelEndpointSpec, who: &Claimant) -> Result<(), SpecError> {
    for (i, h) in spec.hosts.iter().enumerate() {
        classify(h, who).map_err(|why| SpecError::invalid(format!("spec.hosts[{i}]"), why))?;
    }
    Ok(())
}

/// `HostConflict` when another endpoint, created first, keeps an external host of `ep`.
pub fn host_conflict(ep: &ModelEndpoint, claims: &HostClaims) -> Result<(), SpecError> {
    match claims.held_by_others(ep).first() {
        None => Ok(()),
        Some(held) => Err(SpecError {
            field: format!("spec.hosts[{}]", held.index),
            message: format!(
                "host {:?} is held by ModelEndpoint {}, created first; this endpoint is not \
                 wired until that one lets it go",
                held.host, held.holder
            ),
            reason: REASON_HOST_CONFLICT,
        }),
    }
}

/// Check `spec.rollout`, naming the field.
pub fn validate_rollout(spec: &ModelEndpointSpec) -> Result<(), SpecError> {
    let Some(r) = &spec.rollout else {
        return Ok(());
    };
    let at = "spec.rollout";
    let positive = |field: &str, v: Option<u32>| match v {
        Some(0) => Err(SpecError::invalid(
            format!("{at}.{field}"),
            "must be at least 1",
        )),
        _ => Ok(()),
    };
    positive("stepSeconds", r.step_seconds)?;
    positive("maxStepSeconds", r.max_step_seconds)?;
    if let (Some(step), Some(max)) = (r.step_seconds, r.max_step_seconds) {
        if max < step {
            return Err(SpecError::invalid(
                format!("{at}.maxStepSeconds"),
                format!("{max} is below stepSeconds {step}"),
            ));
        }
    }
    let percent = |field: &str, v: Option<u32>| match v {
        Some(p) if !(1..=100).contains(&p) => Err(SpecError::invalid(
            format!("{at}.{field}"),
            format!("{p} must be within 1..=100"),
        )),
        _ => Ok(()),
    };
    percent("canary.percent", r.canary.as_ref().and_then(|c| c.percent))?;
    percent(
        "linear.stepPercent",
        r.linear.as_ref().and_then(|l| l.step_percent),
    )?;
    if let Some(bg) = &r.blue_green {
        if bg
            .shadow_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            return Err(SpecError::invalid(
                format!("{at}.blueGreen.shadowPercent"),
                "must be within 0..=100",
            ));
        }
        positive("blueGreen.bakeSeconds", bg.bake_seconds)?;
    }
    if r.strategy == Some(RolloutStrategy::BlueGreen) && spec.shadow.is_some() {
        return Err(SpecError::invalid(
            format!("{at}.strategy"),
            "BlueGreen bakes the new model through the endpoint's shadow; remove spec.shadow \
             or choose Canary or Linear",
        ));
    }
    if let Some(a) = &r.analysis {
        validate_analysis(a)?;
    }
    Ok(())
}

/// Check `spec.rollout.analysis`, naming the field.
fn validate_analysis(a: &AnalysisSpec) -> Result<(), SpecError> {
    let at = "spec.rollout";
    let share = |field: &str, v: Option<f64>| match v {
        Some(x) if !(0.0..=1.0).contains(&x) => Err(SpecError::invalid(
            format!("{at}.analysis.{field}"),
            format!("{x} must be a share within 0..=1 (0.05 is 5%)"),
        )),
        _ => Ok(()),
    };
    share("maxErrorRate", a.max_error_rate)?;
    share("minAgreement", a.min_agreement)?;
    if a.max_p99_latency_ms
        .is_some_and(|x| !(x > 0.0 && x.is_finite()))
    {
        return Err(SpecError::invalid(
            format!("{at}.analysis.maxP99LatencyMs"),
            "must be a positive number of milliseconds",
        ));
    }
    if let Some(u) = &a.prometheus_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(SpecError::invalid(
                format!("{at}.analysis.prometheusUrl"),
                format!("{u:?} must start with http:// or https://"),
            ));
        }
    }
    Ok(())
}

/// Names, weights (summing to 100), replicas, autoscaling and models of the variants.
fn validate_variants<'a>(
    spec: &ModelEndpointSpec,
    model: &impl Fn(&str) -> Option<&'a ModelSpec>,
) -> Result<(), SpecError> {
    if spec.variants.is_empty() {
        return Err(SpecError::invalid(
            "spec.variants",
            "must have at least one variant",
        ));
    }
    if spec.variants.len() > mlep_contract::config::MAX_VARIANTS {
        return Err(SpecError::invalid("spec.variants", "at most 64 variants"));
    }
    let mut names = BTreeSet::new();
    let mut sum = 0u64;
    for (i, v) in spec.variants.iter().enumerate() {
        let at = format!("spec.variants[{i}]");
        if !is_dns_label(&v.name) {
            return Err(SpecError::invalid(
                format!("{at}.name"),
                format!(
                    "{:?} must be a DNS label (lowercase letters, digits and '-', at most 63)",
                    v.name
                ),
            ));
        }
        if v.name == SHADOW_VARIANT_LABEL {
            return Err(SpecError::invalid(
                format!("{at}.name"),
                format!("{SHADOW_VARIANT_LABEL:?} is reserved for the shadow model"),
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err(SpecError::invalid(
                format!("{at}.name"),
                format!("duplicate variant name {:?}", v.name),
            ));
        }
        if v.weight > 100 {
            return Err(SpecError::invalid(
                format!("{at}.weight"),
                format!("{} is over 100", v.weight),
            ));
        }
        sum += u64::from(v.weight);
        if v.replicas.is_some_and(|r| r < 0) {
            return Err(SpecError::invalid(
                format!("{at}.replicas"),
                "must not be negative",
            ));
        }
        if let Some(a) = &v.autoscaling {
            if a.min_replicas < 1 {
                return Err(SpecError::invalid(
                    format!("{at}.autoscaling.minReplicas"),
                    "must be at least 1",
                ));
            }
            if a.max_replicas < a.min_replicas {
                return Err(SpecError::invalid(
                    format!("{at}.autoscaling.maxReplicas"),
                    format!("{} is below minReplicas {}", a.max_replicas, a.min_replicas),
                ));
            }
        }
        check_model(&format!("{at}.model"), &v.model, model)?;
    }
    if sum != 100 {
        return Err(SpecError::invalid(
            "spec.variants",
            format!("weights sum to {sum}, must be 100 ({})", weights_text(spec)),
        ));
    }
    Ok(())
}

fn validate_routing(r: &RoutingSpec) -> Result<(), SpecError> {
    if let Some(h) = &r.target_header {
        if !is_header_name(h) {
            return Err(SpecError::invalid(
                "spec.routing.targetHeader",
                format!("{h:?} is not a lowercase header name"),
            ));
        }
    }
    if let Some(h) = &r.sticky.header {
        if !is_header_name(h) {
            return Err(SpecError::invalid(
                "spec.routing.sticky.header",
                format!("{h:?} is not a lowercase header name"),
            ));
        }
    }
    if let Some(c) = &r.sticky.cookie {
        if !is_cookie_name(c) {
            return Err(SpecError::invalid(
                "spec.routing.sticky.cookie",
                format!("{c:?} is not a cookie name"),
            ));
        }
    }
    Ok(())
}

fn validate_shadow<'a>(
    s: &ShadowSpec,
    model: &impl Fn(&str) -> Option<&'a ModelSpec>,
) -> Result<(), SpecError> {
    if !(0.0..=100.0).contains(&s.percent) {
        return Err(SpecError::invalid(
            "spec.shadow.percent",
            format!("{} must be within 0..=100", s.percent),
        ));
    }
    if let Some(p) = s.compare_percent.filter(|p| !(0.0..=100.0).contains(p)) {
        return Err(SpecError::invalid(
            "spec.shadow.comparePercent",
            format!("{p} must be within 0..=100"),
        ));
    }
    if s.tolerance.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
        return Err(SpecError::invalid(
            "spec.shadow.tolerance",
            "must be a finite number >= 0",
        ));
    }
    if s.timeout_ms == Some(0) {
        return Err(SpecError::invalid(
            "spec.shadow.timeoutMs",
            "must be positive",
        ));
    }
    check_model("spec.shadow.model", &s.model, model)
}

fn check_model<'a>(
    field: &str,
    name: &str,
    model: &impl Fn(&str) -> Option<&'a ModelSpec>,
) -> Result<(), SpecError> {
    match model(name) {
        None => Err(SpecError {
            field: field.to_owned(),
            message: format!("no Model named {name:?} in this namespace"),
            reason: REASON_MODEL_NOT_FOUND,
        }),
        Some(m) => validate_model(m).map_err(|e| SpecError {
            field: field.to_owned(),
            message: format!("Model {name:?} is invalid: {e}"),
            reason: e.reason,
        }),
    }
}

/// `a=80,b=20`.
pub fn weights_text(spec: &ModelEndpointSpec) -> String {
    spec.variants
        .iter()
        .map(|v| format!("{}={}", v.name, v.weight))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
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
        let models: BTreeMap<&str, ModelSpec> =
            [("m1", model()), ("m2", bad)].into_iter().collect();
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
            err.message.contains("\"Titanic.Example.com\"")
                && err.message.contains("team-a/titanic"),
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
}
