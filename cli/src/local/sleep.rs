//! Scale to zero, the shell around `crate::sleep`: once a second (only while some variant has
//! `minReplicas: 0`) Envoy's request counts are read and each such variant decided; the
//! session marks it asleep in the filter configuration (an ECDS reload), empties its clusters
//! (EDS) and stops its servers with the supervisor's stop, so supervision never sees them
//! exit. The wake server (HTTP/1.1 on 127.0.0.1, the bootstrap's `mlep-wake` cluster) hands
//! each `POST /wake/<namespace>/<endpoint>/<variant>` to the session loop, which starts the
//! variant's server with the same path as any start, puts it back into its clusters, answers
//! once it is ready, and then takes the mark away.

use super::{io_err, LocalError, Session};
use crate::envoy;
use crate::plan::Role;
use crate::sleep::{self as pure, Servers, SleepState, Step, VariantKey, WakeCall};
use crate::table::parse_prometheus;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mlep_contract::metrics::REQUESTS_TOTAL;
use mlep_contract::wake::DEFAULT_WAKE_TIMEOUT_MS;
use mlep_contract::{FilterConfig, WakeConfig};
use mlep_core::envoy::CallTarget;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// How often idleness is measured (only while some variant may sleep).
pub(super) const SLEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A wake call handed to the session loop, and where its answer goes.
pub(super) struct Wake {
    call: WakeCall,
    reply: oneshot::Sender<Woken>,
}

/// The session's answer to a wake call.
#[derive(Debug)]
enum Woken {
    /// A server of the variant is ready; `already`: it was awake when the call came.
    Ready {
        already: bool,
    },
    /// No variant of this session that scales to zero has that name.
    Unknown,
    Failed(String),
}

/// The wake server: its address, and the calls it receives. Stops when dropped.
pub(super) struct WakeServer {
    pub(super) addr: SocketAddr,
    pub(super) calls: mpsc::Receiver<Wake>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WakeServer {
    /// Listen on a free port of 127.0.0.1.
    pub(super) async fn start() -> Result<Self, LocalError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("listen for wake calls on 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("the wake server's address"))?;
        let (tx, calls) = mpsc::channel(256);
        let task = tokio::spawn(accept(listener, tx));
        Ok(Self { addr, calls, task })
    }
}

async fn accept(listener: TcpListener, tx: mpsc::Sender<Wake>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, say: try again a little later, without spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, tx.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, serde_json::json!({ "error": message }))
}

/// Answer one request of the wake server: a wake call waits for the session's answer (at
/// most `WAKE_WAIT`); anything else is a 404.
async fn answer(
    req: Request<Incoming>,
    tx: mpsc::Sender<Wake>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let call = (req.method() == Method::POST)
        .then(|| pure::parse_wake(req.uri().path(), req.uri().query()))
        .flatten();
    let Some(call) = call else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "not a wake call: POST /wake/<namespace>/<endpoint>/<variant>",
        ));
    };
    let retry = call.retry;
    let (reply_tx, reply_rx) = oneshot::channel();
    let stopping = || error(StatusCode::SERVICE_UNAVAILABLE, "mlep is stopping");
    if tx
        .send(Wake {
            call,
            reply: reply_tx,
        })
        .await
        .is_err()
    {
        return Ok(stopping());
    }
    Ok(
        match tokio::time::timeout(pure::WAKE_WAIT, reply_rx).await {
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("no server ready within {:?}", pure::WAKE_WAIT),
            ),
            Ok(Err(_)) => stopping(),
            Ok(Ok(Woken::Ready { already })) => {
                if retry && already {
                    tokio::time::sleep(pure::RETRY_PAUSE).await;
                }
                reply(StatusCode::OK, serde_json::json!({ "ready": true }))
            }
            Ok(Ok(Woken::Unknown)) => error(
                StatusCode::NOT_FOUND,
                "no variant of this session scales to zero by that name",
            ),
            Ok(Ok(Woken::Failed(e))) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
        },
    )
}

fn role_key((ns, ep, v): &VariantKey) -> (String, String, Role) {
    (ns.clone(), ep.clone(), Role::Variant(v.clone()))
}

fn what((_, ep, v): &VariantKey) -> String {
    format!("{ep}/{v}")
}

impl Session {
    /// Seconds since the session started: the clock of the sleep decisions.
    fn sleep_clock(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX)
    }

    /// Whether some variant may sleep or sleeps (else nothing is measured).
    pub(super) fn may_sleep(&self) -> bool {
        !self.sleeps.is_empty() || !pure::sleepers(&self.desired).is_empty()
    }

    pub(super) fn is_asleep(&self, ns: &str, ep: &str, v: &str) -> bool {
        let key = (ns.to_owned(), ep.to_owned(), v.to_owned());
        self.sleeps.get(&key).is_some_and(SleepState::is_asleep)
    }

    /// A variant's servers were replaced (an edit): it is awake, its idle time starts anew.
    pub(super) fn forget_sleep(&mut self, (ns, ep, role): &(String, String, Role)) {
        if let Role::Variant(v) = role {
            self.sleeps.remove(&(ns.clone(), ep.clone(), v.clone()));
        }
    }

    /// Mark the sleeping variants in `cfg` with how the filter wakes them: the wake server,
    /// and a probe of the variant's own cluster.
    pub(super) fn put_sleep_marks(&self, cfg: &mut FilterConfig) {
        let wake = CallTarget::wake_local();
        for ep in &mut cfg.endpoints {
            for v in &mut ep.variants {
                if self.is_asleep(&ep.namespace, &ep.name, &v.name) {
                    v.asleep = Some(WakeConfig {
                        cluster: wake.cluster.clone(),
                        authority: wake.authority.clone(),
                        path: mlep_contract::wake::wake_path(&ep.namespace, &ep.name, &v.name),
                        probe_cluster: envoy::variant_cluster(&ep.name, &v.name),
                        probe_authority: format!(
                            "{}.{}.svc.{}",
                            ep.name,
                            ep.namespace,
                            mlep_core::meta::DEFAULT_CLUSTER_DOMAIN
                        ),
                        timeout_ms: DEFAULT_WAKE_TIMEOUT_MS,
                    });
                }
            }
        }
    }

    fn servers_of(&self, key: &VariantKey) -> Servers {
        let health = self
            .running
            .get(&role_key(key))
            .map(|r| (r.set.replicas, r.health(Instant::now())));
        let (wanted, h) = health.unwrap_or_default();
        Servers {
            wanted,
            current: h.replicas,
            ready: h.ready,
        }
    }

    /// One measurement: read the request counts, decide every variant that may sleep (or
    /// sleeps), act on the decisions.
    pub(super) async fn check_sleep(&mut self) -> Result<(), LocalError> {
        let sleepers = pure::sleepers(&self.desired);
        let now = self.sleep_clock();
        // Envoy filters on the raw stat name, where the labels sit inside the metric's name
        // (`mlep_endpoint=.=titanic;.;...;requests_total`, `mlep_contract::metrics::stat_name`).
        let suffix = REQUESTS_TOTAL.trim_start_matches("mlep_");
        let path = format!("/stats/prometheus?filter=mlep_.*{suffix}");
        let samples = self
            .admin_get(&path)
            .await
            .ok()
            .map(|t| parse_prometheus(&t));
        // Asleep and no longer allowed to (an edit): wake it.
        for (key, state) in &mut self.sleeps {
            if !sleepers.contains_key(key) && state.is_asleep() {
                state.woken_at = Some(now);
            }
        }
        // A sleeping variant that is gone from the spec (not just its `minReplicas: 0`) has
        // nothing left to wake.
        let running = &self.running;
        self.sleeps.retain(|k, s| {
            sleepers.contains_key(k) || (s.is_asleep() && running.contains_key(&role_key(k)))
        });
        let mut judged = sleepers.clone();
        for k in self.sleeps.keys() {
            judged.entry(k.clone()).or_insert(i32::MAX);
        }
        for (key, after) in judged {
            let (ns, ep, v) = &key;
            // A variant under rollout is not judged (as in the cluster).
            let rolling = self.rollouts.summary(ns, ep, v).is_some();
            let state = self.sleeps.entry(key.clone()).or_default();
            if rolling {
                state.busy(now);
            } else if let Some(s) = samples.as_ref() {
                state.observe(pure::requests_of(s, &key), now);
            }
            // One variant's failure (say, its server does not start) is reported and leaves the
            // others judged.
            match self.decide_sleep(&key, after, now).await {
                Ok(step) if step.mark == Some(false) => self.unmark(&key).await,
                Ok(_) => {}
                Err(e) => self.ui.say(format!("{}: {e}", what(&key))),
            }
        }
        Ok(())
    }

    /// Take the mark of an awake variant out of the filter configuration.
    async fn unmark(&mut self, key: &VariantKey) {
        let desired = self.desired.clone();
        if let Err(e) = self.reload_filter(&desired).await {
            self.ui.say(format!("{}: awake, but {e}", what(key)));
        }
    }

    /// Decide one variant at `now` and carry the decision out but for taking a mark away
    /// (the caller does, see [`Session::unmark`]); a mark that Envoy did not take leaves the
    /// variant as it was.
    async fn decide_sleep(
        &mut self,
        key: &VariantKey,
        after: i32,
        now: i64,
    ) -> Result<Step, LocalError> {
        let servers = self.servers_of(key);
        let Some(state) = self.sleeps.get_mut(key) else {
            return Ok(Step::default());
        };
        let before = state.clone();
        let step = pure::step(state, servers, after, now, &what(key));
        if step.start {
            self.start_sleeper(key).await?;
        }
        if step.mark == Some(true) {
            let desired = self.desired.clone();
            if let Err(e) = self.reload_filter(&desired).await {
                self.sleeps.insert(key.clone(), before);
                return Err(e);
            }
        }
        if let Some(say) = &step.say {
            self.ui.say(say);
        }
        if step.stop {
            self.stop_sleeper(key).await?;
        }
        Ok(step)
    }

    /// Start the servers of a sleeping variant again and put them into its clusters.
    async fn start_sleeper(&mut self, key: &VariantKey) -> Result<(), LocalError> {
        let rk = role_key(key);
        let Some(set) = self.running.get(&rk).map(|r| r.set.clone()) else {
            return Err(LocalError::Plan(crate::plan::PlanError::NotRunning(what(
                key,
            ))));
        };
        let started = self.start_set(&set).await?;
        self.running.insert(rk, started);
        self.move_sleeper(key).await
    }

    /// Take a sleeping variant's servers out of its clusters, then stop them.
    async fn stop_sleeper(&mut self, key: &VariantKey) -> Result<(), LocalError> {
        let ids = self
            .running
            .get_mut(&role_key(key))
            .map(|r| r.take_servers())
            .unwrap_or_default();
        let moved = self.move_sleeper(key).await;
        for id in ids {
            self.sup.stop(id).await;
        }
        moved
    }

    /// Point a variant's clusters (its own and its rollout cluster) at its running servers.
    async fn move_sleeper(&mut self, (_, ep, v): &VariantKey) -> Result<(), LocalError> {
        let clusters = [envoy::variant_cluster(ep, v), envoy::rollout_cluster(ep, v)];
        let desired = self.desired.clone();
        self.move_upstreams(&desired, &clusters).await
    }

    /// Answer a wake call: a sleeping variant of this session gets its server back (the
    /// answer goes out once it is ready), then loses its mark.
    pub(super) async fn wake(&mut self, w: Wake) {
        let key = w.call.key;
        let after = pure::sleepers(&self.desired).get(&key).copied();
        let asleep = self.sleeps.get(&key).is_some_and(SleepState::is_asleep);
        let known = match (after, asleep) {
            (None, false) => Some(Woken::Unknown),
            (Some(_), false) => Some(Woken::Ready { already: true }),
            (_, true) => None,
        };
        if let Some(answer) = known {
            let _ = w.reply.send(answer);
            return;
        }
        // Asleep, and no longer allowed to sleep after an edit: woken all the same.
        let after = after.unwrap_or(i32::MAX);
        let now = self.sleep_clock();
        if let Some(state) = self.sleeps.get_mut(&key) {
            state.woken_at = Some(now);
        }
        let first = self.servers_of(&key).current == 0;
        if first {
            self.ui.say(format!(
                "{}: woken by a request: starting its server",
                what(&key)
            ));
        }
        let step = match self.decide_sleep(&key, after, now).await {
            // Started now: decide again, with the server ready.
            Ok(s) if s.start => self.decide_sleep(&key, after, now).await,
            other => other,
        };
        match step {
            Ok(step) => {
                // The held requests go first; the mark goes after.
                let _ = w.reply.send(Woken::Ready { already: !first });
                if step.mark == Some(false) {
                    self.unmark(&key).await;
                }
            }
            Err(e) => {
                self.ui
                    .say(format!("{}: could not wake it: {e}", what(&key)));
                let _ = w.reply.send(Woken::Failed(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    fn post(path: &str) -> http::Request<'_> {
        http::Request {
            method: "POST",
            path,
            ..http::Request::default()
        }
    }

    /// Answer the next wake call on `server` with `answer`; returns what it asked.
    async fn answer_next(server: &mut WakeServer, answer: Woken) -> WakeCall {
        let w = server.calls.recv().await.unwrap();
        w.reply.send(answer).unwrap();
        w.call
    }

    #[tokio::test]
    async fn the_wake_server_hands_wake_calls_to_the_session_and_answers_everything_else_404() {
        let mut server = WakeServer::start().await.unwrap();
        let port = server.addr.port();
        let t = Duration::from_secs(5);
        assert_eq!(
            http::get(port, "/wake/default/titanic/b", t)
                .await
                .unwrap()
                .status,
            404
        );
        let bad = http::send(port, &post("/wake/default/titanic"), t)
            .await
            .unwrap();
        assert_eq!(bad.status, 404);

        let call = tokio::spawn(async move {
            http::send(port, &post("/wake/default/titanic/b"), t)
                .await
                .unwrap()
        });
        let asked = answer_next(&mut server, Woken::Ready { already: false }).await;
        assert_eq!(asked.key, ("default".into(), "titanic".into(), "b".into()));
        assert_eq!(call.await.unwrap().status, 200);

        let call = tokio::spawn(async move {
            http::send(port, &post("/wake/default/titanic/zz"), t)
                .await
                .unwrap()
        });
        answer_next(&mut server, Woken::Unknown).await;
        assert_eq!(call.await.unwrap().status, 404);

        let call = tokio::spawn(async move {
            http::send(port, &post("/wake/default/titanic/b"), t)
                .await
                .unwrap()
        });
        answer_next(&mut server, Woken::Failed("no".into())).await;
        assert_eq!(call.await.unwrap().status, 503);
    }

    #[tokio::test]
    async fn a_retried_wake_call_of_a_ready_variant_waits_before_answering() {
        let mut server = WakeServer::start().await.unwrap();
        let port = server.addr.port();
        let t = Duration::from_secs(5);
        for (path, already, pause) in [
            ("/wake/default/titanic/b?retry=1", true, true),
            ("/wake/default/titanic/b?retry=1", false, false),
            ("/wake/default/titanic/b", true, false),
        ] {
            let call = tokio::spawn(async move {
                let start = Instant::now();
                let r = http::send(port, &post(path), t).await.unwrap();
                (r.status, start.elapsed())
            });
            let asked = answer_next(&mut server, Woken::Ready { already }).await;
            assert_eq!(asked.retry, path.ends_with("retry=1"));
            let (status, took) = call.await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(
                took >= pure::RETRY_PAUSE,
                pause,
                "{path} {already}: {took:?}"
            );
        }
    }
}
