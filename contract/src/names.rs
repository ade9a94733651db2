//! Names shared by the control plane and the containers it starts: the SageMaker model
//! directory and the environment `mlep-model-init` reads. The operator writes them into every
//! Deployment (`mlep-core`'s render), local mode passes them to the processes it starts, and
//! `mlep-model-init` / `mlep-model-server` read them (their `--help` shows these names).
//! Header, cookie and metric names are in [`crate::metrics`].

/// Where the model files live in the model container (SageMaker inference contract).
pub const MODEL_DIR: &str = "/opt/ml/model";

/// Environment of `mlep-model-init`: the artifact to fetch ...
pub const ENV_ARTIFACT_URI: &str = "MLEP_ARTIFACT_URI";
/// ... its lowercase hex sha256 ...
pub const ENV_ARTIFACT_SHA256: &str = "MLEP_ARTIFACT_SHA256";
/// ... and the directory to unpack it into (also read by `mlep-model-server`).
pub const ENV_MODEL_DIR: &str = "MLEP_MODEL_DIR";
