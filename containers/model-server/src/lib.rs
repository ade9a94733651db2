//! Generic SageMaker-contract model server: `GET /ping`, `POST /invocations` (JSON or CSV),
//! `GET /metrics`, serving an ONNX model with tract (pure Rust) from a model directory holding
//! `metadata.json` and the model file. See docs/model-server.md.
#![forbid(unsafe_code)]

pub mod codec;
mod json_rows;
pub mod metadata;
pub mod metrics;
pub mod model;
pub mod server;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bad metadata.json: {0}")]
    Metadata(String),
    #[error("cannot load the model: {0}")]
    Model(String),
    #[error("inference failed: {0}")]
    Inference(String),
}
