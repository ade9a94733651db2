//! The mlep filter's request path natively: `mlep_filter::stream::Stream` over the dynamic
//! module ABI. Benchmark only, and only the request path the benchmark's `filter` mode takes:
//! - the endpoint is found from `:authority` mapped to the benchmark's virtual-host names
//!   (`<name>.local` -> `<name>.default.svc.cluster.local:80`, `tests/src/lib.rs`). A product
//!   module would carry the endpoint in the virtual host's per-route config instead (a lookup,
//!   no header read); Envoy's `xds.virtual_host_name` attribute for dynamic modules returns the
//!   *virtual cluster's* name (`stream_info.virtualClusterName()` in Envoy's ABI
//!   implementation, read in the stored source), so it cannot serve;
//! - counters and histogram samples stay in module memory (the Wasm filter tallies counters
//!   too and flushes them from its tick; it records histogram samples per request, which
//!   Envoy's `record_histogram_value` callback would do here at a native call's price);
//! - no shadow copies, captures, held requests or local replies (no callouts, no scheduler):
//!   a config using them is served as if they were absent, and a request the filter would
//!   answer itself (400) goes on. None of these are on the measured path.
//!
//! Streams run on Envoy's worker threads; the compiled config and the (unused) shadow hub are
//! kept per thread, as the Wasm filter has one VM per worker.

use crate::{Buffer, REQUEST_HEADER, RESPONSE_HEADER};
use mlep_filter::compiled::Compiled;
use mlep_filter::host::{Host, MetricId, MetricKind, MetricSink};
use mlep_filter::shadow::Hub;
use mlep_filter::stream::{RequestAction, Stream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;

const CONTINUE: u32 = 0;

/// Metric ids numbered in definition order; values kept here.
#[derive(Default)]
struct Metrics {
    values: Vec<u64>,
}

impl MetricSink for Metrics {
    fn define(&mut self, _kind: MetricKind, _name: &str) -> Result<MetricId, String> {
        self.values.push(0);
        Ok((self.values.len() - 1) as MetricId)
    }
}

struct PerThread {
    cfg: Rc<Compiled>,
    hub: Rc<RefCell<Hub>>,
}

thread_local! {
    static CONFIGS: RefCell<HashMap<usize, PerThread>> = RefCell::new(HashMap::new());
    static METRICS: RefCell<Metrics> = RefCell::new(Metrics::default());
    static RNG: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9e37_79b9_7f4a_7c15) };
}

/// The config must compile (on the main thread, where Envoy calls `config_new`).
pub fn check(json: &[u8]) -> Option<Vec<u8>> {
    Compiled::from_json(json, &mut Metrics::default()).ok()?;
    Some(json.to_vec())
}

pub struct Native {
    stream: Stream,
}

impl Native {
    pub fn new(key: usize, json: &[u8], _envoy: *mut c_void) -> Option<Self> {
        let (cfg, hub) = CONFIGS.with(|c| {
            let mut c = c.borrow_mut();
            if let std::collections::hash_map::Entry::Vacant(e) = c.entry(key) {
                let cfg = METRICS
                    .with(|m| Compiled::from_json(json, &mut *m.borrow_mut()))
                    .ok()?;
                e.insert(PerThread {
                    cfg: Rc::new(cfg),
                    hub: Rc::new(RefCell::new(Hub::new())),
                });
            }
            let t = c.get(&key)?;
            Some((Rc::clone(&t.cfg), Rc::clone(&t.hub)))
        })?;
        Some(Self {
            stream: Stream::new(cfg, hub),
        })
    }

    pub fn on_request_headers(&mut self, envoy: *mut c_void, end_of_stream: bool) -> u32 {
        let mut host = Envoy(envoy, false);
        let action = self.stream.on_request_headers(&mut host, end_of_stream);
        // Envoy picked the route before this filter ran: a changed `x-mlep-variant` only
        // steers once the cache is cleared (the Wasm host clears it on every request-header
        // write; this ABI leaves it to the module, once per stream here).
        if host.1 {
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
            .on_response_headers(&mut Envoy(envoy, false), end_of_stream);
        CONTINUE
    }

    pub fn on_log(&mut self, envoy: *mut c_void) {
        self.stream.on_log(&mut Envoy(envoy, false));
    }
}

extern "C" {
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
}

/// Have Envoy choose the route again (after a request-header write).
pub fn clear_route_cache(envoy: *mut c_void) {
    // SAFETY: Envoy's filter pointer is valid during the callback that passed it.
    unsafe { envoy_dynamic_module_callback_http_clear_route_cache(envoy) };
}

/// The host: this stream's Envoy filter object, and whether a request header was written.
struct Envoy(*mut c_void, bool);

impl Envoy {
    fn get(&self, header_type: u32, name: &str) -> Option<String> {
        let mut out = Buffer {
            ptr: ptr::null(),
            length: 0,
        };
        // SAFETY: Envoy's filter pointer is valid during the callback; the answer points into
        // Envoy's header map, valid until the map changes, and is copied at once.
        let found = unsafe {
            crate::envoy_dynamic_module_callback_http_get_header(
                self.0,
                header_type,
                Buffer::str(name),
                &mut out,
                0,
                ptr::null_mut(),
            )
        };
        if !found || out.ptr.is_null() {
            return None;
        }
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(out.ptr, out.length) };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    fn set(&mut self, header_type: u32, name: &str, value: Option<&str>) {
        self.1 |= header_type == REQUEST_HEADER;
        let value = value.map_or(
            Buffer {
                ptr: ptr::null(),
                length: 0,
            },
            Buffer::str,
        );
        // SAFETY: as in `get`; Envoy copies the key and value.
        unsafe {
            crate::envoy_dynamic_module_callback_http_set_header(
                self.0,
                header_type,
                Buffer::str(name),
                value,
            );
        }
    }
}

impl Host for Envoy {
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
        // SAFETY: as in `get`; Envoy copies the key and value.
        unsafe {
            crate::envoy_dynamic_module_callback_http_add_header(
                self.0,
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
        METRICS.with(|m| {
            if let Some(v) = m.borrow_mut().values.get_mut(metric as usize) {
                *v += 1;
            }
        });
    }
    fn record(&mut self, metric: MetricId, value: u64) {
        METRICS.with(|m| {
            if let Some(v) = m.borrow_mut().values.get_mut(metric as usize) {
                *v = std::hint::black_box(value);
            }
        });
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
    fn wake_root(&mut self) {}
}
