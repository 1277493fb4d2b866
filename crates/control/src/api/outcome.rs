//! The one place where every answer is shaped for its audience and counted.
//!
//! Handlers return [`ControlError`](crate::error::ControlError)s; its single `IntoResponse`
//! attaches an [`ErrorInfo`]. The layer of each surface reads it back:
//!
//! - [`Surface::Console`] (the endpoint API and the worker lists Vast's CLI calls): Vast's console
//!   shape `{"success": false, "error": "<code>", "msg": "<message>"}`, so `vastai` prints the
//!   reason (it prints `msg`) instead of `None`;
//! - [`Surface::Gateway`]: OpenAI's `{"error": {"message", "type", "code"}}`, which OpenAI clients
//!   surface;
//! - [`Surface::Run`] and [`Surface::Worker`]: Vast's run-host shape `{"error": "<message>"}`, as is.
//!
//! Errors axum produces itself (a body over the limit, a wrong method) get the same shapes.
//! Every answer is counted once, in `ferry_control_responses_total{surface, code, source}`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{ErrorInfo, Source};
use crate::telemetry;

/// Who an HTTP surface answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The endpoint API (`/api/v0/...`) and the worker lists (`/get_endpoint_workers/`, ...).
    Console,
    /// `/route/` (Vast's run host).
    Run,
    /// What workers call.
    Worker,
    /// The OpenAI-compatible gateway.
    Gateway,
    /// `/health`, `/metrics`.
    Ops,
}

impl Surface {
    fn as_str(self) -> &'static str {
        match self {
            Surface::Console => "console",
            Surface::Run => "run",
            Surface::Worker => "worker",
            Surface::Gateway => "gateway",
            Surface::Ops => "ops",
        }
    }
}

/// Longest body of an error axum produced itself that is read back to quote it.
const QUOTE_LIMIT: usize = 4096;

/// The layer: `axum::middleware::from_fn_with_state(surface, outcome)`.
pub async fn outcome(State(surface): State<Surface>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        telemetry::response(surface.as_str(), "ok", "none");
        return res;
    }
    let (res, info) = match res.extensions().get::<ErrorInfo>().cloned() {
        Some(info) => (res, info),
        None => foreign(res).await,
    };
    telemetry::response(surface.as_str(), info.code, info.source.as_str());
    match surface {
        Surface::Console => reshape(
            res,
            json!({"success": false, "error": info.code, "msg": info.message}),
        ),
        Surface::Gateway => reshape(
            res,
            json!({"error": {"message": info.message, "type": info.code, "code": status.as_u16()}}),
        ),
        Surface::Run | Surface::Worker | Surface::Ops => res,
    }
}

/// The code and message of an error response axum made (no [`ErrorInfo`]): its status and text.
async fn foreign(res: Response) -> (Response, ErrorInfo) {
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, QUOTE_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let status = parts.status;
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let source = if status.is_client_error() {
        Source::Client
    } else {
        Source::Internal
    };
    let info = ErrorInfo {
        code,
        source,
        message,
    };
    let mut res = Response::from_parts(
        parts,
        Body::from(json!({"error": info.message}).to_string()),
    );
    res.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    (res, info)
}

/// The same status and headers with another JSON body.
fn reshape(res: Response, body: serde_json::Value) -> Response {
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let fresh = Json(body).into_response();
    let (fresh_parts, fresh_body) = fresh.into_parts();
    for (k, v) in fresh_parts.headers.iter() {
        parts.headers.insert(k, v.clone());
    }
    Response::from_parts(parts, fresh_body)
}

/// Paths no surface serves: a 404 in the console's shape, since the callers that reach for
/// unknown paths are the console clients (`vastai` commands this control plane lacks).
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("no route {method} {}", uri.path());
    telemetry::response(
        Surface::Console.as_str(),
        "not_found",
        Source::Client.as_str(),
    );
    (
        StatusCode::NOT_FOUND,
        Json(json!({"success": false, "error": "not_found", "msg": message})),
    )
        .into_response()
}
