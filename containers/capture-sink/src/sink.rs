//! The state the HTTP side and the writer share: the batcher behind a lock, the counters, the
//! writer's wake-up and the clock the batcher is given.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

use crate::batch::{Batcher, BufferFull, Due, Outcome};
use crate::metrics::{DropReason, Metrics};
use crate::record::Capture;

pub struct Sink {
    pub metrics: Metrics,
    batcher: Mutex<Batcher>,
    /// Wakes the writer when a file is sealed by size (it also ticks on its own).
    pub(crate) wake: Notify,
    started: Instant,
}

impl Sink {
    pub fn new(batcher: Batcher) -> Self {
        Self {
            metrics: Metrics::default(),
            batcher: Mutex::new(batcher),
            wake: Notify::new(),
            started: Instant::now(),
        }
    }

    /// Milliseconds since the sink started: the batcher's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn batcher<R>(&self, f: impl FnOnce(&mut Batcher) -> R) -> R {
        // The batcher's methods do not panic; if one ever did, its state is still consistent
        // enough to keep writing what it holds.
        f(&mut self.batcher.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Queue one record (its JSON line), or refuse it when the buffer is full; counted
    /// either way.
    pub fn accept(&self, capture: &Capture, line: &[u8]) -> Result<(), BufferFull> {
        let now = self.now_ms();
        let pushed = self.batcher(|b| {
            b.push(
                now,
                &capture.endpoint,
                &capture.variant,
                capture.time_ms,
                line,
            )
        });
        match pushed {
            Ok(sealed) => {
                self.metrics.received(&capture.endpoint);
                if sealed {
                    self.wake.notify_one();
                }
                Ok(())
            }
            Err(full) => {
                self.metrics
                    .dropped(&capture.endpoint, DropReason::BufferFull, 1);
                Err(full)
            }
        }
    }

    pub fn buffered_bytes(&self) -> u64 {
        self.batcher(|b| b.buffered_bytes())
    }

    pub fn render_metrics(&self) -> String {
        let buffered = self.buffered_bytes();
        self.metrics.render(buffered)
    }

    /// What to write now (at most `slots` files); files given up are counted here.
    pub(crate) fn due(&self, slots: usize) -> Due {
        let now = self.now_ms();
        let due = self.batcher(|b| b.due(now, slots));
        for lost in &due.lost {
            self.lost(lost);
        }
        due
    }

    pub(crate) fn written(&self, seq: u64) -> Option<Outcome> {
        let written = self.batcher(|b| b.written(seq));
        if let Some(w) = &written {
            self.metrics.written(&w.endpoint, w.records);
        }
        written
    }

    pub(crate) fn failed(&self, seq: u64) {
        let now = self.now_ms();
        self.metrics.store_error();
        self.batcher(|b| b.failed(seq, now));
    }

    pub(crate) fn backoff_ms(&self) -> u64 {
        self.batcher(|b| b.backoff_ms())
    }

    pub(crate) fn seal_all(&self) {
        self.batcher(Batcher::seal_all);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batcher(|b| b.is_empty())
    }

    /// Give up everything still held (the shutdown deadline passed); counted.
    pub(crate) fn give_up_all(&self) -> u64 {
        let lost = self.batcher(Batcher::give_up_all);
        lost.iter().for_each(|l| self.lost(l));
        lost.iter().map(|l| l.records).sum()
    }

    fn lost(&self, lost: &Outcome) {
        tracing::error!(
            endpoint = %lost.endpoint,
            records = lost.records,
            bytes = lost.bytes,
            "capture file given up: the destination kept failing"
        );
        self.metrics
            .dropped(&lost.endpoint, DropReason::StoreError, lost.records);
    }
}
