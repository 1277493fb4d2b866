//! The worker's errors, each with a fixed code and one HTTP mapping.
//!
//! Where Vast's protocol fixes a status it is kept: 422 bad body, 401 bad signature, 429 queue
//! full, 410 unknown session. Upstream failures are 502 (connect/transport) and 504 (timeouts).
//! Every error body is JSON: `{"error": "<message>", "code": "<code>"}`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderValue, StatusCode};

use crate::auth::AuthError;

/// Errors a request can end with before its response headers are sent.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// 422 with Vast's exact body.
    #[error("invalid request body")]
    BadRequest(serde_json::Value),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("estimated wait {wait:.1}s exceeds max_queue_time {limit:.1}s")]
    QueueFull { wait: f64, limit: f64 },
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    #[error("too many request bytes buffered at once; retry shortly")]
    BodyBudget,
    #[error("invalid session")]
    InvalidSession,
    /// PyWorker's 400 for `/session/get` of an unknown id.
    #[error("session does not exist")]
    SessionUnknown,
    /// PyWorker's 400 for `/session/end` of an unknown id.
    #[error("session with id {0} not found")]
    SessionNotFound(String),
    /// PyWorker's 401 for a `session_auth` that is not the session's.
    #[error("session_auth is not valid")]
    SessionAuth,
    /// PyWorker's 410 for a session ended twice.
    #[error("session already closed")]
    SessionClosed,
    /// PyWorker's 429 past `max_sessions`.
    #[error("max sessions reached")]
    MaxSessions,
    /// `/pyworker/update` without the master token.
    #[error("unauthorized")]
    UpdateUnauthorized,
    #[error("no route {0}")]
    NoRoute(String),
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// Told to stay cold by its control plane (or no longer known to it).
    #[error("the worker is cold: its control plane routes no requests to it")]
    Cold,
    #[error("cannot connect to the model server: {0}")]
    UpstreamConnect(String),
    #[error("model server connection failed: {0}")]
    UpstreamTransport(String),
    #[error("model server timeout: {0}")]
    UpstreamTimeout(&'static str),
    /// A route that reshapes answers got one that is not JSON.
    #[error("{0}")]
    UpstreamNotJson(String),
    /// An answer (or one SSE event) a route reshapes is larger than the limit.
    #[error(
        "the model's answer is larger than {0} bytes, the most a route that reshapes answers reads"
    )]
    UpstreamTooLarge(usize),
    #[error("internal error: {0}")]
    Internal(String),
}

impl WorkerError {
    /// Short fixed code for bodies, logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            WorkerError::BadRequest(_) => "bad_request",
            WorkerError::Unauthorized(a) => a.code(),
            WorkerError::QueueFull { .. } => "queue_full",
            WorkerError::TooLarge(_) => "body_too_large",
            WorkerError::BodyTimeout(_) => "body_timeout",
            WorkerError::BodyBudget => "body_budget",
            WorkerError::InvalidSession => "invalid_session",
            WorkerError::SessionUnknown | WorkerError::SessionNotFound(_) => "session_unknown",
            WorkerError::SessionAuth => "session_auth",
            WorkerError::SessionClosed => "session_closed",
            WorkerError::MaxSessions => "max_sessions",
            WorkerError::UpdateUnauthorized => "unauthorized",
            WorkerError::NoRoute(_) => "no_route",
            WorkerError::ShuttingDown => "shutting_down",
            WorkerError::Cold => "cold",
            WorkerError::UpstreamConnect(_) => "upstream_connect",
            WorkerError::UpstreamTransport(_) => "upstream_transport",
            WorkerError::UpstreamTimeout(_) => "upstream_timeout",
            WorkerError::UpstreamNotJson(_) => "upstream_not_json",
            WorkerError::UpstreamTooLarge(_) => "upstream_too_large",
            WorkerError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            WorkerError::BadRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            WorkerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WorkerError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            WorkerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WorkerError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            WorkerError::BodyBudget => StatusCode::SERVICE_UNAVAILABLE,
            WorkerError::InvalidSession | WorkerError::SessionClosed => StatusCode::GONE,
            WorkerError::SessionUnknown | WorkerError::SessionNotFound(_) => {
                StatusCode::BAD_REQUEST
            }
            WorkerError::SessionAuth | WorkerError::UpdateUnauthorized => StatusCode::UNAUTHORIZED,
            WorkerError::MaxSessions => StatusCode::TOO_MANY_REQUESTS,
            WorkerError::NoRoute(_) => StatusCode::NOT_FOUND,
            WorkerError::ShuttingDown | WorkerError::Cold => StatusCode::SERVICE_UNAVAILABLE,
            WorkerError::UpstreamConnect(_)
            | WorkerError::UpstreamTransport(_)
            | WorkerError::UpstreamNotJson(_)
            | WorkerError::UpstreamTooLarge(_) => StatusCode::BAD_GATEWAY,
            WorkerError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            WorkerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for WorkerError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = match &self {
            // Vast's clients read these exact bodies.
            WorkerError::BadRequest(body) => Json(body.clone()).into_response(),
            // PyWorker's exact bodies: `{"error": "<message>"}` and nothing else.
            WorkerError::InvalidSession
            | WorkerError::SessionUnknown
            | WorkerError::SessionNotFound(_)
            | WorkerError::SessionAuth
            | WorkerError::SessionClosed
            | WorkerError::UpdateUnauthorized => {
                Json(serde_json::json!({"error": self.to_string()})).into_response()
            }
            other => Json(serde_json::json!({"error": other.to_string(), "code": other.code()}))
                .into_response(),
        };
        *res.status_mut() = status;
        let retry_after = match &self {
            WorkerError::QueueFull { wait, limit } => {
                Some((wait - limit).ceil().clamp(1.0, 3600.0) as u64)
            }
            WorkerError::BodyBudget => Some(1),
            _ => None,
        };
        if let Some(v) = retry_after.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            res.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        res
    }
}
