//! The operator's small HTTP server: `/healthz`, `/metrics`, and the filter module
//! (`/mlep_filter.wasm`, plus `/mlep_filter.wasm.sha256`) that Istio's agent downloads: the
//! module is delivered without an external registry. HTTP/1.1, one request per connection.

use crate::metrics::Metrics;
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

pub const WASM_PATH: &str = "/mlep_filter.wasm";

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
            let (status, ctype, body): (&str, &str, Vec<u8>) = match (method, path) {
                ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", b"ok\n".to_vec()),
                ("GET" | "HEAD", "/metrics") => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    metrics.render().into_bytes(),
                ),
                ("GET" | "HEAD", WASM_PATH) => ("200 OK", "application/wasm", wasm.bytes.clone()),
                ("GET" | "HEAD", p) if p == format!("{WASM_PATH}.sha256") => (
                    "200 OK",
                    "text/plain",
                    format!("{}\n", wasm.sha256).into_bytes(),
                ),
                _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            };
            debug!(%method, %path, %status, "http");
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            if method != "HEAD" {
                let _ = sock.write_all(&body).await;
            }
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_checksum_is_lowercase_hex_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            WasmModule::new(b"abc".to_vec()).sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
