//! OpenAI-compatible gateway: `POST /{endpoint}/v1/chat/completions` and
//! `POST /{endpoint}/v1/completions`, so the `openai` client and curl work against
//! `http://<control>/<endpoint>/v1` with the endpoint's `api_key` as the Bearer token.
//!
//! Each call goes through the same router and global queue as `/route/` (one `request_idx`
//! for its whole life): while no worker is ready it waits (woken by reports, bounded by
//! `--gateway-wait-s`, then `503`). The chosen worker gets Vast's body
//! `{"auth_data": <route answer>, "payload": <the OpenAI body>}`. A connect failure, a
//! timeout before the response head, or a 5xx head makes the gateway re-route the same
//! `request_idx` to another worker (at most 3 attempts); once a response head is accepted,
//! the body (JSON or SSE stream) is relayed chunk by chunk without buffering.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::api::bearer;
use crate::control::RouteOutcome;
use crate::error::ControlError;
use crate::Control;

fn client() -> &'static reqwest::Client {
    static C: OnceLock<reqwest::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    })
}

/// `POST /{endpoint}/v1/chat/completions`.
pub async fn chat(
    State(c): State<Control>,
    Path(ep): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    relay(c, ep, "/v1/chat/completions", headers, body).await
}

/// `POST /{endpoint}/v1/completions`.
pub async fn completions(
    State(c): State<Control>,
    Path(ep): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    relay(c, ep, "/v1/completions", headers, body).await
}

/// `GET /{endpoint}/v1/models`: the endpoint as the one model it serves (id = the endpoint's
/// name), so OpenAI clients that list models before calling find one. The `model` field of a
/// request is passed to the model server as the client wrote it.
pub async fn models(
    State(c): State<Control>,
    Path(ep): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, ControlError> {
    c.check_endpoint_key(&ep, bearer(&headers).as_deref())?;
    let created = c.endpoint_created_at(&ep).unwrap_or_default() as u64;
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{"id": ep, "object": "model", "created": created, "owned_by": "ferry"}],
    })))
}

fn cost_of(payload: &Value) -> f64 {
    ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(Value::as_f64))
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(100.0)
}

async fn relay(
    c: Control,
    endpoint: String,
    path: &'static str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Errors get OpenAI's shape in the gateway's layer (`api::outcome`).
    relay_inner(&c, &endpoint, path, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn relay_inner(
    c: &Control,
    endpoint: &str,
    path: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ControlError> {
    // The key first: a caller without one never gets a byte of its body read.
    let key = bearer(headers);
    c.check_endpoint_key(endpoint, key.as_deref())?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let limits = &c.settings().gateway;
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large(limits.max_body_bytes));
    }
    let body = read_body(body, limits.max_body_bytes).await?;
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ControlError::BadRequest(format!("malformed JSON body: {e}")))?;
    if !payload.is_object() {
        return Err(ControlError::BadRequest(
            "body must be a JSON object".into(),
        ));
    }
    let cost = cost_of(&payload);
    let deadline = tokio::time::Instant::now() + c.settings().gateway.wait;
    let mut idx = 0u64;
    let mut guard = Abandon {
        control: c.clone(),
        idx: 0,
    };
    let mut failed: Vec<String> = Vec::new();
    let mut last_error = String::new();
    while failed.len() < limits.attempts {
        // Register interest before routing so a report between the two is not missed.
        let notified = c.changed().notified();
        let grant = match c.route(endpoint, key.as_deref(), cost, idx, &failed)? {
            RouteOutcome::Ready(r) => r,
            RouteOutcome::Waiting(w) => {
                idx = w.request_idx;
                guard.idx = idx;
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(ControlError::Unavailable(format!(
                            "no worker became available within {} s ({})",
                            c.settings().gateway.wait.as_secs(), w.status
                        )));
                    }
                }
                continue;
            }
        };
        idx = grant.request_idx;
        guard.idx = 0;
        let url = format!("{}{}", grant.url.trim_end_matches('/'), path);
        let wrapped = json!({"auth_data": &*grant, "payload": &payload});
        let sent = client().post(&url).json(&wrapped).send();
        let resp = match tokio::time::timeout(limits.first_byte_timeout, sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(request_idx = idx, worker = %grant.url, error = %e, "worker call failed; re-routing");
                last_error = e.to_string();
                failed.push(grant.url.clone());
                continue;
            }
            Err(_) => {
                last_error = "no response head in time".into();
                failed.push(grant.url.clone());
                continue;
            }
        };
        if resp.status().is_server_error() {
            tracing::warn!(request_idx = idx, worker = %grant.url, status = resp.status().as_u16(), "worker answered 5xx; re-routing");
            last_error = format!("worker answered {}", resp.status());
            failed.push(grant.url.clone());
            continue;
        }
        let status =
            StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out = Response::builder().status(status);
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
            if let Some(v) = resp.headers().get(name.as_str()) {
                if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                    out = out.header(name, v);
                }
            }
        }
        out = out.header("x-ferry-request-idx", idx.to_string());
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = if sse {
            Body::from_stream(sse_with_error_event(resp.bytes_stream(), idx))
        } else {
            // Cut short on failure: a client cannot mistake it for a complete answer.
            Body::from_stream(resp.bytes_stream())
        };
        return out
            .body(body)
            .map_err(|e| ControlError::Internal(e.to_string()));
    }
    Err(ControlError::Upstream(format!(
        "{} workers failed this request; last error: {last_error}",
        limits.attempts
    )))
}

/// Drops the request from the queue if the gateway's caller leaves while it waits.
struct Abandon {
    control: Control,
    idx: u64,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.idx != 0 {
            self.control.abandon(self.idx);
        }
    }
}

/// Reads a request body of at most `limit` bytes, refused as soon as it passes the limit.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ControlError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| match std::error::Error::source(&e) {
            Some(src) if src.is::<http_body_util::LengthLimitError>() => too_large(limit),
            _ => ControlError::BadRequest(format!("reading the request body: {e}")),
        })
}

fn too_large(limit: usize) -> ControlError {
    ControlError::TooLarge(format!("request body over {limit} bytes"))
}

/// An SSE relay whose failure after the headers (the worker's connection broke) ends the stream
/// with a final `event: error` carrying an OpenAI-shaped error, as the worker itself does: the
/// status is already sent, and an SSE client reads events, not a cut connection.
fn sse_with_error_event<E: std::fmt::Display + Send + 'static>(
    stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Send + 'static,
    request_idx: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    use futures_util::StreamExt as _;
    futures_util::stream::unfold(Some(Box::pin(stream)), move |state| async move {
        let mut stream = state?;
        match stream.next().await? {
            Ok(chunk) => Some((Ok(chunk), Some(stream))),
            Err(e) => {
                tracing::warn!(request_idx, error = %e, "worker stream failed after the headers");
                let err = ControlError::Upstream(format!("the worker's stream broke: {e}"));
                let event =
                    json!({"error": {"message": err.to_string(), "type": err.code(), "code": 502}});
                Some((
                    Ok(Bytes::from(format!("event: error\ndata: {event}\n\n"))),
                    None,
                ))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    #[tokio::test]
    async fn a_stream_that_breaks_ends_with_an_sse_error_event() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"data: {\"x\": 1}\n\n")),
            Err(std::io::Error::other("connection reset")),
            Ok(Bytes::from_static(b"data: never\n\n")),
        ];
        let out: Vec<Bytes> = sse_with_error_event(futures_util::stream::iter(chunks), 7)
            .map(|r| r.unwrap_or_default())
            .collect()
            .await;
        assert_eq!(
            out.len(),
            2,
            "the chunk, then one error event, then the end"
        );
        let last = String::from_utf8_lossy(&out[1]);
        assert!(last.starts_with("event: error\ndata: "), "{last}");
        let data: Value =
            serde_json::from_str(last.trim_start_matches("event: error\ndata: ").trim()).unwrap();
        assert_eq!(data["error"]["type"], "upstream");
        assert!(data["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connection reset"));
    }
}
