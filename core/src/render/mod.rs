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
//! - HorizontalPodAutoscaler `E-<variant>-<model>` (named like the Deployment it scales, one per
//!   running Deployment) when `autoscaling` targets CPU (a request-rate
//!   target renders none: the operator sets the Deployments' replicas, `crate::autoscale`);
//! - Deployment and Service `E-capture` (the data capture sink) when `dataCapture` is on.

mod capture;
mod istio;
#[cfg(test)]
mod tests;
mod workload;

use crate::crd::{Model, ModelEndpoint, ModelEndpointSpec, ModelSpec, ScaleTarget, API_VERSION};
use crate::envoy::{self, CallTarget, EndpointRoute};
use crate::filter_config::{apply_rollout, endpoint_config, Targets};
use crate::host_claims::Claimant;
use crate::plan::Plan;
use crate::pod_security::check_model;
use crate::validate::{validate_endpoint, validate_hosts, validate_model, SpecError};
use istio::{destination_rule, gateway, virtual_service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube_core::{CustomResourceExt, Resource, ResourceExt};
use mlep_contract::metrics::SHADOW_VARIANT_LABEL as SHADOW;
use mlep_contract::{Allocation, EndpointConfig, FilterConfig, CONFIG_VERSION};
use serde_json::Value;
use std::collections::BTreeMap;
use workload::{autoscaler, deployment, service};

pub use crate::aggregate::FALLBACK_STAT_PREFIX;
pub use crate::meta::{
    labels, RenderSettings, FIELD_MANAGER, LABEL_APP, LABEL_ENDPOINT, LABEL_ENDPOINT_NAMESPACE,
    LABEL_MANAGED_BY, LABEL_MODEL, LABEL_VARIANT, LABEL_VERSION, SERVICE_PORT,
};
pub use istio::{gateway_virtual_service, unbind_external_from_mesh, variant_routes};
pub use workload::{deployment_name, DRAIN_SECONDS, PORT_ENV};

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
/// Each endpoint's route key is the one in its status, else `fresh_key()`'s.
pub fn render_all(
    models: &[Model],
    endpoints: &[ModelEndpoint],
    settings: &RenderSettings,
    fresh_key: &mut dyn FnMut() -> String,
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
        let name = ep.name_any();
        let who = Claimant {
            namespace: &ns,
            name: &name,
            cluster_domain: &settings.cluster_domain,
        };
        validate_endpoint(&ep.spec, |n| in_ns.get(n))
            .and_then(|()| validate_hosts(&ep.spec, &who))
            .map_err(|e| SpecError {
                message: format!("ModelEndpoint {ns}/{}: {}", ep.name_any(), e.message),
                ..e
            })?;
        let plan = Plan::assume_ready(&ep.spec);
        let key = match ep.status.as_ref().and_then(|s| s.route_key.clone()) {
            Some(k) if mlep_contract::is_route_key(&k) => k,
            _ => fresh_key(),
        };
        let rendered = render_endpoint(ep, &ns, &in_ns, &plan, None, &key, settings)?;
        out.extend(rendered.objects);
        filters.push((ep.spec.filter_wiring, rendered.filter));
    }
    let wasm_only = crate::aggregate::wasm_only(endpoints);
    let aggregate = crate::aggregate::filters_for(filters, &wasm_only, settings);
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
    route_key: &str,
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
    let mut objects = variant_objects(&ctx, spec, plan, models)?;
    objects.push(object(&service(&ctx, &name, &name))?);
    let shadow_target = match &spec.shadow {
        Some(s) => Some(shadow_objects(&ctx, s, models, &mut objects)?),
        None => None,
    };
    if let Some(d) = spec.data_capture.as_ref().filter(|d| d.enabled()) {
        objects.extend(capture::capture_sink(&ctx, d)?);
    }
    objects.push(destination_rule(&ctx, plan));
    objects.extend(virtual_service(&ctx, spec, plan, route_key));
    if spec.expose == Some(true) {
        objects.push(gateway(&ctx, spec));
    }

    let endpoint = endpoint_config(
        &name,
        namespace,
        spec,
        &plan.weights(),
        previous,
        Targets {
            // Copies wait for a ready shadow pod (`Plan::shadow_ready`); its objects do not.
            shadow: shadow_target.filter(|_| plan.copied_shadow(spec).is_some()),
            capture: spec
                .data_capture
                .as_ref()
                .map(|_| CallTarget::capture_istio(&name, namespace, &settings.cluster_domain)),
        },
        EndpointRoute {
            virtual_hosts: envoy::mesh_virtual_hosts(
                &name,
                namespace,
                &settings.cluster_domain,
                &spec.hosts,
                SERVICE_PORT,
            ),
            key: route_key.to_owned(),
        },
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

/// The shadow's Deployment and Service, and where the filter sends its copies.
fn shadow_objects(
    ctx: &Ctx,
    s: &crate::crd::ShadowSpec,
    models: &BTreeMap<String, ModelSpec>,
    objects: &mut Vec<Value>,
) -> Result<CallTarget, SpecError> {
    let m = checked_model(models, &s.model, "spec.shadow.model".into(), ctx.settings)?;
    let app = envoy::shadow_service(ctx.name);
    objects.push(object(&deployment(
        ctx,
        SHADOW,
        &app,
        &s.model,
        m,
        Some(s.replicas.unwrap_or(1)),
        m.resources.as_ref(),
    ))?);
    objects.push(object(&service(ctx, &app, &app))?);
    objects.push(istio::shadow_destination_rule(ctx));
    Ok(CallTarget::shadow_istio(
        ctx.name,
        ctx.namespace,
        &ctx.settings.cluster_domain,
        SERVICE_PORT,
    ))
}

/// The Model named `name`, valid, its pods meeting the operator's Pod Security level, or an
/// error naming `field`.
fn checked_model<'m>(
    models: &'m BTreeMap<String, ModelSpec>,
    name: &str,
    field: String,
    settings: &RenderSettings,
) -> Result<&'m ModelSpec, SpecError> {
    let m = models
        .get(name)
        .ok_or_else(|| SpecError::invalid(field.clone(), format!("no Model named {name:?}")))?;
    validate_model(m).map_err(|e| SpecError::invalid(field.clone(), e.to_string()))?;
    check_model(m, settings.pod_security).map_err(|e| SpecError {
        field: field.clone(),
        message: format!("Model {name:?}: {e}"),
        reason: e.reason,
    })?;
    Ok(m)
}

/// Every variant's Deployments (the plan's models, or the rollout's) and autoscaler.
fn variant_objects(
    ctx: &Ctx,
    spec: &ModelEndpointSpec,
    plan: &Plan,
    models: &BTreeMap<String, ModelSpec>,
) -> Result<Vec<Value>, SpecError> {
    let mut objects = Vec::new();
    for (i, (vp, vs)) in plan.variants.iter().zip(&spec.variants).enumerate() {
        let cpu = vs
            .autoscaling
            .as_ref()
            .filter(|a| matches!(a.target(), ScaleTarget::CpuPercent(_)));
        for model_name in plan.running_models(vp) {
            let field = format!("spec.variants[{i}].model");
            let m = checked_model(models, model_name, field, ctx.settings)?;
            let replicas = replicas(plan, vs, model_name);
            let resources = vs.resources.as_ref().or(m.resources.as_ref());
            objects.push(object(&deployment(
                ctx, &vs.name, ctx.name, model_name, m, replicas, resources,
            ))?);
            // One HPA per Deployment: during a rollout both models of the variant keep
            // scaling on their own load (the old one's traffic shrinks, the new one's grows).
            if let Some(a) = cpu {
                objects.push(object(&autoscaler(
                    ctx,
                    &vs.name,
                    model_name,
                    &deployment_name(ctx.name, &vs.name, model_name),
                    a,
                ))?);
            }
        }
    }
    Ok(objects)
}

/// The replicas a variant's Deployment of `model` renders with: the fixed count (default 1);
/// none on a CPU target (its HorizontalPodAutoscaler owns them); on a request-rate target the
/// operator's decision (`Plan::scaled`), `minReplicas` before there is one (at least one: a
/// variant that may scale to zero starts awake, so its model is proven to start).
fn replicas(plan: &Plan, vs: &crate::crd::VariantSpec, model: &str) -> Option<i32> {
    let Some(a) = &vs.autoscaling else {
        return Some(vs.replicas.unwrap_or(1));
    };
    match a.target() {
        ScaleTarget::CpuPercent(_) => None,
        ScaleTarget::RequestsPerSecond(_) => Some(
            plan.scaled
                .get(&(vs.name.clone(), model.to_owned()))
                .copied()
                .unwrap_or(a.min_replicas.max(1)),
        ),
    }
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

pub(super) struct Ctx<'a> {
    pub(super) name: &'a str,
    pub(super) namespace: &'a str,
    pub(super) owner: Option<&'a OwnerReference>,
    pub(super) settings: &'a RenderSettings,
}

impl Ctx<'_> {
    pub(super) fn fqdn(&self, service: &str) -> String {
        format!(
            "{service}.{}.svc.{}",
            self.namespace, self.settings.cluster_domain
        )
    }

    /// Metadata of an object owned by the endpoint, in its namespace.
    pub(super) fn meta<'l>(
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

/// A Kubernetes object as the JSON the operator applies (a typed object serialized).
fn object(o: &impl serde::Serialize) -> Result<Value, SpecError> {
    serde_json::to_value(o)
        .map_err(|e| SpecError::invalid("spec", format!("an object does not serialize: {e}")))
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
