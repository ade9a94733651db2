//! The running sink: the HTTP server and the writer over one [`Sink`], and the shutdown
//! order (stop taking records, then flush within the deadline).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::batch::{Batcher, Limits};
use crate::sink::Sink;
use crate::writer::Writer;

#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: Limits,
    /// Key prefix in the store (no trailing slash; may be empty).
    pub prefix: String,
    /// This sink's name in file names.
    pub instance: String,
    /// Largest accepted ingest body.
    pub max_body_bytes: usize,
    /// From SIGTERM to exit, at most: requests in flight get half of it, and the flush
    /// whatever is left of it.
    pub shutdown_timeout: Duration,
    /// A put with no answer within this has failed.
    pub put_timeout: Duration,
}

/// Serve on `listener` and write to `store` until `shutdown` resolves; return once every
/// record is written or the shutdown deadline has passed (what is left is counted lost).
pub async fn run(
    listener: TcpListener,
    store: Arc<dyn ObjectStore>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) {
    let sink = Arc::new(Sink::new(Batcher::new(
        settings.limits.clone(),
        &settings.prefix,
        &settings.instance,
    )));
    let (flush_tx, flush_rx) = oneshot::channel::<Instant>();
    let writer = Writer::new(sink.clone(), store, settings.put_timeout);
    let writer =
        tokio::spawn(writer.run(async move { flush_rx.await.unwrap_or_else(|_| Instant::now()) }));
    let timeout = settings.shutdown_timeout;
    let (deadline_tx, deadline_rx) = oneshot::channel::<Instant>();
    let shutdown = async move {
        shutdown.await;
        let _ = deadline_tx.send(Instant::now() + timeout);
    };
    crate::server::serve(
        listener,
        sink,
        settings.max_body_bytes,
        shutdown,
        timeout / 2,
    )
    .await;
    let deadline = deadline_rx
        .await
        .unwrap_or_else(|_| Instant::now() + timeout);
    let _ = flush_tx.send(deadline);
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "the writer stopped");
    }
}
