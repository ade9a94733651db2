//! `POST /wake/<namespace>/<endpoint>/<variant>` on the admin port: the proxies ask it when
//! they hold a request for a variant scaled to zero (`mlep_contract::WakeConfig`). Every
//! replica answers it, leader or not: it stamps the serving Deployment with
//! `mlep_core::autoscale::sleep::WOKEN_AT_ANNOTATION` (and one replica when it has none), which
//! the leader's next reconcile sees (it watches its Deployments) and honours, then waits until
//! the Deployment has a ready pod and answers 200. `?retry=1` (the proxy's probe still found no
//! pod) waits [`RETRY_PAUSE`] first when the variant is already ready, so the proxy's loop of
//! wake and probe does not spin.
//!
//! Who may call it: any workload that reaches the operator's Service, like any workload that
//! may send the endpoint a request; both only ever wake a variant whose owner asked for scale
//! to zero, to one pod. Nothing is read from the request but its path.

use crate::scope::Scope;
use crate::server::Answer;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use mlep_core::autoscale::sleep::WOKEN_AT_ANNOTATION;
use mlep_core::crd::ModelEndpoint;
use mlep_core::plan::Readiness;
use mlep_core::render::deployment_name;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

/// The path prefix of wake calls (the contract's).
pub use mlep_contract::wake::WAKE_PATH_PREFIX as WAKE_PREFIX;
/// Parse a wake path (the contract's).
pub use mlep_contract::wake::{parse_wake_path as parse, WakeCall};
/// Longest wait for a ready pod (the filter holds a request 120 s by default).
pub const WAKE_WAIT: Duration = Duration::from_millis(mlep_contract::wake::CONTROL_PLANE_WAIT_MS);
/// How often the Deployment is read while waiting.
pub const POLL: Duration = Duration::from_millis(250);
/// The pause of a retried wake call when the variant is ready already.
pub const RETRY_PAUSE: Duration = Duration::from_millis(mlep_contract::wake::RETRY_PAUSE_MS);
/// Most wake calls waiting at once per replica; more get 503.
pub const MAX_WAITING: usize = 256;
/// A wake stamp younger than this is not written again.
const RESTAMP_SECONDS: i64 = 5;
/// The field manager of the stamp (not the reconciler's: its applies must not drop it).
const WAKE_MANAGER: &str = "mlep-operator-wake";

/// Answers wake calls.
pub struct Waker {
    client: Client,
    scope: Scope,
    waiting: Semaphore,
}

fn json(status: &'static str, body: serde_json::Value) -> Answer<'static> {
    Answer {
        status,
        content_type: "application/json",
        extra: "",
        body: crate::server::Body::Owned(body.to_string().into_bytes()),
    }
}

fn error(status: &'static str, message: String) -> Answer<'static> {
    json(status, serde_json::json!({ "error": message }))
}

impl Waker {
    pub fn new(client: Client, scope: Scope) -> Self {
        Self {
            client,
            scope,
            waiting: Semaphore::new(MAX_WAITING),
        }
    }

    /// Answer one wake call.
    pub async fn answer(&self, path: &str) -> Answer<'static> {
        let call = match parse(path) {
            Ok(c) => c,
            Err(e) => return error("400 Bad Request", e),
        };
        if !self.scope.contains(call.namespace) {
            return error(
                "404 Not Found",
                format!("namespace {} is not served", call.namespace),
            );
        }
        let Ok(_permit) = self.waiting.try_acquire() else {
            return error(
                "503 Service Unavailable",
                "too many wake calls waiting".to_owned(),
            );
        };
        match self.wake(&call).await {
            Ok(answer) => answer,
            Err(e) => {
                warn!(namespace = call.namespace, endpoint = call.endpoint, variant = call.variant, error = %e, "wake failed");
                error("502 Bad Gateway", format!("the API server failed: {e}"))
            }
        }
    }

    async fn wake(&self, call: &WakeCall<'_>) -> Result<Answer<'static>, kube::Error> {
        let eps: Api<ModelEndpoint> = Api::namespaced(self.client.clone(), call.namespace);
        let Some(ep) = eps.get_opt(call.endpoint).await? else {
            return Ok(error(
                "404 Not Found",
                format!("no endpoint {}/{}", call.namespace, call.endpoint),
            ));
        };
        let Some(spec) = ep.spec.variants.iter().find(|v| v.name == call.variant) else {
            return Ok(error(
                "404 Not Found",
                format!("endpoint {} has no variant {}", call.endpoint, call.variant),
            ));
        };
        if spec
            .autoscaling
            .as_ref()
            .is_none_or(|a| a.min_replicas != 0)
        {
            let message = format!("variant {} does not scale to zero", call.variant);
            return Ok(error("409 Conflict", message));
        }
        let status = ep
            .status
            .as_ref()
            .and_then(|s| s.variants.iter().find(|v| v.name == call.variant));
        let model = status.map_or(spec.model.as_str(), |s| s.model.as_str());
        let asleep = status
            .and_then(|s| s.autoscaling.as_ref())
            .is_some_and(|a| a.asleep_since_unix.is_some());
        let name = deployment_name(call.endpoint, call.variant, model);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), call.namespace);
        let deadline = Instant::now() + WAKE_WAIT;
        let started = Instant::now();
        let mut first = true;
        loop {
            let Some(d) = deployments.get_opt(&name).await? else {
                return Ok(error("404 Not Found", format!("no Deployment {name}")));
            };
            let live = crate::reconcile::readiness(&d);
            let ready = live.ready_replicas;
            if asleep && first {
                self.stamp(&deployments, &name, live).await?;
            }
            if ready > 0 {
                if call.retry && first {
                    sleep(RETRY_PAUSE).await;
                }
                let waited_ms = started.elapsed().as_millis() as u64;
                return Ok(json(
                    "200 OK",
                    serde_json::json!({ "variant": call.variant, "model": model, "readyReplicas": ready, "waitedMs": waited_ms }),
                ));
            }
            if Instant::now() >= deadline {
                let message = format!(
                    "variant {} had no ready pod within {} s",
                    call.variant,
                    WAKE_WAIT.as_secs()
                );
                return Ok(error("504 Gateway Timeout", message));
            }
            first = false;
            sleep(POLL).await;
        }
    }

    /// Stamp the wake-up on the Deployment (one replica when it has none), unless a fresh
    /// stamp is there.
    async fn stamp(
        &self,
        api: &Api<Deployment>,
        name: &str,
        live: Readiness,
    ) -> Result<(), kube::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let replicas = live.replicas;
        if replicas > 0 && live.woken_at.is_some_and(|t| now - t < RESTAMP_SECONDS) {
            return Ok(());
        }
        let mut patch = serde_json::json!({ "metadata": { "annotations": { WOKEN_AT_ANNOTATION: now.to_string() } } });
        if replicas == 0 {
            patch["spec"] = serde_json::json!({ "replicas": 1 });
        }
        let params = PatchParams {
            field_manager: Some(WAKE_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        api.patch(name, &params, &Patch::Merge(&patch)).await?;
        info!(deployment = name, from = replicas, "woken");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_path_names_three_dns_labels_and_may_say_retry() {
        assert_eq!(
            parse("/wake/ml/titanic/b"),
            Ok(WakeCall {
                namespace: "ml",
                endpoint: "titanic",
                variant: "b",
                retry: false
            })
        );
        assert!(parse("/wake/ml/titanic/b?retry=1").is_ok_and(|c| c.retry));
        for bad in [
            "/wake/ml/titanic",
            "/wake/ml/titanic/b/c",
            "/wake/ML/t/b",
            "/wake/ml/../b",
            "/healthz",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
