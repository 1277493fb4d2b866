//! What happens to every model request before generation: parse, stall, loading gate,
//! injected status, injected 500. Also each dialect's JSON error body.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::state::{RequestGuard, SimState};
use crate::tokens::SimOverrides;

/// Error message of the 503 every route answers while the model loads (llama.cpp's own).
pub const LOADING_MESSAGE: &str = "Loading model";

/// Which server a route imitates; decides the shape of error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// OpenAI-compatible routes, shaped like llama-server's (`{"error":{code,message,type}}`),
    /// which is also what vLLM's newer versions send.
    OpenAi,
    /// llama.cpp's native routes: same error shape as its OpenAI routes.
    Llama,
    /// TGI: `{"error": message, "error_type": kind}`.
    Tgi,
    /// ComfyUI API wrapper (FastAPI): `{"detail": message}`.
    Comfy,
    /// `/echo`: `{"error": message}`.
    Echo,
}

impl Dialect {
    /// The dialect's JSON error response.
    pub(crate) fn error(self, status: StatusCode, message: &str) -> Response {
        let body = match self {
            Dialect::OpenAi | Dialect::Llama => json!({
                "error": {"code": status.as_u16(), "message": message, "type": llama_error_type(status)}
            }),
            Dialect::Tgi => json!({"error": message, "error_type": tgi_error_type(status)}),
            Dialect::Comfy => json!({"detail": message}),
            Dialect::Echo => json!({"error": message}),
        };
        (status, Json(body)).into_response()
    }

    /// The 503 answered while the model is loading.
    pub(crate) fn loading(self) -> Response {
        self.error(StatusCode::SERVICE_UNAVAILABLE, LOADING_MESSAGE)
    }

    /// An error to return from a handler.
    pub(crate) fn rejection(
        self,
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Rejection {
        Rejection {
            dialect: self,
            status,
            message: message.into(),
        }
    }
}

/// A model request refused before or instead of generating, answered in its dialect's shape.
/// The request's guard has already been marked failed.
#[derive(Debug)]
pub(crate) struct Rejection {
    dialect: Dialect,
    status: StatusCode,
    message: Cow<'static, str>,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        self.dialect.error(self.status, &self.message)
    }
}

fn llama_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "authentication_error",
        404 => "not_found_error",
        501 => "not_supported_error",
        503 => "unavailable_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn tgi_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        422 | 400 => "validation",
        429 => "overloaded",
        503 => "unhealthy",
        _ => "generation",
    }
}

/// A request that passed admission: its accounting guard and its effective pacing.
pub(crate) struct Admitted {
    pub(crate) guard: RequestGuard,
    pub(crate) ttft: Duration,
    pub(crate) token_delay: Duration,
    pub(crate) disconnect_after: Option<u32>,
}

impl Admitted {
    /// Refuses the request after admission (e.g. a dialect-specific validation error).
    pub(crate) fn reject(
        mut self,
        dialect: Dialect,
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Rejection {
        self.guard.fail();
        dialect.rejection(status, message)
    }

    /// Time a complete reply of `n` tokens takes: `ttft + n * token_delay`.
    pub(crate) fn generation_time(&self, n: u32) -> Duration {
        self.ttft.saturating_add(self.token_delay.saturating_mul(n))
    }

    /// Where a reply of `n` tokens is cut by `disconnect_after`, if it is: after `k` tokens
    /// when `k <= n` (with `k == n` the last tokens go out but the reply never finishes).
    pub(crate) fn cut_at(&self, n: u32) -> Option<u32> {
        self.disconnect_after.filter(|k| *k <= n)
    }
}

/// Parses a JSON body (empty means `{}`), answering 400 in the dialect's shape when it is not
/// valid.
pub(crate) fn parse<T: DeserializeOwned>(
    dialect: Dialect,
    guard: &mut RequestGuard,
    body: &[u8],
) -> Result<T, Rejection> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        guard.fail();
        dialect.rejection(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))
    })
}

/// Stall, loading gate, injected status and injected 500, in that order.
pub(crate) async fn admit(
    state: &SimState,
    dialect: Dialect,
    mut guard: RequestGuard,
    sim: &SimOverrides,
) -> Result<Admitted, Rejection> {
    sleep(sim.stall().unwrap_or_else(|| state.stall())).await;
    if !state.is_loaded() {
        guard.fail();
        return Err(dialect.rejection(StatusCode::SERVICE_UNAVAILABLE, LOADING_MESSAGE));
    }
    if let Some(code) = sim.status {
        let Ok(status) = StatusCode::from_u16(code) else {
            guard.fail();
            return Err(dialect.rejection(
                StatusCode::BAD_REQUEST,
                format!("sim.status {code} is not an HTTP status"),
            ));
        };
        if !status.is_success() {
            guard.fail();
            return Err(dialect.rejection(status, format!("sim: injected status {code}")));
        }
    }
    if state.should_fail(guard.seq()) {
        guard.fail();
        return Err(dialect.rejection(
            StatusCode::INTERNAL_SERVER_ERROR,
            "sim: injected error (error_rate)",
        ));
    }
    Ok(Admitted {
        guard,
        ttft: sim
            .ttft_ms
            .map_or_else(|| state.ttft(), Duration::from_millis),
        token_delay: sim
            .token_delay_ms
            .map_or_else(|| state.token_delay(), Duration::from_millis),
        disconnect_after: sim.disconnect_after.or(state.config().disconnect_after),
    })
}

/// Sleeps, skipping the timer entirely for zero so the zero-latency baseline stays cheap.
pub(crate) async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// The 503 GET routes (`/v1/models`, `/info`) answer while loading; `None` once loaded.
pub(crate) fn loading_gate(state: &SimState, dialect: Dialect) -> Option<Response> {
    (!state.is_loaded()).then(|| dialect.loading())
}

/// A static JSON body without serializing anything.
pub(crate) fn static_json(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
