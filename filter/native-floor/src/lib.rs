//! Benchmark only: `filter/floor`'s steps as an Envoy dynamic module (Envoy 1.40's
//! `envoy.filters.http.dynamic_modules`), so `scripts/count-filter.sh` can put the cost of the
//! same host interactions in native code beside their cost through the proxy-wasm VM.
//!
//! The filter config (a `google.protobuf.StringValue`) is a `+`-separated list of steps, a
//! subset of the Wasm floor's: `key` (read `x-user-id`), `authority`, `absent` (read a header
//! the request does not carry), `setreq` / `setresp` (set `x-mlep-variant` on the request /
//! response), `status` (read the response's `:status`). An empty list is the empty filter.
//!
//! No SDK: Envoy's Rust SDK is not on crates.io, so the few ABI functions used are declared
//! here from `source/extensions/dynamic_modules/abi/abi.h` (v1.39/v1.40 signatures; a
//! `{ptr, length}` buffer struct passed by value). Envoy 1.40 only warns on an ABI version
//! mismatch (`dynamic_modules.cc`), and resolves every `envoy_dynamic_module_on_http_filter_*`
//! hook it knows, so all of them are exported, the unused ones doing nothing.
#![allow(clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::ptr;

mod mlep;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

impl Buffer {
    fn str(s: &str) -> Self {
        Self {
            ptr: s.as_ptr(),
            length: s.len(),
        }
    }
    pub(crate) const NULL: Self = Self {
        ptr: ptr::null(),
        length: 0,
    };
}

const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
const CONTINUE: u32 = 0;

extern "C" {
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        result: *mut Buffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
}

/// A filter config: the floor's steps, or the mlep filter's JSON.
enum Config {
    Floor(Steps),
    Mlep(mlep::Config),
}

/// One stream.
enum Filter {
    Floor(Steps),
    Mlep(Box<mlep::Native>),
}

#[derive(Clone, Copy, Default)]
struct Steps {
    key: bool,
    authority: bool,
    absent: bool,
    set_req: bool,
    set_resp: bool,
    status: bool,
}

impl Steps {
    fn parse(config: &[u8]) -> Option<Self> {
        let mut s = Self::default();
        let text = std::str::from_utf8(config).ok()?;
        for step in text
            .trim()
            .trim_matches('"')
            .split('+')
            .filter(|x| !x.is_empty())
        {
            match step {
                "key" => s.key = true,
                "authority" => s.authority = true,
                "absent" => s.absent = true,
                "setreq" => s.set_req = true,
                "setresp" => s.set_resp = true,
                "status" => s.status = true,
                _ => return None,
            }
        }
        Some(s)
    }
}

/// One header's first value, in Envoy's memory (valid during the callback), if present.
unsafe fn get_header<'a>(filter: *mut c_void, header_type: u32, key: &str) -> Option<&'a [u8]> {
    let mut out = Buffer::NULL;
    let found = envoy_dynamic_module_callback_http_get_header(
        filter,
        header_type,
        Buffer::str(key),
        &mut out,
        0,
        ptr::null_mut(),
    );
    (found && !out.ptr.is_null()).then(|| bytes(out))
}

/// One read whose answer the floor does not use.
unsafe fn read(filter: *mut c_void, header_type: u32, key: &str) {
    std::hint::black_box(get_header(filter, header_type, key));
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const std::ffi::c_char {
    c"v0.1.0".as_ptr()
}

unsafe fn bytes<'a>(b: Buffer) -> &'a [u8] {
    if b.ptr.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(b.ptr, b.length)
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: *mut c_void,
    name: Buffer,
    config: Buffer,
) -> *const c_void {
    let config = match bytes(name) {
        b"floor" => Steps::parse(bytes(config)).map(Config::Floor),
        b"mlep" => mlep::Config::new(envoy, bytes(config)).map(Config::Mlep),
        _ => None,
    };
    match config {
        Some(c) => Box::into_raw(Box::new(c)) as *const c_void,
        None => ptr::null(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *mut c_void) {
    if !config.is_null() {
        drop(Box::from_raw(config as *mut Config));
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: *mut c_void,
) -> *const c_void {
    let filter = match &*(config as *const Config) {
        Config::Floor(s) => Filter::Floor(*s),
        // A worker that cannot compile what the main thread compiled passes requests on.
        Config::Mlep(c) => match mlep::Native::new(c) {
            Some(n) => Filter::Mlep(Box::new(n)),
            None => Filter::Floor(Steps::default()),
        },
    };
    Box::into_raw(Box::new(filter)) as *const c_void
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *mut c_void) {
    if !filter.is_null() {
        drop(Box::from_raw(filter as *mut Filter));
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: *mut c_void,
    filter: *mut c_void,
) {
    if let Filter::Mlep(m) = &mut *(filter as *mut Filter) {
        m.on_log(envoy);
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    let s = match floor_steps(filter, |m| m.on_request_headers(envoy, end_of_stream)) {
        Ok(s) => s,
        Err(status) => return status,
    };
    if s.key {
        read(envoy, REQUEST_HEADER, "x-user-id");
    }
    if s.authority {
        read(envoy, REQUEST_HEADER, ":authority");
    }
    if s.absent {
        read(envoy, REQUEST_HEADER, "x-mlep-target-variant");
    }
    if s.set_req {
        set_variant(envoy, REQUEST_HEADER);
        // As the Wasm host does on every request-header write: the route is chosen again.
        mlep::clear_route_cache(envoy);
    }
    CONTINUE
}

/// The floor's steps, or (`Err`) what the mlep stream answered for this hook.
unsafe fn floor_steps(
    filter: *const c_void,
    mlep: impl FnOnce(&mut mlep::Native) -> u32,
) -> Result<Steps, u32> {
    match &mut *(filter as *mut Filter) {
        Filter::Floor(s) => Ok(*s),
        Filter::Mlep(m) => Err(mlep(m)),
    }
}

/// Set `x-mlep-variant: a` on the request or the response.
unsafe fn set_variant(envoy: *mut c_void, header_type: u32) {
    envoy_dynamic_module_callback_http_set_header(
        envoy,
        header_type,
        Buffer::str("x-mlep-variant"),
        Buffer::str("a"),
    );
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    let s = match floor_steps(filter, |m| m.on_response_headers(envoy, end_of_stream)) {
        Ok(s) => s,
        Err(status) => return status,
    };
    if s.status {
        read(envoy, RESPONSE_HEADER, ":status");
    }
    if s.set_resp {
        set_variant(envoy, RESPONSE_HEADER);
    }
    CONTINUE
}

/// Hooks that return a status: every one's `Continue` is 0.
macro_rules! continue_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub extern "C" fn $name(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
            CONTINUE
        }
    )*};
}
continue_hooks!(
    envoy_dynamic_module_on_http_filter_request_body,
    envoy_dynamic_module_on_http_filter_request_trailers,
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_response_trailers,
    envoy_dynamic_module_on_http_filter_local_reply
);

/// Hooks with nothing to do here (no callouts, no schedulers, no per-route config).
macro_rules! empty_hooks {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub extern "C" fn $name() {}
    )*};
}
empty_hooks!(
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy
);

/// No per-route config of this filter's own: the virtual host enables it with another's.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new() -> *const c_void {
    ptr::null()
}
