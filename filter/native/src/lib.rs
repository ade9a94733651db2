//! The K8SMLEndpoints filter as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`,
//! `libmlep_filter_native.so`): the same pure core as the Wasm filter (`mlep_filter`'s
//! `stream`, `request`, `compiled`), called natively instead of through a V8 boundary.
//!
//! Why: through proxy-wasm every host interaction is a VM exit plus, for each answer, a VM
//! entry to allocate it; the same request path natively costs about a quarter of the
//! instructions (docs/filter.md, "The native build").
//!
//! What it serves: the request path (assignment, targeting and its 400s, cookies, rollouts'
//! moved users, every request metric under the Wasm filter's Prometheus names) and shadow
//! copies it compares (sent from the main thread, `filter.rs`). A config that needs capture
//! records or held requests is refused with its reason (`mlep_contract::needs_wasm`): Envoy
//! keeps serving the last good config, and renderers pick the Wasm build for such configs
//! (`mlep_contract::build_for`).
//!
//! - [`abi`]: the ABI declarations and their safe wrappers;
//! - [`filter`]: config, per-worker compile, the [`mlep_filter::host::Host`] over Envoy;
//! - this file: the hooks Envoy calls.
//!
//! The endpoint a request belongs to comes from the per-route config of the virtual host
//! that enables the filter (`DynamicModuleFilterPerRoute` carrying the virtual host's name):
//! a lookup Envoy answers from the stream's route, where the Wasm build must read the
//! `xds.virtual_host_name` property through the VM.
#![deny(unsafe_code)]

pub mod abi;
pub mod filter;

#[allow(unsafe_code)]
mod hooks {
    use crate::abi::{self, Buffer, ConfigEnvoy, Level, StreamEnvoy, CONTINUE, STOP_ITERATION};
    use crate::filter::{Config, Filter, RouteConfig, Then};
    use std::ffi::{c_char, c_void};
    use std::ptr;

    /// The filter name this module answers to (`DynamicModuleFilter.filter_name`).
    const FILTER_NAME: &[u8] = b"mlep";

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
        abi::ABI_VERSION.as_ptr()
    }

    /// Main thread. Null refuses the config (Envoy keeps the previous one and logs why).
    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
        envoy: *mut c_void,
        name: Buffer,
        config: Buffer,
    ) -> *const c_void {
        // SAFETY: Envoy's buffers, valid during this hook.
        let (name, config) = unsafe { (name.bytes(), config.bytes()) };
        if name != FILTER_NAME {
            abi::log(
                Level::Error,
                "mlep: unknown filter name (expected \"mlep\")",
            );
            return ptr::null();
        }
        // SAFETY: Envoy's config pointer, used only during this hook.
        let envoy = unsafe { ConfigEnvoy::new(envoy) };
        match Config::new(&envoy, config) {
            Ok(c) => Box::into_raw(Box::new(c)) as *const c_void,
            Err(e) => {
                abi::log(Level::Error, &format!("mlep: filter config refused: {e}"));
                ptr::null()
            }
        }
    }

    /// Drop a `T` the module handed Envoy with `Box::into_raw` (null: nothing).
    ///
    /// # Safety
    /// `p` is null or a `Box<T>` pointer from `Box::into_raw`, not yet dropped.
    unsafe fn drop_boxed<T>(p: *mut c_void) {
        if !p.is_null() {
            // SAFETY: the caller's promise.
            drop(unsafe { Box::from_raw(p as *mut T) });
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
        config: *mut c_void,
    ) {
        // SAFETY: a pointer `config_new` made with `Box::into_raw`, destroyed once.
        unsafe { drop_boxed::<Config>(config) }
    }

    /// Main thread, per `DynamicModuleFilterPerRoute`: its config is the virtual host's name.
    /// Null would make Envoy refuse the route configuration.
    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
        _name: Buffer,
        config: Buffer,
    ) -> *const c_void {
        // SAFETY: Envoy's buffer, valid during this hook.
        let vhost = String::from_utf8_lossy(unsafe { config.bytes() }).into_owned();
        Box::into_raw(Box::new(RouteConfig {
            virtual_host: vhost,
        })) as *const c_void
    }

    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(
        config: *mut c_void,
    ) {
        // SAFETY: a pointer `per_route_config_new` made with `Box::into_raw`, destroyed once.
        unsafe { drop_boxed::<RouteConfig>(config) }
    }

    /// Worker. Null: no filter for this stream (it passes untouched).
    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
        config: *const c_void,
        _envoy: *mut c_void,
    ) -> *const c_void {
        if config.is_null() {
            return ptr::null();
        }
        // SAFETY: the config `config_new` made; Envoy keeps it alive while it has streams.
        let config = unsafe { &*(config as *const Config) };
        match Filter::new(config) {
            Some(f) => Box::into_raw(Box::new(f)) as *const c_void,
            None => ptr::null(),
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *mut c_void) {
        // SAFETY: a pointer `filter_new` made with `Box::into_raw`, destroyed once.
        unsafe { drop_boxed::<Filter>(filter) }
    }

    /// The stream's filter.
    ///
    /// # Safety
    /// `filter` is a pointer `filter_new` returned, not yet destroyed, and no other
    /// reference to it is alive (Envoy calls one hook of a stream at a time).
    unsafe fn stream<'a>(filter: *const c_void) -> Option<&'a mut Filter> {
        // SAFETY: the caller's promise.
        unsafe { (filter as *mut Filter).as_mut() }
    }

    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
        envoy: *mut c_void,
        filter: *const c_void,
        end_of_stream: bool,
    ) -> u32 {
        // SAFETY: Envoy's stream pointer during this hook; our filter, one hook at a time.
        let (envoy, f) = unsafe { (StreamEnvoy::new(envoy), stream(filter)) };
        let Some(f) = f else { return CONTINUE };
        let route = envoy.route_config() as *const RouteConfig;
        // SAFETY: the pointer `per_route_config_new` returned for this route (or null); Envoy
        // keeps the route configuration alive while the stream uses it.
        let route = unsafe { route.as_ref() };
        match f.on_request_headers(envoy, route, end_of_stream) {
            Then::Continue => CONTINUE,
            Then::Reply { status, body } => {
                // `f` is not used again in this hook: Envoy calls `local_reply` from inside.
                let headers = [("content-type", "application/json")];
                envoy.send_response(status, &headers, &body);
                STOP_ITERATION
            }
        }
    }

    /// Hooks that hand `end_of_stream` to a [`Filter`] method and let the stream go on. Body
    /// chunks are read only while a shadow copy or comparison wants them
    /// (`Filter::on_request_body`, `Filter::on_response_body`).
    macro_rules! continue_hooks {
        ($($hook:ident => $method:ident),* $(,)?) => {$(
            #[no_mangle]
            pub unsafe extern "C" fn $hook(
                envoy: *mut c_void,
                filter: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: as in `request_headers`.
                if let (envoy, Some(f)) = unsafe { (StreamEnvoy::new(envoy), stream(filter)) } {
                    f.$method(envoy, end_of_stream);
                }
                CONTINUE
            }
        )*};
    }
    continue_hooks!(
        envoy_dynamic_module_on_http_filter_response_headers => on_response_headers,
        envoy_dynamic_module_on_http_filter_request_body => on_request_body,
        envoy_dynamic_module_on_http_filter_response_body => on_response_body,
    );

    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
        envoy: *mut c_void,
        filter: *mut c_void,
    ) {
        // SAFETY: as in `request_headers`.
        if let (envoy, Some(f)) = unsafe { (StreamEnvoy::new(envoy), stream(filter)) } {
            f.on_log(envoy);
        }
    }

    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
        envoy: *mut c_void,
        filter: *const c_void,
    ) -> u32 {
        // SAFETY: as in `request_headers`.
        if let (envoy, Some(f)) = unsafe { (StreamEnvoy::new(envoy), stream(filter)) } {
            f.on_request_trailers(envoy);
        }
        CONTINUE
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
        _: *mut c_void,
        _: *const c_void,
    ) -> u32 {
        CONTINUE
    }

    /// Main thread, after a stream woke it (`Shared::wake`): send the queued copies.
    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
        envoy: *mut c_void,
        config: *const c_void,
        _event: u64,
    ) {
        // SAFETY: Envoy's config pointer during this hook; our config, alive while Envoy
        // holds it (it schedules only for a live config).
        let (envoy, config) =
            unsafe { (ConfigEnvoy::new(envoy), (config as *const Config).as_ref()) };
        if let Some(c) = config {
            c.on_scheduled(&envoy);
        }
    }

    /// Main thread: a shadow copy's answer (or its failure).
    #[no_mangle]
    pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
        envoy: *mut c_void,
        config: *const c_void,
        callout: u64,
        result: u32,
        headers: *const c_void,
        headers_len: usize,
        chunks: *const c_void,
        chunks_len: usize,
    ) {
        // SAFETY: as in `config_scheduled`; the answer's headers and chunks are Envoy's,
        // valid during this hook, and read only during it.
        let (envoy, config) =
            unsafe { (ConfigEnvoy::new(envoy), (config as *const Config).as_ref()) };
        let Some(c) = config else { return };
        // SAFETY: as above.
        let (headers, chunks) =
            unsafe { abi::callout_answer(headers, headers_len, chunks, chunks_len) };
        // SAFETY: as above (called within this hook).
        let read = || unsafe { abi::concat(&chunks) };
        c.on_callout_done(&envoy, callout, result, &headers, &chunks, read);
    }

    #[no_mangle]
    pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
        _: *mut c_void,
        _: *const c_void,
        _: u32,
        _: Buffer,
        _: bool,
    ) -> u32 {
        CONTINUE
    }

    /// Hooks Envoy resolves by name that this filter never needs (no stream-level callouts,
    /// schedulers or streams; its copies are the config's callouts).
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
        envoy_dynamic_module_on_http_filter_config_http_stream_headers,
        envoy_dynamic_module_on_http_filter_config_http_stream_data,
        envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
        envoy_dynamic_module_on_http_filter_config_http_stream_complete,
        envoy_dynamic_module_on_http_filter_config_http_stream_reset
    );
}
