//! The router, the accept loop, loading, and the test handle [`SimServer`].
//!
//! The sim runs its own accept loop (hyper-util) instead of `axum::serve` because stopping it
//! must behave like a model server process dying: open connections are dropped on the spot,
//! so an in-flight stream sees a truncated body. `axum::serve`'s graceful shutdown would wait
//! for them to finish instead.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admit::{static_json, Dialect};
use crate::config::{valid_rate, SimConfig};
use crate::dialects::{comfy, echo, llama, openai, tgi};
use crate::state::{SimState, SimStats};

/// Request bodies above this are refused with 413 (ComfyUI workflows with inline images are
/// the largest legitimate bodies).
const BODY_LIMIT: usize = 32 << 20;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The sim's routes, all on one server.
pub fn build_app(state: SimState) -> Router {
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/generate", post(tgi::generate))
        .route("/generate_stream", post(tgi::generate_stream))
        .route("/info", get(tgi::info))
        .route("/completion", post(llama::completion))
        .route("/generate/sync", post(comfy::generate_sync))
        .route("/echo", post(echo))
        .route("/sim/stats", get(stats))
        .route("/sim/control", post(control))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let app = if state.config().request_log.is_some() {
        app.layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
    } else {
        app
    };
    app.with_state(state)
}

/// With `--request-log`: writes every model request (a `POST` outside `/sim/`) to the request
/// log on arrival, then serves it as usual.
async fn record_request(State(state): State<SimState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || req.uri().path().starts_with("/sim/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return control_error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"))
        }
    };
    if let Err(e) = state.record_request(parts.uri.path(), &bytes) {
        tracing::warn!(error = %e, "sim: could not write the request log");
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `GET /health`: llama-server's answers. 200 `{"status":"ok"}` once loaded and healthy, 503
/// `Loading model` before, 503 `Model unhealthy` when set unhealthy.
async fn health(State(state): State<SimState>) -> Response {
    if !state.is_loaded() {
        return Dialect::Llama.loading();
    }
    if !state.is_healthy() {
        return Dialect::Llama.error(StatusCode::SERVICE_UNAVAILABLE, "Model unhealthy");
    }
    static_json(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// `GET /sim/stats`.
async fn stats(State(state): State<SimState>) -> Json<SimStats> {
    Json(state.stats())
}

/// Body of `POST /sim/control`: every field optional, unknown fields refused (a typo should
/// fail the test that made it, not be ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimControl {
    /// See [`SimState::set_healthy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// See [`SimState::set_loaded`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded: Option<bool>,
    /// A line to append to the model log (written after the other changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// New error rate, `0..=1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// New stall before every model request, 0 for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall_ms: Option<u64>,
    /// New delay per token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_delay_ms: Option<u64>,
    /// New prefill time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<u64>,
}

fn control_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// `POST /sim/control`: applies a [`SimControl`], answers the resulting
/// [`crate::SimKnobs`].
async fn control(State(state): State<SimState>, body: Bytes) -> Response {
    let ctl: SimControl = match serde_json::from_slice(&body) {
        Ok(ctl) => ctl,
        Err(e) => return control_error(StatusCode::BAD_REQUEST, format!("invalid control: {e}")),
    };
    if let Some(rate) = ctl.error_rate {
        if !valid_rate(rate) {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("error_rate must be within 0..=1, got {rate}"),
            );
        }
        state.set_error_rate(rate);
    }
    if let Some(healthy) = ctl.healthy {
        state.set_healthy(healthy);
    }
    if let Some(loaded) = ctl.loaded {
        state.set_loaded(loaded);
    }
    if let Some(ms) = ctl.stall_ms {
        state.set_stall(Some(Duration::from_millis(ms)));
    }
    if let Some(ms) = ctl.token_delay_ms {
        state.set_token_delay(Duration::from_millis(ms));
    }
    if let Some(ms) = ctl.ttft_ms {
        state.set_ttft(Duration::from_millis(ms));
    }
    if let Some(line) = &ctl.log {
        if let Err(e) = state.append_log(line) {
            return control_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not write the model log: {e}"),
            );
        }
    }
    Json(state.knobs()).into_response()
}

/// Writes the start-up lines; when there is nothing to wait for, also marks the model loaded
/// and writes the loaded line. Returns how long loading still takes otherwise. Errors (the
/// log cannot be written) come back before the server accepts anything, as a real server
/// that cannot open its log would fail to start.
fn begin_load(state: &SimState) -> io::Result<Option<Duration>> {
    let load_time = state.config().load_time;
    state.append_log(&format!(
        "ferry-sim: loading model '{}' ...",
        openai::MODEL_ID
    ))?;
    state.append_log(&format!(
        "ferry-sim: loading weights (simulated, {} ms)",
        load_time.as_millis()
    ))?;
    if load_time.is_zero() {
        finish_load(state);
        return Ok(None);
    }
    state.set_loaded(false);
    Ok(Some(load_time))
}

fn finish_load(state: &SimState) {
    state.set_loaded(true);
    if let Err(e) = state.append_log(&state.config().loaded_line) {
        tracing::warn!(error = %e, "sim: could not write the loaded line to the model log");
    }
}

/// Accepts connections until `shutdown` resolves or `cancel` fires, then drops every open
/// connection and waits for their tasks to end.
async fn serve(
    listener: TcpListener,
    state: SimState,
    cancel: CancellationToken,
    shutdown: impl Future<Output = ()> + Send,
    pending_load: Option<Duration>,
) {
    let tracker = TaskTracker::new();
    if let Some(load_time) = pending_load {
        let state = state.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(load_time) => finish_load(&state),
                () = cancel.cancelled() => {}
            }
        });
    }
    let app = build_app(state);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Token chunks are tiny; Nagle would hold them back and blur the per-token timing.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "sim: could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "sim: connection ended with an error");
                    }
                }
                // Dropping the connection closes the socket mid-response: a crash, not a drain.
                () = cancel.cancelled() => {}
            }
        });
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Serves the sim on `listener` until `shutdown` resolves.
///
/// Writes the start-up lines to the model log first (an error there is returned before
/// anything is served), flips the model to loaded after `load_time`, and on shutdown drops
/// open connections at once, like a model server process exiting.
pub async fn run(
    listener: TcpListener,
    state: SimState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let pending_load = begin_load(&state)?;
    serve(
        listener,
        state,
        CancellationToken::new(),
        shutdown,
        pending_load,
    )
    .await;
    Ok(())
}

/// A sim server on `127.0.0.1:<random port>`, for tests. Dropping it (or
/// [`SimServer::shutdown`]) stops it and closes open connections, so in-flight streams end
/// with a truncated body: how tests simulate a model server crash.
pub struct SimServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state: stats and live knobs.
    pub state: SimState,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds `127.0.0.1:0` and starts serving. By the time this returns the start-up lines
    /// are in the log (and, with no `load_time`, the loaded line too).
    pub async fn start(config: SimConfig) -> io::Result<SimServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = SimState::new(config);
        let pending_load = begin_load(&state)?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            state.clone(),
            cancel.clone(),
            std::future::pending(),
            pending_load,
        ));
        Ok(SimServer {
            addr,
            state,
            cancel,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Stops accepting, drops every open connection, and waits until all are gone.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "sim: server task failed");
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
