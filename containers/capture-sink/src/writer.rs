//! The writer: puts the files the batcher hands out ([`crate::batch`]) to the object store and
//! reports each outcome back. It looks every [`TICK`] (or when woken by a file sealed by
//! size); on shutdown it seals everything and writes until nothing is held or the deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use crate::batch::Put;
use crate::sink::Sink;

/// How often the writer looks for due files.
pub const TICK: Duration = Duration::from_millis(200);
/// Puts at once while the store works (one at a time while it fails).
pub const MAX_IN_FLIGHT: usize = 4;

pub struct Writer {
    sink: Arc<Sink>,
    store: Arc<dyn ObjectStore>,
    /// A put with no answer within this is a failure (the client has no overall timeout).
    put_timeout: Duration,
    puts: JoinSet<Result<(), String>>,
    /// The file each running put writes.
    running: HashMap<Id, Put>,
}

impl Writer {
    pub fn new(sink: Arc<Sink>, store: Arc<dyn ObjectStore>, put_timeout: Duration) -> Self {
        Self {
            sink,
            store,
            put_timeout,
            puts: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    /// Write until `flush` yields a deadline, then flush everything held by then (see
    /// [`Self::flush`]). The caller stops taking records before `flush` resolves.
    pub async fn run(mut self, flush: impl Future<Output = Instant>) {
        tokio::pin!(flush);
        let deadline = loop {
            tokio::select! {
                deadline = &mut flush => break deadline,
                Some(done) = self.puts.join_next_with_id() => self.finish(done),
                _ = self.sink.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            self.start_due();
        };
        self.flush(deadline).await;
    }

    /// Seal every batch and write until nothing is held; at `deadline`, give up what is left
    /// (counted as dropped, `store_error`).
    pub async fn flush(&mut self, deadline: Instant) {
        self.sink.seal_all();
        tracing::info!(
            buffered_bytes = self.sink.buffered_bytes(),
            "flushing captures"
        );
        loop {
            self.start_due();
            if self.sink.is_empty() {
                tracing::info!("flushed");
                return;
            }
            tokio::select! {
                Some(done) = self.puts.join_next_with_id() => self.finish(done),
                _ = tokio::time::sleep(TICK) => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.puts.abort_all();
        self.running.clear();
        let lost = self.sink.give_up_all();
        tracing::error!(
            records = lost,
            "shutdown deadline passed before every capture was written"
        );
    }

    fn start_due(&mut self) {
        let slots = MAX_IN_FLIGHT.saturating_sub(self.running.len());
        for put in self.sink.due(slots).puts {
            let (store, timeout) = (self.store.clone(), self.put_timeout);
            let p = put.clone();
            let task = self
                .puts
                .spawn(async move { write(store, p, timeout).await });
            self.running.insert(task.id(), put);
        }
    }

    fn finish(&mut self, done: Result<(Id, Result<(), String>), tokio::task::JoinError>) {
        let (id, result) = match done {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(format!("put task ended: {e}"))),
        };
        let Some(put) = self.running.remove(&id) else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(w) = self.sink.written(put.seq) {
                    tracing::info!(
                        path = %put.path,
                        endpoint = %w.endpoint,
                        records = w.records,
                        bytes = w.bytes,
                        "capture file written"
                    );
                }
            }
            Err(error) => {
                self.sink.failed(put.seq);
                tracing::warn!(
                    path = %put.path,
                    %error,
                    retry_in_ms = self.sink.backoff_ms(),
                    "capture file not written; will retry"
                );
            }
        }
    }
}

async fn write(store: Arc<dyn ObjectStore>, put: Put, timeout: Duration) -> Result<(), String> {
    let path = Path::parse(&put.path).map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, store.put(&path, PutPayload::from(put.data))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
