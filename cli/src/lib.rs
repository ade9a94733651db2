//! `mlep`, the K8SMLEndpoints CLI, as a library: the pure pieces (loading YAML, planning the
//! local topology, the metrics table, EDS files) and the thin shells around I/O (artifacts,
//! processes, Envoy, local mode, rendering).

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod capture;
pub mod envoy;
pub mod http;
pub mod load;
pub mod local;
pub mod plan;
pub mod render;
pub mod restart;
pub mod rollout;
pub mod sleep;
pub mod supervisor;
pub mod table;
pub mod upstreams;
pub mod versions;
