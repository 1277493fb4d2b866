//! A replica's HTTP face: `/health` and `/metrics` are its own; every other request goes to
//! the owner's control plane, in process when this replica owns the lease, over HTTP when
//! another does.
//!
//! A handed-over request is sent with `x-ferry-forwarded-by`; a replica that receives one
//! while it is not the owner answers 503 with `x-ferry-not-owner` instead of sending it on
//! (never two hops, never a loop), and the sender waits for the lease to change and tries
//! again. So does a request whose owner refuses the connection (it died; it never saw the
//! request). A request the owner may have seen (the connection broke after it was sent) is
//! not sent again: the caller gets a 502 that says so. While no owner is known, a request
//! waits up to `--handoff-wait-s`, then gets a 503.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use tokio::time::Instant;
use tower_service::Service;

use super::{Node, Role};
use crate::telemetry;

/// Marks a request handed over by a replica (its value: that replica's URL).
const FORWARDED_BY: &str = "x-ferry-forwarded-by";
/// Marks the 503 of a replica that was handed a request but does not own the lease.
const NOT_OWNER: &str = "x-ferry-not-owner";

/// The replica's router.
pub(super) fn app(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(crate::metrics))
        .fallback(dispatch)
        .with_state(node)
}

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let role = node.role.borrow().clone();
    let mut body = serde_json::json!({
        "status": "ok",
        "role": role.name(),
        "replica": node.me,
        "epoch": node.epoch.load(std::sync::atomic::Ordering::Relaxed),
        "owner": match &role {
            Role::Follower(o) => o.clone(),
            Role::Owner { .. } => Some(node.me.clone()),
            Role::Starting | Role::Leaving => None,
        },
    });
    if let Role::Owner { control, .. } = &role {
        body["queued"] = control.queue_len().into();
        body["workers"] = control.worker_states().len().into();
    }
    Json(body)
}

/// How a hand-over went.
enum Handed {
    /// The owner answered (any status but a not-owner 503).
    Answered(Response),
    /// The request never reached an owner: send it again once the lease changes.
    Again(String),
    /// The request may have reached the owner, which failed: not sent again.
    Failed(String),
}

async fn dispatch(State(node): State<Arc<Node>>, req: Request) -> Response {
    let owned = match &*node.role.borrow() {
        Role::Owner { app, .. } => Some(app.clone()),
        _ => None,
    };
    if let Some(app) = owned {
        return serve(app, req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, node.max_body).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "request body over {} bytes or unreadable: {e}",
                    node.max_body
                ),
            )
        }
    };
    let handed_to_us = parts.headers.contains_key(FORWARDED_BY);
    let deadline = Instant::now() + node.settings.handoff_wait;
    let mut rx = node.role.subscribe();
    let mut last = String::from("no replica owns the endpoints yet");
    loop {
        let role = rx.borrow_and_update().clone();
        // How long to wait for a change before looking again.
        let mut patience = deadline.saturating_duration_since(Instant::now());
        match role {
            Role::Owner { app, .. } => {
                return serve(app, Request::from_parts(parts, Body::from(bytes))).await;
            }
            Role::Follower(_) | Role::Leaving if handed_to_us => {
                telemetry::forwarded("not_owner");
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_owner",
                    "this replica does not own the endpoints (the lease just changed); retry"
                        .into(),
                );
                r.headers_mut()
                    .insert(NOT_OWNER, HeaderValue::from_static("1"));
                return r;
            }
            Role::Follower(Some(owner)) => match hand(&node, &parts, bytes.clone(), &owner).await {
                Handed::Answered(r) => {
                    telemetry::forwarded("answered");
                    return r;
                }
                Handed::Failed(e) => {
                    telemetry::forwarded("failed");
                    return error(StatusCode::BAD_GATEWAY, "owner_failed", e);
                }
                Handed::Again(e) => {
                    telemetry::forwarded("again");
                    last = e;
                    // The owner may be gone: look again soon even if the lease has not
                    // changed yet.
                    patience = patience.min(Duration::from_millis(250));
                }
            },
            Role::Follower(None) | Role::Starting | Role::Leaving => {}
        }
        if Instant::now() >= deadline {
            break;
        }
        let _ = tokio::time::timeout(patience, rx.changed()).await;
        if Instant::now() >= deadline {
            break;
        }
    }
    telemetry::forwarded("no_owner");
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_owner",
        format!(
            "no control-plane replica took the request within {:?} ({last}); retry",
            node.settings.handoff_wait
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Runs the request through the owner's router in process.
async fn serve(mut app: Router, req: Request) -> Response {
    // A `Router` is always ready; its error type is `Infallible`.
    match app.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Sends the request to the owner at `owner` and relays the answer (its body streamed).
async fn hand(node: &Node, parts: &axum::http::request::Parts, body: Bytes, owner: &str) -> Handed {
    if owner == node.me {
        // The lease names this replica's URL but another process: a predecessor that died.
        return Handed::Again(format!(
            "the lease names {owner}, an earlier process of this replica"
        ));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = end_to_end(&parts.headers);
    if let Ok(v) = HeaderValue::from_str(&node.me) {
        headers.insert(FORWARDED_BY, v);
    }
    let sent = node
        .client
        .request(parts.method.clone(), format!("{owner}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Handed::Again(format!("owner {owner} unreachable: {e}"));
        }
        Err(e) => {
            return Handed::Failed(format!(
                "the owning replica {owner} failed while handling the request (it may have been \
                 applied): {e}"
            ))
        }
    };
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && resp.headers().contains_key(NOT_OWNER) {
        return Handed::Again(format!("{owner} no longer owns the endpoints"));
    }
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        *h = end_to_end(resp.headers());
    }
    match out.body(Body::from_stream(resp.bytes_stream())) {
        Ok(r) => Handed::Answered(r),
        Err(e) => Handed::Failed(format!("relaying the owner's answer: {e}")),
    }
}

/// The headers without the hop-by-hop ones ([`ferry_serve::is_hop_by_hop`], any other
/// `proxy-*`, and those the `Connection` header names) and `Host`.
fn end_to_end(h: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    h.iter()
        .filter(|(k, _)| {
            !ferry_serve::is_hop_by_hop(k)
                && *k != header::HOST
                && !k.as_str().starts_with("proxy-")
                && !named.contains(k)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    tracing::debug!(code, %message, "replica answered an error");
    (
        status,
        Json(serde_json::json!({"error": message, "code": code})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("host", HeaderValue::from_static("a:1"));
        h.insert("authorization", HeaderValue::from_static("Bearer k"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let out = end_to_end(&h);
        let mut names: Vec<_> = out.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["authorization", "content-type"]);
    }
}
