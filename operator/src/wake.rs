//! `POST /wake/<namespace>/<endpoint>/<variant>` on the admin port: the proxies ask it when
//! they hold a request for a variant scaled to zero (`mlep_contract::WakeConfig`). Every
//! replica answers it, leader or not: it stamps the serving Deployment with
//! `mlep_core::autoscale::sleep::WOKEN_AT_ANNOTATION` (and one replica when it has none), which
//! the leader's next reconcile sees (it watches its Deployments) and honours, then waits until
//! the Deployment has a ready pod and answers 200. Calls for one variant that come while one
//! waits share its wait ([`Flights`]). `?retry=1` (the proxy's probe still found no pod) is not
//! answered before [`RETRY_PAUSE`] has passed, so the proxy's loop of wake and probe does not
//! spin.
//!
//! Who may call it: any workload that reaches the operator's Service, like any workload that
//! may send the endpoint a request; both only ever wake a variant whose owner asked for scale
//! to zero, to one pod. Nothing is read from the request but its path.

use crate::metrics::Metrics;
use crate::scope::Scope;
use crate::server::Answer;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use mlep_core::autoscale::sleep::WOKEN_AT_ANNOTATION;
use mlep_core::crd::ModelEndpoint;
use mlep_core::plan::Readiness;
use mlep_core::render::deployment_name;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, sleep_until, Instant};
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
pub const MAX_WAITING: usize = 1024;
/// A wake stamp younger than this is not written again.
const RESTAMP_SECONDS: i64 = 5;
/// The field manager of the stamp (not the reconciler's: its applies must not drop it).
const WAKE_MANAGER: &str = "mlep-operator-wake";

/// What one wait for a variant's ready pod ended with; every call that joined it gets it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ready {
        model: String,
        ready: i32,
    },
    Refused {
        status: &'static str,
        message: String,
    },
}

/// Work keyed by a name that calls share while it runs: the first call for a key starts it (in
/// its own task, so a caller that goes away does not stop it for the others), every call that
/// comes while it runs waits for the same result, and the next call after it ended starts it
/// anew. A burst of held requests for one sleeping variant thus reads its Deployment once every
/// [`POLL`], not once per request.
pub struct Flights<V> {
    running: Mutex<HashMap<String, watch::Receiver<Option<V>>>>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }
}

/// Takes a finished (or dropped) flight off the table.
struct Landing<V> {
    flights: Arc<Flights<V>>,
    key: String,
}

impl<V> Drop for Landing<V> {
    fn drop(&mut self) {
        self.flights.table().remove(&self.key);
    }
}

impl<V> Flights<V> {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<Option<V>>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many flights run now.
    pub fn running(&self) -> usize {
        self.table().len()
    }
}

impl<V: Clone + Send + Sync + 'static> Flights<V> {
    /// The result of the flight for `key`, starting it with `work` when none runs. `None` when
    /// the flight ended without one (its task was cancelled at shutdown).
    pub async fn join<F>(self: &Arc<Self>, key: &str, work: impl FnOnce() -> F) -> Option<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut rx = {
            let mut table = self.table();
            match table.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    table.insert(key.to_owned(), rx.clone());
                    let landing = Landing {
                        flights: Arc::clone(self),
                        key: key.to_owned(),
                    };
                    let work = work();
                    tokio::spawn(async move {
                        let value = work.await;
                        drop(landing);
                        // No one left to tell is fine: every caller went away.
                        let _ = tx.send(Some(value));
                    });
                    rx
                }
            }
        };
        let value = rx.wait_for(Option::is_some).await.ok()?;
        value.clone()
    }
}

/// Answers wake calls.
pub struct Waker {
    client: Client,
    scope: Scope,
    metrics: Arc<Metrics>,
    waiting: Semaphore,
    flights: Arc<Flights<Outcome>>,
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

fn refused(status: &'static str, message: String) -> Outcome {
    Outcome::Refused { status, message }
}

impl Waker {
    pub fn new(client: Client, scope: Scope, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            scope,
            metrics,
            waiting: Semaphore::new(MAX_WAITING),
            flights: Arc::default(),
        }
    }

    /// Answer one wake call. Calls for the same variant that arrive while one waits share its
    /// wait (one stamp, one read of the Deployment per [`POLL`]).
    pub async fn answer(&self, path: &str) -> Answer<'static> {
        let answer = self.answer_call(path).await;
        let code = answer.status.split(' ').next().and_then(|c| c.parse().ok());
        self.metrics.wake_call(code.unwrap_or(0));
        answer
    }

    async fn answer_call(&self, path: &str) -> Answer<'static> {
        let started = Instant::now();
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
        let key = format!("{}/{}/{}", call.namespace, call.endpoint, call.variant);
        let variant = Variant {
            namespace: call.namespace.to_owned(),
            endpoint: call.endpoint.to_owned(),
            name: call.variant.to_owned(),
        };
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let outcome = self
            .flights
            .join(&key, move || {
                metrics.wake_wait();
                wait_ready(client, variant)
            })
            .await;
        match outcome {
            Some(Outcome::Ready { model, ready }) => {
                if call.retry {
                    // The proxy's probe found no pod although the Deployment had one: do not
                    // let its loop of wake and probe spin.
                    sleep_until(started + RETRY_PAUSE).await;
                }
                let waited_ms = started.elapsed().as_millis() as u64;
                json(
                    "200 OK",
                    serde_json::json!({ "variant": call.variant, "model": model, "readyReplicas": ready, "waitedMs": waited_ms }),
                )
            }
            Some(Outcome::Refused { status, message }) => error(status, message),
            None => error(
                "503 Service Unavailable",
                "the operator is shutting down".to_owned(),
            ),
        }
    }
}

/// The variant a wake call names.
struct Variant {
    namespace: String,
    endpoint: String,
    name: String,
}

/// Wake the variant (when it sleeps) and wait until its Deployment has a ready pod.
async fn wait_ready(client: Client, v: Variant) -> Outcome {
    match wake(client, &v).await {
        Ok(outcome) => outcome,
        Err(e) => {
            warn!(namespace = v.namespace, endpoint = v.endpoint, variant = v.name, error = %e, "wake failed");
            refused("502 Bad Gateway", format!("the API server failed: {e}"))
        }
    }
}

async fn wake(client: Client, v: &Variant) -> Result<Outcome, kube::Error> {
    let eps: Api<ModelEndpoint> = Api::namespaced(client.clone(), &v.namespace);
    let Some(ep) = eps.get_opt(&v.endpoint).await? else {
        let message = format!("no endpoint {}/{}", v.namespace, v.endpoint);
        return Ok(refused("404 Not Found", message));
    };
    let Some(spec) = ep.spec.variants.iter().find(|s| s.name == v.name) else {
        let message = format!("endpoint {} has no variant {}", v.endpoint, v.name);
        return Ok(refused("404 Not Found", message));
    };
    if spec
        .autoscaling
        .as_ref()
        .is_none_or(|a| a.min_replicas != 0)
    {
        let message = format!("variant {} does not scale to zero", v.name);
        return Ok(refused("409 Conflict", message));
    }
    let status = ep
        .status
        .as_ref()
        .and_then(|s| s.variants.iter().find(|s| s.name == v.name));
    let model = status.map_or(spec.model.as_str(), |s| s.model.as_str());
    let asleep = status
        .and_then(|s| s.autoscaling.as_ref())
        .is_some_and(|a| a.asleep_since_unix.is_some());
    let name = deployment_name(&v.endpoint, &v.name, model);
    let deployments: Api<Deployment> = Api::namespaced(client, &v.namespace);
    let deadline = Instant::now() + WAKE_WAIT;
    let mut first = true;
    loop {
        let Some(d) = deployments.get_opt(&name).await? else {
            return Ok(refused("404 Not Found", format!("no Deployment {name}")));
        };
        let live = crate::reconcile::readiness(&d);
        if asleep && first {
            stamp(&deployments, &name, live).await?;
        }
        if live.ready_replicas > 0 {
            let model = model.to_owned();
            let ready = live.ready_replicas;
            return Ok(Outcome::Ready { model, ready });
        }
        if Instant::now() >= deadline {
            let message = format!(
                "variant {} had no ready pod within {} s",
                v.name,
                WAKE_WAIT.as_secs()
            );
            return Ok(refused("504 Gateway Timeout", message));
        }
        first = false;
        sleep(POLL).await;
    }
}

/// Stamp the wake-up on the Deployment (one replica when it has none), unless a fresh stamp is
/// there.
async fn stamp(api: &Api<Deployment>, name: &str, live: Readiness) -> Result<(), kube::Error> {
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

    #[tokio::test(start_paused = true)]
    async fn calls_that_come_while_a_flight_runs_share_it_and_the_next_starts_anew() {
        let flights: Arc<Flights<u32>> = Arc::default();
        let started = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let work = |n: u32| {
            let started = started.clone();
            move || async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                sleep(Duration::from_millis(500)).await;
                n
            }
        };
        let (a, b, c) = tokio::join!(
            flights.join("ml/t/b", work(1)),
            flights.join("ml/t/b", work(2)),
            flights.join("ml/t/a", work(3)),
        );
        assert_eq!((a, b, c), (Some(1), Some(1), Some(3)));
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(flights.running(), 0);
        assert_eq!(flights.join("ml/t/b", work(4)).await, Some(4));
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flight_goes_on_for_the_others_when_its_first_caller_goes_away() {
        let flights: Arc<Flights<&'static str>> = Arc::default();
        let slow = || async {
            sleep(Duration::from_millis(500)).await;
            "ready"
        };
        let first = tokio::time::timeout(Duration::from_millis(100), flights.join("k", slow));
        assert!(first.await.is_err(), "the first caller gave up");
        assert_eq!(flights.running(), 1);
        let other = flights.join("k", || async { "a second flight" }).await;
        assert_eq!(other, Some("ready"));
        assert_eq!(flights.running(), 0);
    }
}
