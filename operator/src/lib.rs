//! The K8SMLEndpoints operator runtime: watches Models and ModelEndpoints, applies what the pure
//! `mlep-core` crate renders (server-side apply), writes status, elects a leader and serves
//! `/healthz` and `/metrics`, and the filter module on its own port. The decisions themselves live in `mlep-core`.

#![forbid(unsafe_code)]

pub mod app;
pub mod autoscale;
pub mod events;
pub mod filters;
pub mod leader;
pub mod metrics;
mod ownership;
pub mod pods;
pub mod rbac;
pub mod reconcile;
pub mod rollout;
pub mod scope;
pub mod server;
pub mod server_module;
pub mod wake;
