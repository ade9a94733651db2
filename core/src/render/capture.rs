//! The data capture sink of an endpoint with `spec.dataCapture` on: Deployment and Service
//! `E-capture` running `mlep-capture-sink` (docs/capture.md), which the filter calls on
//! `outbound|9090||E-capture.N.svc.<domain>` (`crate::envoy::CallTarget::capture_istio`).

use super::workload::{init_security, mount, object_store_env};
use super::{object, Ctx};
use crate::crd::DataCaptureSpec;
use crate::envoy::{capture_service, CAPTURE_PORT};
use crate::meta::{labels, LABEL_APP};
use crate::pod_security::default_pod_context;
use crate::validate::SpecError;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mlep_contract::capture::Destination;
use mlep_contract::names::{ENV_CAPTURE_DESTINATION, ENV_CAPTURE_INSTANCE, ENV_CAPTURE_LISTEN};
use serde_json::Value;

/// The sink's objects; `file://` destinations are local mode's only.
pub(super) fn capture_sink(ctx: &Ctx, d: &DataCaptureSpec) -> Result<Vec<Value>, SpecError> {
    if let Ok(Destination::Dir { .. }) = Destination::parse(&d.destination_uri) {
        return Err(SpecError::invalid(
            "spec.dataCapture.destinationUri",
            format!(
                "{:?}: file:// destinations are for local mode; in a cluster use s3:// or gs://",
                d.destination_uri
            ),
        ));
    }
    let app = capture_service(ctx.name);
    let selector = labels([(LABEL_APP, app.as_str())]);
    let deployment = sink_deployment(ctx, &app, selector.clone(), sink_env(d));
    let service = Service {
        metadata: ctx.meta(&app, []),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: CAPTURE_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Ok(vec![object(&deployment)?, object(&service)?])
}

/// The sink's environment: destination, listener, instance name (the pod's), credentials.
fn sink_env(d: &DataCaptureSpec) -> Vec<EnvVar> {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let mut vars = vec![
        env(ENV_CAPTURE_DESTINATION, &d.destination_uri),
        env(ENV_CAPTURE_LISTEN, &format!("0.0.0.0:{CAPTURE_PORT}")),
        EnvVar {
            name: ENV_CAPTURE_INSTANCE.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    if let Some(secret) = &d.credentials_secret {
        vars.extend(object_store_env(secret));
    }
    vars
}

fn sink_deployment(
    ctx: &Ctx,
    app: &str,
    selector: std::collections::BTreeMap<String, String>,
    vars: Vec<EnvVar>,
) -> Deployment {
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    Deployment {
        metadata: ctx.meta(app, []),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    security_context: Some(default_pod_context()),
                    automount_service_account_token: Some(false),
                    // The sink writes what it holds on SIGTERM (bounded by its shutdown timeout).
                    termination_grace_period_seconds: Some(30),
                    containers: vec![Container {
                        name: "capture-sink".into(),
                        image: Some(ctx.settings.capture_sink_image.clone()),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: CAPTURE_PORT,
                            protocol: Some("TCP".into()),
                            ..ContainerPort::default()
                        }]),
                        env: Some(vars),
                        readiness_probe: Some(probe("/readyz")),
                        liveness_probe: Some(probe("/healthz")),
                        volume_mounts: Some(vec![mount("tmp", "/tmp", None)]),
                        security_context: Some(init_security()),
                        ..Container::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
