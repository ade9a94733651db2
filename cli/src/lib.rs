//! `mlep`, the K8SMLEndpoints CLI, as a library: the pure pieces (loading YAML, planning the
//! local topology, the metrics table) and the thin shells (artifacts, processes, local mode).

pub mod load;
pub mod table;
pub mod artifacts;
pub mod http;
pub mod supervisor;
pub mod plan;
pub mod upstreams;
