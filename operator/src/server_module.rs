//! The filter module's own port: every proxy of the mesh downloads the module from here, so
//! nothing else is served on it and a few abusive clients cannot stall the others.
//!
//! - Only `GET`/`HEAD` of the current module's versioned path (`/mlep_filter/<sha256>.wasm`);
//!   any other path is a 404, any other method a 405, in plain text. Another sha256 is a 404
//!   too, so a proxy never gets bytes that do not match the checksum it was told (during a
//!   rolling update the agent retries and reaches a replica holding the new module).
//! - The request head must arrive within the header timeout, each read within the read
//!   timeout, the answer be written within the write timeout ([`Timeouts`]).
//! - At most `max_connections` at once. When they are all taken, a new connection evicts the
//!   oldest one still waiting for its request head (a slow client cannot hold a slot while
//!   proxies queue); when every slot is busy writing the module, the new connection is closed.

use crate::server::{
    head_or_refusal, read_head, respond, Answer, Body, HeadError, Timeouts, WasmModule,
};
use mlep_core::module::module_path;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// The module port's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleLimits {
    pub timeouts: Timeouts,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ModuleLimits {
    fn default() -> Self {
        Self {
            timeouts: Timeouts::default(),
            max_connections: 1024,
        }
    }
}

/// The connections still reading their request head, oldest first: a handle to close each.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<oneshot::Sender<()>>>);

impl Waiting {
    /// Register a connection; it is closed when the returned receiver fires.
    fn push(&self, limit: usize) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut q) = self.0.lock() {
            if q.len() >= limit {
                q.retain(|s| !s.is_closed());
            }
            q.push_back(tx);
        }
        rx
    }

    /// Close the oldest connection still reading its head; `false` when there is none.
    fn evict_oldest(&self) -> bool {
        let Ok(mut q) = self.0.lock() else {
            return false;
        };
        while let Some(tx) = q.pop_front() {
            if tx.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// Counts a connection while it lives.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a module-port request gets.
fn answer<'a>(method: &str, path: &str, wasm: &'a WasmModule) -> Answer<'a> {
    let own = module_path(&wasm.sha256);
    match method {
        "GET" | "HEAD" if path == own => Answer {
            status: "200 OK",
            content_type: "application/wasm",
            extra: "",
            body: Body::Borrowed(&wasm.bytes),
        },
        "GET" | "HEAD" => Answer::text(
            "404 Not Found",
            format!("not found: this port serves only the current filter module, {own}\n"),
        ),
        _ => Answer {
            extra: "allow: GET, HEAD\r\n",
            ..Answer::text(
                "405 Method Not Allowed",
                "method not allowed: only GET and HEAD of the filter module\n".into(),
            )
        },
    }
}

/// One connection: its head (unless evicted first), then the answer.
async fn handle(
    mut sock: TcpStream,
    wasm: Arc<WasmModule>,
    evicted: oneshot::Receiver<()>,
    t: Timeouts,
) {
    let head = tokio::select! {
        h = read_head(&mut sock, &t) => h,
        _ = evicted => Err(HeadError::Gone),
    };
    let Some(head) = head_or_refusal(&mut sock, head, &t).await else {
        return;
    };
    let a = answer(&head.method, &head.path, &wasm);
    debug!(method = %head.method, path = %head.path, status = a.status, "module");
    respond(&mut sock, &a, head.method == "HEAD", &t).await;
}

/// Serve the module until the listener fails.
pub async fn serve_module(
    listener: TcpListener,
    wasm: Arc<WasmModule>,
    limits: ModuleLimits,
) -> std::io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new(Waiting::default());
    let max = limits.max_connections.max(1);
    loop {
        let (sock, _) = listener.accept().await?;
        if active.load(Ordering::SeqCst) >= max && !waiting.evict_oldest() {
            warn!(
                max,
                "module port: every connection is busy; closing a new one"
            );
            drop(sock);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = Active(active.clone());
        let evicted = waiting.push(max);
        let wasm = wasm.clone();
        tokio::spawn(async move {
            handle(sock, wasm, evicted, limits.timeouts).await;
            drop(guard);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_current_module_are_answered() {
        let wasm = WasmModule::new(b"abc".to_vec());
        let own = module_path(&wasm.sha256);
        let ok = answer("GET", &own, &wasm);
        assert_eq!((ok.status, ok.body.bytes()), ("200 OK", &b"abc"[..]));
        assert_eq!(answer("HEAD", &own, &wasm).status, "200 OK");
        for path in [
            module_path(&"0".repeat(64)),
            "/metrics".into(),
            "/healthz".into(),
            format!("{own}?x=1"),
        ] {
            assert_eq!(
                answer("GET", &path, &wasm).status,
                "404 Not Found",
                "{path}"
            );
        }
        let post = answer("POST", &own, &wasm);
        assert_eq!(post.status, "405 Method Not Allowed");
        assert!(post.extra.contains("allow: GET, HEAD"));
    }

    #[test]
    fn eviction_skips_connections_that_already_read_their_head() {
        let w = Waiting::default();
        let done = w.push(8);
        let mut slow = w.push(8);
        drop(done);
        assert!(w.evict_oldest());
        assert_eq!(slow.try_recv(), Ok(()));
        assert!(!w.evict_oldest());
    }
}
