//! A load client for a proxy at any address (the bed's ingress gateway, a local Envoy): one
//! request per connection, **never retried**. Every answer and every failure is recorded with
//! its kind — the status, the variant (`x-mlep-variant`) and the model (`x-mlep-model`, the model
//! server's `name:version`) that answered, or the connection error, reset or timeout — so a
//! "0 failed" figure means no request failed at all.

use mlep::http::{send_to, Connection, HttpError, Request, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where requests go: a proxy's address and the `host` header naming the endpoint.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    /// The request body (the Titanic example's two rows unless changed).
    pub body: Arc<Vec<u8>>,
}

impl Target {
    /// `addr` with `host`, posting the Titanic example's `request.json`.
    pub fn titanic(addr: SocketAddr, host: &str) -> Target {
        let body = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/titanic/request.json"),
        )
        .unwrap_or_default();
        Target {
            addr,
            host: host.to_owned(),
            body: Arc::new(body),
        }
    }

    /// The `POST /invocations` with `headers`.
    fn request<'a>(&'a self, headers: &[(&'a str, &str)]) -> Request<'a> {
        let mut all = vec![
            ("host", self.host.clone()),
            ("content-type", "application/json".to_owned()),
        ];
        all.extend(headers.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Request {
            method: "POST",
            path: "/invocations",
            headers: all,
            body: &self.body,
        }
    }

    /// One `POST /invocations` with `headers` on a connection of its own, no retry.
    pub async fn invoke(&self, headers: &[(&str, &str)]) -> Outcome {
        self.invoke_within(headers, TIMEOUT).await
    }

    /// The same, allowed `limit` for the whole answer (a request held while its variant
    /// wakes from zero).
    pub async fn invoke_within(&self, headers: &[(&str, &str)], limit: Duration) -> Outcome {
        outcome(send_to(self.addr, &self.request(headers), limit).await)
    }

    /// The same on the kept-alive `conn`, opened first if there is none. A connection that
    /// failed is dropped (the next request opens another; the failed one counts, no retry).
    pub async fn invoke_on(
        &self,
        conn: &mut Option<Connection>,
        headers: &[(&str, &str)],
    ) -> Outcome {
        let mut kept = conn.take();
        if let Some(c) = kept.as_mut() {
            if !c.usable().await {
                kept = None;
            }
        }
        let mut c = match kept {
            Some(c) => c,
            None => match Connection::open(self.addr, TIMEOUT).await {
                Ok(c) => c,
                Err(e) => return outcome(Err(e)),
            },
        };
        let r = c.send(&self.request(headers), TIMEOUT).await;
        let closing = r.as_ref().map_or(true, |a| {
            a.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        });
        if !closing {
            *conn = Some(c);
        }
        outcome(r)
    }

    /// `x-mlep-variant` for each key (`none-<what>` when unassigned or failed).
    pub async fn assign(&self, keys: &[String]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for k in keys {
            let o = self.invoke(&[("x-user-id", k)]).await;
            out.insert(k.clone(), o.variant_or_none());
        }
        out
    }

    /// `"<status> <x-mlep-model>"` for each key (which model answered it).
    pub async fn models(&self, keys: &[String]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for k in keys {
            let o = self.invoke(&[("x-user-id", k)]).await;
            let m = match &o {
                Outcome::Answered {
                    status, model: m, ..
                } => format!("{status} {}", m.as_deref().unwrap_or("none")),
                other => other.kind(),
            };
            out.insert(k.clone(), m);
        }
        out
    }

    /// Variant counts over `n` fresh keys `<prefix>-<i>`.
    pub async fn split(&self, prefix: &str, n: usize) -> BTreeMap<String, u64> {
        let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let mut counts = BTreeMap::new();
        for v in self.assign(&keys).await.into_values() {
            *counts.entry(v).or_default() += 1;
        }
        counts
    }
}

/// Per-request deadline (connect, send, whole answer).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What one request got.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A complete HTTP answer.
    Answered {
        status: u16,
        variant: Option<String>,
        model: Option<String>,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// The connection could not be made.
    Connect(String),
    /// Made, then broken (reset, closed early) before a complete answer.
    Reset(String),
    /// No complete answer within [`TIMEOUT`].
    Timeout,
    /// Something that is not an HTTP response.
    Malformed(String),
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        match self {
            Outcome::Answered { headers, .. } => headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    pub fn variant(&self) -> Option<&str> {
        match self {
            Outcome::Answered { variant, .. } => variant.as_deref(),
            _ => None,
        }
    }

    pub fn model(&self) -> Option<&str> {
        match self {
            Outcome::Answered { model, .. } => model.as_deref(),
            _ => None,
        }
    }

    pub fn body(&self) -> &str {
        match self {
            Outcome::Answered { body, .. } => body,
            _ => "",
        }
    }

    fn variant_or_none(&self) -> String {
        match self {
            Outcome::Answered {
                variant: Some(v), ..
            } => v.clone(),
            Outcome::Answered { status, .. } => format!("none-{status}"),
            other => format!("none-{}", other.kind()),
        }
    }

    /// The predictions' probabilities of a 200 answer (empty if there are none).
    pub fn probabilities(&self) -> Vec<f64> {
        serde_json::from_str::<serde_json::Value>(self.body())
            .ok()
            .and_then(|v| {
                v["predictions"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["probability"].as_f64()).collect())
            })
            .unwrap_or_default()
    }

    /// A request succeeded: 200 with two predictions, and (if `need_variant`) assigned.
    pub fn is_success(&self, need_variant: bool) -> bool {
        self.status() == Some(200)
            && (!need_variant || self.variant().is_some())
            && self.probabilities().len() == 2
    }

    /// The failure kind, for counting: `HTTP 500 variant=a model=titanic-batch1:1`,
    /// `reset: ...`, `timeout`, `connect: ...`, `malformed: ...`.
    pub fn kind(&self) -> String {
        match self {
            Outcome::Answered {
                status,
                variant,
                model,
                ..
            } => format!(
                "HTTP {status} variant={} model={}",
                variant.as_deref().unwrap_or("-"),
                model.as_deref().unwrap_or("-")
            ),
            Outcome::Connect(e) => format!("connect: {e}"),
            Outcome::Reset(e) => format!("reset: {e}"),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Malformed(e) => format!("malformed: {e}"),
        }
    }
}

/// An exchange of local mode's one HTTP client, the answer read to its end; a body cut short
/// is a reset, not an answer.
fn outcome(r: Result<Response, HttpError>) -> Outcome {
    match r {
        Ok(r) => Outcome::Answered {
            status: r.status,
            variant: r.header("x-mlep-variant").map(str::to_owned),
            model: r.header("x-mlep-model").map(str::to_owned),
            body: r.text(),
            headers: r.headers,
        },
        Err(HttpError::Timeout { .. }) => Outcome::Timeout,
        Err(HttpError::Io { source, .. }) => Outcome::Connect(source.to_string()),
        Err(HttpError::Http { source, .. }) if source.is_parse() => {
            Outcome::Malformed(source.to_string())
        }
        Err(HttpError::Http { source, .. }) => Outcome::Reset(source.to_string()),
        Err(e @ HttpError::Request { .. }) => Outcome::Malformed(e.to_string()),
    }
}

/// `GET path` on `addr` (a pod's metrics, Prometheus's API): the body of a 200 answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    match outcome(send_to(addr, &Request::get(path), TIMEOUT).await) {
        Outcome::Answered {
            status: 200, body, ..
        } => Ok(body),
        other => Err(other.kind()),
    }
}

/// What a load run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub requests: u64,
    /// Failed requests by kind ([`Outcome::kind`]).
    pub failures: BTreeMap<String, u64>,
    /// Successful requests by variant.
    pub by_variant: BTreeMap<String, u64>,
    /// Every answer by the model that gave it (`none` if no model header or no answer).
    pub by_model: BTreeMap<String, u64>,
    /// Failed requests by the model that answered them (`none`: no model answered).
    pub failures_by_model: BTreeMap<String, u64>,
    pub latencies_ms: Vec<f64>,
}

impl Report {
    /// Count one request.
    pub fn record(&mut self, o: &Outcome, need_variant: bool, ms: f64) {
        self.requests += 1;
        self.latencies_ms.push(ms);
        let model = o.model().unwrap_or("none").to_owned();
        *self.by_model.entry(model.clone()).or_default() += 1;
        if o.is_success(need_variant) {
            let v = o.variant().unwrap_or("unassigned").to_owned();
            *self.by_variant.entry(v).or_default() += 1;
        } else {
            *self.failures.entry(o.kind()).or_default() += 1;
            *self.failures_by_model.entry(model).or_default() += 1;
        }
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Requests that succeeded (`requests - failed`).
    pub fn succeeded(&self) -> u64 {
        self.requests.saturating_sub(self.failed())
    }

    /// The `p`-quantile latency (0..1), in ms.
    pub fn percentile(&self, p: f64) -> f64 {
        let mut l = self.latencies_ms.clone();
        l.sort_by(f64::total_cmp);
        let i = ((p * l.len() as f64) as usize).min(l.len().saturating_sub(1));
        l.get(i).map(|v| (v * 100.0).round() / 100.0).unwrap_or(0.0)
    }

    /// One line for a `measure:` print.
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} failed {:?}, p50 {} ms, p99 {} ms, by variant {:?}, by model {:?}",
            self.requests,
            self.failed(),
            self.failures,
            self.percentile(0.5),
            self.percentile(0.99),
            self.by_variant,
            self.by_model
        )
    }

    /// Panics unless requests were made and none failed.
    pub fn assert_no_failures(&self, what: &str) {
        assert!(self.requests > 0, "{what}: no request was made");
        assert_eq!(
            self.failed(),
            0,
            "{what}: failed requests by kind: {:?}",
            self.failures
        );
    }
}

/// How a load run sends: its senders, its user keys and its headers.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Senders running at once, each one request at a time.
    pub workers: usize,
    /// `Some(n)`: keys `load-user-<i % n>` (users who come back); `None`: a fresh key
    /// `load-<worker>-<i>` for every request.
    pub returning_users: Option<u64>,
    /// Headers on every request besides the key (e.g. `x-mlep-target-variant`).
    pub headers: Vec<(String, String)>,
    /// `false` accepts answers without `x-mlep-variant` (no filter ran).
    pub need_variant: bool,
    /// Each sender keeps one connection open ([`Target::invoke_on`]) instead of one per request.
    pub keep_alive: bool,
}

impl Shape {
    /// One sender and 500 returning users (the cluster e2e's load).
    pub fn returning(need_variant: bool) -> Shape {
        Shape {
            workers: 1,
            returning_users: Some(500),
            headers: Vec::new(),
            need_variant,
            keep_alive: false,
        }
    }

    /// `workers` senders, a new user for every request, each answer assigned a variant.
    pub fn fresh_users(workers: usize) -> Shape {
        Shape {
            workers,
            returning_users: None,
            headers: Vec::new(),
            need_variant: true,
            keep_alive: false,
        }
    }

    /// Also send `name: value` on every request.
    pub fn header(mut self, name: &str, value: &str) -> Shape {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `worker`'s `i`-th request, on `conn` when [`Shape::keep_alive`].
    async fn send(
        &self,
        target: &Target,
        conn: &mut Option<Connection>,
        worker: usize,
        i: u64,
    ) -> Outcome {
        let key = self.key(worker, i);
        let mut headers = vec![("x-user-id", key.as_str())];
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if self.keep_alive {
            target.invoke_on(conn, &headers).await
        } else {
            target.invoke(&headers).await
        }
    }

    /// The user key of `worker`'s `i`-th request.
    fn key(&self, worker: usize, i: u64) -> String {
        match self.returning_users {
            Some(n) => format!("load-user-{}", i % n.max(1)),
            None => format!("load-{worker}-{i}"),
        }
    }
}

/// Requests shaped by a [`Shape`] until stopped or 300 s pass; never retried.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Start [`Shape::returning`]: one sender, 500 returning users.
    pub fn start(target: Target, need_variant: bool) -> Load {
        Load::start_shaped(target, Shape::returning(need_variant))
    }

    /// Start `shape.workers` senders at `target`.
    pub fn start_shaped(target: Target, shape: Shape) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let shape = Arc::new(shape);
        let tasks = (0..shape.workers)
            .map(|w| {
                let (stop, report, shape, target) =
                    (stop.clone(), report.clone(), shape.clone(), target.clone());
                tokio::spawn(async move {
                    let start = Instant::now();
                    let mut conn = None;
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && start.elapsed() < Duration::from_secs(300)
                    {
                        i += 1;
                        let t0 = Instant::now();
                        let o = shape.send(&target, &mut conn, w, i).await;
                        let ms = t0.elapsed().as_secs_f64() * 1000.0;
                        lock(&report).record(&o, shape.need_variant, ms);
                    }
                })
            })
            .collect();
        Load {
            stop,
            report,
            tasks,
        }
    }

    /// Run for `d` and report.
    pub async fn run_for(target: Target, need_variant: bool, d: Duration) -> Report {
        let l = Load::start(target, need_variant);
        tokio::time::sleep(d).await;
        l.stop().await
    }

    /// `rate` requests a second for `d` from one sender (one kept-alive connection when
    /// [`Shape::keep_alive`]). A request an answer held up is timed from when it was due, so
    /// the slow answer counts against both (no coordinated omission); one sent on time, from
    /// when it left. Bounded: `rate * d` requests; never retried.
    pub async fn paced(target: Target, shape: Shape, rate: f64, d: Duration) -> Report {
        let mut report = Report::default();
        let n = (rate * d.as_secs_f64()).round() as u64;
        paced_requests(
            &target,
            &shape,
            rate,
            n,
            &AtomicBool::new(false),
            |o, ms| report.record(o, shape.need_variant, ms),
        )
        .await;
        report
    }

    /// [`Load::paced`] until stopped or 300 s pass: a steady trickle beside a change (pods
    /// coming and going) whose failures all count.
    pub fn start_paced(target: Target, shape: Shape, rate: f64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let (s, r) = (stop.clone(), report.clone());
        let task = tokio::spawn(async move {
            let n = (rate * 300.0).round() as u64;
            paced_requests(&target, &shape, rate, n, &s, |o, ms| {
                lock(&r).record(o, shape.need_variant, ms)
            })
            .await;
        });
        Load {
            stop,
            report,
            tasks: vec![task],
        }
    }

    /// Requests that succeeded so far.
    pub fn succeeded(&self) -> u64 {
        lock(&self.report).succeeded()
    }

    /// Stop every sender, let its request in flight finish, and report.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            if let Err(e) = t.await {
                *lock(&self.report)
                    .failures
                    .entry(format!("load sender failed: {e}"))
                    .or_default() += 1;
            }
        }
        std::mem::take(&mut *lock(&self.report))
    }
}

/// Up to `n` requests at `rate` a second from one sender until `stop`. A request held past its
/// time by the previous answer is timed from when it was due (the server's slowness counts
/// against every request it delayed: no coordinated omission); one sent on time is timed
/// from when it left, since tokio's timer wakes up to a millisecond late and that lateness is
/// the client's, not the server's (timed from due, it added 0-1 ms to every sample).
async fn paced_requests(
    target: &Target,
    shape: &Shape,
    rate: f64,
    n: u64,
    stop: &AtomicBool,
    mut record: impl FnMut(&Outcome, f64),
) {
    let start = Instant::now();
    let mut conn = None;
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let from = if Instant::now() < due {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        } else {
            due
        };
        let o = shape.send(target, &mut conn, 0, i).await;
        record(&o, from.elapsed().as_secs_f64() * 1000.0);
    }
}

/// The report, even if a sender panicked while holding it.
fn lock(report: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
    report
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn answered(status: u16, variant: Option<&str>, model: Option<&str>) -> Outcome {
        Outcome::Answered {
            status,
            variant: variant.map(str::to_owned),
            model: model.map(str::to_owned),
            headers: vec![],
            body: r#"{"predictions":[{"probability":0.1},{"probability":0.9}]}"#.to_owned(),
        }
    }

    #[test]
    fn a_report_counts_every_failure_by_kind_and_model() {
        let mut r = Report::default();
        r.record(&answered(200, Some("a"), Some("titanic:v1")), true, 1.0);
        r.record(&answered(500, Some("a"), Some("batch1:1")), true, 1.0);
        r.record(&answered(200, None, Some("titanic:v1")), true, 1.0);
        r.record(&Outcome::Timeout, true, 10_000.0);
        assert_eq!(r.requests, 4);
        assert_eq!(r.failed(), 3);
        assert_eq!(r.failures["HTTP 500 variant=a model=batch1:1"], 1);
        assert_eq!(r.failures["HTTP 200 variant=- model=titanic:v1"], 1);
        assert_eq!(r.failures["timeout"], 1);
        assert_eq!(r.failures_by_model["none"], 1);
        assert_eq!(r.by_variant["a"], 1);
    }

    #[test]
    fn an_answer_without_a_variant_succeeds_only_when_none_is_needed() {
        let o = answered(200, None, Some("titanic:v1"));
        assert!(!o.is_success(true));
        assert!(o.is_success(false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_user_senders_send_their_headers_with_a_new_key_each_and_count_every_answer() {
        let up = crate::Upstream::start("a");
        let shape = Shape::fresh_users(3).header("x-mlep-target-variant", "a");
        let load = Load::start_shaped(Target::titanic(up.addr, "x"), shape);
        let start = Instant::now();
        while load.report.lock().unwrap().requests < 30 {
            assert!(start.elapsed() < Duration::from_secs(10), "no load");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = load.stop().await;
        let seen = up.seen();
        assert_eq!(report.requests, seen.len() as u64);
        // The upstream answers no predictions: every answer counts, as a failure by kind.
        assert_eq!(report.succeeded(), 0);
        assert_eq!(
            report.failures["HTTP 200 variant=- model=-"],
            report.requests
        );
        let keys: BTreeSet<&str> = seen
            .iter()
            .map(|s| s.headers["x-user-id"].as_str())
            .collect();
        assert_eq!(keys.len(), seen.len(), "a key was used twice");
        let senders: BTreeSet<&str> = keys.iter().filter_map(|k| k.split('-').nth(1)).collect();
        assert_eq!(senders, BTreeSet::from(["0", "1", "2"]));
        assert!(seen
            .iter()
            .all(|s| s.headers["x-mlep-target-variant"] == "a"));
    }

    #[test]
    fn returning_users_come_back_after_n_requests() {
        let s = Shape::returning(true);
        assert_eq!(s.key(0, 1), "load-user-1");
        assert_eq!(s.key(0, 501), "load-user-1");
        assert_ne!(s.key(0, 2), s.key(0, 1));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_failure_not_retried() {
        let t = Target::titanic(crate::dead_addr(), "x");
        let o = t.invoke(&[]).await;
        assert!(matches!(o, Outcome::Connect(_)), "{o:?}");
    }

    #[tokio::test]
    async fn a_server_closing_without_answering_is_a_reset() {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut served = 0;
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
                served += 1;
                drop(s);
                if served == 2 {
                    break;
                }
            }
            served
        });
        let t = Target::titanic(addr, "x");
        let o = t.invoke(&[]).await;
        assert!(matches!(o, Outcome::Reset(_)), "{o:?}");
        // One request, one connection: the client did not try again.
        let o2 = t.invoke(&[]).await;
        assert!(matches!(o2, Outcome::Reset(_)), "{o2:?}");
        assert_eq!(server.await.unwrap(), 2);
    }
}
