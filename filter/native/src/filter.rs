//! The filter's state over Envoy's threads: a config compiled once on the main thread (which
//! validates it and defines its metrics in Envoy) and again on each worker at its first
//! stream (the compiled form is per thread, as the Wasm filter has one VM per worker), and
//! each stream driving the pure core's [`Stream`] through an [`Envoy`] host.
//!
//! Shadow copies the filter sends (those it compares) go from the main thread: a stream
//! queues its copy in the config's one [`Hub`] and wakes the main thread through Envoy's
//! config scheduler; the main thread sends it as a config-level callout, whose answer Envoy
//! delivers to the config, not to the stream, so a shadow slower than the primary is still
//! compared after the client has its answer (a stream's own callouts end with it). The
//! primary's answer reaches the same hub from the stream's worker; the hub compares when
//! both are in (`mlep_filter::shadow`).

use crate::abi::{
    Body, Buffer, ConfigEnvoy, Family, Map, Scheduler, StreamEnvoy, CALLOUT_ANSWERED,
};
use mlep_contract::{needs_wasm, FilterConfig};
use mlep_filter::compiled::Compiled;
use mlep_filter::host::{Draws, Host, MetricId, MetricKind, MetricSink};
use mlep_filter::shadow::{Event, Hub, SharedHub};
use mlep_filter::stream::{send_copies, shadow_metrics, Flow, RequestAction, Stream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One metric as Envoy knows it.
#[derive(Debug)]
struct Series {
    family: Family,
    id: usize,
    /// The core's stat name (what a worker's compile must define at this index).
    stat: String,
}

/// Defines the core's metrics in Envoy (main thread, `config_new`) under the very stat names
/// the Wasm build defines (labels encoded Istio's way, `mlep_contract::metrics::stat_name`,
/// cut out into Prometheus labels by the `stats_tags` regexes), without ABI labels: a metric
/// without labels exists from its definition, so each one the new config defines while the
/// previous config is still alive is the same Envoy stat (Envoy shares stats by name), and
/// counts and histograms carry on across config updates, across the two builds too. Labels
/// handed to Envoy as ABI labels make a series only at its first use: a weight edit then
/// reset every count and histogram (observed on 1.40, `filter_native.rs`).
struct Definer<'a> {
    envoy: &'a ConfigEnvoy,
    series: Vec<Series>,
}

impl MetricSink for Definer<'_> {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<MetricId, String> {
        let family = match kind {
            MetricKind::Counter => Family::Counter,
            MetricKind::Histogram => Family::Histogram,
            MetricKind::Gauge => return Err("gauges are not used by the request path".into()),
        };
        let id = (self.envoy.define(family, name))
            .map_err(|code| format!("Envoy refused metric {name} (code {code})"))?;
        self.series.push(Series {
            family,
            id,
            stat: name.to_owned(),
        });
        MetricId::try_from(self.series.len() - 1).map_err(|e| e.to_string())
    }
}

/// A worker's compile: the same definitions in the same order, answered from the main
/// thread's table (a definition out of step is an error, never a wrong series).
struct Replay<'a> {
    series: &'a [Series],
    next: usize,
}

impl MetricSink for Replay<'_> {
    fn define(&mut self, _kind: MetricKind, name: &str) -> Result<MetricId, String> {
        let i = self.next;
        match self.series.get(i) {
            Some(s) if s.stat == name => {
                self.next += 1;
                MetricId::try_from(i).map_err(|e| e.to_string())
            }
            _ => Err(format!("metric {name} out of step with the main thread")),
        }
    }
}

static NEXT_CONFIG: AtomicU64 = AtomicU64::new(0);

/// What a config's threads share: the shadow hub and the way to wake the main thread.
pub struct Shared {
    hub: Arc<Mutex<Hub>>,
    scheduler: Option<Scheduler>,
    /// A wake-up is on its way: one serves every copy queued before it runs.
    woken: AtomicBool,
}

impl Shared {
    /// Have the main thread send what is queued (`Config::on_scheduled`).
    fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Some(s) = &self.scheduler {
                s.commit();
            }
        }
    }
}

/// A filter config as Envoy created it.
pub struct Config {
    id: u64,
    json: Vec<u8>,
    series: Arc<[Series]>,
    /// Dropped with the config: workers drop their compiled copy when this is gone.
    alive: Arc<()>,
    shared: Arc<Shared>,
}

impl Config {
    /// Validate `json` (the contract's `FilterConfig`), refuse what only the Wasm build
    /// serves, and define the metrics. The error names the problem (Envoy logs it and keeps
    /// the last good config).
    pub fn new(envoy: &ConfigEnvoy, json: &[u8]) -> Result<Self, String> {
        let cfg = FilterConfig::from_json(json).map_err(|e| e.to_string())?;
        if let Some(n) = needs_wasm(&cfg) {
            return Err(n.to_string());
        }
        let mut definer = Definer {
            envoy,
            series: Vec::new(),
        };
        let compiled = Compiled::compile(&cfg, &mut definer).map_err(|e| e.to_string())?;
        let scheduler = Scheduler::new(envoy);
        if scheduler.is_none() && cfg.endpoints.iter().any(|e| e.shadow.is_some()) {
            return Err("Envoy made no main-thread scheduler to send shadow copies from".into());
        }
        let config = Self {
            id: NEXT_CONFIG.fetch_add(1, Ordering::Relaxed),
            json: json.to_vec(),
            series: definer.series.into(),
            alive: Arc::new(()),
            shared: Arc::new(Shared {
                hub: Arc::new(Mutex::new(Hub::new())),
                scheduler,
                woken: AtomicBool::new(false),
            }),
        };
        // The main thread's compiled copy: it sends the copies and counts their answers.
        keep_compiled(&config, compiled);
        Ok(config)
    }

    /// Main thread, woken by a stream: send the copies queued.
    pub fn on_scheduled(&self, envoy: &ConfigEnvoy) {
        self.shared.woken.store(false, Ordering::Release);
        self.flush(envoy);
    }

    /// Main thread: a copy's answer (`result` Envoy's callout result, `chunks` its body, read
    /// only if the hub will compare it).
    pub fn on_callout_done(
        &self,
        envoy: &ConfigEnvoy,
        callout: u64,
        result: u32,
        headers: &[(String, String)],
        chunks: &[Buffer],
        read: impl FnOnce() -> Vec<u8>,
    ) {
        let Some(t) = per_thread(self) else { return };
        let status = (result == CALLOUT_ANSWERED)
            .then(|| headers.iter().find(|(k, _)| k == ":status"))
            .flatten()
            .and_then(|(_, v)| v.trim().parse().ok());
        let size = chunks.iter().map(Buffer::len).sum();
        let events = (self.shared.hub)
            .with(|hub| hub.answer(token(callout), status, size, read, monotonic_ms()));
        self.count(envoy, &t.cfg, &events, true);
        self.flush(envoy);
    }

    /// Main thread: send every queued copy (a refusal counts as the copy's error) and drop
    /// what waited past its timeout.
    fn flush(&self, envoy: &ConfigEnvoy) {
        let Some(t) = per_thread(self) else { return };
        let hub = &self.shared.hub;
        let unsent = send_copies(&t.cfg, hub, monotonic_ms, |s, o| {
            let timeout = u64::from(s.timeout_ms);
            match envoy.callout(&s.cluster, &o.headers, &o.body, timeout) {
                Ok(id) => Ok(token(id)),
                Err(code) => {
                    let why = format!(
                        "mlep: shadow copy to cluster {} refused (code {code})",
                        s.cluster
                    );
                    crate::abi::log(crate::abi::Level::Error, &why);
                    Err(())
                }
            }
        });
        let evicted = hub.with(|h| h.evict(monotonic_ms()));
        self.count(envoy, &t.cfg, &evicted, true);
        self.count(envoy, &t.cfg, &unsent, false);
    }

    /// Count shadow events on the main thread.
    fn count(&self, envoy: &ConfigEnvoy, cfg: &Compiled, events: &[Event], sent: bool) {
        for m in shadow_metrics(cfg, events, sent) {
            if let Some(s) = self.series.get(m as usize) {
                envoy.increment(s.id, 1);
            }
        }
    }
}

/// The hub's call token for Envoy's callout id (ids count up from 1 per config; the low 32
/// bits stay unique among the copies in flight, at most
/// `mlep_filter::shadow::MAX_PENDING`).
fn token(callout: u64) -> u32 {
    (callout & u64::from(u32::MAX)) as u32
}

/// A config compiled on one thread.
#[derive(Clone)]
struct PerThread {
    cfg: Rc<Compiled>,
    alive: Weak<()>,
}

thread_local! {
    static COMPILED: RefCell<HashMap<u64, PerThread>> = RefCell::new(HashMap::new());
    static DRAWS: RefCell<Draws> = RefCell::new(Draws::new());
}

/// This thread's compiled copy of `config`, compiled now if it is new here
/// ([`keep_compiled`]).
fn per_thread(config: &Config) -> Option<PerThread> {
    let known = COMPILED.with(|c| c.borrow().get(&config.id).cloned());
    if known.is_some() {
        return known;
    }
    let mut replay = Replay {
        series: &config.series,
        next: 0,
    };
    let cfg = Compiled::from_json(&config.json, &mut replay).ok()?;
    Some(keep_compiled(config, cfg))
}

/// Keep `compiled` as this thread's copy of `config` (the main thread's comes from
/// `Config::new`, a worker's from [`per_thread`]); the copies of configs Envoy has destroyed
/// go (once per new config, not per stream).
fn keep_compiled(config: &Config, compiled: Compiled) -> PerThread {
    let t = PerThread {
        cfg: Rc::new(compiled),
        alive: Arc::downgrade(&config.alive),
    };
    COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|_, t| t.alive.strong_count() > 0);
        c.insert(config.id, t.clone());
    });
    t
}

/// The per-route config: the name of the virtual host that enables the filter
/// (`mlep_core::envoy::filter_enabled_native`), which says whose endpoint a request is.
pub struct RouteConfig {
    pub virtual_host: String,
}

/// One stream.
pub struct Filter {
    stream: Stream<Arc<Mutex<Hub>>>,
    series: Arc<[Series]>,
    shared: Arc<Shared>,
}

/// What the request-headers hook must do after the stream's decision.
pub enum Then {
    Continue,
    /// Answer locally (after every borrow of the filter has ended: Envoy calls back in).
    Reply {
        status: u32,
        body: String,
    },
}

impl Filter {
    /// `None`: this worker cannot compile what the main thread compiled (never expected);
    /// the stream passes untouched.
    pub fn new(config: &Config) -> Option<Self> {
        let t = per_thread(config)?;
        Some(Self {
            stream: Stream::new(t.cfg, Arc::clone(&config.shared.hub)),
            series: Arc::clone(&config.series),
            shared: Arc::clone(&config.shared),
        })
    }

    pub fn on_request_headers(
        &mut self,
        envoy: StreamEnvoy,
        route: Option<&RouteConfig>,
        end_of_stream: bool,
    ) -> Then {
        let mut host = Envoy::new(envoy, route, &self.series, &self.shared);
        let action = self.stream.on_request_headers(&mut host, end_of_stream);
        // Envoy chose the route before this filter ran: the routing headers just written
        // steer only once the cache is cleared.
        if host.wrote_request {
            envoy.clear_route_cache();
        }
        match action {
            RequestAction::Reply { status, body } => Then::Reply { status, body },
            // Holds need the Wasm build (`mlep_contract::needs_wasm` refuses such configs).
            RequestAction::Continue | RequestAction::Hold(_) => Then::Continue,
        }
    }

    /// A request body chunk: read only while a copy wants it (holds are the Wasm build's,
    /// so the request always goes on).
    pub fn on_request_body(&mut self, envoy: StreamEnvoy, end_of_stream: bool) {
        if self.stream.wants_request_body() {
            let len = envoy.body_size(Body::ReceivedRequest);
            let mut host = Envoy::new(envoy, None, &self.series, &self.shared);
            let _: Flow = self.stream.on_body(&mut host, len, end_of_stream);
        }
    }

    pub fn on_request_trailers(&mut self, envoy: StreamEnvoy) {
        if self.stream.wants_request_body() {
            let mut host = Envoy::new(envoy, None, &self.series, &self.shared);
            let _: Flow = self.stream.on_trailers(&mut host);
        }
    }

    pub fn on_response_headers(&mut self, envoy: StreamEnvoy, end_of_stream: bool) {
        let mut host = Envoy::new(envoy, None, &self.series, &self.shared);
        self.stream.on_response_headers(&mut host, end_of_stream);
    }

    /// A response body chunk: read only while the primary's answer is being collected for
    /// comparison.
    pub fn on_response_body(&mut self, envoy: StreamEnvoy, end_of_stream: bool) {
        if self.stream.wants_response_body() {
            let len = envoy.body_size(Body::ReceivedResponse);
            let mut host = Envoy::new(envoy, None, &self.series, &self.shared);
            self.stream.on_response_body(&mut host, len, end_of_stream);
        }
    }

    pub fn on_log(&mut self, envoy: StreamEnvoy) {
        let mut host = Envoy::new(envoy, None, &self.series, &self.shared);
        self.stream.on_log(&mut host);
    }
}

/// The host for one hook: Envoy's filter object, the route's config, the series table and
/// what the config's threads share.
struct Envoy<'a> {
    envoy: StreamEnvoy,
    route: Option<&'a RouteConfig>,
    series: &'a [Series],
    shared: &'a Shared,
    /// A request header was written (the route must be chosen again).
    wrote_request: bool,
}

impl<'a> Envoy<'a> {
    fn new(
        envoy: StreamEnvoy,
        route: Option<&'a RouteConfig>,
        series: &'a [Series],
        shared: &'a Shared,
    ) -> Self {
        Self {
            envoy,
            route,
            series,
            shared,
            wrote_request: false,
        }
    }

    fn metric(&self, metric: MetricId, value: u64) {
        if let Some(s) = self.series.get(metric as usize) {
            self.envoy.metric(s.family, s.id, value);
        }
    }
}

impl Host for Envoy<'_> {
    fn virtual_host_name(&self) -> Option<String> {
        self.route.map(|r| r.virtual_host.clone())
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.envoy.header(Map::Request, name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.envoy.headers(Map::Request)
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.wrote_request = true;
        self.envoy.set_header(Map::Request, name, Some(value));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.wrote_request = true;
        self.envoy.set_header(Map::Request, name, None);
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.envoy.header(Map::Response, name)
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        self.envoy.set_header(Map::Response, name, Some(value));
    }
    fn add_response_header(&mut self, name: &str, value: &str) {
        self.envoy.add_header(Map::Response, name, value);
    }
    /// The chunk the running body hook was handed (the core asks for all of it).
    fn request_body(&self, _len: usize) -> Vec<u8> {
        self.envoy.body(Body::ReceivedRequest)
    }
    fn response_body(&self, _len: usize) -> Vec<u8> {
        self.envoy.body(Body::ReceivedResponse)
    }
    /// Natively a counter increment costs a few hundred instructions: no tally to flush.
    fn increment(&mut self, metric: MetricId) {
        self.metric(metric, 1);
    }
    fn record(&mut self, metric: MetricId, value: u64) {
        self.metric(metric, value);
    }
    fn now_ms(&self) -> u64 {
        monotonic_ms()
    }
    /// A monotonic clock (durations only, as the core uses it).
    fn now_ns(&self) -> u64 {
        monotonic_ns()
    }
    fn random(&mut self) -> u64 {
        DRAWS.with(|d| d.borrow_mut().next())
    }
    /// Copies go from the main thread ([`Config::on_scheduled`]); capture records are the
    /// Wasm build's (`mlep_contract::needs_wasm`).
    fn send_queued(&mut self) {
        self.shared.wake();
    }
}

fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// Nanoseconds since the first reading in this process, on the OS's monotonic clock.
fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(stats: &[&str]) -> Vec<Series> {
        (stats.iter().enumerate())
            .map(|(i, s)| Series {
                family: Family::Counter,
                id: i + 1,
                stat: (*s).to_owned(),
            })
            .collect()
    }

    /// A worker's compile gets the main thread's metric ids in order, and a definition out of
    /// step (another config, a changed core) is an error, never another metric's id.
    #[test]
    fn a_workers_definitions_replay_the_main_threads_in_order_or_fail() {
        let table = series(&["mlep_a", "mlep_b"]);
        let mut replay = Replay {
            series: &table,
            next: 0,
        };
        assert_eq!(replay.define(MetricKind::Counter, "mlep_a"), Ok(0));
        assert_eq!(replay.define(MetricKind::Counter, "mlep_b"), Ok(1));
        assert!(replay.define(MetricKind::Counter, "mlep_c").is_err());
        let mut out_of_step = Replay {
            series: &table,
            next: 0,
        };
        assert!(out_of_step.define(MetricKind::Counter, "mlep_b").is_err());
    }
}
