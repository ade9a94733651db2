//! The `mlep` command line: local mode and tools.

pub mod envoy;
