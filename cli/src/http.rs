//! The one HTTP/1.1 client of local mode, its Envoy wrapper and the tests, on hyper: readiness
//! probes (`GET /ping`), Envoy's admin API (`/ready`, `/stats/prometheus`, `/clusters`,
//! `/listeners`) and the tests' requests. One request per connection (`connection: close`),
//! or many on one kept-alive [`Connection`] (latency benchmarks: no handshake per request).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("{addr}: invalid request: {source}")]
    Request {
        addr: String,
        source: hyper::http::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request: method, path, extra headers, body.
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: &'a [u8],
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET path` on `127.0.0.1:port`.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    send_to(local(port), &Request::get(path), timeout).await
}

/// `req` to `127.0.0.1:port`.
pub async fn send(port: u16, req: &Request<'_>, timeout: Duration) -> Result<Response, HttpError> {
    send_to(local(port), req, timeout).await
}

/// `req` to `addr`, within `timeout` (connecting included).
pub async fn send_to(
    addr: SocketAddr,
    req: &Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    match tokio::time::timeout(timeout, exchange(addr, req)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            addr: addr.to_string(),
            timeout,
        }),
    }
}

/// `GET path` on `addr` from synchronous code (Envoy's process wrapper, synchronous tests): on
/// a runtime of its own, on a thread of its own when called from inside a runtime.
pub fn get_blocking(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| HttpError::Io {
                addr: addr.to_string(),
                source,
            })?
            .block_on(send_to(addr, &Request::get(path), timeout))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| s.spawn(run).join()).unwrap_or_else(|_| {
        Err(HttpError::Io {
            addr: addr.to_string(),
            source: std::io::Error::other("the client thread panicked"),
        })
    })
}

impl<'a> Request<'a> {
    /// `GET path`.
    pub fn get(path: &'a str) -> Self {
        Request {
            method: "GET",
            path,
            ..Default::default()
        }
    }

    /// The hyper request, with `host` (unless given), `content-length` for a body (or a POST
    /// or PUT) and, unless `keep_alive`, `connection: close`.
    fn build(
        &self,
        addr: SocketAddr,
        keep_alive: bool,
    ) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
        let mut b = hyper::Request::builder().method(self.method).uri(self.path);
        if !self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            b = b.header("host", addr.to_string());
        }
        for (k, v) in &self.headers {
            b = b.header(*k, v.as_str());
        }
        if !self.body.is_empty() || self.method == "POST" || self.method == "PUT" {
            b = b.header("content-length", self.body.len());
        }
        if !keep_alive {
            b = b.header("connection", "close");
        }
        b.body(Full::new(Bytes::copy_from_slice(self.body)))
    }
}

/// A TCP connection to `addr` with the HTTP/1.1 handshake done.
async fn open(
    addr: SocketAddr,
) -> Result<
    (
        SendRequest<Full<Bytes>>,
        hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    ),
    HttpError,
> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Io {
            addr: addr.to_string(),
            source,
        })?;
    // Headers and a small body leave in one segment: a server that answers before reading the
    // body (a filter's local reply) and closes has then read everything, and sends no reset.
    let _ = stream.set_nodelay(true);
    hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| HttpError::Http {
            addr: addr.to_string(),
            source,
        })
}

/// `request` on `sender`, the answer read to its end.
async fn round_trip(
    sender: &mut SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<Response, hyper::Error> {
    let r = sender.send_request(request).await?;
    let (parts, body) = r.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect(),
        body: body.to_vec(),
    })
}

async fn exchange(addr: SocketAddr, req: &Request<'_>) -> Result<Response, HttpError> {
    let request = req
        .build(addr, false)
        .map_err(|source| HttpError::Request {
            addr: addr.to_string(),
            source,
        })?;
    let (mut sender, conn) = open(addr).await?;
    // The connection is driven beside the exchange; its own end (the server closing, as
    // asked) is no error once the response is complete.
    let (response, _) = tokio::join!(round_trip(&mut sender, request), conn);
    response.map_err(|source| HttpError::Http {
        addr: addr.to_string(),
        source,
    })
}

/// One kept-alive HTTP/1.1 connection, one request at a time. What a latency benchmark needs:
/// no handshake per request, and no server-side TIME_WAIT for a reused source port to run into
/// (measured on the cluster bed with a connection per request: p99.9 of 1 s and 2 s, the SYN
/// retransmission timer, `TcpExtTCPSynRetrans` counting them).
pub struct Connection {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Connect to `addr` within `timeout`.
    pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<Connection, HttpError> {
        let (sender, conn) = tokio::time::timeout(timeout, open(addr))
            .await
            .map_err(|_| HttpError::Timeout {
                addr: addr.to_string(),
                timeout,
            })??;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            addr,
            sender,
            driver,
        })
    }

    /// Whether a request may go on this connection: not closed, and the last answer did not
    /// announce a close (a proxy draining its listener answers `connection: close`). A
    /// request sent on such a connection would be cancelled unsent; the caller opens another.
    pub async fn usable(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.sender.ready()).await,
            Ok(Ok(()))
        )
    }

    /// `req` on this connection within `timeout`. After an error the connection is unusable
    /// (the caller opens another: that is no retry of the failed request).
    pub async fn send(
        &mut self,
        req: &Request<'_>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let addr = self.addr.to_string();
        let request = req
            .build(self.addr, true)
            .map_err(|source| HttpError::Request {
                addr: addr.clone(),
                source,
            })?;
        match tokio::time::timeout(timeout, round_trip(&mut self.sender, request)).await {
            Ok(r) => r.map_err(|source| HttpError::Http { addr, source }),
            Err(_) => Err(HttpError::Timeout { addr, timeout }),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering each connection with `raw` once it has read the request head.
    async fn canned(raw: &'static [u8]) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(raw).await;
                let _ = s.shutdown().await;
            }
        });
        port
    }

    #[tokio::test]
    async fn reads_content_length_chunked_and_close_delimited_bodies() {
        let t = Duration::from_secs(5);
        let port =
            canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mlep-Variant: a\r\n\r\nhi").await;
        let r = get(port, "/", t).await.unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-mlep-variant")),
            (200, &b"hi"[..], Some("a"))
        );
        let port = canned(b"HTTP/1.1 503 Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").await;
        let r = get(port, "/", t).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "abcde"));
        let port = canned(b"HTTP/1.0 200 OK\r\n\r\nuntil close").await;
        assert_eq!(get(port, "/", t).await.unwrap().text(), "until close");
        let port = canned(b"HTTP/1.1 200 OK\r\n").await;
        assert!(matches!(
            get(port, "/", t).await,
            Err(HttpError::Http { .. })
        ));
        let port = canned(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab").await;
        assert!(get(port, "/", t).await.is_err(), "a truncated chunk");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_carries_many_requests_until_the_server_announces_a_close() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                for answer in [
                    &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"[..],
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2",
                    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n3",
                ] {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.clear();
                    let _ = s.write_all(answer).await;
                }
                let _ = s.shutdown().await;
            }
        });
        let t = Duration::from_secs(5);
        let mut c = Connection::open(addr, t).await.unwrap();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            assert!(c.usable().await, "usable before the server's close");
            bodies.push(c.send(&Request::get("/"), t).await.unwrap().text());
        }
        assert_eq!(bodies, ["1", "2", "3"]);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!c.usable().await, "the server announced a close");
    }

    // Two workers: the blocking call holds one, the canned server runs on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_server_times_out_and_blocking_calls_work_inside_a_runtime() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let err = get(addr.port(), "/", Duration::from_millis(200)).await;
        assert!(matches!(err, Err(HttpError::Timeout { .. })), "{err:?}");
        let port = canned(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let r = get_blocking(local(port), "/ready", Duration::from_secs(5)).unwrap();
        assert_eq!(r.status, 204);
        drop(l);
    }

    #[test]
    fn blocking_calls_work_without_a_runtime() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nready")
                .unwrap();
            head
        });
        let r = get_blocking(addr, "/ready", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ready"));
        let head = server.join().unwrap();
        assert!(head.starts_with("GET /ready HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }
}
