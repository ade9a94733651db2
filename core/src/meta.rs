//! What every object the operator writes shares: the field manager, the label keys, the
//! cluster-wide settings and the metadata helpers. The bottom of rendering: the per-endpoint
//! objects (`crate::render`) and the shared filter objects (`crate::aggregate`) build on it.

use crate::analysis::PrometheusPolicy;
use crate::module;
use crate::pod_security::PodSecurityLevel;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "mlep-operator";
/// Pod labels Istio telemetry and Kiali's versioned graph read: the workload (`app: <endpoint>`)
/// and its version (`version: <variant>`, also what DestinationRule subsets select).
pub const LABEL_APP: &str = "app";
pub const LABEL_VERSION: &str = "version";
/// Istio's canonical service labels, read before `app`/`version` for telemetry's
/// `destination_canonical_service`/`_revision` (istio pkg/kube/labels/labels.go
/// `revisionLabels`) and so for Kiali's versioned app graph: the revision is
/// `<variant>-<model>` (the subset name), so during a rollout the old and the new model of one
/// variant are two nodes, while `version` stays the variant for the DestinationRule subsets.
pub const LABEL_CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const LABEL_CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Label keys of the operator's own.
pub const LABEL_ENDPOINT: &str = "mlep.dev/endpoint";
pub const LABEL_ENDPOINT_NAMESPACE: &str = "mlep.dev/endpoint-namespace";
pub const LABEL_VARIANT: &str = "mlep.dev/variant";
pub const LABEL_MODEL: &str = "mlep.dev/model";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label on the shared filter objects (`crate::aggregate`): which proxies the object serves.
pub const LABEL_FILTER: &str = "mlep.dev/filter";
/// Service port every endpoint listens on inside the mesh.
pub const SERVICE_PORT: i32 = 80;

/// A kind the operator writes: what it lists, applies and prunes, and what its RBAC grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs and RBAC rules.
    pub plural: &'static str,
    /// Written only as the shared filter objects (`crate::aggregate::shared_objects`): by
    /// name, in the mesh root and gateway namespaces, never in an endpoint's namespace.
    pub shared: bool,
}

impl Kind {
    /// The API group (`""` for the core group).
    pub fn group(&self) -> &'static str {
        self.api_version.split_once('/').map_or("", |(g, _)| g)
    }

    /// The version within the group.
    pub fn version(&self) -> &'static str {
        self.api_version
            .split_once('/')
            .map_or(self.api_version, |(_, v)| v)
    }

    /// The kind of `(apiVersion, kind)`, if the operator writes it.
    pub fn of(api_version: &str, kind: &str) -> Option<&'static Kind> {
        KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.kind == kind)
    }

    const fn typed<K: k8s_openapi::Resource>() -> Self {
        Kind {
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            shared: false,
        }
    }

    const fn istio(api_version: &'static str, kind: &'static str, plural: &'static str) -> Self {
        Kind {
            api_version,
            kind,
            plural,
            shared: false,
        }
    }
}

pub const DEPLOYMENT: Kind = Kind::typed::<k8s_openapi::api::apps::v1::Deployment>();
pub const SERVICE: Kind = Kind::typed::<k8s_openapi::api::core::v1::Service>();
pub const AUTOSCALER: Kind =
    Kind::typed::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>();
pub const DESTINATION_RULE: Kind =
    Kind::istio(ISTIO_NETWORKING, "DestinationRule", "destinationrules");
pub const VIRTUAL_SERVICE: Kind =
    Kind::istio(ISTIO_NETWORKING, "VirtualService", "virtualservices");
pub const GATEWAY: Kind = Kind::istio(ISTIO_NETWORKING, "Gateway", "gateways");
pub const ENVOY_FILTER: Kind = Kind {
    shared: true,
    ..Kind::istio(
        "networking.istio.io/v1alpha3",
        "EnvoyFilter",
        "envoyfilters",
    )
};
pub const WASM_PLUGIN: Kind = Kind {
    shared: true,
    ..Kind::istio("extensions.istio.io/v1alpha1", "WasmPlugin", "wasmplugins")
};

/// Every kind the operator writes, the one table its reconcile, its RBAC and its benchmark
/// read.
pub const KINDS: &[Kind] = &[
    DEPLOYMENT,
    SERVICE,
    DESTINATION_RULE,
    VIRTUAL_SERVICE,
    GATEWAY,
    ENVOY_FILTER,
    WASM_PLUGIN,
    AUTOSCALER,
];

/// apiVersion of Istio's networking kinds (DestinationRule, VirtualService, Gateway).
const ISTIO_NETWORKING: &str = "networking.istio.io/v1";

/// Cluster-wide choices that are not part of any resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Image of the init container that fetches and verifies artifacts (`mlep-model-init`).
    pub model_init_image: String,
    /// Image of the data capture sink (`mlep-capture-sink`), one Deployment per endpoint with
    /// `spec.dataCapture` on.
    pub capture_sink_image: String,
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
    /// The Pod Security Standard model pods must meet (`restricted` by default): a Model
    /// breaking it is rejected naming the field, and nothing is deployed for it.
    pub pod_security: PodSecurityLevel,
    /// The Prometheus servers rollout analysis may query: the operator's own configuration,
    /// never a URL a tenant chooses.
    pub prometheus: PrometheusPolicy,
    /// Where the proxies ask to wake a variant scaled to zero: the operator's Service, admin
    /// port (`POST /wake/<namespace>/<endpoint>/<variant>`).
    pub wake: crate::envoy::CallTarget,
    /// The external hosts an endpoint may claim, as patterns with `{namespace}` standing for
    /// its namespace (`*.{namespace}.models.example.com`, [`crate::host_claims::permitted`]);
    /// empty: any external host, first come first served.
    pub allowed_hosts: Vec<String>,
    /// Where the filter's native build (`libmlep_filter_native.so`, an Envoy dynamic module)
    /// sits on every proxy in the mesh, if it does: endpoints whose spec needs nothing only
    /// the Wasm build serves then run on it (EnvoyFilter wiring). `None`: the Wasm build only.
    /// Set it only when every proxy image carries the file: a proxy that cannot load it
    /// refuses the routes that name it.
    pub native_filter: Option<String>,
}

impl RenderSettings {
    /// These settings with the module of this sha256, served by the operator in
    /// `operator_namespace` (the URL is versioned by the sha256: see [`crate::module`]).
    pub fn with_module(mut self, sha256: &str, operator_namespace: &str) -> Self {
        let base = module::operator_base_url(
            operator_namespace,
            &self.cluster_domain,
            module::MODULE_PORT,
        );
        self.wasm_url = module::module_url(&base, sha256);
        self.wasm_sha256 = sha256.to_owned();
        self.wake =
            crate::envoy::CallTarget::operator_istio(operator_namespace, &self.cluster_domain);
        self
    }
}

/// The Kubernetes default DNS domain; local mode checks hosts against it.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

impl Default for RenderSettings {
    /// The operator's defaults, with a placeholder module checksum (all zeros): callers that
    /// print or apply objects set the real one with [`RenderSettings::with_module`].
    fn default() -> Self {
        let zeros = "0".repeat(64);
        let base = module::operator_base_url(
            module::OPERATOR_NAMESPACE,
            DEFAULT_CLUSTER_DOMAIN,
            module::MODULE_PORT,
        );
        Self {
            model_init_image: "ghcr.io/k8smlendpoints/mlep-model-init:0.1.0".into(),
            capture_sink_image: "ghcr.io/k8smlendpoints/mlep-capture-sink:0.1.0".into(),
            wasm_url: module::module_url(&base, &zeros),
            wasm_sha256: zeros,
            gateway_namespace: "istio-system".into(),
            mesh_root_namespace: "istio-system".into(),
            gateway_selector: [("istio".to_owned(), "ingressgateway".to_owned())]
                .into_iter()
                .collect(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.into(),
            route_grace_seconds: 30,
            pod_security: PodSecurityLevel::default(),
            prometheus: PrometheusPolicy::default(),
            wake: crate::envoy::CallTarget::operator_istio(
                module::OPERATOR_NAMESPACE,
                DEFAULT_CLUSTER_DOMAIN,
            ),
            allowed_hosts: Vec::new(),
            native_filter: None,
        }
    }
}

pub fn labels<'l>(pairs: impl IntoIterator<Item = (&'l str, &'l str)>) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An Istio object: no k8s-openapi type exists, so the spec is JSON checked against Istio's
/// CRD schemas by the operator's tests; the envelope and metadata are typed.
pub fn istio(kind: &Kind, metadata: ObjectMeta, spec: Value) -> Value {
    json!({ "apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "spec": spec })
}
