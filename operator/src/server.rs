//! The operator's small HTTP server: `/healthz`, `/metrics`, and the filter module that Istio's
//! agent downloads, at a path versioned by its sha256 (`/mlep_filter/<sha256>.wasm`, see
//! `mlep_core::module`; any other sha256 is a 404, so a proxy never gets bytes that do not match
//! the checksum it was told), plus `/mlep_filter.wasm.sha256` for people and scripts. The module
//! is delivered without an external registry. HTTP/1.1, one request per connection.

use crate::metrics::Metrics;
use mlep_core::module::requested_sha256;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
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

/// What a request path gets: `None` is a 404.
fn route<'a>(
    path: &str,
    metrics: &Metrics,
    wasm: &'a WasmModule,
) -> Option<(&'static str, Body<'a>)> {
    match path {
        "/healthz" => Some(("text/plain", Body::Owned(b"ok\n".to_vec()))),
        "/metrics" => Some((
            "text/plain; version=0.0.4",
            Body::Owned(metrics.render().into_bytes()),
        )),
        WASM_SHA256_PATH => Some((
            "text/plain",
            Body::Owned(format!("{}\n", wasm.sha256).into_bytes()),
        )),
        p if requested_sha256(p) == Some(wasm.sha256.as_str()) => {
            Some(("application/wasm", Body::Borrowed(&wasm.bytes)))
        }
        _ => None,
    }
}

enum Body<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Body<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Body::Owned(v) => v,
            Body::Borrowed(b) => b,
        }
    }
}

/// Serve until the listener fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    wasm: Arc<WasmModule>,
) -> std::io::Result<()> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let metrics = metrics.clone();
        let wasm = wasm.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded); bodies are not expected.
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let found = matches!(method, "GET" | "HEAD")
                .then(|| route(path, &metrics, &wasm))
                .flatten();
            let (status, ctype, body) = match found {
                Some((ctype, body)) => ("200 OK", ctype, body),
                None => (
                    "404 Not Found",
                    "text/plain",
                    Body::Owned(b"not found\n".to_vec()),
                ),
            };
            let body = body.bytes();
            debug!(%method, %path, %status, "http");
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            if method != "HEAD" {
                let _ = sock.write_all(body).await;
            }
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_served_only_under_its_own_sha256() {
        let wasm = WasmModule::new(b"abc".to_vec());
        let metrics = Metrics::default();
        let path = mlep_core::module::module_path(&wasm.sha256);
        let body = route(&path, &metrics, &wasm).map(|(_, b)| b.bytes().to_vec());
        assert_eq!(body.as_deref(), Some(&b"abc"[..]));
        let other = mlep_core::module::module_path(&"0".repeat(64));
        assert!(route(&other, &metrics, &wasm).is_none());
        assert!(route("/mlep_filter.wasm", &metrics, &wasm).is_none());
    }

    #[test]
    fn module_checksum_is_lowercase_hex_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            WasmModule::new(b"abc".to_vec()).sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
