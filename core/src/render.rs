//! Rendering: `(endpoint, models, plan, settings) -> objects`. Pure; no API access. The operator
//! applies what this returns; `mlep render` prints it.
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
//! - the filter: EnvoyFilter `E-mlep` (or WasmPlugin `E-mlep`) for the namespace's sidecars and,
//!   when exposed, `mlep-N-E` in the ingress gateway's namespace (cleaned up by the finalizer:
//!   ownerReferences cannot cross namespaces);
//! - HorizontalPodAutoscaler `E-<variant>` when `autoscaling` is set.

use crate::crd::{FilterWiring, Model, ModelEndpoint, ModelEndpointSpec, ModelSpec};
use crate::filter_config::{endpoint_config, ShadowTarget};
use crate::plan::Plan;
use crate::validate::{validate_endpoint, validate_model, SpecError};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::{CustomResourceExt, ResourceExt};
use mlep_contract::{Allocation, FilterConfig, CONFIG_VERSION};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "mlep-operator";
/// Label keys.
pub const LABEL_ENDPOINT: &str = "mlep.dev/endpoint";
pub const LABEL_ENDPOINT_NAMESPACE: &str = "mlep.dev/endpoint-namespace";
pub const LABEL_VARIANT: &str = "mlep.dev/variant";
pub const LABEL_MODEL: &str = "mlep.dev/model";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Where the model files live in the model container (SageMaker contract).
pub const MODEL_DIR: &str = "/opt/ml/model";
/// Service port every endpoint listens on inside the mesh.
pub const SERVICE_PORT: i32 = 80;
/// Envoy stat prefix of the filter's metrics (`wasmcustom.` + the filter's `mlep_*` names).
pub const STATS_PREFIX: &str = "wasmcustom.mlep";
/// The shadow's variant label value; reserved, no variant may use it.
pub const SHADOW: &str = mlep_contract::metrics::SHADOW_VARIANT_LABEL;
/// Type URL of Envoy's Wasm HTTP filter config.
const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Cluster-wide choices that are not part of any resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Image of the init container that fetches and verifies artifacts (`mlep-model-init`).
    pub model_init_image: String,
    /// Where proxies download the filter module (served by the operator, see `wasm_server`).
    pub wasm_url: String,
    /// Lowercase hex sha256 of that module; Istio's agent verifies it.
    pub wasm_sha256: String,
    /// Namespace of the ingress gateway pods (`istio-system`).
    pub gateway_namespace: String,
    /// Labels selecting the ingress gateway pods (`istio: ingressgateway`).
    pub gateway_selector: BTreeMap<String, String>,
    /// Cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
}

impl Default for RenderSettings {
    fn default() -> Self {
        Self {
            model_init_image: "ghcr.io/k8smlendpoints/mlep-model-init:0.1.0".into(),
            wasm_url: "http://mlep-operator.mlep-system.svc.cluster.local:8081/mlep_filter.wasm"
                .into(),
            wasm_sha256: "0".repeat(64),
            gateway_namespace: "istio-system".into(),
            gateway_selector: [("istio".to_owned(), "ingressgateway".to_owned())]
                .into_iter()
                .collect(),
            cluster_domain: "cluster.local".into(),
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
        out.extend(render_endpoint(ep, &ns, &in_ns, &plan, None, settings)?.objects);
    }
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
            objects.push(deployment(
                &ctx, &vs.name, &name, model_name, m, replicas, resources,
            ));
        }
        if let Some(a) = &vs.autoscaling {
            objects.push(autoscaler(
                &ctx,
                &vs.name,
                &deployment_name(&name, &vs.name, &vp.desired_model),
                a,
            ));
        }
    }
    objects.push(service(&ctx, &name, &name));
    let shadow_target = match &spec.shadow {
        Some(s) => {
            let m = model(&s.model, "spec.shadow.model".into())?;
            let app = format!("{name}-{SHADOW}");
            objects.push(deployment(
                &ctx,
                SHADOW,
                &app,
                &s.model,
                m,
                Some(s.replicas.unwrap_or(1)),
                m.resources.as_ref(),
            ));
            objects.push(service(&ctx, &app, &app));
            let fqdn = ctx.fqdn(&app);
            Some(ShadowTarget {
                cluster: format!("outbound|{SERVICE_PORT}||{fqdn}"),
                authority: fqdn,
            })
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
    let config = FilterConfig {
        version: CONFIG_VERSION,
        endpoints: vec![endpoint],
    };
    config.validate().map_err(|e| {
        SpecError::invalid("spec", format!("the filter would reject its config: {e}"))
    })?;
    let config_json = serde_json::to_value(&config).map_err(|e| {
        SpecError::invalid("spec", format!("filter config does not serialize: {e}"))
    })?;
    objects.extend(filter_objects(&ctx, spec, &config_json));
    Ok(Rendered {
        objects,
        allocation,
    })
}

struct Ctx<'a> {
    name: &'a str,
    namespace: &'a str,
    owner: Option<&'a Value>,
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
    fn meta(&self, name: &str, extra_labels: Value) -> Value {
        let mut labels = json!({ LABEL_ENDPOINT: self.name, LABEL_MANAGED_BY: FIELD_MANAGER });
        merge(&mut labels, extra_labels);
        let mut m = json!({ "name": name, "namespace": self.namespace, "labels": labels });
        if let Some(o) = self.owner {
            m["ownerReferences"] = json!([o]);
        }
        m
    }

    /// Metadata of an object outside the endpoint's namespace (found again by its labels).
    fn foreign_meta(&self, name: &str, namespace: &str) -> Value {
        json!({
            "name": name,
            "namespace": namespace,
            "labels": {
                LABEL_ENDPOINT: self.name,
                LABEL_ENDPOINT_NAMESPACE: self.namespace,
                LABEL_MANAGED_BY: FIELD_MANAGER,
            },
        })
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn owner_reference(ep: &ModelEndpoint) -> Option<Value> {
    let uid = ep.metadata.uid.as_ref()?;
    Some(json!({
        "apiVersion": "mlep.dev/v1alpha1",
        "kind": "ModelEndpoint",
        "name": ep.name_any(),
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }))
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
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
) -> Value {
    let name = if variant == SHADOW {
        format!("{}-{SHADOW}-{model_name}", ctx.name)
    } else {
        deployment_name(ctx.name, variant, model_name)
    };
    let selector =
        json!({ LABEL_ENDPOINT: ctx.name, LABEL_VARIANT: variant, LABEL_MODEL: model_name });
    let mut pod_labels = json!({ "app": app, "version": variant });
    merge(&mut pod_labels, selector.clone());
    let mut init = Vec::new();
    let mut volumes = vec![json!({ "name": "tmp", "emptyDir": {} })];
    let mut mounts = vec![json!({ "name": "tmp", "mountPath": "/tmp" })];
    if let Some(a) = &model.artifact {
        volumes.push(json!({ "name": "model", "emptyDir": {} }));
        mounts.push(json!({ "name": "model", "mountPath": MODEL_DIR, "readOnly": true }));
        init.push(json!({
            "name": "model-init",
            "image": ctx.settings.model_init_image,
            "env": [
                { "name": "MLEP_ARTIFACT_URI", "value": a.uri },
                { "name": "MLEP_ARTIFACT_SHA256", "value": a.sha256 },
                { "name": "MLEP_MODEL_DIR", "value": MODEL_DIR },
            ],
            "volumeMounts": [
                { "name": "model", "mountPath": MODEL_DIR },
                { "name": "tmp", "mountPath": "/tmp" },
            ],
            "securityContext": container_security(),
        }));
    }
    let port = i32::from(model.port());
    let probe = |initial: i32, period: i32, failures: i32| {
        json!({
            "httpGet": { "path": "/ping", "port": "http" },
            "initialDelaySeconds": initial,
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut container = json!({
        "name": "model",
        "image": model.image,
        "args": ["serve"],
        "ports": [{ "name": "http", "containerPort": port, "protocol": "TCP" }],
        "env": model.env,
        "readinessProbe": probe(1, 5, 3),
        "livenessProbe": probe(10, 10, 6),
        "volumeMounts": mounts,
        "securityContext": container_security(),
    });
    if let Some(r) = resources {
        container["resources"] = json!(r);
    }
    // Istio exports only allow-listed proxy stats; the filter's metrics are `wasmcustom.mlep*`.
    // `proxy.istio.io/config` proxyStatsMatcher adds them to this pod's sidecar (the gateway
    // side needs the same in its mesh/pod config: see docs/operator.md).
    let proxy_config =
        format!(r#"{{"proxyStatsMatcher":{{"inclusionPrefixes":["{STATS_PREFIX}"]}}}}"#);
    let mut spec = json!({
        "selector": { "matchLabels": selector },
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": { "proxy.istio.io/config": proxy_config },
            },
            "spec": {
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "fsGroup": 65532,
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
                "automountServiceAccountToken": false,
                "initContainers": init,
                "containers": [container],
                "volumes": volumes,
            },
        },
    });
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.meta(&name, json!({ LABEL_VARIANT: variant, LABEL_MODEL: model_name })),
        "spec": spec,
    })
}

fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

fn service(ctx: &Ctx, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.meta(name, json!({})),
        "spec": {
            "selector": { "app": app },
            // `protocol` explicit: server-side apply needs it (it is part of the list key).
            "ports": [{ "name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP" }],
        },
    })
}

/// A rollout's split and BlueGreen mirror on the endpoint's filter config. The mirror goes to
/// the new model's subset cluster (`outbound|80|<subset>|<host>`, Istio's name for a
/// DestinationRule subset's cluster).
fn with_rollout(
    ctx: &Ctx,
    mut endpoint: mlep_contract::EndpointConfig,
    plan: &Plan,
) -> mlep_contract::EndpointConfig {
    let Some(r) = &plan.rollout else {
        return endpoint;
    };
    if let Some(v) = endpoint.variants.iter_mut().find(|v| v.name == r.variant) {
        // The variant's own entry is labelled with the model it serves (the old one until
        // the rollout promotes), the split with the new one.
        if let Some(vp) = plan.variants.iter().find(|p| p.name == r.variant) {
            v.model = vp.serving_model.clone();
        }
        v.rollout = r.split.clone();
    }
    if let Some(m) = &r.mirror {
        let fqdn = ctx.fqdn(ctx.name);
        let subset = crate::rollout::subset_name(&m.variant, &m.model);
        endpoint.shadow = Some(mlep_contract::ShadowConfig {
            cluster: format!("outbound|{SERVICE_PORT}|{subset}|{fqdn}"),
            authority: Some(fqdn),
            model: m.model.clone(),
            percent: m.percent,
            variant: Some(m.variant.clone()),
            max_body_bytes: 64 * 1024,
            timeout_ms: 1000,
            forward_credentials: false,
            compare: mlep_contract::CompareConfig {
                mode: mlep_contract::CompareMode::Json,
                tolerance: crate::filter_config::DEFAULT_TOLERANCE,
            },
        });
    }
    endpoint
}

fn destination_rule(ctx: &Ctx, plan: &Plan) -> Value {
    let mut subsets: Vec<Value> = plan
        .variants
        .iter()
        .map(|v| json!({ "name": v.name, "labels": { "version": v.name, LABEL_MODEL: v.serving_model } }))
        .collect();
    // A rollout's new model gets its own subset while a route, split or mirror may name it
    // (it is rendered, and applied, before the VirtualService and the filter config).
    if let Some((variant, model)) = rollout_route(plan) {
        subsets.push(json!({
            "name": crate::rollout::subset_name(variant, model),
            "labels": { "version": variant, LABEL_MODEL: model },
        }));
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": ctx.meta(ctx.name, json!({})),
        "spec": { "host": ctx.fqdn(ctx.name), "subsets": subsets },
    })
}

fn virtual_service(ctx: &Ctx, spec: &ModelEndpointSpec, plan: &Plan) -> Value {
    let host = ctx.fqdn(ctx.name);
    let dest = |subset: &str| json!({ "host": host, "subset": subset, "port": { "number": SERVICE_PORT } });
    let mut http: Vec<Value> = plan
        .variants
        .iter()
        .filter(|v| v.ready)
        .map(|v| {
            json!({
                "name": format!("variant-{}", v.name),
                "match": [{ "headers": { mlep_contract::metrics::VARIANT_HEADER: { "exact": v.name } } }],
                "route": [{ "destination": dest(&v.name) }],
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
    let weighted: Vec<&crate::plan::VariantPlan> =
        plan.variants.iter().filter(|v| v.weight > 0).collect();
    let default: Vec<Value> = match weighted.as_slice() {
        [one] => vec![json!({ "destination": dest(&one.name) })],
        many => many
            .iter()
            .map(|v| json!({ "destination": dest(&v.name), "weight": v.weight }))
            .collect(),
    };
    http.push(json!({ "name": "weighted-default", "route": default }));
    let mut hosts = spec.hosts.clone();
    hosts.push(host.clone());
    let mut gateways = vec!["mesh".to_owned()];
    if let Some(g) = &spec.gateway {
        gateways.push(g.clone());
    }
    if spec.expose == Some(true) {
        gateways.push(format!("{}/{}", ctx.namespace, ctx.name));
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": ctx.meta(ctx.name, json!({})),
        "spec": { "hosts": hosts, "gateways": gateways, "http": http },
    })
}

/// `(variant, model)` of a rollout's own route and subset, if it needs one now.
fn rollout_route(plan: &Plan) -> Option<(&str, &str)> {
    let r = plan.rollout.as_ref()?;
    Some((r.variant.as_str(), r.route_model.as_deref()?))
}

fn gateway(ctx: &Ctx, spec: &ModelEndpointSpec) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": ctx.meta(ctx.name, json!({})),
        "spec": {
            "selector": ctx.settings.gateway_selector,
            "servers": [{
                "port": { "number": 80, "name": "http", "protocol": "HTTP" },
                "hosts": spec.hosts,
            }],
        },
    })
}

fn autoscaler(
    ctx: &Ctx,
    variant: &str,
    deployment: &str,
    a: &crate::crd::AutoscalingSpec,
) -> Value {
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.meta(&format!("{}-{variant}", ctx.name), json!({ LABEL_VARIANT: variant })),
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment },
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": { "type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage.unwrap_or(80) },
                },
            }],
        },
    })
}

/// Name of the filter objects in the endpoint's namespace.
pub fn filter_name(endpoint: &str) -> String {
    format!("{endpoint}-mlep")
}

/// Name of the gateway-side filter object (in the gateway's namespace).
pub fn gateway_filter_name(namespace: &str, endpoint: &str) -> String {
    format!("mlep-{namespace}-{endpoint}")
}

/// The filter wiring: for the namespace's sidecars (outbound, where in-mesh clients call the
/// endpoint) and, when exposed, for the ingress gateway pods.
fn filter_objects(ctx: &Ctx, spec: &ModelEndpointSpec, config: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let local = filter_name(ctx.name);
    let remote = gateway_filter_name(ctx.namespace, ctx.name);
    match spec.filter_wiring {
        FilterWiring::EnvoyFilter => {
            let ext = format!("mlep-{}-{}", ctx.namespace, ctx.name);
            out.push(envoy_filter(
                ctx.meta(&local, json!({})),
                None,
                "SIDECAR_OUTBOUND",
                &ext,
                config,
                ctx.settings,
            ));
            if spec.exposed() {
                let meta = ctx.foreign_meta(&remote, &ctx.settings.gateway_namespace);
                out.push(envoy_filter(
                    meta,
                    Some(&ctx.settings.gateway_selector),
                    "GATEWAY",
                    &ext,
                    config,
                    ctx.settings,
                ));
            }
        }
        FilterWiring::WasmPlugin => {
            out.push(wasm_plugin(
                ctx.meta(&local, json!({})),
                None,
                "CLIENT",
                config,
                ctx.settings,
            ));
            if spec.exposed() {
                let meta = ctx.foreign_meta(&remote, &ctx.settings.gateway_namespace);
                out.push(wasm_plugin(
                    meta,
                    Some(&ctx.settings.gateway_selector),
                    "CLIENT",
                    config,
                    ctx.settings,
                ));
            }
        }
    }
    out
}

/// An EnvoyFilter delivering the filter through ECDS, the form Istio's agent downloads.
///
/// Istio facts this relies on (checked in istio/istio):
/// - `pkg/wasm/convert.go` (`MaybeConvertWasmExtensionConfig`): istio-agent's xDS proxy
///   inspects every ECDS resource (`TypedExtensionConfig`); when its typed config is an Envoy
///   `envoy.extensions.filters.http.wasm.v3.Wasm` (directly or in a TypedStruct) whose
///   `vm_config.code.remote.http_uri` is set, the agent downloads the module itself (verifying
///   `sha256`, default timeout 5 s), caches it and rewrites the config to a local file before
///   Envoy sees it; a failed fetch NACKs unless `fail_open`. So the module must reach Envoy as
///   an ECDS resource: an `EXTENSION_CONFIG` patch carries it and the `HTTP_FILTER` patch
///   refers to it with `config_discovery` from `ads` — the two-EnvoyFilter form of Istio's
///   "Distributing WebAssembly Modules" guide (istio.io/v1.10/docs/ops/configuration/
///   extensibility/wasm-module-distribution/). An inline `remote` in a plain HTTP_FILTER patch
///   would make Envoy fetch it itself, which needs a cluster for the operator in Envoy's config.
/// - `pkg/wasm/ssrf.go`: the agent refuses link-local and cloud-metadata addresses but allows
///   private and loopback ranges, so an in-cluster URL (the operator's Service) is fine.
fn envoy_filter(
    metadata: Value,
    selector: Option<&BTreeMap<String, String>>,
    context: &str,
    ext_name: &str,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    let wasm = json!({
        "@type": WASM_TYPE_URL,
        "config": {
            "name": ext_name,
            "root_id": "mlep",
            // Keep traffic flowing if the module cannot be loaded; the filter itself fails
            // open on bad configs too (it counts mlep_config_errors_total).
            "fail_open": true,
            "vm_config": {
                "vm_id": "mlep",
                "runtime": "envoy.wasm.runtime.v8",
                "code": {
                    "remote": {
                        "http_uri": { "uri": settings.wasm_url, "cluster": "mlep-wasm", "timeout": "30s" },
                        "sha256": settings.wasm_sha256,
                    },
                },
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": config.to_string(),
            },
        },
    });
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
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": { "name": "envoy.filters.http.router" },
                    } } },
                },
                "patch": {
                    "operation": "INSERT_BEFORE",
                    "value": {
                        "name": ext_name,
                        "config_discovery": {
                            "config_source": { "ads": {}, "initial_fetch_timeout": "0s" },
                            "type_urls": [WASM_TYPE_URL],
                        },
                    },
                },
            },
        ],
    });
    if let Some(labels) = selector {
        spec["workloadSelector"] = json!({ "labels": labels });
    }
    json!({ "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": metadata, "spec": spec })
}

/// A WasmPlugin: istiod turns it into the same ECDS resource with a remote `http_uri`, which
/// istio-agent downloads and verifies against `sha256` (see `envoy_filter`).
fn wasm_plugin(
    metadata: Value,
    selector: Option<&BTreeMap<String, String>>,
    mode: &str,
    config: &Value,
    settings: &RenderSettings,
) -> Value {
    let mut spec = json!({
        "url": settings.wasm_url,
        "sha256": settings.wasm_sha256,
        "pluginName": "mlep",
        "phase": "STATS",
        "failStrategy": "FAIL_OPEN",
        "pluginConfig": config,
        "match": [{ "mode": mode }],
    });
    if let Some(labels) = selector {
        spec["selector"] = json!({ "matchLabels": labels });
    }
    json!({ "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": metadata, "spec": spec })
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
        let objs = render(&ep, &Plan::assume_ready(&ep.spec));
        let ef = find(&objs, "EnvoyFilter", "titanic-mlep");
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
            patches[1]["patch"]["value"]["config_discovery"]["type_urls"],
            json!([WASM_TYPE_URL])
        );
        assert_eq!(patches[1]["match"]["context"], "SIDECAR_OUTBOUND");
        assert!(objs
            .iter()
            .all(|o| o["kind"] != "WasmPlugin" && o["kind"] != "Gateway"));
    }

    #[test]
    fn exposing_adds_a_gateway_and_a_gateway_side_filter_outside_the_namespace() {
        let mut ep = endpoint();
        ep.spec.expose = Some(true);
        ep.spec.filter_wiring = FilterWiring::WasmPlugin;
        let objs = render(&ep, &Plan::assume_ready(&ep.spec));
        let gw = find(&objs, "Gateway", "titanic");
        assert_eq!(gw["spec"]["selector"], json!({"istio": "ingressgateway"}));
        assert_eq!(
            gw["spec"]["servers"][0]["hosts"],
            json!(["titanic.example.com"])
        );
        let vs = find(&objs, "VirtualService", "titanic");
        assert_eq!(vs["spec"]["gateways"], json!(["mesh", "ml/titanic"]));
        let local = find(&objs, "WasmPlugin", "titanic-mlep");
        assert_eq!(local["spec"]["url"], RenderSettings::default().wasm_url);
        assert_eq!(
            local["spec"]["pluginConfig"]["endpoints"][0]["name"],
            "titanic"
        );
        let remote = find(&objs, "WasmPlugin", "mlep-ml-titanic");
        assert_eq!(remote["metadata"]["namespace"], "istio-system");
        assert!(
            remote["metadata"].get("ownerReferences").is_none(),
            "ownerReferences cannot cross namespaces"
        );
        assert_eq!(remote["metadata"]["labels"][LABEL_ENDPOINT_NAMESPACE], "ml");
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
        let objs = render(&ep, &Plan::assume_ready(&ep.spec));
        let d = find(&objs, "Deployment", "titanic-shadow-m3");
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"]["app"],
            "titanic-shadow"
        );
        assert_eq!(
            find(&objs, "Service", "titanic-shadow")["spec"]["selector"],
            json!({"app": "titanic-shadow"})
        );
        let cfg = &find(&objs, "EnvoyFilter", "titanic-mlep")["spec"]["configPatches"][0]["patch"]
            ["value"]["typed_config"]["config"]["configuration"]["value"];
        let filter: FilterConfig = serde_json::from_str(cfg.as_str().unwrap()).unwrap();
        let shadow = filter.endpoints[0].shadow.as_ref().unwrap();
        assert_eq!(
            shadow.cluster,
            "outbound|80||titanic-shadow.ml.svc.cluster.local"
        );
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
        assert!(objs.iter().all(|o| o["metadata"]["namespace"] == "ml"));
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
    fn crds_carry_cel_rules_and_no_null_enum_values() {
        let text = serde_json::to_string(&crds()).unwrap();
        assert!(text.contains("self.map(v, v.weight).sum() == 100"));
        assert!(text.contains("exists_one"));
        assert!(!text.contains(",null]"), "null in an enum");
    }
}
