//! Rendering: `(endpoint, models, plan, settings) -> objects`. Pure; no API access. The operator
//! applies what this returns; `mlep render` prints it. Kubernetes kinds are built as
//! k8s-openapi types (a misspelled field does not compile) and serialized; Istio kinds, which
//! have no Rust types here, are JSON specs in a typed envelope ([`istio`]).
//!
//! Objects for an endpoint `E` in namespace `N` (all but the gateway-side filter are owned by
//! the endpoint through an ownerReference, so Kubernetes' garbage collector removes them):
//! - Deployment `E-<variant>-<model>` per variant (two during a model swap), and
//!   `E-shadow-<model>` for the shadow;
//! - Service `E` (all variants, selected by `app: E`) and `E-shadow`;
//! - DestinationRule `E` with one subset per variant (`version` + `mlep.dev/model` labels, so a
//!   subset only ever selects the model that is ready to serve);
//! - VirtualService `E`: routes on `x-mlep-variant` to the subsets of ready variants, then a
//!   weighted default route for requests the filter did not see;
//! - Gateway `E` when `spec.expose`;
//! - the filter is shared by every endpoint (one per proxy): see [`crate::aggregate`];
//! - HorizontalPodAutoscaler `E-<variant>` when `autoscaling` is set.

use crate::crd::{
    Artifact, FilterWiring, Model, ModelEndpoint, ModelEndpointSpec, ModelSpec, API_VERSION,
};
use crate::envoy::{
    self, RouteInput, ShadowTarget, VariantRoutes, WasmCode, DEFAULT_ROUTE, FILTER_NAME,
    STATS_PREFIX, WASM_TYPE_URL,
};
use crate::filter_config::endpoint_config;
use crate::module;
use crate::plan::Plan;
use crate::validate::{validate_endpoint, validate_model, SpecError};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Lifecycle,
    LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, Volume,
    VolumeMount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::Resource as _;
use kube_core::{CustomResourceExt, Resource, ResourceExt};
use mlep_contract::metrics::SHADOW_VARIANT_LABEL as SHADOW;
use mlep_contract::names::{ENV_ARTIFACT_SHA256, ENV_ARTIFACT_URI, ENV_MODEL_DIR, MODEL_DIR};
use mlep_contract::{Allocation, EndpointConfig, FilterConfig, CONFIG_VERSION};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "mlep-operator";
/// Pod labels Istio telemetry and Kiali's versioned graph read: the workload (`app: <endpoint>`)
/// and its version (`version: <variant>`, also what DestinationRule subsets select).
pub const LABEL_APP: &str = "app";
pub const LABEL_VERSION: &str = "version";
/// Label keys of the operator's own.
pub const LABEL_ENDPOINT: &str = "mlep.dev/endpoint";
pub const LABEL_ENDPOINT_NAMESPACE: &str = "mlep.dev/endpoint-namespace";
pub const LABEL_VARIANT: &str = "mlep.dev/variant";
pub const LABEL_MODEL: &str = "mlep.dev/model";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// apiVersion of Istio's networking kinds (DestinationRule, VirtualService, Gateway).
const ISTIO_NETWORKING: &str = "networking.istio.io/v1";
/// Service port every endpoint listens on inside the mesh.
pub const SERVICE_PORT: i32 = 80;
/// Seconds a model pod keeps serving after it is told to stop (preStop sleep).
pub const DRAIN_SECONDS: i64 = 5;
/// Environment variable telling a SageMaker-contract server its port.
pub const PORT_ENV: &str = "SAGEMAKER_BIND_TO_PORT";
/// Type URL of Envoy's RBAC HTTP filter: the pass-through fallback (no rules = allow all).
const RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Stat prefix of the fallback, so a proxy running without the filter shows in its stats.
pub const FALLBACK_STAT_PREFIX: &str = "mlep_filter_fallback_";
/// How long Istio's agent may spend fetching the module, retries included (the whole fetch
/// shares this deadline, pkg/wasm/cache.go): how long a new proxy waits for the fallback.
const MODULE_FETCH_TIMEOUT: &str = "10s";
/// How long a listener waits for the filter's first config before serving without it.
const INITIAL_FETCH_TIMEOUT: &str = "15s";

/// Cluster-wide choices that are not part of any resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Image of the init container that fetches and verifies artifacts (`mlep-model-init`).
    pub model_init_image: String,
    /// Where proxies download the filter module (the operator serves it itself, see
    /// `mlep_operator::server`).
    pub wasm_url: String,
    /// Lowercase hex sha256 of that module; Istio's agent verifies it.
    pub wasm_sha256: String,
    /// Namespace of the ingress gateway pods (`istio-system`).
    pub gateway_namespace: String,
    /// Istio's root namespace (`istio-system`): an EnvoyFilter there applies to every proxy.
    pub mesh_root_namespace: String,
    /// Labels selecting the ingress gateway pods (`istio: ingressgateway`).
    pub gateway_selector: BTreeMap<String, String>,
    /// Cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// How long a removed variant's route, subset and Deployment outlive it, in seconds
    /// (`crate::plan::retiring`): long enough for every proxy to get the filter config that
    /// no longer assigns it.
    pub route_grace_seconds: i64,
}

impl RenderSettings {
    /// These settings with the module of this sha256, served by the operator in
    /// `operator_namespace` (the URL is versioned by the sha256: see [`crate::module`]).
    pub fn with_module(mut self, sha256: &str, operator_namespace: &str) -> Self {
        let base = module::operator_base_url(
            operator_namespace,
            &self.cluster_domain,
            module::OPERATOR_HTTP_PORT,
        );
        self.wasm_url = module::module_url(&base, sha256);
        self.wasm_sha256 = sha256.to_owned();
        self
    }
}

impl Default for RenderSettings {
    /// The operator's defaults, with a placeholder module checksum (all zeros): callers that
    /// print or apply objects set the real one with [`RenderSettings::with_module`].
    fn default() -> Self {
        let zeros = "0".repeat(64);
        let base = module::operator_base_url(
            module::OPERATOR_NAMESPACE,
            "cluster.local",
            module::OPERATOR_HTTP_PORT,
        );
        Self {
            model_init_image: "ghcr.io/k8smlendpoints/mlep-model-init:0.1.0".into(),
            wasm_url: module::module_url(&base, &zeros),
            wasm_sha256: zeros,
            gateway_namespace: "istio-system".into(),
            mesh_root_namespace: "istio-system".into(),
            gateway_selector: [("istio".to_owned(), "ingressgateway".to_owned())]
                .into_iter()
                .collect(),
            cluster_domain: "cluster.local".into(),
            route_grace_seconds: 30,
        }
    }
}

/// What rendering one endpoint produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Objects to apply, each a complete apply configuration (apiVersion, kind, metadata, ...).
    pub objects: Vec<Value>,
    /// The bucket allocation carried in the filter config (persist it in status).
    pub allocation: Allocation,
    /// This endpoint's entry in the shared filter config (see [`crate::aggregate`]).
    pub filter: EndpointConfig,
}

/// Every object the operator would create for these resources, assuming every variant is
/// ready and no previous allocation exists. No cluster needed: `mlep render` calls this.
/// Models and endpoints are matched by namespace (a missing namespace means `default`).
pub fn render_all(
    models: &[Model],
    endpoints: &[ModelEndpoint],
    settings: &RenderSettings,
) -> Result<Vec<Value>, SpecError> {
    let ns_of = |m: Option<&String>| m.cloned().unwrap_or_else(|| "default".to_owned());
    let mut out = Vec::new();
    let mut filters = Vec::new();
    for ep in endpoints {
        let ns = ns_of(ep.metadata.namespace.as_ref());
        let in_ns: BTreeMap<String, ModelSpec> = models
            .iter()
            .filter(|m| ns_of(m.metadata.namespace.as_ref()) == ns)
            .map(|m| (m.name_any(), m.spec.clone()))
            .collect();
        validate_endpoint(&ep.spec, |n| in_ns.get(n)).map_err(|e| SpecError {
            message: format!("ModelEndpoint {ns}/{}: {}", ep.name_any(), e.message),
            ..e
        })?;
        let plan = Plan::assume_ready(&ep.spec);
        let rendered = render_endpoint(ep, &ns, &in_ns, &plan, None, settings)?;
        out.extend(rendered.objects);
        filters.push((ep.spec.filter_wiring, rendered.filter));
    }
    let aggregate = crate::aggregate::filters_for(filters, settings);
    if let Some((id, why)) = aggregate.excluded.first() {
        return Err(SpecError::invalid(
            "spec.hosts",
            format!("ModelEndpoint {id}: {why}"),
        ));
    }
    out.extend(aggregate.objects);
    Ok(out)
}

/// The CRDs of `mlep.dev`, as installed by `manifests/crds/`.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Model::crd(), ModelEndpoint::crd()]
        .into_iter()
        .map(without_null_enum_values)
        .collect()
}

/// schemars lists `null` among the `enum` values of an optional enum. `nullable: true` already
/// says that; the extra `null` makes Kubernetes 1.20's API server reject the whole CRD ("per-version
/// schemas may not all be set to identical values"), so drop it.
fn without_null_enum_values(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(e)) = m.get_mut("enum") {
                    e.retain(|x| !x.is_null());
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut v) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

/// Render one endpoint. `models` are the Models of its namespace by name; the spec must have
/// passed `validate_endpoint` against them.
pub fn render_endpoint(
    ep: &ModelEndpoint,
    namespace: &str,
    models: &BTreeMap<String, ModelSpec>,
    plan: &Plan,
    previous: Option<&Allocation>,
    settings: &RenderSettings,
) -> Result<Rendered, SpecError> {
    let name = ep.name_any();
    let spec = &ep.spec;
    let owner = owner_reference(ep);
    let ctx = Ctx {
        name: &name,
        namespace,
        owner: owner.as_ref(),
        settings,
    };
    let model = |n: &str, field: String| -> Result<&ModelSpec, SpecError> {
        let m = models
            .get(n)
            .ok_or_else(|| SpecError::invalid(field.clone(), format!("no Model named {n:?}")))?;
        validate_model(m).map_err(|e| SpecError::invalid(field, e.to_string()))?;
        Ok(m)
    };

    let mut objects = Vec::new();
    for (i, (vp, vs)) in plan.variants.iter().zip(&spec.variants).enumerate() {
        let models: Vec<&str> = match plan.rollout.as_ref().filter(|r| r.variant == vs.name) {
            Some(crate::rollout::RolloutPlan {
                models: Some(m), ..
            }) => m.iter().map(String::as_str).collect(),
            _ => vp.models(),
        };
        for model_name in models {
            let m = model(model_name, format!("spec.variants[{i}].model"))?;
            let replicas = if vs.autoscaling.is_some() {
                None
            } else {
                Some(vs.replicas.unwrap_or(1))
            };
            let resources = vs.resources.as_ref().or(m.resources.as_ref());
            objects.push(object(&deployment(
                &ctx, &vs.name, &name, model_name, m, replicas, resources,
            ))?);
        }
        if let Some(a) = &vs.autoscaling {
            objects.push(object(&autoscaler(
                &ctx,
                &vs.name,
                &deployment_name(&name, &vs.name, &vp.desired_model),
                a,
            ))?);
        }
    }
    objects.push(object(&service(&ctx, &name, &name))?);
    let shadow_target = match &spec.shadow {
        Some(s) => {
            let m = model(&s.model, "spec.shadow.model".into())?;
            let app = envoy::shadow_service(&name);
            objects.push(object(&deployment(
                &ctx,
                SHADOW,
                &app,
                &s.model,
                m,
                Some(s.replicas.unwrap_or(1)),
                m.resources.as_ref(),
            ))?);
            objects.push(object(&service(&ctx, &app, &app))?);
            Some(ShadowTarget::istio(
                &name,
                namespace,
                &settings.cluster_domain,
                SERVICE_PORT,
            ))
        }
        None => None,
    };
    objects.push(destination_rule(&ctx, plan));
    objects.push(virtual_service(&ctx, spec, plan));
    if spec.expose == Some(true) {
        objects.push(gateway(&ctx, spec));
    }

    let endpoint = endpoint_config(
        &name,
        namespace,
        spec,
        &plan.weights(),
        previous,
        shadow_target,
    )?;
    let endpoint = with_rollout(&ctx, endpoint, plan);
    let allocation = endpoint.allocation.clone();
    let filter = checked_filter(endpoint)?;
    Ok(Rendered {
        objects,
        allocation,
        filter,
    })
}

/// This endpoint's filter entry, checked as the filter will check it.
fn checked_filter(endpoint: EndpointConfig) -> Result<EndpointConfig, SpecError> {
    let config = FilterConfig {
        version: CONFIG_VERSION,
        endpoints: vec![endpoint],
    };
    config.validate().map_err(|e| {
        SpecError::invalid("spec", format!("the filter would reject its config: {e}"))
    })?;
    config
        .endpoints
        .into_iter()
        .next()
        .ok_or_else(|| SpecError::invalid("spec", "no filter config rendered"))
}

struct Ctx<'a> {
    name: &'a str,
    namespace: &'a str,
    owner: Option<&'a OwnerReference>,
    settings: &'a RenderSettings,
}

impl Ctx<'_> {
    fn fqdn(&self, service: &str) -> String {
        format!(
            "{service}.{}.svc.{}",
            self.namespace, self.settings.cluster_domain
        )
    }

    /// Metadata of an object owned by the endpoint, in its namespace.
    fn meta<'l>(
        &self,
        name: &str,
        extra_labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    ) -> ObjectMeta {
        let mut l = labels([
            (LABEL_ENDPOINT, self.name),
            (LABEL_MANAGED_BY, FIELD_MANAGER),
        ]);
        l.extend(labels(extra_labels));
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.into()),
            labels: Some(l),
            owner_references: self.owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        }
    }
}

fn labels<'l>(pairs: impl IntoIterator<Item = (&'l str, &'l str)>) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A Kubernetes object as the JSON the operator applies (a typed object serialized).
fn object(o: &impl serde::Serialize) -> Result<Value, SpecError> {
    serde_json::to_value(o)
        .map_err(|e| SpecError::invalid("spec", format!("an object does not serialize: {e}")))
}

/// An Istio object: no k8s-openapi type exists, so the spec is JSON checked against Istio's
/// CRD schemas by the operator's tests; the envelope and metadata are typed.
fn istio(api_version: &str, kind: &str, metadata: ObjectMeta, spec: Value) -> Value {
    json!({ "apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec })
}

fn owner_reference(ep: &ModelEndpoint) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: API_VERSION.into(),
        kind: ModelEndpoint::kind(&()).into(),
        name: ep.name_any(),
        uid: ep.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// `E-<variant>-<model>`: a model swap creates a new Deployment beside the old one.
pub fn deployment_name(endpoint: &str, variant: &str, model: &str) -> String {
    format!("{endpoint}-{variant}-{model}")
}

fn deployment(
    ctx: &Ctx,
    variant: &str,
    app: &str,
    model_name: &str,
    model: &ModelSpec,
    replicas: Option<i32>,
    resources: Option<&ResourceRequirements>,
) -> Deployment {
    let name = if variant == SHADOW {
        format!("{}-{SHADOW}-{model_name}", ctx.name)
    } else {
        deployment_name(ctx.name, variant, model_name)
    };
    let selector = labels([
        (LABEL_ENDPOINT, ctx.name),
        (LABEL_VARIANT, variant),
        (LABEL_MODEL, model_name),
    ]);
    let mut pod_labels = labels([(LABEL_APP, app), (LABEL_VERSION, variant)]);
    pod_labels.extend(selector.clone());
    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let mut init = Vec::new();
    let mut volumes = vec![empty_dir("tmp")];
    let mut mounts = vec![mount("tmp", "/tmp", None)];
    if let Some(a) = &model.artifact {
        volumes.push(empty_dir("model"));
        mounts.push(mount("model", MODEL_DIR, Some(true)));
        init.push(model_init_container(ctx, a));
    }
    let container = model_container(model, mounts, resources);
    // Istio exports only allow-listed proxy stats; the filter's metrics are `wasmcustom.mlep*`.
    // `proxy.istio.io/config` proxyStatsMatcher adds them to this pod's sidecar (the gateway
    // side needs the same in its mesh/pod config: see docs/operator.md).
    let proxy_config =
        format!(r#"{{"proxyStatsMatcher":{{"inclusionPrefixes":["{STATS_PREFIX}"]}}}}"#);
    Deployment {
        metadata: ctx.meta(&name, [(LABEL_VARIANT, variant), (LABEL_MODEL, model_name)]),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(labels([("proxy.istio.io/config", proxy_config.as_str())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    security_context: Some(
                        model
                            .pod_security_context
                            .clone()
                            .unwrap_or_else(pod_security),
                    ),
                    automount_service_account_token: Some(false),
                    init_containers: (!init.is_empty()).then_some(init),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn mount(name: &str, path: &str, read_only: Option<bool>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
        ..VolumeMount::default()
    }
}

/// The init container fetching and verifying the artifact into the model volume
/// (`mlep-model-init`, configured through the contract's environment names).
fn model_init_container(ctx: &Ctx, a: &Artifact) -> Container {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    Container {
        name: "model-init".into(),
        image: Some(ctx.settings.model_init_image.clone()),
        env: Some(vec![
            env(ENV_ARTIFACT_URI, &a.uri),
            env(ENV_ARTIFACT_SHA256, &a.sha256),
            env(ENV_MODEL_DIR, MODEL_DIR),
        ]),
        volume_mounts: Some(vec![
            mount("model", MODEL_DIR, None),
            mount("tmp", "/tmp", None),
        ]),
        security_context: Some(container_security()),
        ..Container::default()
    }
}

/// The model container: the SageMaker contract (`serve`, `GET /ping` on the named port `http`).
fn model_container(
    model: &ModelSpec,
    mounts: Vec<VolumeMount>,
    resources: Option<&ResourceRequirements>,
) -> Container {
    let probe = |initial: i32, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ping".into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: "model".into(),
        image: Some(model.image.clone()),
        args: Some(vec!["serve".into()]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(model.port()),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(model_env(model)),
        readiness_probe: Some(probe(1, 5, 3)),
        liveness_probe: Some(probe(10, 10, 6)),
        volume_mounts: Some(mounts),
        // Keep serving while proxies learn that the pod is going (endpoint removal reaches every
        // Envoy through istiod a moment after the pod is deleted): without it a model swap
        // dropped 1 of 1960 requests on the bed with "503 upstream connect error".
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: DRAIN_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(
            model
                .security_context
                .clone()
                .unwrap_or_else(container_security),
        ),
        resources: resources.cloned(),
        ..Container::default()
    }
}

/// The model container's environment: the Model's, plus the port the SageMaker contract tells
/// the server in `SAGEMAKER_BIND_TO_PORT` (without it a Model on another port listens on 8080
/// and fails its probes). The Model's own value wins.
fn model_env(model: &ModelSpec) -> Vec<EnvVar> {
    let mut env = model.env.clone();
    if !env.iter().any(|e| e.name == PORT_ENV) {
        env.insert(
            0,
            EnvVar {
                name: PORT_ENV.into(),
                value: Some(model.port().to_string()),
                ..EnvVar::default()
            },
        );
    }
    env
}

/// Default pod security of model pods (a Model overrides it with `spec.podSecurityContext`).
fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn service(ctx: &Ctx, name: &str, app: &str) -> Service {
    Service {
        metadata: ctx.meta(name, []),
        spec: Some(ServiceSpec {
            selector: Some(labels([(LABEL_APP, app)])),
            // `protocol` explicit: server-side apply needs it (it is part of the list key).
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A rollout's split and BlueGreen mirror on the endpoint's filter config (see
/// [`apply_rollout`]).
fn with_rollout(ctx: &Ctx, endpoint: EndpointConfig, plan: &Plan) -> EndpointConfig {
    let Some(r) = &plan.rollout else {
        return endpoint;
    };
    let serving = plan
        .variants
        .iter()
        .find(|p| p.name == r.variant)
        .map(|p| p.serving_model.as_str());
    apply_rollout(endpoint, r, serving, &ctx.fqdn(ctx.name))
}

/// Put a rollout on an endpoint's filter entry: the variant's own entry is labelled with the
/// model it serves (`serving`: the old one until the rollout promotes), the split with the new
/// one; a BlueGreen mirror goes to the new model's subset cluster (`outbound|80|<subset>|<fqdn>`,
/// Istio's name for a DestinationRule subset's cluster). One function for the per-endpoint
/// render and the shared filter rebuilt from status ([`crate::aggregate::served_config`]).
pub fn apply_rollout(
    mut endpoint: EndpointConfig,
    r: &crate::rollout::RolloutPlan,
    serving: Option<&str>,
    fqdn: &str,
) -> EndpointConfig {
    if let Some(v) = endpoint.variants.iter_mut().find(|v| v.name == r.variant) {
        if let Some(model) = serving {
            v.model = model.to_owned();
        }
        v.rollout = r.split.clone();
    }
    if let Some(m) = &r.mirror {
        let subset = crate::rollout::subset_name(&m.variant, &m.model);
        endpoint.shadow = Some(m.shadow_config(
            format!("outbound|{SERVICE_PORT}|{subset}|{fqdn}"),
            fqdn.to_owned(),
        ));
    }
    endpoint
}

fn destination_rule(ctx: &Ctx, plan: &Plan) -> Value {
    let mut subsets: Vec<Value> = plan
        .variants
        .iter()
        .map(|v| (&v.name, &v.serving_model))
        .chain(plan.retiring.iter().map(|r| (&r.name, &r.model)))
        .map(|(v, m)| json!({ "name": v, "labels": { LABEL_VERSION: v, LABEL_MODEL: m } }))
        .collect();
    // A rollout's new model gets its own subset while a route, split or mirror may name it
    // (it is rendered, and applied, before the VirtualService and the filter config).
    if let Some((variant, model)) = rollout_route(plan) {
        subsets.push(json!({
            "name": crate::rollout::subset_name(variant, model),
            "labels": { LABEL_VERSION: variant, LABEL_MODEL: model },
        }));
    }
    istio(
        ISTIO_NETWORKING,
        "DestinationRule",
        ctx.meta(ctx.name, []),
        json!({ "host": ctx.fqdn(ctx.name), "subsets": subsets }),
    )
}

fn virtual_service(ctx: &Ctx, spec: &ModelEndpointSpec, plan: &Plan) -> Value {
    let host = ctx.fqdn(ctx.name);
    let dest = |subset: &str| json!({ "host": host, "subset": subset, "port": { "number": SERVICE_PORT } });
    let routes = variant_routes(plan);
    let mut http: Vec<Value> = routes
        .header_routes()
        .map(|(name, v)| {
            json!({
                "name": name,
                "match": [{ "headers": { mlep_contract::metrics::VARIANT_HEADER: { "exact": v } } }],
                "route": [{ "destination": dest(v) }],
            })
        })
        .collect();
    // Users a rollout moved: the filter names their model; this route comes before their
    // variant's own, which still catches everyone else (and any request marked for a model
    // whose route is gone).
    if let Some((variant, model)) = rollout_route(plan) {
        let at = http
            .iter()
            .position(|r| r["name"] == format!("variant-{variant}"))
            .unwrap_or(0);
        let subset = crate::rollout::subset_name(variant, model);
        http.insert(
            at,
            json!({
                "name": format!("rollout-{subset}"),
                "match": [{ "headers": {
                    mlep_contract::metrics::VARIANT_HEADER: { "exact": variant },
                    mlep_contract::metrics::MODEL_HEADER: { "exact": model },
                } }],
                "route": [{ "destination": dest(&subset) }],
            }),
        );
    }
    // Fallback for requests the filter did not see: the routed weights, ready variants only.
    let default: Vec<Value> = match routes.weighted.as_slice() {
        [(one, _)] => vec![json!({ "destination": dest(one) })],
        many => many
            .iter()
            .map(|(v, w)| json!({ "destination": dest(v), "weight": w }))
            .collect(),
    };
    let mut fallback = json!({ "name": DEFAULT_ROUTE, "route": default });
    if spec.shadow.is_some() {
        // The filter mirrors to the shadow's Envoy cluster itself; a 0% mirror here makes the
        // shadow a destination of this VirtualService, so proxies that only build clusters
        // their routes reference (gateways with cluster filtering) have it. Istio counts mirror
        // hosts as destinations (pilot/pkg/model/push_context.go) and renders no mirror policy
        // for 0% (pilot/pkg/networking/core/route/route.go `MirrorPercent`).
        fallback["mirrors"] = json!([{
            "destination": { "host": ctx.fqdn(&envoy::shadow_service(ctx.name)), "port": { "number": SERVICE_PORT } },
            "percentage": { "value": 0.0 },
        }]);
    }
    http.push(fallback);
    let mut hosts = spec.hosts.clone();
    hosts.push(host.clone());
    let mut gateways = vec!["mesh".to_owned()];
    if let Some(g) = &spec.gateway {
        gateways.push(g.clone());
    }
    if spec.expose == Some(true) {
        gateways.push(format!("{}/{}", ctx.namespace, ctx.name));
    }
    istio(
        ISTIO_NETWORKING,
        "VirtualService",
        ctx.meta(ctx.name, []),
        json!({ "hosts": hosts, "gateways": gateways, "http": http }),
    )
}

/// The per-variant routes of a plan (see [`VariantRoutes`]): by header to ready variants, by
/// weight to those with a routed weight.
/// A retiring variant keeps its header route (no weight): the filter no longer names it, but a
/// proxy on the previous filter config still may (`crate::plan::retiring`).
pub fn variant_routes(plan: &Plan) -> VariantRoutes {
    let live = plan.variants.iter().map(|v| RouteInput {
        name: &v.name,
        weight: v.weight,
        ready: v.ready,
    });
    let retiring = plan.retiring.iter().map(|r| RouteInput {
        name: &r.name,
        weight: 0,
        ready: true,
    });
    VariantRoutes::new(live.chain(retiring))
}

/// `(variant, model)` of a rollout's own route and subset, if it needs one now.
fn rollout_route(plan: &Plan) -> Option<(&str, &str)> {
    let r = plan.rollout.as_ref()?;
    Some((r.variant.as_str(), r.route_model.as_deref()?))
}

fn gateway(ctx: &Ctx, spec: &ModelEndpointSpec) -> Value {
    istio(
        ISTIO_NETWORKING,
        "Gateway",
        ctx.meta(ctx.name, []),
        json!({
            "selector": ctx.settings.gateway_selector,
            "servers": [{
                "port": { "number": 80, "name": "http", "protocol": "HTTP" },
                "hosts": spec.hosts,
            }],
        }),
    )
}

fn autoscaler(
    ctx: &Ctx,
    variant: &str,
    deployment: &str,
    a: &crate::crd::AutoscalingSpec,
) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: ctx.meta(
            &format!("{}-{variant}", ctx.name),
            [(LABEL_VARIANT, variant)],
        ),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(Deployment::API_VERSION.into()),
                kind: Deployment::KIND.into(),
                name: deployment.into(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(
                            a.target_cpu_utilization_percentage.unwrap_or(80),
                        ),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    }
}

/// A filter object of this wiring for the sidecars (`selector` None: every sidecar, outbound)
/// or for the gateway pods `selector` selects (see [`crate::aggregate`]).
pub(crate) fn filter_object(
    wiring: FilterWiring,
    metadata: ObjectMeta,
    selector: Option<&BTreeMap<String, String>>,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    let ext = metadata
        .name
        .clone()
        .unwrap_or_else(|| FILTER_NAME.to_owned());
    let context = if selector.is_some() {
        "GATEWAY"
    } else {
        "SIDECAR_OUTBOUND"
    };
    match wiring {
        FilterWiring::EnvoyFilter => {
            envoy_filter(metadata, selector, context, &ext, config, settings)
        }
        FilterWiring::WasmPlugin => wasm_plugin(metadata, selector, "CLIENT", config, settings),
    }
}

/// `outbound|<port>||<host>`: the Envoy cluster Istio builds for an in-cluster URL's Service.
fn outbound_cluster_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.to_owned()),
        _ if url.starts_with("https://") => (authority, "443".to_owned()),
        _ => (authority, "80".to_owned()),
    };
    format!("outbound|{port}||{host}")
}

/// The metadata of a shared filter object (not owned by any endpoint).
pub(crate) fn shared_meta(name: &str, namespace: &str, proxies: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels([
            (crate::aggregate::LABEL_FILTER, proxies),
            (LABEL_MANAGED_BY, FIELD_MANAGER),
        ])),
        ..ObjectMeta::default()
    }
}

/// An EnvoyFilter delivering the filter through ECDS, the form Istio's agent downloads.
///
/// Istio facts this relies on (checked in istio/istio):
/// - `pkg/wasm/convert.go` (`MaybeConvertWasmExtensionConfig`): istio-agent's xDS proxy
///   inspects every ECDS resource (`TypedExtensionConfig`); when its typed config is an Envoy
///   `envoy.extensions.filters.http.wasm.v3.Wasm` (directly or in a TypedStruct) whose
///   `vm_config.code.remote.http_uri` is set, the agent downloads the module itself (verifying
///   `sha256`, within the `http_uri` timeout), caches it and rewrites the config to a local file
///   before Envoy sees it; a failed fetch or checksum becomes an allow-all RBAC filter when
///   `fail_open`, a deny-all one otherwise. So the module must reach Envoy as
///   an ECDS resource: an `EXTENSION_CONFIG` patch carries it and the `HTTP_FILTER` patch
///   refers to it with `config_discovery` from `ads` — the two-EnvoyFilter form of Istio's
///   "Distributing WebAssembly Modules" guide (istio.io/v1.10/docs/ops/configuration/
///   extensibility/wasm-module-distribution/). An inline `remote` in a plain HTTP_FILTER patch
///   would make Envoy fetch it itself, which needs a cluster for the operator in Envoy's config.
/// - `pkg/wasm/ssrf.go`: the agent refuses link-local and cloud-metadata addresses but allows
///   private and loopback ranges, so an in-cluster URL (the operator's Service) is fine.
fn envoy_filter(
    metadata: ObjectMeta,
    selector: Option<&BTreeMap<String, String>>,
    context: &str,
    ext_name: &str,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    // Keep traffic flowing if the module cannot be loaded; the filter itself fails open on bad
    // configs too (it counts mlep_config_errors_total).
    // `fail_open`: Istio's agent reads it (pkg/wasm/convert.go `httpWasmFailOpen`): when the
    // module cannot be fetched or fails its sha256, it hands Envoy an allow-all RBAC filter
    // under this name instead of a deny-all one. `cluster`: Envoy requires one; the agent
    // rewrites the source to a local file first, and should a proxy ever fetch by itself this
    // is the cluster Istio builds for the URL's Service.
    let cluster = outbound_cluster_of(&settings.wasm_url);
    let code = WasmCode::Remote {
        uri: &settings.wasm_url,
        cluster: &cluster,
        sha256: &settings.wasm_sha256,
    };
    let mut wasm = envoy::wasm_filter(ext_name, code, &config.to_string(), true);
    wasm["config"]["vm_config"]["code"]["remote"]["http_uri"]["timeout"] =
        json!(MODULE_FETCH_TIMEOUT);
    let mut spec = json!({
        "configPatches": [
            {
                "applyTo": "EXTENSION_CONFIG",
                "patch": { "operation": "ADD", "value": { "name": ext_name, "typed_config": wasm } },
            },
            {
                "applyTo": "HTTP_FILTER",
                "match": {
                    "context": context,
                    "listener": { "filterChain": { "filter": {
                        "name": envoy::HTTP_CONNECTION_MANAGER,
                        "subFilter": { "name": envoy::ROUTER },
                    } } },
                },
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": {
                        "name": ext_name,
                        "config_discovery": {
                            // Bounded: a listener waits at most this long for the first
                            // config, then serves with `default_config`.
                            "config_source": { "ads": {}, "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT },
                            // The agent's fallback is an RBAC filter: Envoy must accept that
                            // type here, or it rejects the fallback and the filter has no
                            // config: every request on the listener gets a 500 (measured on
                            // the bed, docs/operator.md).
                            "type_urls": [WASM_TYPE_URL, RBAC_TYPE_URL],
                            // Until (or unless) a config arrives: pass everything, unassigned
                            // (the VirtualService's weighted default route still splits).
                            "default_config": {
                                "@type": RBAC_TYPE_URL,
                                "rules_stat_prefix": FALLBACK_STAT_PREFIX,
                            },
                        },
                    },
                },
            },
        ],
    });
    if let Some(labels) = selector {
        spec["workloadSelector"] = json!({ "labels": labels });
    }
    istio(
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        metadata,
        spec,
    )
}

/// A WasmPlugin: istiod turns it into the same ECDS resource with a remote `http_uri`, which
/// istio-agent downloads and verifies against `sha256` (see `envoy_filter`).
fn wasm_plugin(
    metadata: ObjectMeta,
    selector: Option<&BTreeMap<String, String>>,
    mode: &str,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    let mut spec = json!({
        "url": settings.wasm_url,
        "sha256": settings.wasm_sha256,
        "pluginName": FILTER_NAME,
        "phase": "STATS",
        "failStrategy": "FAIL_OPEN",
        "pluginConfig": config,
        "match": [{ "mode": mode }],
    });
    if let Some(labels) = selector {
        spec["selector"] = json!({ "matchLabels": labels });
    }
    istio("extensions.istio.io/v1alpha1", "WasmPlugin", metadata, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Artifact, AutoscalingSpec, ModelEndpointSpec, ShadowSpec, VariantSpec};
    use crate::plan::VariantPlan;

    fn model(name: &str) -> Model {
        let mut m = Model::new(
            name,
            ModelSpec {
                image: "ghcr.io/k8smlendpoints/mlep-model-server:0.1.0".into(),
                artifact: Some(Artifact {
                    uri: format!("https://example.com/{name}.tar.gz"),
                    sha256: "a".repeat(64),
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

    fn models() -> BTreeMap<String, ModelSpec> {
        ["m1", "m2", "m3"]
            .iter()
            .map(|n| ((*n).to_owned(), model(n).spec))
            .collect()
    }

    fn render(ep: &ModelEndpoint, plan: &Plan) -> Vec<Value> {
        render_endpoint(ep, "ml", &models(), plan, None, &RenderSettings::default())
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
            settings,
        )
        .unwrap();
        let mut objs = r.objects;
        objs.extend(
            crate::aggregate::filters_for(vec![(ep.spec.filter_wiring, r.filter)], settings)
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
    fn the_model_server_is_told_its_port_and_a_model_can_override_the_security_defaults() {
        let ep = endpoint();
        let objs = render(&ep, &Plan::assume_ready(&ep.spec));
        let c =
            &find(&objs, "Deployment", "titanic-a-m1")["spec"]["template"]["spec"]["containers"][0];
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
            run_as_user: Some(0),
            ..Default::default()
        });
        let objs = render_endpoint(
            &ep,
            "ml",
            &m,
            &Plan::assume_ready(&ep.spec),
            None,
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
        assert_eq!(
            c["securityContext"],
            json!({"readOnlyRootFilesystem": false})
        );
        assert_eq!(pod["securityContext"], json!({"runAsUser": 0}));
        // The init container (ours) stays locked down.
        assert_eq!(
            pod["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"],
            true
        );
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
        assert_eq!(
            http[1]["match"][0]["headers"]["x-mlep-variant"]["exact"],
            "b"
        );
        assert_eq!(http[1]["route"][0]["destination"]["subset"], "b");
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
            &RenderSettings::default(),
        )
        .unwrap();
        let http = find(&r.objects, "VirtualService", "titanic")["spec"]["http"].clone();
        assert_eq!(
            http[1]["match"][0]["headers"]["x-mlep-variant"]["exact"],
            "b"
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
            serde_json::from_str(cfg["config"]["configuration"]["value"].as_str().unwrap())
                .unwrap();
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
            "outbound|8080||mlep-operator.mlep-system.svc.cluster.local"
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
        let vs = find(&objs, "VirtualService", "titanic");
        assert_eq!(vs["spec"]["gateways"], json!(["mesh", "ml/titanic"]));
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
    fn autoscaling_renders_an_hpa_and_leaves_replicas_to_it() {
        let mut ep = endpoint();
        ep.spec.variants[0].autoscaling = Some(AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 5,
            target_cpu_utilization_percentage: Some(60),
        });
        let objs = render(&ep, &Plan::assume_ready(&ep.spec));
        let hpa = find(&objs, "HorizontalPodAutoscaler", "titanic-a");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "titanic-a-m1");
        assert_eq!(
            (&hpa["spec"]["minReplicas"], &hpa["spec"]["maxReplicas"]),
            (&json!(2), &json!(5))
        );
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            60
        );
        assert!(find(&objs, "Deployment", "titanic-a-m1")["spec"]
            .get("replicas")
            .is_none());
        assert_eq!(
            find(&objs, "Deployment", "titanic-b-m2")["spec"]["replicas"],
            2
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
            ["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["configuration"]
            ["value"];
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
        // The operator's Service port (manifests/operator.yaml) and a versioned path.
        let url = format!(
            "http://mlep-operator.mlep-system.svc.cluster.local:8080/mlep_filter/{sha}.wasm"
        );
        assert!(text.contains(&url), "{url} not in {text}");
        assert!(text.contains(&format!("\"sha256\":\"{sha}\"")));
        assert!(!text.contains(&"0".repeat(64)));
        let manifest = include_str!("../../manifests/operator.yaml");
        assert!(
            manifest.contains(&format!("port: {}", module::OPERATOR_HTTP_PORT)),
            "manifests/operator.yaml serves on another port"
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
}
