//! The filter's pure per-request work, natively, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/per_request [requests] [endpoints] [variants] [rollout%]`
//! (scripts/count-filter.sh runs it). A lean host answers header reads from a fixed request,
//! like Envoy does (the SDK hands each value over as a fresh `String`), ignores writes, and
//! counts host calls, which it prints per request: the number the Wasm build makes into Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench tool: fail loudly

use mlep_contract::{Allocation, FilterConfig};
use mlep_filter::compiled::Compiled;
use mlep_filter::host::{Host, MemHost, MetricId};
use mlep_filter::shadow::Hub;
use mlep_filter::stream::Stream;
use std::cell::RefCell;
use std::rc::Rc;

struct Lean {
    key: String,
    calls: u64,
    seed: u64,
}

impl Host for Lean {
    fn virtual_host_name(&self) -> Option<String> {
        Some("titanic.local:80".to_owned())
    }
    fn request_header(&self, name: &str) -> Option<String> {
        match name {
            ":authority" => Some("titanic.local".to_owned()),
            "x-user-id" => Some(self.key.clone()),
            _ => None,
        }
    }
    /// What Envoy hands a filter for the benchmark's requests (scripts/bench-filter.sh).
    fn request_headers(&self) -> Vec<(String, String)> {
        [
            (":authority", "titanic.local"),
            (":path", "/invocations"),
            (":method", "POST"),
            (":scheme", "http"),
            ("x-user-id", self.key.as_str()),
            ("content-type", "application/json"),
            ("content-length", "16"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "6f1c2a7e-51f3-4f6e-9d8e-2b7f3c1a9e44"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }
    fn set_request_header(&mut self, _: &str, _: &str) {}
    fn remove_request_header(&mut self, _: &str) {}
    fn response_header(&self, _: &str) -> Option<String> {
        Some("200".to_owned())
    }
    fn set_response_header(&mut self, _: &str, _: &str) {}
    fn add_response_header(&mut self, _: &str, _: &str) {}
    fn request_body(&self, _: usize) -> Vec<u8> {
        vec![]
    }
    fn response_body(&self, _: usize) -> Vec<u8> {
        vec![]
    }
    fn increment(&mut self, _: MetricId) {}
    fn record(&mut self, _: MetricId, _: u64) {}
    fn now_ms(&self) -> u64 {
        0
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn random(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(1);
        self.seed
    }
    fn send_queued(&mut self) {}
}

/// Counts calls the way the adapter turns them into host calls.
struct Counting(Lean);

macro_rules! counted {
    ($($name:ident ( $($arg:ident : $t:ty),* ) -> $ret:ty;)*) => {
        $(fn $name(&mut self, $($arg: $t),*) -> $ret { self.0.calls += 1; self.0.$name($($arg),*) })*
    };
}

impl Host for Counting {
    fn virtual_host_name(&self) -> Option<String> {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.virtual_host_name()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.request_header(name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.request_headers()
    }
    fn response_header(&self, name: &str) -> Option<String> {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.response_header(name)
    }
    fn request_body(&self, len: usize) -> Vec<u8> {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.request_body(len)
    }
    fn response_body(&self, len: usize) -> Vec<u8> {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.response_body(len)
    }
    fn now_ms(&self) -> u64 {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.now_ms()
    }
    fn now_ns(&self) -> u64 {
        CALLS.with(|c| *c.borrow_mut() += 1);
        self.0.now_ns()
    }
    /// Accumulated in Wasm memory by the adapter: no host call per request.
    fn increment(&mut self, m: MetricId) {
        self.0.increment(m)
    }
    counted! {
        set_request_header(name: &str, value: &str) -> ();
        remove_request_header(name: &str) -> ();
        set_response_header(name: &str, value: &str) -> ();
        add_response_header(name: &str, value: &str) -> ();
        record(m: MetricId, v: u64) -> ();
        random() -> u64;
        send_queued() -> ();
    }
}

thread_local! {
    static CALLS: RefCell<u64> = const { RefCell::new(0) };
}

/// `rollout_percent > 0`: every variant is being rolled out, that share of its users moved.
fn config(endpoints: usize, variants: usize, rollout_percent: u32) -> Compiled {
    let names: Vec<String> = (0..variants).map(|i| format!("v{i}")).collect();
    let w = 100 / variants as u32;
    let weights: Vec<(&str, u32)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.as_str(),
                if i == 0 {
                    100 - w * (variants as u32 - 1)
                } else {
                    w
                },
            )
        })
        .collect();
    let alloc = Allocation::initial(&weights).unwrap();
    let eps: Vec<serde_json::Value> = (0..endpoints)
        .map(|e| {
            let name = if e == 0 { "titanic".to_owned() } else { format!("ep{e}") };
            serde_json::json!({
                "name": name, "namespace": "default", "virtualHosts": [format!("{name}.local:80")],
                "routeKey": "per-request-bench-key",
                "variants": weights.iter().map(|(n, w)| {
                    let mut v = serde_json::json!({"name": n, "model": format!("m-{n}"), "weight": w});
                    if rollout_percent > 0 {
                        let target = mlep_contract::rollout::target_for(&alloc, n, rollout_percent);
                        let moved = mlep_contract::rollout::grow(&alloc, n, &[], target);
                        v["rollout"] = serde_json::json!({"model": format!("m-{n}-next"), "buckets": moved});
                    }
                    v
                }).collect::<Vec<_>>(),
                "allocation": alloc, "routing": {"sticky": {"header": "x-user-id"}}
            })
        })
        .collect();
    let cfg = serde_json::json!({"version": 1, "endpoints": eps});
    let cfg = FilterConfig::from_json(cfg.to_string().as_bytes()).unwrap();
    Compiled::compile(&cfg, &mut MemHost::default()).unwrap()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let n = args.first().copied().unwrap_or(100_000);
    let cfg = Rc::new(config(
        args.get(1).copied().unwrap_or(2),
        args.get(2).copied().unwrap_or(2),
        args.get(3).copied().unwrap_or(0) as u32,
    ));
    let hub = Rc::new(RefCell::new(Hub::new()));
    let keys: Vec<String> = (0..n)
        .map(|i| format!("{}", 10_000_000 + i * 7919))
        .collect();
    let mut h = Counting(Lean {
        key: String::new(),
        calls: 0,
        seed: 0,
    });
    run_requests(&cfg, &hub, &mut h, keys);
    let calls = h.0.calls + CALLS.with(|c| *c.borrow());
    println!(
        "{n} requests, host calls per request: {:.2}",
        calls as f64 / n as f64
    );
}

/// The measured part (callgrind `--toggle-collect=*run_requests*`): the stream callbacks of
/// `keys.len()` requests, each with its own sticky key.
#[inline(never)]
fn run_requests(cfg: &Rc<Compiled>, hub: &Rc<RefCell<Hub>>, h: &mut Counting, keys: Vec<String>) {
    for key in keys {
        h.0.key = key;
        let mut s = Stream::new(Rc::clone(cfg), Rc::clone(hub));
        s.on_request_headers(h, true);
        s.on_response_headers(h, true);
        s.on_log(h);
    }
}
