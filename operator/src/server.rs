//! The operator's HTTP/1.1 servers, one request per connection:
//! - the admin port (`--http-addr`): `/healthz`, `/metrics` and `/mlep_filter.wasm.sha256` for
//!   people and scripts, and `POST /wake/...` for the proxies ([`crate::wake`]);
//! - the module port (`--module-addr`, [`crate::server_module`]): only the filter module that
//!   Istio's agent downloads, at its path versioned by its sha256
//!   (`/mlep_filter/<sha256>.wasm`, see `mlep_core::module`).
//!
//! Both read a bounded request head under a read and a header timeout ([`read_head`]), so a
//! client that connects and sends nothing, or a header byte at a time, is closed.

use crate::metrics::Metrics;
use crate::wake::{Waker, WAKE_PREFIX};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tracing::debug;

/// The filter module and its checksum.
pub struct WasmModule {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl WasmModule {
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { bytes, sha256 }
    }
}

/// Where the current module's checksum is served (text, one line).
pub const WASM_SHA256_PATH: &str = "/mlep_filter.wasm.sha256";
/// The largest request head read; a longer one is answered 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How long a client may take, on either port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request head must arrive within this, from the connection's start.
    pub header: Duration,
    /// Each read of the head must return within this (an idle client is closed sooner).
    pub read: Duration,
    /// Writing the whole answer must finish within this.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(5),
            read: Duration::from_secs(3),
            write: Duration::from_secs(60),
        }
    }
}

/// Why no request head was read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Too slow (idle past the read timeout, or the whole head past the header timeout), or
    /// the client went away: close without an answer.
    Gone,
    /// Longer than [`MAX_HEAD_BYTES`].
    TooLarge,
}

/// A request line: method and target.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
}

/// Read a request head (up to the blank line) under `t`'s read and header timeouts.
pub async fn read_head<S: AsyncRead + Unpin>(
    sock: &mut S,
    t: &Timeouts,
) -> Result<Head, HeadError> {
    let deadline = Instant::now() + t.header;
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let wait = t
            .read
            .min(deadline.saturating_duration_since(Instant::now()));
        match timeout(wait, sock.read(&mut buf[n..])).await {
            Ok(Ok(k)) if k > 0 => n += k,
            _ => return Err(HeadError::Gone),
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    Ok(Head {
        method: parts.next().unwrap_or("").to_owned(),
        path: parts.next().unwrap_or("").to_owned(),
    })
}

/// An answer: status line, content type, extra header lines and body.
pub struct Answer<'a> {
    pub status: &'static str,
    pub content_type: &'static str,
    pub extra: &'static str,
    pub body: Body<'a>,
}

impl<'a> Answer<'a> {
    /// A plain-text answer.
    pub fn text(status: &'static str, text: String) -> Self {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: Body::Owned(text.into_bytes()),
        }
    }
}

pub enum Body<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Body<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::Owned(v) => v,
            Body::Borrowed(b) => b,
        }
    }
}

/// Write `a` (its head only for HEAD) and close, within the write timeout.
pub async fn respond<S: AsyncWrite + Unpin>(
    sock: &mut S,
    a: &Answer<'_>,
    head_only: bool,
    t: &Timeouts,
) {
    let body = a.body.bytes();
    let head = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n",
        a.status,
        a.content_type,
        body.len(),
        a.extra
    );
    let write = async {
        sock.write_all(head.as_bytes()).await?;
        if !head_only {
            sock.write_all(body).await?;
        }
        sock.shutdown().await
    };
    let _ = timeout(t.write, write).await;
}

/// The head read, or `None` after answering a too-large one with 431 (a client too slow or
/// gone gets no answer).
pub async fn head_or_refusal<S: AsyncWrite + Unpin>(
    sock: &mut S,
    read: Result<Head, HeadError>,
    t: &Timeouts,
) -> Option<Head> {
    match read {
        Ok(h) => Some(h),
        Err(HeadError::TooLarge) => {
            let a = Answer::text(
                "431 Request Header Fields Too Large",
                "request head too large\n".into(),
            );
            respond(sock, &a, false, t).await;
            None
        }
        Err(HeadError::Gone) => None,
    }
}

/// What an admin-port path gets: `None` is a 404.
fn route(path: &str, metrics: &Metrics, wasm: &WasmModule) -> Option<Answer<'static>> {
    let (content_type, body) = match path {
        "/healthz" => ("text/plain", b"ok\n".to_vec()),
        "/metrics" => ("text/plain; version=0.0.4", metrics.render().into_bytes()),
        WASM_SHA256_PATH => ("text/plain", format!("{}\n", wasm.sha256).into_bytes()),
        _ => return None,
    };
    Some(Answer {
        status: "200 OK",
        content_type,
        extra: "",
        body: Body::Owned(body),
    })
}

/// Serve the admin port until the listener fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    wasm: Arc<WasmModule>,
    waker: Option<Arc<Waker>>,
) -> std::io::Result<()> {
    let t = Timeouts::default();
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        let wasm = wasm.clone();
        let waker = waker.clone();
        tokio::spawn(async move {
            let read = read_head(&mut sock, &t).await;
            let Some(head) = head_or_refusal(&mut sock, read, &t).await else {
                return;
            };
            let answer = match head.method.as_str() {
                "GET" | "HEAD" => route(&head.path, &metrics, &wasm)
                    .unwrap_or_else(|| Answer::text("404 Not Found", "not found\n".into())),
                "POST" if head.path.starts_with(WAKE_PREFIX) => match &waker {
                    Some(w) => w.answer(&head.path).await,
                    None => Answer::text("404 Not Found", "not found\n".into()),
                },
                _ => Answer {
                    extra: "allow: GET, HEAD\r\n",
                    ..Answer::text("405 Method Not Allowed", "only GET and HEAD\n".into())
                },
            };
            debug!(method = %head.method, path = %head.path, status = answer.status, "http");
            respond(&mut sock, &answer, head.method == "HEAD", &t).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_port_does_not_serve_the_module() {
        let wasm = WasmModule::new(b"abc".to_vec());
        let metrics = Metrics::default();
        let path = mlep_core::module::module_path(&wasm.sha256);
        assert!(route(&path, &metrics, &wasm).is_none());
        let sum = route(WASM_SHA256_PATH, &metrics, &wasm).map(|a| a.body.bytes().to_vec());
        assert_eq!(sum, Some(format!("{}\n", wasm.sha256).into_bytes()));
    }

    #[test]
    fn module_checksum_is_lowercase_hex_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            WasmModule::new(b"abc".to_vec()).sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn a_head_arriving_slowly_is_cut_at_the_header_timeout() {
        let t = Timeouts {
            header: Duration::from_millis(300),
            read: Duration::from_secs(5),
            write: Duration::from_secs(1),
        };
        let (mut client, mut server) = tokio::io::duplex(64);
        let started = Instant::now();
        let trickle = async {
            for b in b"GET / HTTP/1.1\r\n".iter() {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (head, ()) = tokio::join!(read_head(&mut server, &t), trickle);
        assert_eq!(head, Err(HeadError::Gone));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_complete_head_is_read_and_an_endless_one_is_too_large() {
        let t = Timeouts::default();
        let (mut client, mut server) = tokio::io::duplex(MAX_HEAD_BYTES * 2);
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut server, &t).await.unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("GET", "/healthz")
        );
        let (mut client, mut server) = tokio::io::duplex(MAX_HEAD_BYTES * 2);
        client
            .write_all(&vec![b'a'; MAX_HEAD_BYTES + 1])
            .await
            .unwrap();
        assert_eq!(read_head(&mut server, &t).await, Err(HeadError::TooLarge));
    }
}
