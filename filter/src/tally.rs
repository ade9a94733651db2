//! Counter increments accumulated in Wasm memory and handed to the host in one call per
//! counter and flush, instead of one host call per increment on the request path.
//!
//! The adapter keeps one `Tally` per VM (a VM runs on one worker thread) and flushes it from
//! the root context's tick ([`FLUSH_EVERY_MS`]) and when a root context is torn down, so a
//! scrape sees a counter at most one flush period late and nothing is lost when a config
//! reload replaces the root context. Metric ids are per VM, so every root of the VM may flush
//! the whole tally.

use crate::host::MetricId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// How often the root context hands accumulated counts to the host: the staleness bound of
/// the filter's counters in `/stats/prometheus`.
pub const FLUSH_EVERY_MS: u64 = 1_000;

/// Counts per metric id since the last flush.
#[derive(Debug, Default)]
pub struct Tally {
    counts: HashMap<MetricId, u64, BuildHasherDefault<IdHasher>>,
    pending: bool,
}

impl Tally {
    pub fn add(&mut self, metric: MetricId) {
        *self.counts.entry(metric).or_default() += 1;
        self.pending = true;
    }

    /// Hand every non-zero count to `sink` and reset it (entries stay, so the next add
    /// allocates nothing).
    pub fn flush(&mut self, mut sink: impl FnMut(MetricId, u64)) {
        if !self.pending {
            return;
        }
        self.pending = false;
        for (id, n) in &mut self.counts {
            if *n > 0 {
                sink(*id, *n);
                *n = 0;
            }
        }
    }
}

/// Metric ids are small host-assigned integers: a multiply spreads them well enough, without
/// SipHash's cost on every request.
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_flush_hands_over_each_count_once() {
        let mut t = Tally::default();
        for id in [4, 8, 4, 4] {
            t.add(id);
        }
        let mut got = vec![];
        t.flush(|id, n| got.push((id, n)));
        got.sort_unstable();
        assert_eq!(got, vec![(4, 3), (8, 1)]);
        t.flush(|id, n| panic!("flushed {id}={n} twice"));
        t.add(8);
        let mut again = vec![];
        t.flush(|id, n| again.push((id, n)));
        assert_eq!(again, vec![(8, 1)]);
    }
}
