//! The custom resources, `mlep.dev/v1alpha1`: the single source of truth for the API. The CRD
//! YAML in `manifests/crds/` is generated from these types (`mlep crd`); doc comments become
//! `kubectl explain` text.

use k8s_openapi::api::core::v1::{
    EnvVar, PodSecurityContext, ResourceRequirements, SecurityContext,
};
use kube_derive::{CustomResource, KubeSchema};
use mlep_contract::{Allocation, CompareMode, UnknownTarget};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod rollout_status;
mod schema;
mod status_parts;
pub use rollout_status::{AnalysisResult, Phase, RolloutStatus};
pub use status_parts::{RetiringVariant, StatusSummary};

/// The API group, version and `apiVersion` of both kinds. The `#[kube(group, version)]`
/// attributes below must spell the same (a derive attribute takes only literals); the test
/// `api_version_constants_match_the_derived_resources` holds them together.
pub const GROUP: &str = "mlep.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "mlep.dev/v1alpha1";
/// Default port of the SageMaker inference contract.
pub const DEFAULT_MODEL_PORT: u16 = 8080;

/// A model: a container image that follows the SageMaker inference contract (`GET /ping`,
/// `POST /invocations` on port 8080, model files in `/opt/ml/model`) and the artifact it serves.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "mlep.dev",
    version = "v1alpha1",
    kind = "Model",
    namespaced,
    shortname = "mlm",
    status = "ModelStatus",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Container image implementing the SageMaker inference contract, e.g. the generic
    /// `mlep-model-server` runtime that serves ONNX models.
    pub image: String,
    /// The model artifact, fetched and verified into `/opt/ml/model` before the model starts.
    /// Omit it when the image carries its model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Port the model server listens on (default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Extra environment variables for the model container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Compute resources of the model container (a variant may override them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod security context of the model's pods. Default: non-root uid/gid 65532 (fsGroup
    /// 65532), RuntimeDefault seccomp; each field set here replaces its default. The result
    /// must meet the operator's Pod Security level ("restricted" unless configured
    /// otherwise), or the Model is rejected naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
    /// Security context of the model container. Default: read-only root filesystem (`/tmp` is
    /// writable), no privilege escalation, not privileged, all capabilities dropped, non-root,
    /// RuntimeDefault seccomp; each field set here replaces its default (e.g.
    /// `readOnlyRootFilesystem: false` for images that write elsewhere). The result must meet
    /// the operator's Pod Security level, or the Model is rejected naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

impl ModelSpec {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_MODEL_PORT)
    }
}

/// Where the model files come from, and their checksum.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Artifact location: `https://host/path`, `http://host/path`, `s3://bucket/key` (AWS or
    /// any S3-compatible server named by `AWS_ENDPOINT_URL` in the credentials Secret),
    /// `gs://bucket/object`, `pvc://claim/path` (a PersistentVolumeClaim in the Model's
    /// namespace, mounted read-only into the fetching init container) or `file:///path`.
    /// `.tar.gz`, `.tar` and `.zip` are unpacked; any other file is placed as is.
    pub uri: String,
    /// Lowercase hex SHA-256 of the artifact file; the download is refused on mismatch.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
    /// A Secret in the Model's namespace holding object storage credentials for `s3://` and
    /// `gs://`: its keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, `GOOGLE_SERVICE_ACCOUNT_KEY` (each optional) reach the
    /// fetch as environment variables; no other key does, and the operator never reads the
    /// Secret. Without it the fetch uses the pod's own identity (instance or workload
    /// credentials). Local mode reads the same names from its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Observed state of a Model.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` once the spec is valid.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An endpoint: one or more variants of models behind one host, with weights, sticky routing,
/// client targeting and an optional shadow.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "mlep.dev",
    version = "v1alpha1",
    kind = "ModelEndpoint",
    namespaced,
    shortname = "mle",
    status = "ModelEndpointStatus",
    printcolumn = r#"{"name":"Variants","type":"string","jsonPath":".status.summary.variants"}"#,
    printcolumn = r#"{"name":"Weights","type":"string","jsonPath":".status.summary.weights"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.summary.ready"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Moved","type":"string","jsonPath":".status.rollout.moved"}"#,
    printcolumn = r#"{"name":"Scaling","type":"string","priority":1,"jsonPath":".status.summary.scaling"}"#,
    printcolumn = r#"{"name":"URL","type":"string","priority":1,"jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[serde(rename_all = "camelCase")]
pub struct ModelEndpointSpec {
    /// Hosts clients call this endpoint by (the `Host` header), e.g. `titanic.example.com`.
    #[schemars(length(min = 1))]
    pub hosts: Vec<String>,
    /// Istio Gateway exposing the endpoint, as `namespace/name` (e.g.
    /// `istio-system/ingressgateway`). Without it the endpoint is reachable inside the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The variants sharing the traffic. Weights are percentages and sum to 100; names are
    /// unique. (Checked by the API server's CEL rules where supported, and by the operator.)
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.map(v, v.weight).sum() == 100").message("the weights of spec.variants must sum to 100"))]
    #[x_kube(validation = Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("spec.variants names must be unique"))]
    pub variants: Vec<VariantSpec>,
    /// How requests are assigned to variants.
    #[serde(default)]
    pub routing: RoutingSpec,
    /// Mirror a share of the traffic to a shadow model and compare its answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// How the filter is wired into Envoy: `EnvoyFilter` (default) or `WasmPlugin`.
    #[serde(default)]
    pub filter_wiring: FilterWiring,
    /// Create an Istio Gateway named after the endpoint, in its namespace, serving `hosts` on
    /// the ingress gateway pods (port 80). Use it instead of `gateway` when no shared Gateway
    /// exists. The filter is then also wired into the ingress gateway pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<bool>,
    /// How a change of a variant's model is rolled out: `AllAtOnce`, `Canary`, `Linear` or
    /// `BlueGreen`, with metric analysis and automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Capture a sampled share of the invocations (request, response or both) to object
    /// storage as JSON Lines in SageMaker's capture record shape (docs/capture.md). Sampled
    /// in the filter and written by the endpoint's capture sink; never slows or fails a
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_capture: Option<DataCaptureSpec>,
}

/// What to capture, how much and where (SageMaker's `DataCaptureConfig`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataCaptureSpec {
    /// Turn capture off without deleting its settings (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Percent of invocations captured, 0 to 100 (fractions allowed).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling_percent: f64,
    /// What each record holds: `Input` (the request), `Output` (the response) or both
    /// (default both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capture: Vec<CaptureMode>,
    /// Where records go: `s3://bucket/prefix` (AWS or an S3-compatible server named by
    /// `AWS_ENDPOINT_URL` in the credentials Secret), `gs://bucket/prefix`, or in local mode
    /// `file:///absolute/dir`. Files land under
    /// `<prefix>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/`.
    pub destination_uri: String,
    /// A Secret in the endpoint's namespace with the object storage credentials (the keys
    /// `Model.spec.artifact.credentialsSecret` takes). Without it, the sink's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Largest body captured (default 262144, at most 4194304); larger ones are recorded as
    /// skipped (`too_large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
    /// Content types captured (e.g. `application/json`, `text/csv`); others are recorded as
    /// skipped (`content_type`). Default: every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
}

impl DataCaptureSpec {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
}

/// A side of an invocation to capture.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CaptureMode {
    Input,
    Output,
}

impl ModelEndpointSpec {
    /// Whether the endpoint is reachable through an ingress gateway.
    pub fn exposed(&self) -> bool {
        self.gateway.is_some() || self.expose == Some(true)
    }
}

/// How a change of a variant's `model` reaches its users. Weight edits are always immediate
/// (they move only the users they must); a model change moves the variant's users (its
/// buckets) from the old model to the new one, per `strategy`, once the new model is ready.
/// See docs/rollouts.md.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `AllAtOnce` (default: every user moves once the new model is ready), `Canary`,
    /// `Linear` or `BlueGreen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RolloutStrategy>,
    /// How long each step holds, with analysis, before the next (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub step_seconds: Option<u32>,
    /// Longest a step may wait for `analysis.minRequests` requests; then the step fails
    /// (default 10 x stepSeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step_seconds: Option<u32>,
    /// `Canary`: the share moved first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// `Linear`: the share added at each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear: Option<LinearSpec>,
    /// `BlueGreen`: bake the new model on mirrored traffic, then switch everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,
    /// The checks each step must pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Return every user to the old model when a check fails (default true). When false, a
    /// failed check holds the rollout where it is until `mlep.dev/rollout: promote|abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
}

/// Rollout strategies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    AllAtOnce,
    Canary,
    Linear,
    BlueGreen,
}

/// `Canary` settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// Percent of the variant's users moved for the canary step (default 10); after it
    /// passes, all of them move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
}

/// `Linear` settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinearSpec {
    /// Percent of the variant's users added at each step (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_percent: Option<u32>,
}

/// `BlueGreen` settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenSpec {
    /// Percent of the variant's requests mirrored to the new model while it bakes (default
    /// 100). The mirror uses the endpoint's shadow, so `spec.shadow` must be unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub shadow_percent: Option<f64>,
    /// How long the new model bakes on mirrored traffic before everyone switches (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bake_seconds: Option<u32>,
    /// How long the old model keeps running after the switch, so a rollback is instant
    /// (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_wait_seconds: Option<u32>,
}

/// Rollout analysis: judged per step once `minRequests` requests of the new model were seen.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Requests of the new model a step needs before it is judged (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Largest share of 5xx answers of the new model, 0..1 (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// Largest p99 latency of the new model in milliseconds (default: not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_p99_latency_ms: Option<f64>,
    /// `BlueGreen` bake: smallest share of mirrored answers agreeing with the old model's,
    /// 0..1 (default: not checked), judged on its 95 % confidence bounds: passes once the lower
    /// bound reaches it, fails once the upper bound is below it, waits in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_agreement: Option<f64>,
    /// Prometheus the operator queries. Default: the operator's `--prometheus-url`
    /// (`http://prometheus.istio-system.svc:9090`, Istio's Prometheus add-on, unless configured
    /// otherwise). Another URL must be on the operator's `--prometheus-allowed-urls`, else the
    /// endpoint is invalid and the URL is never contacted. Local mode reads its own Envoy's
    /// stats instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
}

/// One variant of an endpoint.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantSpec {
    /// Variant name: a DNS label (`a`, `blue`, `xgb-v2`). It is the value of the
    /// `x-mlep-variant` header, the `version` pod label and the DestinationRule subset.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Name of the Model (same namespace) this variant serves.
    pub model: String,
    /// Percent of the traffic, 0 to 100. The weights of all variants sum to 100.
    #[schemars(range(min = 0, max = 100))]
    pub weight: u32,
    /// Fixed replica count (default 1). Ignored when `autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Scale between `minReplicas` and `maxReplicas` on one target: CPU utilisation (a
    /// HorizontalPodAutoscaler) or requests per second per replica (the operator, from
    /// Prometheus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Compute resources of this variant's model container (overrides the Model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl ModelEndpointSpec {
    /// Whether this endpoint's routes get mirroring twins (`crate::mirror`): its shadow
    /// compares a sample and the filter wiring can patch Envoy's mirror onto them.
    pub fn renders_mirror_twins(&self) -> bool {
        let sampled = self
            .shadow
            .as_ref()
            .is_some_and(ShadowSpec::compares_a_sample);
        sampled && self.filter_wiring.patches_routes()
    }

    /// The shadow whose copies (all, or the uncompared ones) Envoy's mirror sends.
    pub fn mirrored_shadow(&self) -> Option<&ShadowSpec> {
        let off = |s: &&ShadowSpec| s.compare == Some(CompareMode::Off);
        self.shadow
            .as_ref()
            .filter(|s| off(s) || self.renders_mirror_twins())
    }

    /// An endpoint with these hosts and variants and every option at its default.
    pub fn new(hosts: Vec<String>, variants: Vec<VariantSpec>) -> Self {
        Self {
            hosts,
            gateway: None,
            variants,
            routing: RoutingSpec::default(),
            shadow: None,
            filter_wiring: FilterWiring::default(),
            expose: None,
            rollout: None,
            data_capture: None,
        }
    }
}

impl VariantSpec {
    /// A variant with a fixed default replica count and the Model's resources.
    pub fn new(name: impl Into<String>, model: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            model: model.into(),
            weight,
            replicas: None,
            autoscaling: None,
            resources: None,
        }
    }
}

impl ShadowSpec {
    /// Mirror `percent` of the traffic to `model`, every other option at its default.
    pub fn new(model: impl Into<String>, percent: f64) -> Self {
        Self {
            model: model.into(),
            percent,
            compare: None,
            tolerance: None,
            compare_percent: None,
            max_body_bytes: None,
            forward_credentials: None,
            timeout_ms: None,
            replicas: None,
        }
    }
}

/// Horizontal autoscaling of a variant, on exactly one target: `targetCPUUtilizationPercentage`
/// (the default, 80, when neither is set) or `targetRequestsPerSecond`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(crates(kube_core = "::kube_core"))]
#[x_kube(validation = Rule::new("!has(self.targetCPUUtilizationPercentage) || !has(self.targetRequestsPerSecond)").message("set one target: targetCPUUtilizationPercentage or targetRequestsPerSecond"))]
#[x_kube(validation = Rule::new("self.minReplicas > 0 || has(self.targetRequestsPerSecond)").message("minReplicas 0 (scale to zero) needs targetRequestsPerSecond"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Lowest replica count. 0 scales the variant to zero after `scaleToZeroAfterSeconds`
    /// without a request (needs `targetRequestsPerSecond`): its requests are then held by the
    /// proxies while a pod starts, and answered once it is ready.
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Highest replica count; at least `minReplicas`.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Target average CPU utilisation in percent of the model container's CPU request (default
    /// 80 when no target is set). A HorizontalPodAutoscaler scales on it; the container needs
    /// a CPU request (`resources.requests.cpu` of the variant or its Model).
    // Spelled as the HorizontalPodAutoscaler spells it. serde's camelCase made it
    // `targetCpuUtilizationPercentage` before: local mode's files may still say so (an API
    // server prunes that name, which is not in the schema).
    #[serde(
        rename = "targetCPUUtilizationPercentage",
        alias = "targetCpuUtilizationPercentage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
    /// Target requests per second per replica (> 0), measured from the filter's
    /// `mlep_requests_total` in Prometheus over the last minute. The operator sets the
    /// Deployment's replicas itself every 15 s: ceil(rate / target) within the bounds, kept
    /// while within 10 % of the current replicas' capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0, "exclusiveMinimum" = true))]
    pub target_requests_per_second: Option<f64>,
    /// Seconds a lower recommendation must hold before replicas go down: the highest
    /// recommendation of this window wins (0..3600, default 300). Scaling up is immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
    /// With `minReplicas: 0`: seconds without a request before the variant goes to zero
    /// (30..86400, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub scale_to_zero_after_seconds: Option<i32>,
}

/// `scaleToZeroAfterSeconds` when unset.
pub const DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS: i32 = 300;
/// Shortest `scaleToZeroAfterSeconds`: a few of Prometheus' scrapes.
pub const MIN_SCALE_TO_ZERO_AFTER_SECONDS: i32 = 30;
/// Longest `scaleToZeroAfterSeconds` (a day).
pub const MAX_SCALE_TO_ZERO_AFTER_SECONDS: i32 = 86_400;

/// CPU utilisation target when an `autoscaling` names no target (percent of the request).
pub const DEFAULT_TARGET_CPU_PERCENT: i32 = 80;
/// `scaleDownStabilizationSeconds` when unset: the HPA's own default.
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 300;
/// Largest `scaleDownStabilizationSeconds` (the HPA's limit).
pub const MAX_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 3600;

/// What a variant scales on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleTarget {
    /// Average CPU utilisation in percent of the request: a HorizontalPodAutoscaler.
    CpuPercent(i32),
    /// Requests per second per replica: the operator (`mlep_core::autoscale`).
    RequestsPerSecond(f64),
}

impl AutoscalingSpec {
    /// The target: the request rate when given, else CPU (default 80 %). A spec naming both
    /// is invalid (`crate::validate`).
    pub fn target(&self) -> ScaleTarget {
        match self.target_requests_per_second {
            Some(rps) => ScaleTarget::RequestsPerSecond(rps),
            None => ScaleTarget::CpuPercent(
                self.target_cpu_utilization_percentage
                    .unwrap_or(DEFAULT_TARGET_CPU_PERCENT),
            ),
        }
    }

    /// `scaleDownStabilizationSeconds`, defaulted.
    pub fn scale_down_stabilization_seconds(&self) -> i32 {
        self.scale_down_stabilization_seconds
            .unwrap_or(DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS)
    }

    /// Seconds without a request before going to zero; `None` unless `minReplicas` is 0.
    pub fn scale_to_zero_after_seconds(&self) -> Option<i32> {
        (self.min_replicas == 0).then(|| {
            self.scale_to_zero_after_seconds
                .unwrap_or(DEFAULT_SCALE_TO_ZERO_AFTER_SECONDS)
        })
    }
}

/// Request assignment.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// Header clients set to pick a variant by name (default `x-mlep-target-variant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_header: Option<String>,
    /// Whether clients may pick a variant (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_targeting: Option<bool>,
    /// A target naming no variant: `Reject` with 400 (default) or `Ignore` it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::api_enum"
    )]
    #[schemars(schema_with = "crate::api_enum::schema::<UnknownTarget>")]
    pub unknown_target: Option<UnknownTarget>,
    /// Sticky assignment: the same user key always gets the same variant while weights stay.
    #[serde(default)]
    pub sticky: StickySpec,
}

/// Where the user key comes from: the filter's own type (`mlep_contract::StickyConfig`).
pub type StickySpec = mlep_contract::StickyConfig;

/// A shadow model receiving a copy of a share of the traffic; its answers never reach clients.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSpec {
    /// Name of the Model (same namespace) to mirror to.
    pub model: String,
    /// Percent of requests mirrored, 0 to 100 (fractions allowed).
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    /// Compare the shadow's answers with the primary's: `Off`, `Exact` (same bytes) or `Json`
    /// (same JSON, numbers within `tolerance`). Default `Json`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::api_enum"
    )]
    #[schemars(schema_with = "crate::api_enum::schema::<CompareMode>")]
    pub compare: Option<CompareMode>,
    /// Absolute numeric tolerance for `Json` comparison (default 1e-6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// Percent of the mirrored copies compared, 0 to 100 (default 100). The rest are sent and
    /// their outcomes counted without reading either answer (by Envoy's own mirror where the
    /// filter wiring can patch routes): at 100 % shadow, comparing 10 % of the copies still
    /// estimates agreement (the count of compared copies is in the metrics) at a fraction of
    /// the cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub compare_percent: Option<f64>,
    /// Largest request body mirrored in bytes (default 65536); larger requests are not mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
    /// Copy `Authorization` and `Cookie` headers to the shadow (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_credentials: Option<bool>,
    /// Shadow call timeout in milliseconds (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Replicas of the shadow model (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

impl ShadowSpec {
    /// Compares some of its copies, not all (`comparePercent` below 100): where routes can
    /// carry a mirror, each header route gets a mirroring twin for the others.
    pub fn compares_a_sample(&self) -> bool {
        self.compare != Some(CompareMode::Off)
            && self.percent > 0.0
            && self.compare_percent.is_some_and(|p| p < 100.0)
    }
}

/// How the filter reaches Envoy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FilterWiring {
    /// An `EnvoyFilter` inserting the Wasm HTTP filter before the router.
    #[default]
    EnvoyFilter,
    /// An `extensions.istio.io` `WasmPlugin`.
    WasmPlugin,
}

impl FilterWiring {
    /// Whether this wiring can patch the endpoint's routes (an EnvoyFilter can; a WasmPlugin
    /// only delivers the filter): where it can, Envoy mirrors an uncompared shadow
    /// (`crate::mirror`).
    pub fn patches_routes(self) -> bool {
        self == FilterWiring::EnvoyFilter
    }
}

/// Observed state of a ModelEndpoint.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelEndpointStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Per-variant desired and current weight and replicas.
    #[serde(default)]
    pub variants: Vec<VariantStatus>,
    /// `Pending`, `Progressing`, `Ready` or `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Where the endpoint answers, e.g. `http://titanic.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The bucket allocation in effect. The next allocation is derived from it so that a weight
    /// change moves only the users it must; do not edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    /// One-line summaries for `kubectl get mle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<StatusSummary>,
    /// The current or last rollout of a variant's model; the operator resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Variants removed from the spec whose route, subset and Deployment stay until proxies
    /// have stopped assigning them (see `mlep_core::plan::retiring`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringVariant>,
    /// The endpoint's route key: its routes obey a variant or model header only with it, and
    /// only the filter adds it, so no client can pick a variant or model by header. Chosen at
    /// random by the operator on first sight and kept; remove it to rotate (a new one is
    /// chosen). Treat it like the endpoint's VirtualService: readers of either can steer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_key: Option<String>,
    /// When the routing (bucket allocation, each variant's model and routed weight) last
    /// changed, in Unix seconds. `Ready` waits a few seconds after it: proxies receive a change
    /// asynchronously, and a user must not be assigned by the previous routing once `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed_since_unix: Option<i64>,
    /// The shadow model copies go to: set once its Deployment has a ready pod (condition
    /// `ShadowReady`); absent before that and without a shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_model: Option<String>,
    /// The applied VirtualService has mirroring twins (`crate::mirror`): only then does the
    /// shared filter send uncompared copies through them (not after an upgrade, before this
    /// endpoint's reconcile, nor for an invalid spec asking for them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror_twins: bool,
    /// The spec the operator last accepted, the one that serves: the shared filter entry is
    /// built from it, never from a spec that was rejected since (its hosts, shadow, routing
    /// and capture would otherwise reach every proxy unchecked). Written by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::opaque_object")]
    pub served_spec: Option<ModelEndpointSpec>,
}

/// Observed state of one variant.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantStatus {
    /// Variant name.
    pub name: String,
    /// Model the variant's traffic goes to now (the previous model until a new one is ready).
    pub model: String,
    /// Model the spec asks for; differs from `model` while a swap waits for readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_model: Option<String>,
    /// Weight asked for in the spec.
    pub desired_weight: u32,
    /// Weight currently routed (lags the desired weight while a new model becomes ready).
    pub current_weight: u32,
    /// Desired replicas of the serving Deployment.
    pub replicas: i32,
    /// Ready replicas of the serving Deployment.
    pub ready_replicas: i32,
    /// The variant's autoscaling, when `autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<VariantAutoscalingStatus>,
}

/// What a variant's autoscaler aims at and, where known, what it measures.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantAutoscalingStatus {
    /// `minReplicas` of the spec.
    pub min_replicas: i32,
    /// `maxReplicas` of the spec.
    pub max_replicas: i32,
    /// The target, e.g. `cpu 80%` (a HorizontalPodAutoscaler) or `5 rps/replica` (the
    /// operator).
    pub target: String,
    /// The value last measured, in the target's unit, e.g. `4.2 rps/replica` (the serving
    /// model's request rate over its replicas). Absent when unknown: CPU (read the
    /// HorizontalPodAutoscaler's status), no data yet, or Prometheus not answering (an Event
    /// says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Since when (Unix seconds) the variant sleeps (`minReplicas: 0` and idle): the proxies
    /// hold its requests and wake it; its pods go a few seconds after it falls asleep, and it
    /// stays asleep until a woken pod is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asleep_since_unix: Option<i64>,
}

/// A status condition. Condition lists are keyed by `type` (a list-map: server-side apply
/// merges them entry by entry).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason, e.g. `InvalidSpec`.
    pub reason: String,
    /// Human-readable detail; for invalid specs it names the field.
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition types and reasons, in one place.
pub mod conditions;

#[cfg(test)]
mod tests {
    use super::*;
    use kube_core::Resource;

    #[test]
    fn api_version_constants_match_the_derived_resources() {
        assert_eq!(format!("{GROUP}/{VERSION}"), API_VERSION);
        assert_eq!(Model::api_version(&()), API_VERSION);
        assert_eq!(ModelEndpoint::api_version(&()), API_VERSION);
        assert_eq!(Model::group(&()), GROUP);
        assert_eq!(ModelEndpoint::version(&()), VERSION);
    }

    #[test]
    fn autoscaling_fields_are_spelled_as_kubernetes_spells_them() {
        let a: AutoscalingSpec = serde_json::from_value(serde_json::json!({
            "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50,
            "scaleDownStabilizationSeconds": 30
        }))
        .unwrap();
        assert_eq!(a.target(), ScaleTarget::CpuPercent(50));
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::json!({"minReplicas": 1, "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50, "scaleDownStabilizationSeconds": 30})
        );
        let old: AutoscalingSpec = serde_json::from_value(serde_json::json!({
            "minReplicas": 1, "maxReplicas": 3, "targetCpuUtilizationPercentage": 60
        }))
        .unwrap();
        assert_eq!(old.target_cpu_utilization_percentage, Some(60));
        let rps: AutoscalingSpec = serde_json::from_value(serde_json::json!({
            "minReplicas": 1, "maxReplicas": 3, "targetRequestsPerSecond": 2.5
        }))
        .unwrap();
        assert_eq!(rps.target(), ScaleTarget::RequestsPerSecond(2.5));
        assert_eq!(rps.scale_down_stabilization_seconds(), 300);
    }
}
