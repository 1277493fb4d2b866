//! Every error the emulator answers, with the status and body Vast gives it.
//!
//! Vast's console answers errors as `{"success": false, "error": <code>, "msg": <text>}`
//! (create instance adds `ask_id`); its documented statuses for `PUT /api/v0/asks/{id}/` are
//! 404 for an unknown offer and 410 for one no longer available, both with `error:
//! "no_such_ask"`; a throttled request gets 429 with `{"detail": ...}` (Django REST framework's
//! throttle shape) and `Retry-After`. The codes and texts below follow those shapes; the exact
//! wording of each `msg` is the emulator's own.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Missing or wrong API key (401).
    #[error("invalid or missing API key")]
    Unauthorized,
    /// Throttled (429 with `Retry-After`).
    #[error("rate limited; retry after {0:?}")]
    RateLimited(Duration),
    /// An emulated outage (503).
    #[error("service unavailable (emulated outage)")]
    Outage,
    /// Create on an offer that does not exist (404 `no_such_ask`).
    #[error("offer {0} does not exist")]
    NoSuchAsk(u64),
    /// Create on an offer that is rented or stolen (410 `no_such_ask`).
    #[error("offer {0} is no longer available")]
    AskTaken(u64),
    /// An instance id that is not (or no longer) there (404 `no_such_instance`).
    #[error("instance {0} does not exist")]
    NoSuchInstance(u64),
    /// A malformed body or argument (400 `invalid_args`).
    #[error("{0}")]
    BadRequest(String),
    /// No such route (404).
    #[error("no such route")]
    NotFound,
}

impl ApiError {
    /// Short fixed code: the body's `error` and the log field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "invalid_api_key",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Outage => "service_unavailable",
            ApiError::NoSuchAsk(_) | ApiError::AskTaken(_) => "no_such_ask",
            ApiError::NoSuchInstance(_) => "no_such_instance",
            ApiError::BadRequest(_) => "invalid_args",
            ApiError::NotFound => "not_found",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Outage => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NoSuchAsk(_) | ApiError::NoSuchInstance(_) | ApiError::NotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::AskTaken(_) => StatusCode::GONE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// The page a gateway shows while the backend behind it is down.
const OUTAGE_PAGE: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Outage => {
                (status, [(header::CONTENT_TYPE, "text/html")], OUTAGE_PAGE).into_response()
            }
            ApiError::RateLimited(after) => {
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                let mut r = (
                    status,
                    Json(json!({
                        "detail": format!(
                            "Request was throttled. Expected available in {secs} seconds."
                        ),
                    })),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
            ApiError::NoSuchAsk(id) | ApiError::AskTaken(id) => (
                status,
                Json(json!({
                    "success": false,
                    "error": self.code(),
                    "msg": format!("Instance type by id {id} is not available."),
                    "ask_id": id,
                })),
            )
                .into_response(),
            _ => (
                status,
                Json(json!({"success": false, "error": self.code(), "msg": self.to_string()})),
            )
                .into_response(),
        }
    }
}
