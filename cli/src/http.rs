//! A minimal HTTP/1.1 client over a tokio `TcpStream` (one request per connection), enough
//! for readiness probes (`GET /ping`), Envoy's admin (`/stats/prometheus`) and tests. Handles
//! `Content-Length`, chunked and read-to-close bodies.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: timed out after {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: malformed response: {what}")]
    Malformed { addr: String, what: String },
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

/// `GET path` on `127.0.0.1:port`.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    send(
        port,
        &Request {
            method: "GET",
            path,
            ..Default::default()
        },
        timeout,
    )
    .await
}

pub async fn send(port: u16, req: &Request<'_>, timeout: Duration) -> Result<Response, HttpError> {
    let addr = format!("127.0.0.1:{port}");
    match tokio::time::timeout(timeout, send_inner(&addr, req)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { addr, timeout }),
    }
}

async fn send_inner(addr: &str, req: &Request<'_>) -> Result<Response, HttpError> {
    let io = |source| HttpError::Io {
        addr: addr.to_owned(),
        source,
    };
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !req.body.is_empty() || req.method == "POST" || req.method == "PUT" {
        head.push_str(&format!("content-length: {}\r\n", req.body.len()));
    }
    head.push_str("connection: close\r\n\r\n");
    // One write: a server that answers before reading the body (a local reply from a filter)
    // and closes would otherwise leave unread bytes, and the kernel answers those with a RST.
    let mut msg = head.into_bytes();
    msg.extend_from_slice(req.body);
    s.write_all(&msg).await.map_err(io)?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw).await {
        // A reset after a complete response still delivered the response.
        return parse_response(&raw)
            .ok()
            .filter(|r| complete(&raw, r))
            .ok_or_else(|| io(e));
    }
    parse_response(&raw).map_err(|what| HttpError::Malformed {
        addr: addr.to_owned(),
        what,
    })
}

/// Whether `raw` held the whole body `r` announces (by `content-length`).
fn complete(raw: &[u8], r: &Response) -> bool {
    r.header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        .is_some_and(|l| l == r.body.len())
        && !raw.is_empty()
}

/// Parse a complete HTTP/1.1 response (the connection was read to its end).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..len)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        data = data.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_chunked_and_close_delimited_bodies() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mlep-Variant: a\r\n\r\nhi")
                .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-mlep-variant")),
            (200, &b"hi"[..], Some("a"))
        );
        let r = parse_response(b"HTTP/1.1 503 Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "abcde"));
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil close").unwrap();
        assert_eq!(r.text(), "until close");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
    }
}
