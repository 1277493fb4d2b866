//! Sessions: sticky reservations of this worker, with PyWorker's routes, bodies and statuses.
//!
//! - `POST /session/create` `{auth_data, payload: {lifetime, on_close_route, on_close_payload}}`
//!   → 201 `{session_id, expiration}`; 429 past `max_sessions`. The session holds `auth_data.cost`
//!   of load (in `cur_load`, not in the queue-time estimate) until it ends. Unlike PyWorker, Ferry
//!   verifies the route signature here too (unless UNSECURED): a session reserves capacity.
//! - Requests with `session_id` extend the expiration by `lifetime`; an unknown id is 410.
//! - `/session/get`, `/session/health`, `/session/end` take `{session_id, session_auth}` where
//!   `session_auth` must equal the creating `auth_data`.
//! - Ending a session (explicitly or by the expiry sweep) cancels its in-flight requests, posts
//!   the `on_close_route` callback (best effort, 10 s), and records the hold as finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::load::{epoch_now, Kind, Outcome, RequestGuard};
use crate::server::AppState;

struct Session {
    auth_data: Value,
    lifetime: f64,
    expiration: f64,
    created_at: f64,
    on_close_route: Option<String>,
    on_close_payload: Option<Value>,
    hold: RequestGuard,
    /// Cancels the session's in-flight requests when it ends.
    cancel: CancellationToken,
}

/// The live sessions.
#[derive(Clone, Default)]
pub struct SessionStore {
    inner: Arc<Mutex<HashMap<String, Session>>>,
    max: usize,
}

impl SessionStore {
    /// A store allowing `max` sessions at once (0 = unlimited).
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::default(),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For a request inside session `id`: extends the session and returns its cancel token.
    pub fn touch(&self, id: &str) -> Option<CancellationToken> {
        let mut map = self.lock();
        let s = map.get_mut(id)?;
        s.expiration += s.lifetime;
        Some(s.cancel.clone())
    }

    /// Removes a session; the caller finishes it with [`close`].
    fn take(&self, id: &str) -> Option<Session> {
        self.lock().remove(id)
    }

    /// Sessions whose expiration has passed.
    fn expired(&self, now: f64) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.expiration <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Ends every session (shutdown).
    pub async fn close_all(&self, state: &AppState) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            if let Some(s) = self.take(&id) {
                close(state, &id, s).await;
            }
        }
    }
}

async fn close(state: &AppState, id: &str, mut s: Session) {
    s.cancel.cancel();
    // Checked again here: the one place the worker POSTs to an address a client named.
    let callback = s
        .on_close_route
        .clone()
        .filter(|r| check_callback(r, &state.settings().session_callback_origins).is_ok());
    if let Some(route) = callback {
        let mut body = match s.on_close_payload.take() {
            Some(Value::Object(m)) => Value::Object(m),
            None | Some(Value::Null) => json!({}),
            Some(other) => json!({ "payload": other }),
        };
        if body.get("session_id").is_none() {
            body["session_id"] = json!(id);
        }
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let call = state.upstream().post_json(&route, bytes);
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(res)) if res.status().is_success() => {}
            Ok(Ok(res)) => {
                tracing::warn!(session = id, route, status = %res.status(), "on_close callback refused")
            }
            Ok(Err(e)) => {
                tracing::warn!(session = id, route, error = %e, "on_close callback failed")
            }
            Err(_) => tracing::warn!(session = id, route, "on_close callback timed out"),
        }
    }
    s.hold.finish(Outcome::Success);
    tracing::info!(session = id, "session closed");
}

/// Closes expired sessions every `interval` until `cancel`.
pub async fn gc_loop(state: AppState, interval: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let store = state.sessions().clone();
        for id in store.expired(epoch_now()) {
            if let Some(s) = store.take(&id) {
                tracing::info!(session = %id, "session expired");
                close(&state, &id, s).await;
            }
        }
    }
}

fn json_status(status: StatusCode, v: Value) -> Response {
    (status, Json(v)).into_response()
}

/// A session route's answer: its refusals are [`WorkerError`]s with PyWorker's statuses and
/// bodies, logged and counted in one place.
fn answer(route: &'static str, r: Result<Response, WorkerError>) -> Response {
    r.unwrap_or_else(|e| {
        tracing::debug!(code = e.code(), error = %e, route, "session request refused");
        crate::telemetry::refused(route, e.code());
        e.into_response()
    })
}

fn parse_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, WorkerError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(WorkerError::BadRequest(json!({"error": "invalid JSON"}))),
    }
}

/// `POST /session/create`.
pub async fn create(State(state): State<AppState>, body: Bytes) -> Response {
    answer("/session/create", create_session(&state, &body))
}

fn create_session(state: &AppState, body: &Bytes) -> Result<Response, WorkerError> {
    let data = parse_object(body)?;
    let auth_value = data.get("auth_data").cloned().unwrap_or(Value::Null);
    let payload = data.get("payload").cloned().unwrap_or_else(|| json!({}));
    let auth = ferry_protocol::AuthData::from_value(&auth_value)
        .map_err(|e| WorkerError::BadRequest(json!({"auth_data": e.to_value()})))?;
    let cost = auth
        .cost
        .as_f64()
        .unwrap_or(crate::backends::DEFAULT_WORKLOAD);
    let entered = epoch_now();
    let settings = state.settings();
    if !settings.unsecured {
        if let Err(e) =
            state
                .keys()
                .check(&auth, settings.require_ferry_token, false, entered as u64)
        {
            state
                .tracker()
                .reject(auth.request_idx, cost, false, entered);
            return Err(WorkerError::Unauthorized(e));
        }
    }
    let lifetime = payload
        .get("lifetime")
        .and_then(Value::as_f64)
        .filter(|l| l.is_finite() && *l > 0.0)
        .unwrap_or(60.0);
    let on_close_route = payload
        .get("on_close_route")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(Err(e)) = on_close_route
        .as_deref()
        .map(|r| check_callback(r, &settings.session_callback_origins))
    {
        return Err(WorkerError::BadRequest(
            json!({"payload": {"on_close_route": e}}),
        ));
    }
    let on_close_payload = on_close_route
        .as_ref()
        .and(payload.get("on_close_payload").cloned())
        .filter(|v| !v.is_null());

    let store = state.sessions();
    let mut map = store.lock();
    if store.max != 0 && map.len() >= store.max {
        drop(map);
        state
            .tracker()
            .reject(auth.request_idx, cost, false, entered);
        return Err(WorkerError::MaxSessions);
    }
    let mut hold = state
        .tracker()
        .admit(auth.request_idx, cost, Kind::SessionHold, None)
        .map_err(|_| WorkerError::Internal("session admission failed".into()))?;
    hold.started();
    let id: String = loop {
        let candidate: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(13)
            .map(char::from)
            .collect();
        if !map.contains_key(&candidate) {
            break candidate;
        }
    };
    let now = epoch_now();
    let expiration = now + lifetime;
    map.insert(
        id.clone(),
        Session {
            auth_data: auth_value,
            lifetime,
            expiration,
            created_at: now,
            on_close_route,
            on_close_payload,
            hold,
            cancel: CancellationToken::new(),
        },
    );
    drop(map);
    tracing::info!(session = %id, lifetime, "session created");
    Ok(json_status(
        StatusCode::CREATED,
        json!({"session_id": id, "expiration": expiration}),
    ))
}

/// Parses `{session_id, session_auth}`; the error is the response PyWorker gives.
fn session_ref(body: &Bytes) -> Result<(String, Option<Value>), WorkerError> {
    let data = parse_object(body)?;
    let id = match data.get("session_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(WorkerError::BadRequest(
                json!({"error": "missing session_id"}),
            ))
        }
    };
    Ok((
        id,
        data.get("session_auth").cloned().filter(|v| !v.is_null()),
    ))
}

/// `POST /session/get`.
pub async fn get(State(state): State<AppState>, body: Bytes) -> Response {
    answer("/session/get", get_session(&state, &body))
}

fn get_session(state: &AppState, body: &Bytes) -> Result<Response, WorkerError> {
    let (id, auth) = session_ref(body)?;
    let map = state.sessions().lock();
    let s = map.get(&id).ok_or(WorkerError::SessionUnknown)?;
    if auth.as_ref() != Some(&s.auth_data) {
        return Err(WorkerError::SessionAuth);
    }
    Ok(json_status(
        StatusCode::OK,
        json!({
            "session_id": id,
            "auth_data": s.auth_data,
            "lifetime": s.lifetime,
            "expiration": s.expiration,
            "created_at": s.created_at,
            "on_close_route": s.on_close_route,
            "on_close_payload": s.on_close_payload,
        }),
    ))
}

/// `POST /session/health`.
pub async fn health(State(state): State<AppState>, body: Bytes) -> Response {
    answer("/session/health", session_health(&state, &body))
}

fn session_health(state: &AppState, body: &Bytes) -> Result<Response, WorkerError> {
    let (id, auth) = session_ref(body)?;
    let map = state.sessions().lock();
    match map.get(&id) {
        None => Ok(json_status(StatusCode::OK, json!({"ok": false}))),
        Some(s) if auth.as_ref() != Some(&s.auth_data) => Err(WorkerError::SessionAuth),
        Some(_) => Ok(json_status(StatusCode::OK, json!({"ok": true}))),
    }
}

/// `POST /session/end`.
pub async fn end(State(state): State<AppState>, body: Bytes) -> Response {
    answer("/session/end", end_session(&state, &body).await)
}

async fn end_session(state: &AppState, body: &Bytes) -> Result<Response, WorkerError> {
    let (id, auth) = session_ref(body)?;
    let store = state.sessions().clone();
    let taken = {
        let mut map = store.lock();
        match map.get(&id) {
            None => return Err(WorkerError::SessionNotFound(id)),
            Some(s) if auth.as_ref() != Some(&s.auth_data) => return Err(WorkerError::SessionAuth),
            Some(_) => map.remove(&id),
        }
    };
    let s = taken.ok_or(WorkerError::SessionClosed)?;
    close(state, &id, s).await;
    Ok(json_status(
        StatusCode::OK,
        json!({"ended": true, "removed_session": id}),
    ))
}

/// Whether a session's `on_close_route` may be called: a path on the model server (`/...`),
/// or a full URL whose origin is listed in `origins` (`FERRY_SESSION_CALLBACK_ORIGINS`).
/// Anything else would let whoever holds one grant make the worker POST to any address.
pub fn check_callback(route: &str, origins: &[String]) -> Result<(), &'static str> {
    if route.starts_with('/') && !route.starts_with("//") {
        return route
            .parse::<http::uri::PathAndQuery>()
            .map(drop)
            .map_err(|_| "is not a valid path");
    }
    match origin_of(route) {
        Some(o) if origins.contains(&o) => Ok(()),
        _ => Err(
            "must be a path on the model server (like /session_closed); full URLs only \
                  for origins listed in FERRY_SESSION_CALLBACK_ORIGINS",
        ),
    }
}

/// `scheme://host[:port]` of an absolute http(s) URL without credentials, else `None`.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str().filter(|s| *s == "http" || *s == "https")?;
    let authority = uri.authority()?.as_str();
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod callback_tests {
    use super::{check_callback, origin_of};

    #[test]
    fn only_model_paths_and_listed_origins_are_callable() {
        let allowed = vec!["http://10.0.0.5:9000".to_string()];
        for ok in ["/session_closed", "/a/b?c=d"] {
            assert_eq!(check_callback(ok, &[]), Ok(()), "{ok}");
        }
        assert_eq!(
            check_callback("http://10.0.0.5:9000/done", &allowed),
            Ok(())
        );
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5:9000/done",
            "//evil.example/x",
            "https://user@10.0.0.5:9000/x",
            "file:///etc/passwd",
            "session_closed",
            "",
            "/bad path",
        ] {
            assert!(check_callback(bad, &[]).is_err(), "{bad}");
        }
        assert!(check_callback("http://10.0.0.5:9001/done", &allowed).is_err());
        assert!(check_callback("http://user@10.0.0.5:9000/x", &allowed).is_err());
        assert_eq!(origin_of("https://h:1/x").as_deref(), Some("https://h:1"));
    }
}
