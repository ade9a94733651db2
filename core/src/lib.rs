//! The pure half of the K8SMLEndpoints control plane. Plain values in, plain values out: no
//! kube client, no async runtime, no I/O. The operator (`mlep-operator`) applies what it
//! computes; the CLI (`mlep`) runs the same decisions locally and prints the same objects.
//!
//! - [`aggregate`]: one filter per proxy, carrying every endpoint.
//! - [`api_enum`]: the contract's enums spelled the Kubernetes way in the CRDs.
//! - [`crd`]: the `mlep.dev/v1alpha1` API types, the single source of truth for the CRDs.
//! - [`validate`]: spec checks naming the offending field.
//! - [`host_claims`]: which hosts an endpoint may claim, and who keeps a contested one.
//! - [`ownership`]: whether an existing object of a rendered name is the endpoint's to apply.
//! - [`plan`]: which weights and models to route with, given what is ready.
//! - [`pod_security`]: model pods' security contexts and the Pod Security Standards checks.
//! - [`status`]: the status to write, with an injected clock.
//! - [`failure`]: why a model's pods do not serve, from their container statuses.
//! - [`events`]: the Kubernetes Events a reconcile's change is worth.
//! - [`envoy`]: the Envoy pieces the operator's Istio objects and local mode's bootstrap share.
//! - [`filter_config`]: from a spec to the filter's configuration (`mlep-contract` types).
//! - [`meta`]: what every rendered object shares: field manager, labels, settings.
//! - [`module`]: where proxies fetch the filter module (URL versioned by its sha256).
//! - [`reconcile`]: one reconcile decided: spec, last status, children, sample, now in; plan,
//!   status, requeue out.
//! - [`render`]: every object the operator applies for an endpoint.
//! - [`rollout`]: the rollout state machine (Canary, Linear, BlueGreen).
//! - [`analysis`]: rollout analysis as PromQL, and Prometheus' answers read back.
//! - [`autoscale`]: a variant's autoscaling target, and the request-rate autoscaler's decisions.

#![forbid(unsafe_code)]

pub mod aggregate;
pub mod analysis;
pub mod api_enum;
pub mod autoscale;
pub mod crd;
pub mod envoy;
pub mod events;
pub mod failure;
pub mod filter_config;
pub mod host_claims;
pub mod meta;
pub mod mirror;
pub mod module;
pub mod observe;
pub mod ownership;
pub mod plan;
pub mod pod_security;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod status;
pub mod validate;
