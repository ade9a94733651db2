//! Pure planning for local mode: the desired local topology from the loaded resources, the
//! filter configuration for it, and what to do when the input changes.
//!
//! A *server set* is the model-server processes of one endpoint role (a variant, or the
//! shadow), identified by a fingerprint of everything that shapes the process (model name,
//! image or local command, artifact sha256, env). A change of fingerprint is a *model change*:
//! the new set is started and must be ready before traffic moves to it, then the old set stops.
//! A change of weights only is a filter-config reload.

use crate::envoy::{ClusterUpstream, NativeMirror, RouteEndpoint, RouteVariant};
use crate::load::{Input, LoadedEndpoint};
use mlep_contract::{Allocation, EndpointConfig, FilterConfig, CONFIG_VERSION};
use mlep_core::crd::Artifact;
use mlep_core::envoy::{CallTarget, EndpointRoute};
use mlep_core::filter_config::{endpoint_config, spec_weights, Targets};
use mlep_core::meta::SERVICE_PORT;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Annotation on a Model naming a command line to run it locally instead of its image. The
/// command runs through `sh -c` with `PORT` (listen on 127.0.0.1:$PORT) and `MODEL_DIR` (the
/// unpacked artifact) in its environment, and must answer `GET /ping` when ready.
pub const LOCAL_COMMAND_ANNOTATION: &str = "mlep.dev/local-command";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "Model {namespace}/{model} ({at}): image {image:?} cannot run locally. Local mode runs the mlep model server \
         (images named */mlep-model-server:*) as a local process; for any other image add the annotation \
         `{LOCAL_COMMAND_ANNOTATION}: <command>` (run with PORT and MODEL_DIR set)"
    )]
    UnsupportedImage {
        namespace: String,
        model: String,
        image: String,
        at: String,
    },
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("ModelEndpoint {namespace}/{endpoint}: {message}")]
    Config {
        namespace: String,
        endpoint: String,
        message: String,
    },
    #[error("ModelEndpoint {namespace}/{endpoint}: model {model:?} is not loaded")]
    MissingModel {
        namespace: String,
        endpoint: String,
        model: String,
    },
}

/// How a model runs locally.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Runtime {
    /// The local `mlep-model-server` binary.
    ModelServer,
    /// `sh -c <command>` with `PORT` and `MODEL_DIR`.
    Command(String),
}

/// Whether an image is the mlep model server: `<registry/path>/mlep-model-server[:tag|@digest]`.
pub fn is_model_server_image(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    let repo = last.split(':').next().unwrap_or(last);
    repo == "mlep-model-server"
}

/// The processes serving one role of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSet {
    pub namespace: String,
    pub endpoint: String,
    /// Variant name, or `shadow`.
    pub role: Role,
    pub model: String,
    pub runtime: Runtime,
    pub artifact: Option<Artifact>,
    pub env: Vec<(String, String)>,
    pub replicas: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Variant(String),
    Shadow,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Variant(v) => write!(f, "{v}"),
            Role::Shadow => f.write_str(mlep_contract::metrics::SHADOW_VARIANT_LABEL),
        }
    }
}

impl ServerSet {
    /// Everything that shapes the process; equal fingerprints can share running servers.
    pub fn fingerprint(&self) -> String {
        let runtime = match &self.runtime {
            Runtime::ModelServer => "mlep-model-server".to_owned(),
            Runtime::Command(c) => format!("cmd:{c}"),
        };
        let sha = self
            .artifact
            .as_ref()
            .map(|a| a.sha256.as_str())
            .unwrap_or("-");
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}|{runtime}|{sha}|{}", self.model, env.join(","))
    }

    /// `(namespace, endpoint, role)`.
    pub fn key(&self) -> (String, String, Role) {
        (
            self.namespace.clone(),
            self.endpoint.clone(),
            self.role.clone(),
        )
    }

    /// A short label for logs and progress: `titanic/a (titanic-v1)`.
    pub fn label(&self) -> String {
        format!("{}/{} ({})", self.endpoint, self.role, self.model)
    }
}

/// One endpoint as it runs locally.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointPlan {
    pub endpoint: LoadedEndpoint,
    /// One per variant, in spec order.
    pub variants: Vec<ServerSet>,
    pub shadow: Option<ServerSet>,
}

impl EndpointPlan {
    pub fn name(&self) -> &str {
        &self.endpoint.name
    }
    pub fn namespace(&self) -> &str {
        &self.endpoint.namespace
    }
    pub fn weights(&self) -> Vec<(&str, u32)> {
        spec_weights(&self.endpoint.spec)
    }
    pub fn sets(&self) -> impl Iterator<Item = &ServerSet> {
        self.variants.iter().chain(self.shadow.iter())
    }
}

/// The whole local topology.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub endpoints: Vec<EndpointPlan>,
}

impl Desired {
    pub fn sets(&self) -> impl Iterator<Item = &ServerSet> {
        self.endpoints.iter().flat_map(|e| e.sets())
    }

    /// The endpoint `ns/name`.
    pub fn endpoint(&self, ns: &str, name: &str) -> Option<&EndpointPlan> {
        self.endpoints
            .iter()
            .find(|e| e.namespace() == ns && e.name() == name)
    }

    /// The endpoint `ns/name`, to change.
    pub fn endpoint_mut(&mut self, ns: &str, name: &str) -> Option<&mut EndpointPlan> {
        self.endpoints
            .iter_mut()
            .find(|e| e.namespace() == ns && e.name() == name)
    }
}

fn server_set(
    input: &Input,
    ep: &LoadedEndpoint,
    role: Role,
    model: &str,
    replicas: u32,
) -> Result<ServerSet, PlanError> {
    let m = input
        .model(&ep.namespace, model)
        .ok_or_else(|| PlanError::MissingModel {
            namespace: ep.namespace.clone(),
            endpoint: ep.name.clone(),
            model: model.to_owned(),
        })?;
    let runtime = match m.annotations.get(LOCAL_COMMAND_ANNOTATION) {
        Some(cmd) => Runtime::Command(cmd.clone()),
        None if is_model_server_image(&m.spec.image) => Runtime::ModelServer,
        None => {
            return Err(PlanError::UnsupportedImage {
                namespace: m.namespace.clone(),
                model: m.name.clone(),
                image: m.spec.image.clone(),
                at: m.at.to_string(),
            })
        }
    };
    let env = m
        .spec
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    Ok(ServerSet {
        namespace: ep.namespace.clone(),
        endpoint: ep.name.clone(),
        role,
        model: model.to_owned(),
        runtime,
        artifact: m.spec.artifact.clone(),
        env,
        replicas,
    })
}

/// The server set of variant `v` of `ep` running `model` (its spec model, or the one a resumed
/// rollout keeps it on). Locally, autoscaling runs its minimum; at least one server.
pub fn variant_set(
    input: &Input,
    ep: &LoadedEndpoint,
    v: &mlep_core::crd::VariantSpec,
    model: &str,
) -> Result<ServerSet, PlanError> {
    let replicas = match (&v.autoscaling, v.replicas) {
        (Some(a), _) => a.min_replicas,
        (None, Some(r)) => r,
        (None, None) => 1,
    };
    let replicas = u32::try_from(replicas).unwrap_or(1).max(1);
    server_set(input, ep, Role::Variant(v.name.clone()), model, replicas)
}

/// The desired topology for validated input.
pub fn desired(input: &Input) -> Result<Desired, PlanError> {
    let mut endpoints = Vec::new();
    for ep in &input.endpoints {
        let mut variants = Vec::new();
        for v in &ep.spec.variants {
            variants.push(variant_set(input, ep, v, &v.model)?);
        }
        let shadow = match &ep.spec.shadow {
            Some(s) => {
                let replicas = u32::try_from(s.replicas.unwrap_or(1)).unwrap_or(1).max(1);
                Some(server_set(input, ep, Role::Shadow, &s.model, replicas)?)
            }
            None => None,
        };
        endpoints.push(EndpointPlan {
            endpoint: ep.clone(),
            variants,
            shadow,
        });
    }
    Ok(Desired { endpoints })
}

impl Desired {
    /// The shadows whose copies Envoy's routes mirror, all (`compare: Off`) or the uncompared
    /// ones (a sampled comparison), with their clusters: the clusters count every copy.
    pub fn mirrored_shadows(&self) -> Vec<crate::table::MirroredShadow> {
        self.endpoints
            .iter()
            .filter_map(|e| {
                let s = e.endpoint.spec.mirrored_shadow()?;
                Some(crate::table::MirroredShadow {
                    namespace: e.namespace().to_owned(),
                    endpoint: e.name().to_owned(),
                    model: s.model.clone(),
                    cluster: shadow_cluster(e.namespace(), e.name()),
                })
            })
            .collect()
    }
}

/// The Envoy cluster of an endpoint's shadow (variant clusters are `envoy::variant_cluster`,
/// `mlep|<endpoint>|<variant>`; this name cannot collide with them, even for a variant called `shadow`).
pub fn shadow_cluster(namespace: &str, endpoint: &str) -> String {
    CallTarget::shadow_local(endpoint, namespace).cluster
}

/// The Envoy cluster of an endpoint's capture sink in local mode.
pub fn capture_cluster(namespace: &str, endpoint: &str) -> String {
    CallTarget::capture_local(endpoint, namespace).cluster
}

/// The filter configuration for the local topology, with each endpoint's allocation carried
/// forward from `previous` (keyed `namespace/name`), exactly as the operator does
/// (`mlep_core::filter_config::endpoint_config`). Each endpoint is served on one virtual host,
/// named as its Service's in a mesh ([`local_virtual_host`]); `route_key` is local mode's
/// (one random key per run, `mlep_core::envoy::EndpointRoute`).
pub fn filter_config(
    d: &Desired,
    previous: &BTreeMap<String, Allocation>,
    route_key: &str,
) -> Result<FilterConfig, PlanError> {
    let mut endpoints: Vec<EndpointConfig> = Vec::new();
    for e in &d.endpoints {
        let key = format!("{}/{}", e.namespace(), e.name());
        let target = e
            .shadow
            .as_ref()
            .map(|_| CallTarget::shadow_local(e.name(), e.namespace()));
        let cfg = endpoint_config(
            e.name(),
            e.namespace(),
            &e.endpoint.spec,
            &e.weights(),
            previous.get(&key),
            Targets {
                shadow: target,
                capture: e
                    .endpoint
                    .spec
                    .data_capture
                    .as_ref()
                    .map(|_| CallTarget::capture_local(e.name(), e.namespace())),
            },
            EndpointRoute {
                virtual_hosts: vec![local_virtual_host(e.namespace(), e.name())],
                key: route_key.to_owned(),
            },
        )
        .map_err(|err| PlanError::Config {
            namespace: e.namespace().into(),
            endpoint: e.name().into(),
            message: err.to_string(),
        })?;
        endpoints.push(cfg);
    }
    let cfg = FilterConfig {
        version: CONFIG_VERSION,
        endpoints,
    };
    cfg.validate().map_err(|err| PlanError::Config {
        namespace: String::new(),
        endpoint: String::new(),
        message: err.to_string(),
    })?;
    Ok(cfg)
}

/// A fresh random route key (`mlep_core::envoy::new_route_key`).
pub fn fresh_route_key() -> Result<String, getrandom::Error> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random)?;
    Ok(mlep_core::envoy::new_route_key(random))
}

/// A route key for tests.
#[cfg(test)]
pub const TEST_ROUTE_KEY: &str = "local-test-route-key";

/// The name of an endpoint's virtual host in local mode: its Service's in a mesh
/// (`<name>.<ns>.svc.cluster.local:80`), so a filter config reads the same in both worlds.
pub fn local_virtual_host(namespace: &str, name: &str) -> String {
    let mesh = mlep_core::envoy::mesh_virtual_hosts(
        name,
        namespace,
        mlep_core::meta::DEFAULT_CLUSTER_DOMAIN,
        &[],
        SERVICE_PORT,
    );
    mesh.into_iter().next().unwrap_or_default()
}

/// The endpoints of local mode's Envoy bootstrap for `d`: per endpoint its virtual host (named
/// as in its filter config `cfg`) answering to its hosts (plus `*` when it is the only one, so
/// `http://127.0.0.1:<port>` reaches it with any `Host`; with several, send `Host: <host>`), one
/// route and cluster per variant at the spec's weight, and the shadow's cluster
/// ([`shadow_cluster`], the filter config's `shadow.cluster`). `addr` says where a running
/// server set answers; a set without one is an error naming it.
pub fn route_endpoints(
    d: &Desired,
    cfg: &FilterConfig,
    addr: impl Fn(&EndpointPlan, &ServerSet) -> Option<SocketAddr>,
) -> Result<Vec<RouteEndpoint>, PlanError> {
    let running = |e: &EndpointPlan, set: &ServerSet| {
        addr(e, set).ok_or_else(|| PlanError::NotRunning(set.label()))
    };
    let mut endpoints = Vec::new();
    for (e, c) in d.endpoints.iter().zip(&cfg.endpoints) {
        let weights = e.weights();
        let mut variants = Vec::new();
        for set in &e.variants {
            let name = set.role.to_string();
            let weight = weights
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, w)| *w)
                .unwrap_or(0);
            let upstream = running(e, set)?;
            variants.push(RouteVariant {
                upstream,
                name,
                weight,
                // Every variant gets a rollout cluster from the start (its EDS file points at
                // the variant's own servers until a rollout starts the new model), so a
                // rollout is an EDS + filter-config change, never an Envoy restart.
                rollout_upstream: Some(upstream),
            });
        }
        let shadow = match &e.shadow {
            Some(set) => Some(ClusterUpstream {
                cluster: shadow_cluster(e.namespace(), e.name()),
                upstream: running(e, set)?,
            }),
            None => None,
        };
        let mut hosts = e.endpoint.spec.hosts.clone();
        if d.endpoints.len() == 1 && !hosts.iter().any(|h| h == "*") {
            hosts.push("*".into());
        }
        endpoints.push(RouteEndpoint {
            name: e.name().to_owned(),
            virtual_host: c.virtual_hosts.first().cloned().unwrap_or_default(),
            route_key: c.route_key.clone(),
            hosts,
            variants,
            shadow,
            // The filter config still holds the shadow (local mode takes it out as it writes
            // the config, `local::proxy`): Envoy mirrors it when it compares nothing.
            mirror: NativeMirror::take(&mut c.shadow.clone()),
            capture: None,
        });
    }
    Ok(endpoints)
}

/// What a change of input asks for. The shell applies it in this order: start `start` and wait
/// until every new server is ready, then (re)configure the proxy, then stop `stop`. So traffic
/// moves only to ready servers and no request is sent to a stopped one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// Server sets to start (new roles and model changes).
    pub start: Vec<ServerSet>,
    /// Server sets to stop once traffic has moved (removed roles and replaced models).
    pub stop: Vec<ServerSet>,
    /// Server sets that keep running but whose replica count changed: `(old, new)`.
    pub rescale: Vec<(ServerSet, ServerSet)>,
    /// The endpoints, their routing or their upstreams changed: the proxy needs new routes or
    /// clusters, not only a filter-config reload.
    pub routes_changed: bool,
    /// The filter configuration changed (weights, routing, shadow, hosts): reload it.
    pub config_changed: bool,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
            && self.stop.is_empty()
            && self.rescale.is_empty()
            && !self.routes_changed
            && !self.config_changed
    }

    /// Only the filter configuration changes: weights (or routing options); no process starts
    /// or stops, no route or cluster changes. Applied by an atomic filter-config reload.
    pub fn is_config_only(&self) -> bool {
        self.config_changed
            && self.start.is_empty()
            && self.stop.is_empty()
            && self.rescale.is_empty()
            && !self.routes_changed
    }
}

/// One endpoint's route layout: namespace, name, hosts, variant names, and what the routes
/// carry of a shadow Envoy mirrors (its share, as bits, and whether credentials go along).
type RouteLayout = (
    String,
    String,
    Vec<String>,
    Vec<String>,
    Option<(Option<u64>, bool)>,
);

/// The route layout: endpoints, their hosts and variants. (Every endpoint has a shadow cluster
/// in local mode, empty without a shadow, so adding or removing a shadow the filter copies
/// changes no route; one Envoy mirrors is on the routes: its share with `compare: Off`, the
/// twin routes when it compares a sample.)
fn routes(d: &Desired) -> Vec<RouteLayout> {
    d.endpoints
        .iter()
        .map(|e| {
            (
                e.namespace().to_owned(),
                e.name().to_owned(),
                e.endpoint.spec.hosts.clone(),
                e.variants.iter().map(|v| v.role.to_string()).collect(),
                e.endpoint
                    .spec
                    .mirrored_shadow()
                    // Twins mirror all they are sent whatever the share (`mlep_core::mirror`).
                    .map(|s| {
                        let share = (!s.compares_a_sample()).then_some(s.percent.to_bits());
                        (share, s.forward_credentials.unwrap_or(false))
                    }),
            )
        })
        .collect()
}

/// Compare two topologies.
pub fn diff(old: &Desired, new: &Desired) -> Change {
    let old_sets: BTreeMap<_, &ServerSet> = old.sets().map(|s| (s.key(), s)).collect();
    let new_sets: BTreeMap<_, &ServerSet> = new.sets().map(|s| (s.key(), s)).collect();
    let mut c = Change::default();
    for (k, n) in &new_sets {
        match old_sets.get(k) {
            None => c.start.push((*n).clone()),
            Some(o) if o.fingerprint() != n.fingerprint() => {
                c.start.push((*n).clone());
                c.stop.push((*o).clone());
            }
            Some(o) if o.replicas != n.replicas => c.rescale.push(((*o).clone(), (*n).clone())),
            Some(_) => {}
        }
    }
    for (k, o) in &old_sets {
        if !new_sets.contains_key(k) {
            c.stop.push((*o).clone());
        }
    }
    c.routes_changed = routes(old) != routes(new);
    let specs = |d: &Desired| -> Vec<_> {
        d.endpoints
            .iter()
            .map(|e| (e.endpoint.name.clone(), e.endpoint.spec.clone()))
            .collect()
    };
    c.config_changed = specs(old) != specs(new);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{parse_into, validate, Input};
    use std::path::Path;

    const MODELS: &str = "\
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata: {name: m1}
spec:
  image: ghcr.io/k8smlendpoints/mlep-model-server:0.1.0
  artifact: {uri: 'https://example.com/1.tar.gz', sha256: 1111111111111111111111111111111111111111111111111111111111111111}
---
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata: {name: m2}
spec:
  image: ghcr.io/k8smlendpoints/mlep-model-server@sha256:abc
  artifact: {uri: 'https://example.com/2.tar.gz', sha256: 2222222222222222222222222222222222222222222222222222222222222222}
---
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata:
  name: custom
  annotations: {mlep.dev/local-command: 'python3 -m http.server $PORT'}
spec:
  image: example.com/custom:1
---
apiVersion: mlep.dev/v1alpha1
kind: Model
metadata: {name: foreign}
spec:
  image: example.com/sklearn-server:1
";

    fn endpoint(a: (&str, u32), b: (&str, u32), extra: &str) -> String {
        format!(
            "apiVersion: mlep.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {{name: ep}}\nspec:\n  hosts: [ep.example.com]\n  variants:\n    - {{name: a, model: {}, weight: {}}}\n    - {{name: b, model: {}, weight: {}, replicas: 2}}\n{extra}",
            a.0, a.1, b.0, b.1
        )
    }

    fn input(ep: &str) -> Input {
        let mut i = Input::default();
        parse_into(&mut i, Path::new("m.yaml"), MODELS).unwrap();
        parse_into(&mut i, Path::new("e.yaml"), ep).unwrap();
        validate(&i).unwrap();
        i
    }

    fn plan(ep: &str) -> Desired {
        desired(&input(ep)).unwrap()
    }

    #[test]
    fn model_server_images_run_the_local_binary_and_others_need_a_local_command() {
        assert!(is_model_server_image(
            "ghcr.io/k8smlendpoints/mlep-model-server:0.1.0"
        ));
        assert!(is_model_server_image("mlep-model-server"));
        assert!(is_model_server_image(
            "reg:5000/x/mlep-model-server@sha256:ab"
        ));
        assert!(!is_model_server_image("ghcr.io/x/mlep-model-server-gpu:1"));
        let d = plan(&endpoint(("m1", 80), ("custom", 20), ""));
        assert_eq!(d.endpoints[0].variants[0].runtime, Runtime::ModelServer);
        assert_eq!(
            d.endpoints[0].variants[1].runtime,
            Runtime::Command("python3 -m http.server $PORT".into())
        );
        assert_eq!(d.endpoints[0].variants[1].replicas, 2);
        let err = desired(&input(&endpoint(("m1", 80), ("foreign", 20), "")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("Model default/foreign (m.yaml:23): image \"example.com/sklearn-server:1\" cannot run locally"), "{err}");
        assert!(err.contains(LOCAL_COMMAND_ANNOTATION), "{err}");
    }

    #[test]
    fn a_weight_edit_is_a_config_reload_only() {
        let old = plan(&endpoint(("m1", 80), ("m2", 20), ""));
        let new = plan(&endpoint(("m1", 50), ("m2", 50), ""));
        let c = diff(&old, &new);
        assert!(c.is_config_only(), "{c:?}");
        assert!(diff(&old, &old).is_empty());
    }

    #[test]
    fn a_model_edit_starts_the_new_set_and_stops_the_old_after() {
        let old = plan(&endpoint(("m1", 80), ("m2", 20), ""));
        let new = plan(&endpoint(("m1", 80), ("custom", 20), ""));
        let c = diff(&old, &new);
        assert_eq!(c.start.len(), 1);
        assert_eq!(
            (c.start[0].role.clone(), c.start[0].model.as_str()),
            (Role::Variant("b".into()), "custom")
        );
        assert_eq!(c.stop.len(), 1);
        assert_eq!(c.stop[0].model, "m2");
        assert!(
            !c.routes_changed,
            "same variants, same routes; only the upstream moves"
        );
        assert!(c.config_changed, "the variant's model label changes");
    }

    #[test]
    fn adding_a_shadow_starts_it_and_reconfigures_without_changing_routes() {
        let old = plan(&endpoint(("m1", 80), ("m2", 20), ""));
        let new = plan(&endpoint(
            ("m1", 80),
            ("m2", 20),
            "  shadow: {model: m2, percent: 10}\n",
        ));
        let c = diff(&old, &new);
        assert_eq!(c.start.len(), 1);
        assert_eq!(c.start[0].role, Role::Shadow);
        assert!(c.stop.is_empty() && !c.routes_changed && c.config_changed);
        let back = diff(&new, &old);
        assert_eq!(back.stop.len(), 1);
        assert!(back.start.is_empty() && !back.routes_changed && back.config_changed);
    }

    #[test]
    fn only_what_envoys_mirror_carries_on_the_routes_changes_them() {
        let with = |shadow: &str| plan(&endpoint(("m1", 80), ("m2", 20), shadow));
        let off = "  shadow: {model: m2, percent: 10, compare: Off}\n";
        let compared = "  shadow: {model: m2, percent: 10}\n";
        for (from, to, routes) in [
            (compared, off, true),
            (off, &off.replace("10", "20"), true),
            (
                off,
                &off.replace("Off", "Off, forwardCredentials: true"),
                true,
            ),
            (off, &off.replace("Off", "Off, timeoutMs: 300"), false),
            (compared, &compared.replace("10", "20"), false),
        ] {
            let c = diff(&with(from), &with(to));
            assert_eq!(c.routes_changed, routes, "{from} -> {to}");
            assert!(c.config_changed, "{from} -> {to}");
        }
    }

    #[test]
    fn adding_a_variant_changes_routes() {
        let old = plan(&endpoint(("m1", 80), ("m2", 20), ""));
        let text = endpoint(
            ("m1", 70),
            ("m2", 20),
            "    - {name: c, model: custom, weight: 10}\n",
        );
        let c = diff(&old, &plan(&text));
        assert!(c.routes_changed, "{c:?}");
        assert_eq!(c.start.len(), 1);
        assert_eq!(c.start[0].role, Role::Variant("c".into()));
    }

    #[test]
    fn replica_changes_rescale_without_a_model_change() {
        let old = plan(&endpoint(("m1", 80), ("m2", 20), ""));
        let text = endpoint(("m1", 80), ("m2", 20), "").replace("replicas: 2", "replicas: 3");
        let c = diff(&old, &plan(&text));
        assert_eq!(c.rescale.len(), 1);
        assert_eq!((c.rescale[0].0.replicas, c.rescale[0].1.replicas), (2, 3));
        assert!(c.start.is_empty() && c.stop.is_empty());
    }

    #[test]
    fn the_local_filter_config_names_the_services_virtual_host_and_carries_the_allocation() {
        let d = plan(&endpoint(
            ("m1", 80),
            ("m2", 20),
            "  shadow: {model: m2, percent: 10}\n",
        ));
        let first = filter_config(&d, &BTreeMap::new(), TEST_ROUTE_KEY).unwrap();
        let ep = &first.endpoints[0];
        assert_eq!(ep.virtual_hosts, ["ep.default.svc.cluster.local:80"]);
        assert_eq!(ep.route_key, TEST_ROUTE_KEY);
        assert_eq!(
            ep.shadow.as_ref().unwrap().cluster,
            shadow_cluster("default", "ep")
        );
        let prev: BTreeMap<String, Allocation> =
            [("default/ep".to_owned(), ep.allocation.clone())].into();
        let d2 = plan(&endpoint(("m1", 70), ("m2", 30), ""));
        let second = filter_config(&d2, &prev, TEST_ROUTE_KEY).unwrap();
        let moved = (0..mlep_contract::BUCKETS)
            .filter(|&b| ep.allocation.lookup(b) != second.endpoints[0].allocation.lookup(b))
            .inspect(|&b| assert_eq!(second.endpoints[0].allocation.lookup(b), Some("b")))
            .count();
        assert_eq!(
            moved, 1000,
            "exactly the 10% that change hands move, all from a to b"
        );
    }
}
