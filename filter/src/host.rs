//! What the pure filter logic needs from its host, as a small trait, plus an in-memory host
//! for tests. The proxy-wasm adapter (`adapter.rs`) is the only other implementation.

use std::cell::Cell;
use std::collections::BTreeMap;

/// A metric handle handed out by the host when the metric is defined (at configure time).
pub type MetricId = u32;

/// The kind of a metric, as proxy-wasm defines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Defining metrics: done once per configuration, never per request.
pub trait MetricSink {
    /// Define (or look up) the metric called `name`; the error is the host's reason.
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<MetricId, String>;
}

/// Per-request host access. Every method is infallible from the caller's view: a host error
/// becomes "absent" or a dropped update, never a panic.
pub trait Host {
    /// The name of the Envoy virtual host whose route serves this request
    /// (`xds.virtual_host_name`): which endpoint a request is for.
    fn virtual_host_name(&self) -> Option<String>;
    fn request_header(&self, name: &str) -> Option<String>;
    /// All request headers (only read for requests that get shadowed).
    fn request_headers(&self) -> Vec<(String, String)>;
    fn set_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_response_header(&mut self, name: &str, value: &str);
    fn add_response_header(&mut self, name: &str, value: &str);
    /// The current body chunk (`len` bytes) of the request or response.
    fn request_body(&self, len: usize) -> Vec<u8>;
    fn response_body(&self, len: usize) -> Vec<u8>;
    fn increment(&mut self, metric: MetricId);
    fn record(&mut self, metric: MetricId, value: u64);
    /// Milliseconds on a clock that does not go backwards within a request.
    fn now_ms(&self) -> u64;
    /// The same clock in nanoseconds (request durations).
    fn now_ns(&self) -> u64;
    fn random(&mut self) -> u64;
    /// Have the root context send what this stream queued (shadow copies, capture records)
    /// once the current callback's work is done.
    fn send_queued(&mut self);
}

/// An in-memory host: headers in vectors, metrics in maps, a settable clock and a
/// deterministic random sequence (splitmix64).
#[derive(Debug, Default, Clone)]
pub struct MemHost {
    /// The virtual host name; [`MemHost::with_request`] names it as Istio does,
    /// `<:authority>:80`.
    pub vhost: Option<String>,
    pub request: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
    pub request_chunk: Vec<u8>,
    pub response_chunk: Vec<u8>,
    pub counters: BTreeMap<MetricId, u64>,
    pub records: BTreeMap<MetricId, Vec<u64>>,
    pub now: u64,
    pub seed: u64,
    pub names: Vec<String>,
    /// How often `send_queued` was called.
    pub sends: u32,
    /// Request header reads: one by name, and all at once.
    pub reads: Cell<u32>,
    pub bulk_reads: Cell<u32>,
}

impl MemHost {
    pub fn with_request(headers: &[(&str, &str)]) -> Self {
        Self {
            vhost: headers
                .iter()
                .find(|(k, _)| *k == ":authority")
                .map(|(_, a)| format!("{a}:80")),
            request: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Self::default()
        }
    }

    /// Counter value by metric name (as defined through this host's [`MetricSink`]).
    pub fn counter(&self, name: &str) -> u64 {
        self.names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.counters.get(&(i as MetricId)))
            .copied()
            .unwrap_or(0)
    }

    pub fn response_values(&self, name: &str) -> Vec<&str> {
        self.response
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl MetricSink for MemHost {
    fn define(&mut self, _kind: MetricKind, name: &str) -> Result<MetricId, String> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i as MetricId);
        }
        self.names.push(name.to_owned());
        Ok((self.names.len() - 1) as MetricId)
    }
}

fn get<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a String> {
    list.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn set(list: &mut Vec<(String, String)>, name: &str, value: &str) {
    list.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    list.push((name.to_owned(), value.to_owned()));
}

impl Host for MemHost {
    fn virtual_host_name(&self) -> Option<String> {
        self.vhost.clone()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.reads.set(self.reads.get() + 1);
        get(&self.request, name).cloned()
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.bulk_reads.set(self.bulk_reads.get() + 1);
        self.request.clone()
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        set(&mut self.request, name, value);
    }
    fn remove_request_header(&mut self, name: &str) {
        self.request.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
    fn response_header(&self, name: &str) -> Option<String> {
        get(&self.response, name).cloned()
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        set(&mut self.response, name, value);
    }
    fn add_response_header(&mut self, name: &str, value: &str) {
        self.response.push((name.to_owned(), value.to_owned()));
    }
    fn request_body(&self, len: usize) -> Vec<u8> {
        self.request_chunk.iter().take(len).copied().collect()
    }
    fn response_body(&self, len: usize) -> Vec<u8> {
        self.response_chunk.iter().take(len).copied().collect()
    }
    fn increment(&mut self, metric: MetricId) {
        *self.counters.entry(metric).or_default() += 1;
    }
    fn record(&mut self, metric: MetricId, value: u64) {
        self.records.entry(metric).or_default().push(value);
    }
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn now_ns(&self) -> u64 {
        self.now * 1_000_000
    }
    fn random(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.seed)
    }
    fn send_queued(&mut self) {
        self.sends += 1;
    }
}

/// Random draws no client can predict: a keyed hash (SipHash, secret keys drawn from the
/// OS, or under Wasm from WASI `random_get`) of a counter. A client that sees one draw (a
/// fresh cookie's key) learns nothing of the next ones, where an invertible mixer of a
/// stepped state would give the state away, and with it other visitors' keys and which
/// requests are copied or captured (review finding, 2026-12-05). ~0.2k instructions a draw.
#[derive(Debug)]
pub struct Draws {
    keys: std::collections::hash_map::RandomState,
    n: u64,
}

impl Draws {
    pub fn new() -> Self {
        Self::starting_at(0)
    }

    /// Counting from `n` (the Wasm build starts each VM at a seed of its own).
    pub fn starting_at(n: u64) -> Self {
        Self {
            keys: std::collections::hash_map::RandomState::new(),
            n,
        }
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        self.n = self.n.wrapping_add(1);
        let mut h = self.keys.build_hasher();
        h.write_u64(self.n);
        h.finish()
    }
}

impl Default for Draws {
    fn default() -> Self {
        Self::new()
    }
}

/// The splitmix64 output function.
pub fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One reading of a clock that never goes back, from the wall clock's reading `wall` and the
/// state `(last, offset)` of the previous one: a backward step adds to the offset (kept), so
/// the result goes on advancing with the wall clock instead of standing still until the wall
/// clock catches up. Returns the reading and the next state.
pub fn monotonic((last, offset): (u64, u64), wall: u64) -> (u64, (u64, u64)) {
    let offset = offset.max(last.saturating_sub(wall));
    let now = wall.saturating_add(offset).max(last);
    (now, (now, offset))
}

#[cfg(test)]
mod tests {
    use super::monotonic;

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_clock_stepped_back_goes_on_advancing_from_where_it_was() {
        let (t1, s) = monotonic((0, 0), 1_000);
        assert_eq!(t1, 1_000);
        // The wall clock steps back by 500: the reading neither goes back nor stands still.
        let (t2, s) = monotonic(s, 510);
        assert_eq!(t2, 1_000);
        let (t3, s) = monotonic(s, 520);
        assert_eq!(t3, 1_010, "advances with the wall clock");
        let (t4, _) = monotonic(s, 600);
        assert_eq!(t4, 1_090);
        // Without a step it is the wall clock.
        assert_eq!(monotonic((0, 0), 7).0, 7);
    }
}
