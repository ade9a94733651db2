//! The K8SMLEndpoints operator library: the API types (single source of truth for the CRDs),
//! spec validation, and the pure rendering of filter config and Kubernetes objects. The binary
//! `mlep-operator` and the CLI `mlep` both build on it.

pub mod app;
pub mod crd;
pub mod filter_config;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod server;
pub mod status;
pub mod validate;
