//! Shared pieces of the fuzz targets.
//!
//! The model server's request decoding (`codec.rs`, its streaming rows path `json_rows.rs`,
//! and the `metadata.rs` types they read) is compiled here from its own source files: the
//! `mlep-model-server` crate links tract-onnx, whose sanitizer-instrumented nightly build would
//! cost many minutes per CI run, and these modules need only serde. `ServerError` stands in for the crate root's error enum, of which
//! `metadata.rs` uses the `Metadata` variant.
#![forbid(unsafe_code)]

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bad metadata.json: {0}")]
    Metadata(String),
}

#[path = "../../containers/model-server/src/metadata.rs"]
pub mod metadata;

#[path = "../../containers/model-server/src/codec.rs"]
pub mod codec;

#[path = "../../containers/model-server/src/json_rows.rs"]
pub mod json_rows;
