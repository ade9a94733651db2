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
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Most wake calls waiting at once per replica; more get 503. A bound on the memory they hold:
/// a call waiting costs a task and a socket, not API server reads ([`Flights`]).
pub const MAX_WAITING: usize = 4096;
/// Most wake calls waiting at once for one variant per replica; more get 503. One caller
/// flooding its own variant with calls (one that never gets ready, say) takes at most this
/// many of [`MAX_WAITING`] from everyone else's.
pub const MAX_WAITING_PER_VARIANT: usize = 256;
/// A wake stamp younger than this is not written again.
const RESTAMP_SECONDS: i64 = 5;
/// The field manager of the stamp (not the reconciler's: its applies must not drop it).
const WAKE_MANAGER: &str = "mlep-operator-wake";

/// What one wait for a variant's ready pod ended with; every call that joined it gets it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ready,
    Refused {
        status: &'static str,
        message: String,
    },
}

/// Work keyed by a name that calls share while it runs: the first call for a key starts it (in
/// its own task, so a caller that goes away does not stop it for the others), every call that
/// comes while it runs waits for the same result, and the next call after it ended starts it
/// anew. A burst of held requests for one sleeping variant thus reads its Deployment once every
/// [`POLL`], not once per request. At most `per_key` calls wait on one key: a caller that
/// floods its own variant with calls is refused there and takes nothing from the others.
pub struct Flights<V> {
    running: Mutex<HashMap<String, Flight<V>>>,
    per_key: usize,
}

/// One running flight: its result when it lands, and how many calls wait on it.
struct Flight<V> {
    rx: watch::Receiver<Option<V>>,
    callers: Arc<AtomicUsize>,
}

/// Why a call did not join.
#[derive(Debug, PartialEq, Eq)]
pub struct Crowded;

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

/// One waiting call, counted on its flight until it returns.
struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<V> Flights<V> {
    pub fn new(per_key: usize) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            per_key,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight<V>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many flights run now.
    pub fn running(&self) -> usize {
        self.table().len()
    }
}

impl<V: Clone + Send + Sync + 'static> Flights<V> {
    /// The result of the flight for `key`, starting it with `work` when none runs. `Ok(None)`
    /// when the flight ended without one (its task was cancelled at shutdown).
    pub async fn join<F>(
        self: &Arc<Self>,
        key: &str,
        work: impl FnOnce() -> F,
    ) -> Result<Option<V>, Crowded>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, seat, start) = {
            let mut table = self.table();
            match table.get(key) {
                Some(f) => {
                    if f.callers.load(Ordering::SeqCst) >= self.per_key {
                        return Err(Crowded);
                    }
                    f.callers.fetch_add(1, Ordering::SeqCst);
                    (f.rx.clone(), Seat(f.callers.clone()), None)
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    let callers = Arc::new(AtomicUsize::new(1));
                    let flight = Flight {
                        rx: rx.clone(),
                        callers: callers.clone(),
                    };
                    table.insert(key.to_owned(), flight);
                    (rx, Seat(callers), Some(tx))
                }
            }
        };
        // Spawned with the table unlocked: a runtime shutting down drops the task at once, and
        // its `Landing` locks the table.
        if let Some(tx) = start {
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
        }
        let value = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        drop(seat);
        Ok(value)
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
            flights: Arc::new(Flights::new(MAX_WAITING_PER_VARIANT)),
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
        let joined = self
            .flights
            .join(&key, move || {
                metrics.wake_wait();
                wait_ready(client, variant)
            })
            .await;
        let Ok(outcome) = joined else {
            let message = format!("too many wake calls waiting for variant {}", call.variant);
            return error("503 Service Unavailable", message);
        };
        match outcome {
            Some(Outcome::Ready) => {
                if call.retry {
                    // The proxy's probe found no pod although the Deployment had one: do not
                    // let its loop of wake and probe spin.
                    sleep_until(started + RETRY_PAUSE).await;
                }
                let waited_ms = started.elapsed().as_millis() as u64;
                json(
                    "200 OK",
                    serde_json::json!({ "variant": call.variant, "waitedMs": waited_ms }),
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

/// Wake the variant (when it sleeps) and wait until its Deployment has a ready pod; bounded
/// even when the API server stops answering mid-request (its reads have no deadline of
/// their own shorter than the client's).
async fn wait_ready(client: Client, v: Variant) -> Outcome {
    let bound = WAKE_WAIT + Duration::from_secs(5);
    match tokio::time::timeout(bound, wake(client, &v)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            warn!(namespace = v.namespace, endpoint = v.endpoint, variant = v.name, error = %e, "wake failed");
            refused("502 Bad Gateway", format!("the API server failed: {e}"))
        }
        Err(_) => {
            warn!(
                namespace = v.namespace,
                endpoint = v.endpoint,
                variant = v.name,
                "wake timed out: the API server did not answer"
            );
            let message = "the API server did not answer in time".to_owned();
            refused("504 Gateway Timeout", message)
        }
    }
}

async fn wake(client: Client, v: &Variant) -> Result<Outcome, kube::Error> {
    // One answer for "no such endpoint", "no such variant" and "does not scale to zero": the
    // caller may be any workload of the mesh, and learns nothing of other namespaces from it.
    let missing = || {
        let message = format!(
            "no variant {}/{}/{} that scales to zero",
            v.namespace, v.endpoint, v.name
        );
        Ok(refused("404 Not Found", message))
    };
    let eps: Api<ModelEndpoint> = Api::namespaced(client.clone(), &v.namespace);
    let Some(ep) = eps.get_opt(&v.endpoint).await? else {
        return missing();
    };
    let Some(spec) = ep.spec.variants.iter().find(|s| s.name == v.name) else {
        return missing();
    };
    if spec
        .autoscaling
        .as_ref()
        .is_none_or(|a| a.min_replicas != 0)
    {
        return missing();
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
    loop {
        let Some(d) = deployments.get_opt(&name).await? else {
            return Ok(refused("404 Not Found", format!("no Deployment {name}")));
        };
        let live = crate::reconcile::readiness(&d);
        // Stamped even when a pod is ready: a request woken in the grace before the pods go
        // (still ready) must keep them, as one woken from zero does.
        if asleep {
            if let Some(patch) = wake_patch(live, unix_now()) {
                let params = PatchParams {
                    field_manager: Some(WAKE_MANAGER.to_owned()),
                    ..PatchParams::default()
                };
                deployments
                    .patch(&name, &params, &Patch::Merge(&patch))
                    .await?;
                info!(deployment = name, from = live.replicas, "woken");
            }
        }
        if live.ready_replicas > 0 {
            return Ok(Outcome::Ready);
        }
        if Instant::now() >= deadline {
            let message = format!(
                "variant {} had no ready pod within {} s",
                v.name,
                WAKE_WAIT.as_secs()
            );
            return Ok(refused("504 Gateway Timeout", message));
        }
        sleep(POLL).await;
    }
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// What wakes a sleeping Deployment (`live`) at `now`: one replica when it has
/// none, and the wake-up stamp, unless one younger than [`RESTAMP_SECONDS`] is there. Renewed
/// at every poll of a wait, so a server slower to get ready than the wake floor
/// (`WAKE_FLOOR_SECONDS`) is not scaled back to zero while requests wait for it.
fn wake_patch(live: Readiness, now: i64) -> Option<serde_json::Value> {
    let replicas = live.replicas;
    if replicas > 0 && live.woken_at.is_some_and(|t| now - t < RESTAMP_SECONDS) {
        return None;
    }
    let mut patch = serde_json::json!({ "metadata": { "annotations": { WOKEN_AT_ANNOTATION: now.to_string() } } });
    if replicas == 0 {
        patch["spec"] = serde_json::json!({ "replicas": 1 });
    }
    Some(patch)
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

    #[test]
    fn a_wait_renews_the_wake_stamp_so_a_slow_server_is_not_put_back_to_sleep() {
        let at = |replicas, woken_at| Readiness {
            replicas,
            woken_at,
            ..Readiness::default()
        };
        let one = |p: Option<serde_json::Value>| p.map(|p| p["spec"]["replicas"].clone());
        // At zero: one replica and a stamp.
        assert_eq!(
            one(wake_patch(at(0, None), 100)),
            Some(serde_json::json!(1))
        );
        // Starting, stamped 2 s ago: nothing to write.
        assert_eq!(wake_patch(at(1, Some(98)), 100), None);
        // Still not ready 5 s after the stamp: the stamp again, the replicas untouched.
        let renewed = wake_patch(at(1, Some(95)), 100);
        assert_eq!(
            renewed
                .as_ref()
                .map(|p| p["metadata"]["annotations"][WOKEN_AT_ANNOTATION].clone()),
            Some(serde_json::json!("100"))
        );
        assert_eq!(one(renewed), Some(serde_json::Value::Null));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_come_while_a_flight_runs_share_it_and_the_next_starts_anew() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::new(8));
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
        assert_eq!((a, b, c), (Ok(Some(1)), Ok(Some(1)), Ok(Some(3))));
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(flights.running(), 0);
        assert_eq!(flights.join("ml/t/b", work(4)).await, Ok(Some(4)));
        assert_eq!(started.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flight_goes_on_for_the_others_when_its_first_caller_goes_away() {
        let flights: Arc<Flights<&'static str>> = Arc::new(Flights::new(8));
        let slow = || async {
            sleep(Duration::from_millis(500)).await;
            "ready"
        };
        let first = tokio::time::timeout(Duration::from_millis(100), flights.join("k", slow));
        assert!(first.await.is_err(), "the first caller gave up");
        assert_eq!(flights.running(), 1);
        let other = flights.join("k", || async { "a second flight" }).await;
        assert_eq!(other, Ok(Some("ready")));
        assert_eq!(flights.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_takes_at_most_its_seats_and_leaves_the_others_theirs() {
        let flights: Arc<Flights<u8>> = Arc::new(Flights::new(2));
        let slow = |v: u8| {
            move || async move {
                sleep(Duration::from_millis(500)).await;
                v
            }
        };
        let (a, b, c, other) = tokio::join!(
            flights.join("flood", slow(1)),
            flights.join("flood", slow(2)),
            flights.join("flood", slow(3)),
            flights.join("quiet", slow(4)),
        );
        assert_eq!((a, b), (Ok(Some(1)), Ok(Some(1))));
        assert_eq!(c, Err(Crowded), "a third call on a key with two seats");
        assert_eq!(other, Ok(Some(4)));
        // Seats are given back: the next flight on the key has both.
        let (d, e) = tokio::join!(
            flights.join("flood", slow(5)),
            flights.join("flood", slow(6))
        );
        assert_eq!((d, e), (Ok(Some(5)), Ok(Some(5))));
    }
}
