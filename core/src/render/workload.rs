//! The model servers: Deployments (one per variant and model, and the shadow's), their
//! Service and autoscaler.

use super::Ctx;
use crate::crd::{Artifact, ModelSpec, ScaleTarget, DEFAULT_TARGET_CPU_PERCENT};
use crate::envoy::STATS_PREFIX;
use crate::meta::{
    labels, LABEL_APP, LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION, LABEL_ENDPOINT, LABEL_MODEL,
    LABEL_VARIANT, LABEL_VERSION, SERVICE_PORT,
};
use crate::pod_security::{
    default_container_context, model_container_context, model_pod_context, DEFAULT_UID,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::Resource as _;
use mlep_contract::artifact::ArtifactLocation;
use mlep_contract::metrics::SHADOW_VARIANT_LABEL as SHADOW;
use mlep_contract::names::{
    ENV_ARTIFACT_SHA256, ENV_ARTIFACT_URI, ENV_MODEL_DIR, ENV_TERMINATION_LOG, MODEL_DIR,
    OBJECT_STORE_ENV, PVC_MOUNT_ROOT,
};

/// Seconds a model pod keeps serving after it is told to stop (preStop sleep).
pub const DRAIN_SECONDS: i64 = 5;
/// Environment variable telling a SageMaker-contract server its port.
pub const PORT_ENV: &str = "SAGEMAKER_BIND_TO_PORT";

/// `E-<variant>-<model>`: a model swap creates a new Deployment beside the old one.
pub fn deployment_name(endpoint: &str, variant: &str, model: &str) -> String {
    format!("{endpoint}-{variant}-{model}")
}

pub(super) fn deployment(
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
    let revision = crate::envoy::subset_name(variant, model_name);
    let mut pod_labels = labels([
        (LABEL_APP, app),
        (LABEL_VERSION, variant),
        (LABEL_CANONICAL_NAME, app),
        (LABEL_CANONICAL_REVISION, &revision),
    ]);
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
        let claim = artifact_claim(a, &mut volumes);
        init.push(model_init_container(ctx, a, claim));
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
                // Pod Security "restricted" by default: the Model's own fields replace the
                // defaults one by one, and the result is checked (`crate::pod_security`) before
                // anything is rendered.
                spec: Some(PodSpec {
                    security_context: Some(model_pod_context(model)),
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

pub(super) fn mount(name: &str, path: &str, read_only: Option<bool>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
        ..VolumeMount::default()
    }
}

/// The claim of a `pvc://` artifact, added to `volumes` (read-only) as `artifact-pvc`.
fn artifact_claim<'a>(a: &'a Artifact, volumes: &mut Vec<Volume>) -> Option<&'a str> {
    let ArtifactLocation::Pvc { claim, .. } = ArtifactLocation::parse(&a.uri).ok()? else {
        return None;
    };
    volumes.push(Volume {
        name: "artifact-pvc".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: Some(true),
        }),
        ..Volume::default()
    });
    Some(claim)
}

/// The init container fetching and verifying the artifact into the model volume
/// (`mlep-model-init`, configured through the contract's environment names). Object storage
/// credentials: only the contract's keys of the named Secret, each optional, by reference (the
/// kubelet resolves them; the operator never reads Secrets). A `pvc://` claim is mounted
/// read-only under [`PVC_MOUNT_ROOT`].
fn model_init_container(ctx: &Ctx, a: &Artifact, claim: Option<&str>) -> Container {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let mut vars = vec![
        env(ENV_ARTIFACT_URI, &a.uri),
        env(ENV_ARTIFACT_SHA256, &a.sha256),
        env(ENV_MODEL_DIR, MODEL_DIR),
        env(ENV_TERMINATION_LOG, "/dev/termination-log"),
    ];
    if let Some(secret) = &a.credentials_secret {
        vars.extend(object_store_env(secret));
    }
    let mut mounts = vec![mount("model", MODEL_DIR, None), mount("tmp", "/tmp", None)];
    if let Some(claim) = claim {
        mounts.push(mount(
            "artifact-pvc",
            &format!("{PVC_MOUNT_ROOT}/{claim}"),
            Some(true),
        ));
    }
    Container {
        name: "model-init".into(),
        image: Some(ctx.settings.model_init_image.clone()),
        env: Some(vars),
        volume_mounts: Some(mounts),
        security_context: Some(init_security()),
        ..Container::default()
    }
}

/// Object storage credentials for a container of ours: only the contract's keys of `secret`,
/// each optional, by reference (the kubelet resolves them; the operator never reads Secrets).
pub(super) fn object_store_env(secret: &str) -> Vec<EnvVar> {
    OBJECT_STORE_ENV
        .iter()
        .map(|key| EnvVar {
            name: (*key).into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.to_owned(),
                    key: (*key).into(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect()
}

/// model-init (and the capture sink) are ours: locked down, and their own user whatever the
/// Model's pod context says (so a Model running its server as another user cannot make the
/// fetch run as root).
pub(super) fn init_security() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(DEFAULT_UID),
        run_as_group: Some(DEFAULT_UID),
        ..default_container_context()
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
        name: mlep_contract::metrics::operator::MODEL_CONTAINER.into(),
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
        security_context: Some(model_container_context(model)),
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

pub(super) fn service(ctx: &Ctx, name: &str, app: &str) -> Service {
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

/// The HorizontalPodAutoscaler of a variant scaling on CPU: scale-down stabilized over
/// `scaleDownStabilizationSeconds`, scale-up at the HPA's defaults.
pub(super) fn autoscaler(
    ctx: &Ctx,
    variant: &str,
    model: &str,
    deployment: &str,
    a: &crate::crd::AutoscalingSpec,
) -> HorizontalPodAutoscaler {
    let utilization = match a.target() {
        ScaleTarget::CpuPercent(p) => p,
        ScaleTarget::RequestsPerSecond(_) => DEFAULT_TARGET_CPU_PERCENT,
    };
    HorizontalPodAutoscaler {
        metadata: ctx.meta(deployment, [(LABEL_VARIANT, variant), (LABEL_MODEL, model)]),
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
                        average_utilization: Some(utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(a.scale_down_stabilization_seconds()),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        }),
        ..HorizontalPodAutoscaler::default()
    }
}
