//! The worker's HTTP surface and request path.
//!
//! One request: match the route (404) → read the body under a size limit (413), a deadline
//! (408) and a worker-wide budget of buffered bytes (503) → parse `{auth_data, payload,
//! session_id}` (422) →
//! count the workload → verify the signature (401, counted as rejected) → admission: the
//! queue-time estimate (429, rejected) and, for FIFO routes, a place in the one-at-a-time line →
//! POST the payload to the model server over a pooled connection → relay status, headers and
//! body chunk by chunk (or, on a route with a `[route.response]`, reshaped: see
//! [`crate::transform`]). The [`RequestGuard`](crate::load::RequestGuard) rides on the relayed body,
//! so success, failure and client disconnect (499, cancelled) are all recorded where they happen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ferry_protocol::parse_worker_request_raw;
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::KeyStore;
use crate::backends::pruned::parse_pruned;
use crate::backends::Workload;
use crate::config::Settings;
use crate::error::WorkerError;
use crate::forward::{copy_response_headers, is_sse, strip_hop_by_hop, RelayBody, Upstream};
use crate::hooks::Hooks;
use crate::load::{epoch_now, Kind, Outcome, Tracker};
use crate::sessions::{self, SessionStore};
use crate::telemetry::{self, RequestObserver, RouteMetrics};
use crate::transform::{Plan, SseReshaper, Transform};

/// Shared state of one worker.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    tracker: Tracker,
    keys: Arc<KeyStore>,
    upstream: Upstream,
    /// One permit: FIFO routes run one at a time, in arrival order (tokio's semaphore is fair).
    fifo: Arc<Semaphore>,
    /// One permit per request-body byte buffered (see [`read_body`]).
    body_budget: Arc<Semaphore>,
    draining: AtomicBool,
    sessions: SessionStore,
    hooks: Option<Arc<dyn Hooks>>,
    /// Per declared route: the model server URI and metric handles, prepared once.
    prepared: std::collections::HashMap<String, Prepared>,
    /// Metric handles for pass-through paths (label "other").
    other_metrics: RouteMetrics,
}

struct Prepared {
    uri: Option<http::Uri>,
    metrics: RouteMetrics,
    /// The top-level payload fields the route's workload reads (plus `input`, which the
    /// preset may unwrap): the payload is parsed only that far. `None`: parse all of it.
    fields: Option<Vec<String>>,
}

/// The fields [`Prepared::fields`] holds for a route.
fn workload_fields(route: &crate::backends::RouteSpec) -> Option<Vec<String>> {
    let mut fields = vec!["input"];
    route
        .workload
        .top_fields(&mut fields)
        .then(|| fields.into_iter().map(str::to_owned).collect())
}

impl AppState {
    /// State for a worker with these settings.
    pub fn new(settings: Settings, tracker: Tracker, keys: Arc<KeyStore>) -> Self {
        let settings_max_sessions = settings.max_sessions;
        let body_budget = settings.body_budget_bytes.min(Semaphore::MAX_PERMITS);

        let upstream = Upstream::new(
            &settings.model_server_url,
            settings.connect_timeout,
            settings.first_byte_timeout,
            settings.idle_timeout,
        );
        let prepared = settings
            .preset
            .routes
            .iter()
            .map(|r| {
                let uri = upstream.uri_for(&r.model_path).ok();
                (
                    r.path.clone(),
                    Prepared {
                        uri,
                        metrics: RouteMetrics::new(&r.path),
                        fields: workload_fields(r),
                    },
                )
            })
            .collect();
        Self {
            inner: Arc::new(Shared {
                settings,
                tracker,
                keys,
                upstream,
                fifo: Arc::new(Semaphore::new(1)),
                body_budget: Arc::new(Semaphore::new(body_budget)),
                draining: AtomicBool::new(false),
                sessions: SessionStore::new(settings_max_sessions),
                hooks: None,
                prepared,
                other_metrics: RouteMetrics::new("other"),
            }),
        }
    }

    /// Settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The load tracker.
    pub fn tracker(&self) -> &Tracker {
        &self.inner.tracker
    }

    /// The key store.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.inner.keys
    }

    /// The model server client.
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }

    /// Replaces the request hooks (before the worker serves).
    pub fn with_hooks(self, hooks: Arc<dyn Hooks>) -> Self {
        let shared = match Arc::try_unwrap(self.inner) {
            Ok(mut shared) => {
                shared.hooks = Some(hooks);
                shared
            }
            // Already shared: keep the state as it is (hooks must be set before serving).
            Err(inner) => return Self { inner },
        };
        Self {
            inner: Arc::new(shared),
        }
    }

    /// Open sessions.
    pub fn sessions(&self) -> &SessionStore {
        &self.inner.sessions
    }

    /// Stop taking new requests (503) while in-flight ones finish.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Takes `n` bytes from the budget of buffered request bodies, or refuses at once (503).
    fn take_budget(&self, n: usize) -> Result<OwnedSemaphorePermit, WorkerError> {
        u32::try_from(n)
            .ok()
            .and_then(|n| {
                self.inner
                    .body_budget
                    .clone()
                    .try_acquire_many_owned(n)
                    .ok()
            })
            .ok_or(WorkerError::BodyBudget)
    }

    /// Whether the worker is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }
}

/// Largest body of the session and update routes: an `auth_data`, a lifetime, a callback.
pub const MAX_CONTROL_BODY: usize = 1 << 20;

/// The worker's router: the preset's routes, sessions, and the update hook.
pub fn build_app(state: AppState) -> Router {
    Router::new()
        .route("/session/create", post(sessions::create))
        .route("/session/get", post(sessions::get))
        .route("/session/health", post(sessions::health))
        .route("/session/end", post(sessions::end))
        .route("/pyworker/update", post(update))
        .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY))
        // Preset routes are matched in `serve` (one table lookup) rather than by the router,
        // and their bodies read there, only once the route is known (see `read_body`).
        .fallback(handle_request)
        .with_state(state)
}

/// The plain-HTTP side listener's router (PyWorker's "internal webhooks"): only `/session/end`.
pub fn build_side_app(state: AppState) -> Router {
    Router::new()
        .route("/session/end", post(sessions::end))
        .fallback(not_found)
        .with_state(state)
}

/// The admin listener: `/health` (process up), `/ready` (model ready, not draining, not cold),
/// `/metrics`.
pub fn build_admin_app(state: AppState) -> Router {
    use axum::routing::get;
    Router::new()
        .route(
            "/health",
            get(|| async { ok_json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn ready(State(state): State<AppState>) -> Response {
    let model = state.tracker().model();
    let cold = state.tracker().is_cold();
    let ready = model.is_ready() && !state.is_draining() && !cold;
    let body = serde_json::json!({
        "ready": ready,
        "draining": state.is_draining(),
        "cold": cold,
        "max_perf": model.max_perf,
        "loadtime": model.loadtime,
        "error_msg": model.error_msg,
        "public_key_loaded": state.keys().has_key(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let model = state.tracker().model();
    telemetry::model_state(model.is_ready(), model.max_perf);
    match telemetry::handle() {
        Some(h) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => WorkerError::Internal("metrics recorder unavailable".into()).into_response(),
    }
}

/// `POST /pyworker/update`: with the master token (Bearer or raw), create the update marker file
/// that the instance's supervisor acts on.
async fn update(State(state): State<AppState>, headers: http::HeaderMap) -> Response {
    request_update(&state, &headers).unwrap_or_else(|e| {
        tracing::debug!(code = e.code(), error = %e, "update refused");
        telemetry::refused("/pyworker/update", e.code());
        e.into_response()
    })
}

fn request_update(state: &AppState, headers: &http::HeaderMap) -> Result<Response, WorkerError> {
    let settings = state.settings();
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
    let expected = settings.master_token.expose();
    let authorized = !expected.is_empty()
        && given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
    if !authorized {
        return Err(WorkerError::UpdateUnauthorized);
    }
    std::fs::write(&settings.force_update_file, b"").map_err(|e| {
        WorkerError::Internal(format!(
            "failed to write {}: {e}",
            settings.force_update_file.display()
        ))
    })?;
    tracing::info!(file = %settings.force_update_file.display(), "update requested");
    Ok(ok_json(serde_json::json!({"ok": true})))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let err = if method == Method::POST {
        WorkerError::NoRoute(uri.path().to_string())
    } else {
        WorkerError::NoRoute(format!("{method} {}", uri.path()))
    };
    err.into_response()
}

async fn handle_request(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (method, uri) = (parts.method, parts.uri);
    if method != Method::POST {
        return if state.settings().preset.route_for(uri.path()).is_some() {
            StatusCode::METHOD_NOT_ALLOWED.into_response()
        } else {
            not_found(method, uri).await
        };
    }
    match serve(&state, uri.path(), &parts.headers, body).await {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(code = e.code(), error = %e, path = uri.path(), "request refused");
            telemetry::refused(route_label(&state, uri.path()), e.code());
            e.into_response()
        }
    }
}

/// A bounded metric label: the declared route, or "other" for pass-through paths.
fn route_label<'a>(state: &'a AppState, path: &'a str) -> &'a str {
    state
        .settings()
        .preset
        .routes
        .iter()
        .find(|r| r.path == path)
        .map(|r| r.path.as_str())
        .unwrap_or("other")
}

async fn serve(
    state: &AppState,
    path: &str,
    headers: &http::HeaderMap,
    body: Body,
) -> Result<Response, WorkerError> {
    let settings = state.settings();
    let route = settings
        .preset
        .route_for(path)
        .ok_or_else(|| WorkerError::NoRoute(path.to_string()))?;
    if state.is_draining() {
        return Err(WorkerError::ShuttingDown);
    }
    if state.tracker().is_cold() {
        return Err(WorkerError::Cold);
    }
    let (bytes, mut budget) = read_body(state, headers, body).await?;
    let entered = epoch_now();
    let req = parse_worker_request_raw(&bytes).map_err(|e| match e.status() {
        410 => WorkerError::InvalidSession,
        _ => WorkerError::BadRequest(e.body()),
    })?;
    // The payload is forwarded as the exact bytes the client sent (key order intact, no
    // re-serialization) unless the preset unwraps it or hooks rewrite it. It is parsed only when
    // something needs to look inside it.
    let raw = req.payload.get();
    let hooks = state.inner.hooks.as_ref();
    let constant = match route.workload {
        Workload::Constant(c) => Some(c),
        _ => None,
    };
    let (workload, upstream_body) = if constant.is_some()
        && hooks.is_none()
        && !settings.preset.unwrap_input
    {
        (constant.unwrap_or_default(), subslice(&bytes, raw))
    } else {
        // The envelope parser only delimits the payload; values it cannot hold (a number
        // out of range, nesting past serde_json's limit) show up here: the client's fault.
        // The parsed copy of a large payload counts against the budget too.
        budget.merge(state.take_budget(raw.len().saturating_sub(UNBUDGETED_BYTES))?);
        let invalid = |e: serde_json::Error| {
            WorkerError::BadRequest(serde_json::json!({"payload": format!("invalid JSON: {e}")}))
        };
        // Without hooks only the workload looks inside the payload: parse just the fields it
        // reads and check the rest without building it (`backends::pruned`, same checks as the
        // full parse). A payload with an `input` object to unwrap takes the full parse.
        let fields = match state.inner.prepared.get(path) {
            Some(p) if hooks.is_none() => p.fields.as_deref(),
            _ => None,
        };
        let pruned = match fields {
            Some(f) => Some(parse_pruned(raw, f).map_err(invalid)?),
            None => None,
        };
        match pruned {
            Some(p)
                if !(settings.preset.unwrap_input
                    && p.get("input").is_some_and(Value::is_object)) =>
            {
                (route.workload.count(&p), subslice(&bytes, raw))
            }
            _ => {
                let parsed: Value = serde_json::from_str(raw).map_err(invalid)?;
                let (payload, unwrapped) = if settings.preset.unwrap_input {
                    unwrap_input(parsed)
                } else {
                    (parsed, false)
                };
                let counted = route.workload.count(&payload);
                match hooks {
                    None if !unwrapped => (counted, subslice(&bytes, raw)),
                    None => (counted, to_bytes(&payload)?),
                    Some(h) => {
                        let workload = h.workload(path, &payload, counted);
                        let payload = h.prepare(path, payload).map_err(|r| {
                            WorkerError::BadRequest(serde_json::json!({"error": r.message}))
                        })?;
                        (workload, to_bytes(&payload)?)
                    }
                }
            }
        }
    };
    let auth = &req.auth_data;
    let tracker = state.tracker();
    // Inside a session: unknown ids are 410 (before the signature check, as PyWorker does), and
    // each request extends the session's life.
    let session_cancel = match &req.session_id {
        None => None,
        Some(id) => Some(
            state
                .sessions()
                .touch(id)
                .ok_or(WorkerError::InvalidSession)?,
        ),
    };
    let in_session = session_cancel.is_some();

    if !settings.unsecured {
        let now = entered as u64;
        let checked = if settings.check_url && auth.url != settings.public_url {
            Err(crate::auth::AuthError::WrongUrl(auth.url.clone()))
        } else {
            state
                .keys()
                .check(auth, settings.require_ferry_token, in_session, now)
        };
        if let Err(e) = checked {
            tracker.reject(auth.request_idx, workload, in_session, entered);
            tracing::info!(
                request_idx = auth.request_idx,
                code = e.code(),
                "rejected: {e}"
            );
            return Err(WorkerError::Unauthorized(e));
        }
    }

    let kind = if in_session {
        Kind::InSession
    } else {
        Kind::Plain
    };
    let mut guard = tracker
        .admit(auth.request_idx, workload, kind, route.max_queue_time)
        .map_err(|wait| WorkerError::QueueFull {
            wait,
            limit: route.max_queue_time.unwrap_or(0.0),
        })?;

    // FIFO: wait for our turn. If the client leaves meanwhile this future is dropped, which
    // drops the guard (cancelled) and our place in line.
    let permit = if route.parallel {
        None
    } else {
        telemetry::fifo_waiting(1.0);
        let permit = state.inner.fifo.clone().acquire_owned().await;
        telemetry::fifo_waiting(-1.0);
        Some(permit.map_err(|_| WorkerError::ShuttingDown)?)
    };
    guard.started();
    let started = std::time::Instant::now();

    let model_path = if route.model_path.is_empty() {
        path
    } else {
        route.model_path.as_str()
    };
    let upstream = state.upstream();
    let prepared = state.inner.prepared.get(path);
    let uri = match prepared.and_then(|p| p.uri.clone()) {
        Some(u) => u,
        None => upstream.uri_for(model_path)?,
    };
    let call = upstream.post_json_uri(uri, upstream_body);
    let result = match &session_cancel {
        None => call.await,
        Some(token) => tokio::select! {
            r = call => r,
            _ = token.cancelled() => {
                // The session ended while we waited for the model: the request is cancelled.
                guard.finish(Outcome::Cancelled);
                return Err(WorkerError::InvalidSession);
            }
        },
    };
    // The model server has the body by now (it answered): its buffer leaves the budget.
    drop(budget);
    let res = match result {
        Ok(res) => res,
        Err(e) => {
            guard.finish(Outcome::Error);
            tracing::warn!(request_idx = auth.request_idx, code = e.code(), error = %e, "upstream call failed");
            return Err(e);
        }
    };
    let (parts, incoming) = res.into_parts();
    let sse = is_sse(&parts.headers);
    let metrics = prepared
        .map(|p| &p.metrics)
        .unwrap_or(&state.inner.other_metrics);
    let observer = RequestObserver::start(metrics, workload, sse, started);
    // A route without `[route.response]` has no plan: the answer goes out as it came.
    let transform = route.response.as_ref();
    let plan = transform.map(|t| t.plan(parts.status, sse));
    let status = match plan {
        Some(Plan::Relay { status, .. }) => status,
        _ => parts.status,
    };
    let relay = RelayBody::new(
        incoming,
        guard,
        permit,
        status,
        sse,
        upstream.idle_timeout(),
        Box::new(observer),
    )
    .cancel_on(session_cancel);
    let (relay, reshaped) = match (transform, plan) {
        (Some(t), Some(Plan::ReadBody)) => {
            return reshape_whole(t, relay, &parts, settings.max_body_bytes).await
        }
        (
            Some(t),
            Some(Plan::Relay {
                reshape_events: true,
                ..
            }),
        ) => (
            relay.reshape_events(SseReshaper::new(t.clone(), settings.max_body_bytes)),
            true,
        ),
        _ => (relay, false),
    };
    // The model's header map goes to the client as it is, minus the hop-by-hop headers: no
    // second map, no copied names or values.
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if reshaped {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let mut response = Response::new(Body::new(relay));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A route that reshapes whole answers: read the answer (at most `limit` bytes), apply the
/// transform, and answer with the status and body it gives. The request's outcome follows the
/// status the client gets; an answer that is not JSON is the model's failure (502).
async fn reshape_whole(
    transform: &Transform,
    mut relay: RelayBody,
    parts: &http::response::Parts,
    limit: usize,
) -> Result<Response, WorkerError> {
    let body = relay.read_all(limit).await?;
    let (status, reshaped) = match transform.apply(parts.status, &body) {
        Ok(r) => r,
        Err(e) => {
            relay.finish(Outcome::Error);
            return Err(WorkerError::UpstreamNotJson(e.to_string()));
        }
    };
    relay.finish(if status.is_server_error() {
        Outcome::Error
    } else {
        Outcome::Success
    });
    let mut response = Response::new(Body::from(reshaped.unwrap_or(body)));
    *response.status_mut() = status;
    copy_response_headers(&parts.headers, response.headers_mut());
    // The body's length is known again (hyper sets it); the model's may no longer be true.
    response.headers_mut().remove(http::header::CONTENT_LENGTH);
    Ok(response)
}

/// Body bytes of one request that do not count against the budget: an LLM request's prompt
/// fits, so a few large bodies can never starve ordinary requests (memory for these is bounded
/// by the connection limit instead).
const UNBUDGETED_BYTES: usize = 64 << 10;

/// Reads a request body under three bounds: the per-request size limit (413, checked against
/// `Content-Length` before a byte is read), a deadline for the whole body (408: a body trickled
/// a byte at a time does not hold its buffer and connection for ever), and the worker-wide
/// budget of buffered body bytes (503 with `Retry-After` once it is used up, so a burst of
/// large bodies cannot grow memory without bound). The budget is taken as bytes arrive, not as
/// `Content-Length` promises them. The permit returned holds the body's share of the budget
/// until it is dropped.
async fn read_body(
    state: &AppState,
    headers: &http::HeaderMap,
    mut body: Body,
) -> Result<(Bytes, OwnedSemaphorePermit), WorkerError> {
    let settings = state.settings();
    let limit = settings.max_body_bytes;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(WorkerError::TooLarge(limit));
    }
    let mut permit = state.take_budget(0)?;
    let first = declared.map_or(0, |n| (n as usize).min(UNBUDGETED_BYTES));
    let mut buf = bytes::BytesMut::with_capacity(first);
    let deadline = tokio::time::Instant::now() + settings.body_timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| WorkerError::BodyTimeout(settings.body_timeout.as_secs()))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            WorkerError::BadRequest(serde_json::json!({"error": format!("reading the body: {e}")}))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = buf.len() + data.len();
        if len > limit {
            return Err(WorkerError::TooLarge(limit));
        }
        let owed = len.saturating_sub(UNBUDGETED_BYTES);
        if owed > permit.num_permits() {
            // Past the free part: the announced length is taken from the budget and allocated
            // at once (no doubling, no slack beyond what was counted); without a length, as
            // the bytes come.
            let want = declared.map_or(owed, |n| (n as usize).max(len) - UNBUDGETED_BYTES);
            permit.merge(state.take_budget(want - permit.num_permits())?);
            buf.reserve(declared.map_or(0, |n| n as usize).saturating_sub(buf.len()));
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), permit))
}

/// Vast's OpenAI workers accept `{"input": {...}}` as well as the bare payload. Returns the
/// payload to forward and whether it was unwrapped.
fn unwrap_input(payload: Value) -> (Value, bool) {
    match payload {
        Value::Object(mut map) if map.get("input").is_some_and(Value::is_object) => {
            (map.remove("input").unwrap_or(Value::Null), true)
        }
        other => (other, false),
    }
}

fn to_bytes(v: &Value) -> Result<Bytes, WorkerError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| WorkerError::Internal(format!("serializing payload: {e}")))
}

/// The part of `body` that `part` (a slice borrowed from it) covers, without copying.
fn subslice(body: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= body.len() => body.slice(start..end),
        _ => Bytes::copy_from_slice(part.as_bytes()),
    }
}

/// JSON 200 helper for small control routes.
pub fn ok_json(v: Value) -> Response {
    (StatusCode::OK, Json(v)).into_response()
}
