//! Condition types and reasons, in one place.

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Present only with a shadow: whether copies go to it (its model has a ready pod).
pub const SHADOW_READY: &str = "ShadowReady";

pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
pub const REASON_MODEL_NOT_FOUND: &str = "ModelNotFound";
/// Another endpoint, created first, keeps an external host this one lists.
pub const REASON_HOST_CONFLICT: &str = "HostConflict";
/// An object this endpoint renders exists and is another owner's (`crate::ownership`), or the
/// endpoint renders one name twice: nothing of it is applied.
pub const REASON_NAME_CONFLICT: &str = "NameConflict";
/// A Model's pods would break the operator's Pod Security level (`--pod-security-level`).
pub const REASON_POD_SECURITY: &str = "PodSecurity";
pub const REASON_AVAILABLE: &str = "Available";
pub const REASON_WAITING_FOR_REPLICAS: &str = "WaitingForReplicas";
pub const REASON_ROLLING_OUT: &str = "RollingOut";
pub const REASON_RECONCILED: &str = "Reconciled";
pub const REASON_RECONCILE_FAILED: &str = "ReconcileFailed";
pub const REASON_SWAPPING_MODEL: &str = "SwappingModel";
/// Everything serves, but the routing changed moments ago: proxies are receiving it.
pub const REASON_PROPAGATING: &str = "Propagating";
pub const REASON_NO_READY_VARIANT: &str = "NoReadyVariant";
pub const REASON_LAST_GOOD_CONFIG: &str = "ServingLastGoodConfig";
pub const REASON_ROLLED_BACK: &str = "RolledBack";
pub const REASON_ABORTED: &str = "Aborted";
// A model's pods do not serve (`crate::failure`): the worst of them names the condition.
pub const REASON_MODEL_CRASH_LOOPING: &str = "ModelCrashLooping";
pub const REASON_MODEL_OOM_KILLED: &str = "ModelOOMKilled";
pub const REASON_ARTIFACT_FETCH_FAILED: &str = "ArtifactFetchFailed";
pub const REASON_MODEL_NOT_READY: &str = "ModelNotReady";
