//! HTTP shell: routes, model state, graceful shutdown. Decisions live in `codec` and `model`.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::codec::{self, Format, RequestError};
use crate::metrics::Metrics;
use crate::model::Model;
use mlep_contract::latency;

/// Response header naming the model that answered: `<name>:<version>` from metadata.json.
pub const MODEL_HEADER: &str = "x-mlep-model";

pub enum ModelState {
    /// Waiting for `metadata.json` to appear, or loading.
    Loading,
    Ready(Arc<Model>),
    /// Load failed; `/ping` stays 503 with this reason.
    Failed(String),
}

pub struct App {
    state: RwLock<ModelState>,
    pub metrics: Metrics,
    max_body_bytes: usize,
    in_flight: AtomicI64,
}

impl App {
    pub fn new(max_body_bytes: usize) -> Arc<Self> {
        Arc::new(App {
            state: RwLock::new(ModelState::Loading),
            metrics: Metrics::default(),
            max_body_bytes,
            in_flight: AtomicI64::new(0),
        })
    }

    fn model(&self) -> Result<Arc<Model>, String> {
        match &*self
            .state
            .read()
            .map_err(|_| "state lock poisoned".to_string())?
        {
            ModelState::Ready(m) => Ok(m.clone()),
            ModelState::Loading => Err("loading".into()),
            ModelState::Failed(reason) => Err(format!("failed: {reason}")),
        }
    }

    fn set(&self, s: ModelState) {
        if let Ok(mut st) = self.state.write() {
            *st = s;
        }
    }
}

/// Load the model on a plain thread: wait until `metadata.json` exists (an init container or
/// local mode may still be fetching; publishers write it last), then load once. A failure is
/// final: `/ping` answers 503 with the reason, which is also logged.
pub fn spawn_loader(
    app: Arc<App>,
    dir: PathBuf,
    poll: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("model-loader".into()).spawn(move || {
        let meta = dir.join("metadata.json");
        let mut announced = false;
        while !meta.exists() {
            if !announced {
                tracing::info!(dir = %dir.display(), "waiting for metadata.json");
                announced = true;
            }
            std::thread::sleep(poll);
        }
        let started = Instant::now();
        // The inference runtime (tract) can panic on graphs it does not support while
        // optimising them (seen: a Reshape in front of a MatMul, `change_axes.rs` "not yet
        // implemented"). Without this the loader thread died and /ping said "loading" forever.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Model::load(&dir)))
            .unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(crate::ServerError::Model(format!(
                    "{}: the inference runtime panicked while loading the model: {why}",
                    dir.display()
                )))
            });
        match loaded {
            Ok(model) => {
                tracing::info!(model = %model.meta.id(), features = model.meta.features.len(), elapsed = ?started.elapsed(), "model loaded");
                app.set(ModelState::Ready(model));
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "model failed to load; /ping will answer 503");
                app.set(ModelState::Failed(e.to_string()));
            }
        }
    })
}

type Resp = Response<Full<Bytes>>;

/// How much of an oversized body is read and thrown away before the 413 is sent.
///
/// A server that answers while its peer is still uploading, then closes, makes the kernel
/// reset the connection (unread bytes), and a proxy in front (Envoy: local mode, the Istio
/// sidecar, the ingress gateway) may see the reset before the answer and reply 503 instead
/// of forwarding the 413 (1 time in 3 with a 20 MB body, measured through Envoy 1.40). So an
/// oversized body is drained, in chunks that are dropped at once (memory stays bounded by the
/// limit plus one chunk), as long as it stays within this many bytes past the limit; beyond
/// that the 413 goes out with `connection: close` and the rest is not read.
pub const DRAIN_BYTES: usize = 64 * 1024 * 1024;

enum BodyError {
    /// Over the limit; `drained`: the rest was read to its end (the connection stays usable).
    TooLarge {
        drained: bool,
    },
    Read(hyper::Error),
}

/// The request body, up to `max` bytes; past that, the rest is drained (see [`DRAIN_BYTES`]).
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut kept: Vec<u8> = Vec::new();
    let mut seen: usize = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen <= max {
            kept.extend_from_slice(&data);
        } else {
            kept = Vec::new();
            if seen > max.saturating_add(DRAIN_BYTES) {
                return Err(BodyError::TooLarge { drained: false });
            }
        }
    }
    if seen > max {
        return Err(BodyError::TooLarge { drained: true });
    }
    Ok(Bytes::from(kept))
}

/// Ask hyper to close the connection after this response.
fn close(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn json(status: u16, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(app: &App, e: &RequestError) -> Resp {
    app.metrics.error(e.code);
    json(e.status, e.to_json())
}

async fn handle(req: Request<Incoming>, app: Arc<App>) -> Resp {
    let (path, mut resp): (&'static str, Resp) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/ping") => ("/ping", ping(&app)),
        (&Method::POST, "/invocations") => {
            app.in_flight.fetch_add(1, Ordering::SeqCst);
            let started = Instant::now();
            let mut r = invocations(req, &app).await;
            let elapsed = started.elapsed();
            app.metrics.latency(elapsed);
            app.in_flight.fetch_sub(1, Ordering::SeqCst);
            // The proxy's model latency (mlep_contract::latency): this server's own time,
            // reading the body through encoding the answer, in the W3C Server-Timing form.
            if let Ok(v) = HeaderValue::from_str(&latency::server_timing(elapsed)) {
                r.headers_mut().insert(latency::SERVER_TIMING_HEADER, v);
            }
            ("/invocations", r)
        }
        (&Method::GET, "/metrics") => {
            let loaded = app.model().ok().map(|m| m.meta.id());
            let mut text = app.metrics.render(loaded.as_deref());
            text.push_str(
                "# HELP mlep_model_server_in_flight_requests /invocations requests being served.\n",
            );
            text.push_str("# TYPE mlep_model_server_in_flight_requests gauge\n");
            text.push_str(&format!(
                "mlep_model_server_in_flight_requests {}\n",
                app.in_flight.load(Ordering::SeqCst)
            ));
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            ("/metrics", r)
        }
        (_, "/ping" | "/invocations" | "/metrics") => (
            "other",
            error(
                &app,
                &RequestError::new(
                    405,
                    "method_not_allowed",
                    format!("{} is not allowed here", req.method()),
                ),
            ),
        ),
        (_, p) => (
            "other",
            error(
                &app,
                &RequestError::new(
                    404,
                    "not_found",
                    format!("no route for {p}; use GET /ping or POST /invocations"),
                ),
            ),
        ),
    };
    if let Ok(m) = app.model() {
        if let Ok(v) = HeaderValue::from_str(&m.meta.id()) {
            resp.headers_mut().insert(MODEL_HEADER, v);
        }
    }
    app.metrics.request(path, resp.status().as_u16());
    resp
}

fn ping(app: &App) -> Resp {
    match app.model() {
        Ok(m) => json(
            200,
            serde_json::to_vec(&serde_json::json!({"status": "ok", "model": m.meta.id()}))
                .unwrap_or_default(),
        ),
        Err(reason) => json(
            503,
            serde_json::to_vec(&serde_json::json!({"status": "unavailable", "reason": reason}))
                .unwrap_or_default(),
        ),
    }
}

async fn invocations(req: Request<Incoming>, app: &App) -> Resp {
    let model = match app.model() {
        Ok(m) => m,
        Err(reason) => {
            return error(
                app,
                &RequestError::new(503, "model_not_ready", format!("model {reason}")),
            )
        }
    };
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (in_format, out_format) = match (
        codec::request_format(header(CONTENT_TYPE)),
        codec::response_format(header(ACCEPT)),
    ) {
        (Ok(i), Ok(o)) => (i, o),
        (Err(e), _) | (_, Err(e)) => return error(app, &e),
    };
    let too_large = || {
        RequestError::new(
            413,
            "body_too_large",
            format!("request body over {} bytes", app.max_body_bytes),
        )
    };
    let announced = header(CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > app.max_body_bytes.saturating_add(DRAIN_BYTES)) {
        // Too big to be worth reading: answer at once and close the connection.
        return close(error(app, &too_large()));
    }
    let body = match read_body(req.into_body(), app.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { drained: true }) => return error(app, &too_large()),
        Err(BodyError::TooLarge { drained: false }) => return close(error(app, &too_large())),
        Err(BodyError::Read(e)) => {
            return error(
                app,
                &RequestError::new(400, "malformed", format!("could not read the body: {e}")),
            )
        }
    };
    let batch = match codec::decode(in_format, &body, &model.meta) {
        Ok(b) => b,
        Err(e) => return error(app, &e),
    };
    let rows = batch.rows;
    // Inference is CPU work: keep it off the async workers so /ping and accepts stay responsive.
    let m = model.clone();
    let result = tokio::task::spawn_blocking(move || m.predict(&batch.data, batch.rows)).await;
    let probs = match result {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "inference failed");
            return error(
                app,
                &RequestError::new(500, "inference_failed", e.to_string()),
            );
        }
        Err(e) => {
            return error(
                app,
                &RequestError::new(500, "inference_failed", e.to_string()),
            )
        }
    };
    app.metrics.predictions(rows);
    let mut r = json(200, codec::encode(out_format, &model.meta, &probs));
    if out_format == Format::Csv {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/csv"));
    }
    r
}

/// Accept connections until `shutdown` resolves; then stop accepting (the listener is
/// dropped, so new connections are refused), let in-flight requests finish (idle keep-alive
/// connections are closed) and return once they are done or `drain_timeout` has passed.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let app = app.clone();
                    let svc = service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(handle(req, app).await) }
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
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(drain_timeout) => tracing::warn!(?drain_timeout, "drain timeout, exiting with requests in flight"),
    }
}
