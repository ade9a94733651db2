//! HTTP shell: `POST /v1/capture`, `GET /metrics`, `/healthz`, `/readyz`, graceful shutdown.
//! Decisions live in [`crate::record`] and [`crate::batch`]; this never waits for the store.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use mlep_contract::capture::{H_ENDPOINT, INGEST_PATH};
use tokio::net::TcpListener;

use crate::metrics::DropReason;
use crate::sink::Sink;
use crate::{is_key_segment, record};

pub const METRICS_PATH: &str = "/metrics";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
/// Also answered like `/healthz`: local mode health-checks its upstreams on `GET /ping`
/// (SageMaker's convention, `cli/src/upstreams.rs`), the capture sink's cluster included.
pub const PING_PATH: &str = "/ping";

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"error": {"code", "message"[, "header"]}}`, the model server's error shape.
fn error(status: StatusCode, code: &str, message: &str, header: Option<&str>) -> Resp {
    let mut e = serde_json::json!({"code": code, "message": message});
    if let Some(h) = header {
        e["header"] = h.into();
    }
    json(status, &serde_json::json!({ "error": e }))
}

async fn handle(req: Request<Incoming>, sink: Arc<Sink>, max_body_bytes: usize) -> Resp {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, INGEST_PATH) => ingest(req, &sink, max_body_bytes).await,
        (&Method::GET, METRICS_PATH) => {
            let mut r = Response::new(Full::new(Bytes::from(sink.render_metrics())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        // Alive while it answers; ready once listening, which it is when it answers.
        (&Method::GET, HEALTHZ_PATH | READYZ_PATH | PING_PATH) => {
            json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (_, INGEST_PATH | METRICS_PATH | HEALTHZ_PATH | READYZ_PATH | PING_PATH) => {
            let allow = if path == INGEST_PATH { "POST" } else { "GET" };
            let message = format!("{} is not allowed on {path}; use {allow}", req.method());
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &message,
                None,
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            r
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}; captures go to POST {INGEST_PATH}"),
            None,
        ),
    }
}

/// One invocation: 202 once queued; 400 naming the header at fault; 413 over the body
/// limit; 503 when the buffer is full. Every refusal is a dropped record, counted.
async fn ingest(req: Request<Incoming>, sink: &Sink, max_body_bytes: usize) -> Resp {
    let (parts, body) = req.into_parts();
    let header = |name: &'static str| parts.headers.get(name).map(HeaderValue::as_bytes);
    // The endpoint label of a refused request: its header when it is a name, else empty.
    let endpoint = header(H_ENDPOINT)
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| is_key_segment(v))
        .unwrap_or("");
    let too_large = || {
        sink.metrics.dropped(endpoint, DropReason::BadRequest, 1);
        let message = format!("the body is over {max_body_bytes} bytes");
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &message,
            None,
        );
        // The rest of the body is not read: this connection cannot carry another request.
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let announced = header(CONTENT_LENGTH.as_str())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > max_body_bytes) {
        return too_large();
    }
    let body = match Limited::new(body, max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(),
        Err(e) => {
            sink.metrics.dropped(endpoint, DropReason::BadRequest, 1);
            let message = format!("could not read the body: {e}");
            return error(StatusCode::BAD_REQUEST, "bad_request", &message, None);
        }
    };
    let capture = match record::build(header, &body, crate::random_hex::<16>) {
        Ok(c) => c,
        Err(e) => {
            sink.metrics.dropped(endpoint, DropReason::BadRequest, 1);
            tracing::debug!(error = %e, endpoint, "bad capture request");
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &e.to_string(),
                e.header(),
            );
        }
    };
    let line = match capture.line() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, endpoint, "cannot encode a capture record");
            let message = format!("cannot encode the record: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "encode", &message, None);
        }
    };
    match sink.accept(&capture, &line) {
        Ok(()) => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"status": "accepted"}),
        ),
        Err(full) => {
            let message = format!(
                "the sink holds {} of at most {} bytes and cannot take {} more; retry later",
                full.buffered, full.max, full.record
            );
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "buffer_full",
                &message,
                None,
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// Accept connections until `shutdown` resolves; then stop accepting (the listener is
/// dropped, so new connections are refused), let in-flight requests finish (idle keep-alive
/// connections are closed) and return once they are done or `drain_timeout` has passed.
pub async fn serve(
    listener: TcpListener,
    sink: Arc<Sink>,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let sink = sink.clone();
                    let svc = service_fn(move |req| {
                        let sink = sink.clone();
                        async move { Ok::<_, Infallible>(handle(req, sink, max_body_bytes).await) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    let fut = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = fut.await {
                            tracing::debug!(error = %e, "connection error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain_timeout) => tracing::warn!(?drain_timeout, "requests still in flight at the drain timeout"),
    }
}
