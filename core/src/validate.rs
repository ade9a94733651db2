//! Spec validation, shared by the operator and `mlep` (local mode, render). Real clusters also
//! enforce the OpenAPI constraints of the CRD, but not every API server does (no CEL before
//! 1.25, and some checks need other objects, like "the model exists"), so every check lives here.

use crate::crd::conditions::{REASON_HOST_CONFLICT, REASON_INVALID_SPEC, REASON_MODEL_NOT_FOUND};
use crate::crd::{
    AnalysisSpec, AutoscalingSpec, ModelEndpoint, ModelEndpointSpec, ModelSpec, RolloutStrategy,
    RoutingSpec, ScaleTarget, ShadowSpec, VariantSpec, MAX_SCALE_DOWN_STABILIZATION_SECONDS,
    MAX_SCALE_TO_ZERO_AFTER_SECONDS, MIN_SCALE_TO_ZERO_AFTER_SECONDS,
};
use crate::envoy::capture_service;
use crate::host_claims::{classify, Claimant, HostClaims};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use mlep_contract::artifact::ArtifactLocation;
use mlep_contract::metrics::SHADOW_VARIANT_LABEL;
use mlep_contract::{is_cookie_name, is_dns_label, is_header_name};
use std::collections::{BTreeMap, BTreeSet};

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
    // An endpoint's Service and DestinationRule take its name; `<E>-shadow` are those of
    // endpoint `E`'s shadow, and `<E>-capture` the Deployment and Service of its data capture
    // sink (`capture_service`): an endpoint with such a name would claim them (each reconcile
    // overwriting the other's).
    let reserved = [
        (
            format!("-{SHADOW_VARIANT_LABEL}"),
            "Service and DestinationRule",
            "shadow",
        ),
        (
            capture_service(""),
            "Deployment and Service",
            "data capture sink",
        ),
    ];
    for (suffix, objects, of) in &reserved {
        if let Some(owner) = who.name.strip_suffix(suffix.as_str()) {
            return Err(SpecError::invalid(
                "metadata.name",
                format!(
                    "{:?} ends in {suffix:?}, reserved: it is the name of the {objects} of \
                     endpoint {owner:?}'s {of}",
                    who.name
                ),
            ));
        }
    }
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
            validate_autoscaling(&at, a)?;
        }
        check_model(&format!("{at}.model"), &v.model, model)?;
        cpu_request(&at, v, model)?;
    }
    if sum != 100 {
        return Err(SpecError::invalid(
            "spec.variants",
            format!("weights sum to {sum}, must be 100 ({})", weights_text(spec)),
        ));
    }
    Ok(())
}

/// `spec.variants[i].autoscaling`: bounds, one target, a sane window.
fn validate_autoscaling(at: &str, a: &AutoscalingSpec) -> Result<(), SpecError> {
    let at = format!("{at}.autoscaling");
    if a.min_replicas < 0 {
        return Err(SpecError::invalid(
            format!("{at}.minReplicas"),
            format!("{} must be at least 0", a.min_replicas),
        ));
    }
    if a.min_replicas == 0 && a.target_requests_per_second.is_none() {
        return Err(SpecError::invalid(
            format!("{at}.minReplicas"),
            "0 (scale to zero) needs targetRequestsPerSecond: a CPU target cannot wake a \
             variant with no pod",
        ));
    }
    if a.max_replicas < 1 {
        return Err(SpecError::invalid(
            format!("{at}.maxReplicas"),
            format!("{} must be at least 1", a.max_replicas),
        ));
    }
    let (lo, hi) = (
        MIN_SCALE_TO_ZERO_AFTER_SECONDS,
        MAX_SCALE_TO_ZERO_AFTER_SECONDS,
    );
    if let Some(s) = a
        .scale_to_zero_after_seconds
        .filter(|s| !(lo..=hi).contains(s))
    {
        return Err(SpecError::invalid(
            format!("{at}.scaleToZeroAfterSeconds"),
            format!("{s} must be within {lo}..={hi}"),
        ));
    }
    if a.max_replicas < a.min_replicas {
        return Err(SpecError::invalid(
            format!("{at}.maxReplicas"),
            format!("{} is below minReplicas {}", a.max_replicas, a.min_replicas),
        ));
    }
    if a.target_cpu_utilization_percentage.is_some() && a.target_requests_per_second.is_some() {
        return Err(SpecError::invalid(
            at,
            "set one target: targetCPUUtilizationPercentage or targetRequestsPerSecond",
        ));
    }
    if let Some(p) = a
        .target_cpu_utilization_percentage
        .filter(|p| !(1..=100).contains(p))
    {
        return Err(SpecError::invalid(
            format!("{at}.targetCPUUtilizationPercentage"),
            format!("{p} must be within 1..=100"),
        ));
    }
    if let Some(r) = a
        .target_requests_per_second
        .filter(|r| !(*r > 0.0 && r.is_finite()))
    {
        return Err(SpecError::invalid(
            format!("{at}.targetRequestsPerSecond"),
            format!("{r} must be a positive number of requests per second per replica"),
        ));
    }
    let max = MAX_SCALE_DOWN_STABILIZATION_SECONDS;
    if let Some(s) = a
        .scale_down_stabilization_seconds
        .filter(|s| !(0..=max).contains(s))
    {
        return Err(SpecError::invalid(
            format!("{at}.scaleDownStabilizationSeconds"),
            format!("{s} must be within 0..={max}"),
        ));
    }
    Ok(())
}

/// A CPU target is a share of the model container's CPU request: without one (on the variant,
/// else on its Model) the HorizontalPodAutoscaler cannot compute utilisation and never scales.
/// A CPU limit counts (Kubernetes sets the request to the limit when only the limit is given).
fn cpu_request<'a>(
    at: &str,
    v: &VariantSpec,
    model: &impl Fn(&str) -> Option<&'a ModelSpec>,
) -> Result<(), SpecError> {
    let Some(a) = &v.autoscaling else {
        return Ok(());
    };
    let ScaleTarget::CpuPercent(p) = a.target() else {
        return Ok(());
    };
    let resources = v
        .resources
        .as_ref()
        .or_else(|| model(&v.model).and_then(|m| m.resources.as_ref()));
    let has_cpu = |q: Option<&BTreeMap<String, Quantity>>| q.is_some_and(|q| q.contains_key("cpu"));
    if resources.is_some_and(|r| has_cpu(r.requests.as_ref()) || has_cpu(r.limits.as_ref())) {
        return Ok(());
    }
    Err(SpecError::invalid(
        format!("{at}.resources.requests.cpu"),
        format!(
            "autoscaling on CPU (target {p}%) needs a CPU request on the model container, and \
             neither this variant's resources nor Model {:?}'s set one: without it the \
             HorizontalPodAutoscaler cannot compute utilisation; set resources.requests.cpu, \
             or scale on targetRequestsPerSecond",
            v.model
        ),
    ))
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
    let max = mlep_contract::config::MAX_SHADOW_BODY_BYTES;
    if let Some(b) = s.max_body_bytes.filter(|b| *b > max) {
        return Err(SpecError::invalid(
            "spec.shadow.maxBodyBytes",
            format!("{b} is over the limit of {max}"),
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
mod tests;
