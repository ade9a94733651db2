//! The contract between the control plane (operator, local mode) and the data plane (the
//! proxy-wasm filter). Everything here is plain data and pure functions: no proxy-wasm, no
//! kube, no I/O, so it compiles natively and to wasm32 and is tested on both.
//!
//! - [`config`]: the JSON the filter reads, with validation that names the offending field.
//! - [`hash`]: the stable sticky-key hash and bucket function (documented in the README).
//! - [`allocation`]: which buckets belong to which variant, and how a new allocation is
//!   derived from the previous one so that users move only when they must.
//! - [`latency`]: the model server's timing report (`Server-Timing: model;dur=`) and the
//!   model / overhead split of a request's time.
//! - [`metrics`]: metric and header names, shared by filter, operator and local mode.
//! - [`rollout`]: which of a variant's buckets a rollout has moved to its new model.
//! - [`artifact`]: the artifact URI forms (https, file, s3, gs, pvc), parsed once for all.
//! - [`capture`]: data capture's ingest headers, record shape and object layout.
//! - [`build`]: which build of the filter (dynamic module or Wasm) serves a configuration.
//! - [`names`]: the model directory and environment names shared with the containers.

#![forbid(unsafe_code)]

pub mod allocation;
pub mod artifact;
pub mod build;
pub mod capture;
pub mod config;
pub mod hash;
pub mod latency;
pub mod metrics;
pub mod names;
pub mod rollout;
pub mod wake;

pub use allocation::{Allocation, AllocationError, BucketRange, BUCKETS};
pub use build::{build_for, endpoint_needs_wasm, needs_wasm, FilterBuild, NeedsWasm};
pub use config::{
    carry_allocation, is_cookie_name, is_dns_label, is_header_name, is_route_key, mirror_twin,
    routed_value, CaptureConfig, CompareConfig, CompareMode, ConfigError, EndpointConfig,
    FilterConfig, RoutingConfig, ShadowConfig, StickyConfig, UnknownTarget, VariantConfig,
    CONFIG_VERSION, MIRROR_TWIN_SUFFIX,
};
pub use hash::{bucket_of, hash_key};
pub use rollout::{RolloutSplit, Span};
pub use wake::WakeConfig;
