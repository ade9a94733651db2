//! Benchmark only: the floor of the filter's contract on proxy-wasm, with the same SDK.
//!
//! The plugin configuration is a `+`-separated list of steps; each stream does exactly those
//! host interactions and nothing else (no parsing, no assignment, no allocation of its own), so
//! `scripts/count-filter.sh` can count what each one costs and what the contract's minimum is:
//! - `key`: read the sticky key header (`x-user-id`) — what assignment must read;
//! - `authority`: read `:authority` (which endpoint; the mlep filter's host table needs it);
//! - `absent`: read a header the request does not carry (the target header, when targeting is
//!   on and the client does not target);
//! - `bulk`: read all request headers in one call (what the mlep filter does instead);
//! - `setreq` / `setresp`: set `x-mlep-variant` on the request / the response;
//! - `status`: read the response's `:status` (the `code_class` label);
//! - `clock`: read the clock at the request headers and at the end of the stream;
//! - `record`: record one histogram sample at the end of the stream (`on_log`);
//! - `count`: increment one counter at the end of the stream;
//! - `mirror`: read all request headers and the body and send them with `dispatch_http_call`
//!   to the cluster `mlep|titanic|shadow`, from the root context (so the call outlives the
//!   stream), without reading the answer: the floor of a Wasm-side mirror.
//!
//! An empty list is the empty filter.
#![forbid(unsafe_code)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};
use std::time::{Duration, UNIX_EPOCH};

const SHADOW_CLUSTER: &str = "mlep|titanic|shadow";
const VARIANT_HEADER: &str = "x-mlep-variant";

#[derive(Clone, Copy, Default)]
struct Steps {
    key: bool,
    authority: bool,
    absent: bool,
    bulk: bool,
    set_req: bool,
    set_resp: bool,
    status: bool,
    clock: bool,
    record: bool,
    count: bool,
    mirror: bool,
    histogram: u32,
    counter: u32,
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(Root { id, steps: Steps::default() }) });
}}

struct Root {
    id: u32,
    steps: Steps,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let cfg = String::from_utf8_lossy(&cfg);
        let mut s = Steps::default();
        for step in cfg
            .trim()
            .trim_matches('"')
            .split('+')
            .filter(|x| !x.is_empty())
        {
            match step {
                "key" => s.key = true,
                "authority" => s.authority = true,
                "absent" => s.absent = true,
                "bulk" => s.bulk = true,
                "setreq" => s.set_req = true,
                "setresp" => s.set_resp = true,
                "status" => s.status = true,
                "clock" => s.clock = true,
                "record" => s.record = true,
                "count" => s.count = true,
                "mirror" => s.mirror = true,
                _ => return false,
            }
        }
        s.histogram =
            hostcalls::define_metric(MetricType::Histogram, "floor_duration_ms").unwrap_or(0);
        s.counter = hostcalls::define_metric(MetricType::Counter, "floor_requests").unwrap_or(0);
        self.steps = s;
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            steps: self.steps,
            root_id: self.root_id(),
            id: context_id,
            started: 0,
            copy: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Root {
    fn root_id(&self) -> u32 {
        self.id
    }
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A request being mirrored: its headers as read, its body so far.
struct Mirrored {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

struct Http {
    steps: Steps,
    root_id: u32,
    id: u32,
    started: u64,
    copy: Option<Mirrored>,
}

impl Http {
    fn send_copy(&mut self) {
        let Some(Mirrored { headers, body }) = self.copy.take() else {
            return;
        };
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .filter(|(k, _)| k != "content-length")
            .map(|(k, v)| {
                if k == ":authority" {
                    (k.as_str(), SHADOW_CLUSTER.as_bytes())
                } else {
                    (k.as_str(), v.as_slice())
                }
            })
            .collect();
        let body = (!body.is_empty()).then_some(body.as_slice());
        // Owned by the root in Envoy, so the call is not cancelled when the stream ends.
        if hostcalls::set_effective_context(self.root_id).is_ok() {
            let _ = hostcalls::dispatch_http_call(
                SHADOW_CLUSTER,
                headers_as_str(&pairs),
                body,
                vec![],
                Duration::from_secs(1),
            );
            let _ = hostcalls::set_effective_context(self.id);
        }
    }
}

/// The SDK's `dispatch_http_call` takes `&str` values; header values read as bytes are
/// passed through when they are UTF-8 (always, for this benchmark's requests).
fn headers_as_str<'a>(pairs: &'a [(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a str)> {
    pairs
        .iter()
        .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (*k, v)))
        .collect()
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let s = self.steps;
        if s.bulk {
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        }
        if s.authority {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":authority");
        }
        if s.absent {
            let _ = hostcalls::get_map_value_bytes(
                MapType::HttpRequestHeaders,
                "x-mlep-target-variant",
            );
        }
        if s.key {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-user-id");
        }
        if s.set_req {
            let _ =
                hostcalls::set_map_value(MapType::HttpRequestHeaders, VARIANT_HEADER, Some("a"));
        }
        if s.clock {
            self.started = now_ns();
        }
        if s.mirror {
            let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
            self.copy = Some(Mirrored {
                headers,
                body: Vec::new(),
            });
            if end_of_stream {
                self.send_copy();
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if let Some(Mirrored { body, .. }) = &mut self.copy {
            if size > 0 {
                if let Ok(Some(b)) = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
                    body.extend_from_slice(&b);
                }
            }
            if end_of_stream {
                self.send_copy();
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        let s = self.steps;
        if s.status {
            let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
        }
        if s.set_resp {
            let _ =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, VARIANT_HEADER, Some("a"));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let s = self.steps;
        let ms = if s.clock {
            now_ns().saturating_sub(self.started) / 1_000_000
        } else {
            0
        };
        if s.record {
            let _ = hostcalls::record_metric(s.histogram, ms);
        }
        if s.count {
            let _ = hostcalls::increment_metric(s.counter, 1);
        }
    }
}
