//! The module port under abuse, over real sockets on 127.0.0.1: slow clients that connect and
//! send nothing, or only part of a request head, neither stall a proxy's module fetch nor stay
//! connected past the header timeout; only GET/HEAD of the current module is answered.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mlep_core::module::module_path;
use mlep_operator::server::{Timeouts, WasmModule, MAX_HEAD_BYTES};
use mlep_operator::server_module::{serve_module, ModuleLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MODULE: &[u8] = b"\0asm\x01\0\0\0 a filter module";

async fn start(limits: ModuleLimits) -> (SocketAddr, Arc<WasmModule>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wasm = Arc::new(WasmModule::new(MODULE.to_vec()));
    tokio::spawn(serve_module(listener, wasm.clone(), limits));
    (addr, wasm)
}

/// Send `request` and read the whole answer: status line and body.
async fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&buf)));
    let status = String::from_utf8_lossy(&buf[..split])
        .lines()
        .next()
        .unwrap()
        .to_owned();
    (status, buf[split + 4..].to_vec())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: mlep-operator\r\n\r\n")
}

/// Whether the server closed `s` (a read returns end of stream or an error).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b).await, Ok(0) | Err(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fetches_the_module_within_2s_while_500_slow_clients_hold_connections() {
    let header = Duration::from_secs(3);
    let limits = ModuleLimits {
        timeouts: Timeouts {
            header,
            read: header,
            ..Timeouts::default()
        },
        ..ModuleLimits::default()
    };
    let (addr, wasm) = start(limits).await;
    let mut slow = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            // Half send part of a head and stop; the others send nothing.
            s.write_all(b"GET /mlep_filter/").await.unwrap();
        }
        slow.push(s);
    }
    let opened = Instant::now();

    let started = Instant::now();
    let (status, body) = exchange(addr, &get(&module_path(&wasm.sha256))).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the fetch took {:?}",
        started.elapsed()
    );
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", MODULE)
    );

    // Every slow client is closed by the server once the header timeout has passed, not before
    // it was due.
    let closing = slow.iter_mut().map(closed_by_server);
    let all_closed = tokio::time::timeout(header * 3, futures::future::join_all(closing))
        .await
        .expect("the slow clients were not closed within 3x the header timeout");
    assert!(all_closed.iter().all(|c| *c));
    assert!(opened.elapsed() >= header - Duration::from_millis(200));
}

#[tokio::test]
async fn when_every_slot_is_taken_a_new_client_evicts_the_oldest_slow_one() {
    let limits = ModuleLimits {
        max_connections: 4,
        ..ModuleLimits::default()
    };
    let (addr, wasm) = start(limits).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let (status, body) = exchange(addr, &get(&module_path(&wasm.sha256))).await;
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", MODULE)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The oldest slow client made room, long before the 5 s header timeout.
    let first = tokio::time::timeout(Duration::from_secs(2), closed_by_server(&mut slow[0]))
        .await
        .expect("the oldest slow client is still open");
    assert!(first);
}

#[tokio::test]
async fn anything_but_get_or_head_of_the_current_module_is_refused_in_plain_text() {
    let (addr, wasm) = start(ModuleLimits::default()).await;
    let own = module_path(&wasm.sha256);
    let (status, body) = exchange(addr, &get(&module_path(&"0".repeat(64)))).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(String::from_utf8_lossy(&body).contains(&own), "{body:?}");
    for path in ["/metrics", "/healthz", "/mlep_filter.wasm.sha256"] {
        assert_eq!(exchange(addr, &get(path)).await.0, "HTTP/1.1 404 Not Found");
    }
    let (status, body) = exchange(addr, &format!("POST {own} HTTP/1.1\r\n\r\n")).await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(String::from_utf8_lossy(&body).starts_with("method not allowed"));
    let (status, body) = exchange(addr, &format!("HEAD {own} HTTP/1.1\r\n\r\n")).await;
    assert_eq!((status.as_str(), body.len()), ("HTTP/1.1 200 OK", 0));
    // A head filling the whole buffer without ending (all of it read, so the close is clean).
    let start = format!("GET {own} HTTP/1.1\r\nx: ");
    let huge = format!("{start}{}", "a".repeat(MAX_HEAD_BYTES - start.len()));
    assert_eq!(
        exchange(addr, &huge).await.0,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}
