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

/// Object storage credentials and settings `mlep-model-init` reads for `s3://` and `gs://`
/// artifacts: the keys a Model's `spec.artifact.credentialsSecret` may hold. The operator maps
/// each key of that Secret to the same-named environment variable of the init container (only
/// these keys, each optional); local mode reads them from its own environment. The names are
/// the AWS CLI's and SDKs' own, so a Secret written for them works unchanged.
/// `AWS_ENDPOINT_URL` points at any S3-compatible server (path-style requests; `http://` is
/// allowed because the user wrote it); `GOOGLE_BASE_URL` likewise at a GCS-compatible one.
pub const OBJECT_STORE_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    // A Google service account key (its JSON) for `gs://`.
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BASE_URL",
];

/// Where the init container mounts the claim of a `pvc://<claim>/<path>` artifact (read-only):
/// `<PVC_MOUNT_ROOT>/<claim>/<path>` is the file model-init reads.
pub const PVC_MOUNT_ROOT: &str = "/mnt/mlep-pvc";

/// Environment of `mlep-capture-sink` (its `--help` shows these names): where records go
/// (`s3://bucket/prefix`, `gs://bucket/prefix`, `file:///dir`) ...
pub const ENV_CAPTURE_DESTINATION: &str = "MLEP_CAPTURE_DESTINATION";
/// ... the address it listens on ...
pub const ENV_CAPTURE_LISTEN: &str = "MLEP_CAPTURE_LISTEN";
/// ... and its name in file names (the pod's name in a cluster).
pub const ENV_CAPTURE_INSTANCE: &str = "MLEP_CAPTURE_INSTANCE";
/// Where `mlep-model-init` writes its error when it fails (the operator sets the kubelet's
/// `/dev/termination-log`, so the endpoint's condition names the URI and the reason).
pub const ENV_TERMINATION_LOG: &str = "MLEP_TERMINATION_LOG";
