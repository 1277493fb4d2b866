//! Errors: one enum per boundary, each variant with a fixed `code()` used in logs and metric
//! labels, a [`Source`] (whose fault it is), and a single HTTP mapping.
//!
//! [`ControlError`]'s one `IntoResponse` answers `{"error": "<message>"}`, the shape of Vast's
//! run host (`/route/`'s two documented failures keep Vast's exact texts, [`ROUTE_BAD_REQUEST`]
//! and [`AUTH_FAILED`]), and attaches an [`ErrorInfo`] to the response. Each HTTP surface then
//! gives the body its audience's shape in one layer (`api::errors`): the console API Vast's
//! `{"success": false, "error", "msg"}`, the gateway OpenAI's `{"error": {"message", "type",
//! "code"}}`; the same layer counts every outcome.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Vast's 400 text for `/route/`.
pub const ROUTE_BAD_REQUEST: &str = "Invalid endpoint or missing required parameters";
/// Vast's 401 text.
pub const AUTH_FAILED: &str = "Authentication failed";

/// Whose fault an error is: the label that tells a user's mistake from Ferry's. (Provider and
/// store failures happen in background tasks today, never inside an HTTP request, so no
/// response carries them yet.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The caller sent something wrong (4xx).
    Client,
    /// A worker failed or did not answer.
    Worker,
    /// A bug or an I/O failure of the control plane itself.
    Internal,
}

impl Source {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Worker => "worker",
            Source::Internal => "internal",
        }
    }
}

/// What an error response carries besides its body, for the surface layers.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// [`ControlError::code`].
    pub code: &'static str,
    /// [`ControlError::source`].
    pub source: Source,
    /// The human-readable message.
    pub message: String,
}

/// An error answered over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// No such object (404).
    #[error("{0}")]
    NotFound(String),
    /// The request body is over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Conflicts with existing state, e.g. a duplicate endpoint name (409).
    #[error("{0}")]
    Conflict(String),
    /// No worker could take the request in time (503).
    #[error("{0}")]
    Unavailable(String),
    /// The worker failed (502).
    #[error("{0}")]
    Upstream(String),
    /// The worker did not answer in time (504).
    #[error("{0}")]
    Timeout(String),

    /// A bug or an I/O failure on our side (500).
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// Short fixed identifier.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::Unauthorized(_) => "unauthorized",
            ControlError::NotFound(_) => "not_found",
            ControlError::TooLarge(_) => "too_large",
            ControlError::Conflict(_) => "conflict",
            ControlError::Unavailable(_) => "unavailable",
            ControlError::Upstream(_) => "upstream",
            ControlError::Timeout(_) => "timeout",
            ControlError::Internal(_) => "internal",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ControlError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whose fault it is.
    pub fn source(&self) -> Source {
        match self {
            ControlError::BadRequest(_)
            | ControlError::Unauthorized(_)
            | ControlError::NotFound(_)
            | ControlError::TooLarge(_)
            | ControlError::Conflict(_) => Source::Client,
            ControlError::Unavailable(_) | ControlError::Upstream(_) | ControlError::Timeout(_) => {
                Source::Worker
            }
            ControlError::Internal(_) => Source::Internal,
        }
    }

    /// `401 {"error": "Authentication failed"}`.
    pub fn auth() -> ControlError {
        ControlError::Unauthorized(AUTH_FAILED.into())
    }

    /// A report from an unknown worker id or with the wrong mtoken: one answer for both.
    pub fn unknown_worker() -> ControlError {
        ControlError::Unauthorized("unknown worker id or wrong mtoken".into())
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let message = self.to_string();
        let mut res = (status, Json(serde_json::json!({"error": message}))).into_response();
        res.extensions_mut().insert(ErrorInfo {
            code: self.code(),
            source: self.source(),
            message,
        });
        res
    }
}

/// A bad setting: names the setting (flag or env) and why.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The flag or environment variable.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// Builds one.
    pub fn new(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }
}

/// Why `ferry control` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration (exit code 64 in the CLI).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The database could not be opened or read.
    #[error("database: {0}")]
    Store(String),
    /// Signing key trouble.
    #[error("signing key: {0}")]
    Key(String),
    /// Socket trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A replica lost its lease to another (docs/ha.md): it exits, to be started again as a
    /// follower.
    #[error("deposed: {0}")]
    Deposed(String),
}
