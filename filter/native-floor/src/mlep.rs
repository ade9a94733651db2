//! The mlep filter's request path natively: `mlep_filter::stream::Stream` over the dynamic
//! module ABI. Benchmark only, and only the request path the benchmark's `filter` mode takes:
//! - the endpoint is found from `:authority` mapped to the benchmark's virtual-host names
//!   (`<name>.local` -> `<name>.default.svc.cluster.local:80`, `tests/src/lib.rs`). A product
//!   module would carry the endpoint in the virtual host's per-route config instead (a lookup,
//!   no header read); Envoy's `xds.virtual_host_name` attribute for dynamic modules returns the
//!   *virtual cluster's* name (`stream_info.virtualClusterName()` in Envoy's ABI
//!   implementation, read in the stored source), so it cannot serve;
//! - histogram samples go to Envoy per request, as the Wasm filter records them
//!   (`define_histogram` on the main thread, `record_histogram_value`); counters stay in
//!   module memory (the Wasm filter tallies them too, and flushes them once a second from its
//!   tick, which this spike does not do);
//! - no shadow copies, captures, held requests or local replies (no callouts, no scheduler):
//!   a config using them is served as if they were absent, and a request the filter would
//!   answer itself (400) goes on. None of these are on the measured path.
//!
//! Streams run on Envoy's worker threads; the compiled config and the (unused) shadow hub are
//! kept per thread and per config (a number given when Envoy creates the config), as the
//! Wasm filter has one VM per worker.

use crate::{get_header, Buffer, REQUEST_HEADER, RESPONSE_HEADER};
use mlep_filter::compiled::Compiled;
use mlep_filter::host::{Host, MetricId, MetricKind, MetricSink};
use mlep_filter::shadow::Hub;
use mlep_filter::stream::{RequestAction, Stream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const CONTINUE: u32 = 0;

/// Counter values by metric id (definition order, the same on every thread as in
/// [`EnvoySink`]); the histograms' slots stay unused.
#[derive(Default)]
struct Counters(Vec<u64>);

impl MetricSink for Counters {
    fn define(&mut self, _kind: MetricKind, _name: &str) -> Result<MetricId, String> {
        self.0.push(0);
        Ok((self.0.len() - 1) as MetricId)
    }
}

/// One config compiled on one worker.
#[derive(Clone)]
struct PerThread {
    cfg: Rc<Compiled>,
    hub: Rc<RefCell<Hub>>,
    counters: Rc<RefCell<Counters>>,
}

thread_local! {
    static CONFIGS: RefCell<HashMap<u64, PerThread>> = RefCell::new(HashMap::new());
    static RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9e37_79b9_7f4a_7c15) };
}

/// Envoy's histogram ids by the filter's metric ids (definition order), `None` for the
/// metrics kept in module memory.
struct EnvoySink {
    config: *mut c_void,
    histograms: Vec<Option<usize>>,
}

impl MetricSink for EnvoySink {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<MetricId, String> {
        let mut id = 0usize;
        // SAFETY: Envoy's config pointer is valid during `config_new`, where this runs.
        let defined = kind == MetricKind::Histogram
            && unsafe {
                envoy_dynamic_module_callback_http_filter_config_define_histogram(
                    self.config,
                    Buffer::str(name),
                    ptr::null(),
                    0,
                    &mut id,
                )
            } == METRICS_SUCCESS;
        self.histograms.push(defined.then_some(id));
        Ok((self.histograms.len() - 1) as MetricId)
    }
}

static NEXT_CONFIG: AtomicU64 = AtomicU64::new(0);

/// The mlep filter's config as Envoy created it: compiled once on the main thread (which
/// defines the histograms in Envoy), again on each worker.
pub struct Config {
    id: u64,
    json: Vec<u8>,
    histograms: Arc<[Option<usize>]>,
}

impl Config {
    pub fn new(envoy: *mut c_void, json: &[u8]) -> Option<Self> {
        let mut sink = EnvoySink {
            config: envoy,
            histograms: Vec::new(),
        };
        Compiled::from_json(json, &mut sink).ok()?;
        Some(Self {
            id: NEXT_CONFIG.fetch_add(1, Ordering::Relaxed),
            json: json.to_vec(),
            histograms: sink.histograms.into(),
        })
    }
}

pub struct Native {
    stream: Stream,
    metrics: Metrics,
}

/// Where a stream's metrics go.
struct Metrics {
    counters: Rc<RefCell<Counters>>,
    /// Envoy's histogram ids by metric id, shared with the config across Envoy's threads.
    histograms: Arc<[Option<usize>]>,
}

impl Metrics {
    /// The host for one callback.
    fn host(&self, envoy: *mut c_void) -> Envoy<'_> {
        Envoy {
            filter: envoy,
            wrote_request: false,
            counters: &self.counters,
            histograms: &self.histograms,
        }
    }
}

impl Native {
    pub fn new(config: &Config) -> Option<Self> {
        let t = CONFIGS.with(|c| {
            let mut c = c.borrow_mut();
            if let std::collections::hash_map::Entry::Vacant(e) = c.entry(config.id) {
                let mut counters = Counters::default();
                let cfg = Compiled::from_json(&config.json, &mut counters).ok()?;
                e.insert(PerThread {
                    cfg: Rc::new(cfg),
                    hub: Rc::new(RefCell::new(Hub::new())),
                    counters: Rc::new(RefCell::new(counters)),
                });
            }
            c.get(&config.id).cloned()
        })?;
        Some(Self {
            stream: Stream::new(t.cfg, t.hub),
            metrics: Metrics {
                counters: t.counters,
                histograms: Arc::clone(&config.histograms),
            },
        })
    }

    pub fn on_request_headers(&mut self, envoy: *mut c_void, end_of_stream: bool) -> u32 {
        let mut host = self.metrics.host(envoy);
        let action = self.stream.on_request_headers(&mut host, end_of_stream);
        // Envoy picked the route before this filter ran: a changed `x-mlep-variant` only
        // steers once the cache is cleared (the Wasm host clears it on every request-header
        // write; this ABI leaves it to the module, once per stream here).
        if host.wrote_request {
            clear_route_cache(envoy);
        }
        match action {
            RequestAction::Continue | RequestAction::Reply { .. } | RequestAction::Hold(_) => {
                CONTINUE
            }
        }
    }

    pub fn on_response_headers(&mut self, envoy: *mut c_void, end_of_stream: bool) -> u32 {
        self.stream
            .on_response_headers(&mut self.metrics.host(envoy), end_of_stream);
        CONTINUE
    }

    pub fn on_log(&mut self, envoy: *mut c_void) {
        self.stream.on_log(&mut self.metrics.host(envoy));
    }
}

const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

/// Have Envoy choose the route again (after a request-header write).
pub fn clear_route_cache(envoy: *mut c_void) {
    // SAFETY: Envoy's filter pointer is valid during the callback that passed it.
    unsafe { envoy_dynamic_module_callback_http_clear_route_cache(envoy) };
}

/// The host: this stream's Envoy filter object for one callback.
struct Envoy<'a> {
    filter: *mut c_void,
    /// A request header was written (the route must be chosen again).
    wrote_request: bool,
    counters: &'a RefCell<Counters>,
    /// Envoy's histogram ids by metric id.
    histograms: &'a [Option<usize>],
}

impl Envoy<'_> {
    fn get(&self, header_type: u32, name: &str) -> Option<String> {
        // SAFETY: Envoy's filter pointer is valid during the callback; the answer is copied
        // at once.
        let bytes = unsafe { get_header(self.filter, header_type, name) }?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    fn set(&mut self, header_type: u32, name: &str, value: Option<&str>) {
        self.wrote_request |= header_type == REQUEST_HEADER;
        let value = value.map_or(Buffer::NULL, Buffer::str);
        // SAFETY: Envoy's filter pointer is valid during the callback; Envoy copies the key
        // and value.
        unsafe {
            crate::envoy_dynamic_module_callback_http_set_header(
                self.filter,
                header_type,
                Buffer::str(name),
                value,
            );
        }
    }
}

impl Host for Envoy<'_> {
    fn virtual_host_name(&self) -> Option<String> {
        let authority = self.get(REQUEST_HEADER, ":authority")?;
        let name = authority.strip_suffix(".local")?;
        Some(format!("{name}.default.svc.cluster.local:80"))
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.get(REQUEST_HEADER, name)
    }
    /// Only a shadow of every request reads them all; not on the measured path.
    fn request_headers(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.set(REQUEST_HEADER, name, Some(value));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.set(REQUEST_HEADER, name, None);
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.get(RESPONSE_HEADER, name)
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        self.set(RESPONSE_HEADER, name, Some(value));
    }
    fn add_response_header(&mut self, name: &str, value: &str) {
        // SAFETY: as in `set`.
        unsafe {
            crate::envoy_dynamic_module_callback_http_add_header(
                self.filter,
                RESPONSE_HEADER,
                Buffer::str(name),
                Buffer::str(value),
            );
        }
    }
    fn request_body(&self, _len: usize) -> Vec<u8> {
        Vec::new()
    }
    fn response_body(&self, _len: usize) -> Vec<u8> {
        Vec::new()
    }
    fn increment(&mut self, metric: MetricId) {
        if let Some(v) = self.counters.borrow_mut().0.get_mut(metric as usize) {
            *v += 1;
        }
    }
    fn record(&mut self, metric: MetricId, value: u64) {
        if let Some(Some(id)) = self.histograms.get(metric as usize) {
            // SAFETY: Envoy's filter pointer is valid during the callback; no labels.
            unsafe {
                envoy_dynamic_module_callback_http_filter_record_histogram_value(
                    self.filter,
                    *id,
                    ptr::null(),
                    0,
                    value,
                );
            }
        }
    }
    fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }
    fn now_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    fn random(&mut self) -> u64 {
        RNG.with(|r| {
            let mut x = r.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            r.set(x);
            x
        })
    }
    fn send_queued(&mut self) {}
}
