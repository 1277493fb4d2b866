//! Client-facing "run" API: `POST /route/` and the worker lists.
//!
//! `/route/` takes Vast's body `{"endpoint", "api_key", "cost", "request_idx",
//! "replay_timeout"}` with the endpoint's key as Bearer, in the body, or as `?api_key=` (the
//! official client sends all three). It answers either the signed grant
//! `{"__request_id", "cost", "endpoint", "reqnum", "request_idx", "signature", "url",
//! "ferry_exp", "ferry_mac" or "ferry_sig"}` or the waiting body `{"endpoint", "status", "request_idx",
//! "__request_id"}`; errors are Vast's `400 {"error": "Invalid endpoint or missing required
//! parameters"}` and `401 {"error": "Authentication failed"}`.
//!
//! `/get_endpoint_workers/` (`{"id", "api_key"}`), `/get_workergroup_workers/` and its legacy
//! name `/get_autogroup_workers/` answer a bare JSON list of workers; the account key or the
//! endpoint's own key is accepted.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use ferry_protocol::RouteRequest;
use serde_json::Value;

use crate::api::{object, presented_key};
use crate::control::RouteOutcome;
use crate::error::{ControlError, ROUTE_BAD_REQUEST};
use crate::events::Logs;
use crate::registry::WorkerInfo;
use crate::Control;

/// `POST /route/`.
pub async fn route(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let result = (|| {
        let obj = object(&body).map_err(|_| ControlError::BadRequest(ROUTE_BAD_REQUEST.into()))?;
        let key = presented_key(&headers, &q, Some(&obj));
        let req: RouteRequest = serde_json::from_value(Value::Object(obj))
            .map_err(|_| ControlError::BadRequest(ROUTE_BAD_REQUEST.into()))?;
        c.route(
            &req.endpoint,
            key.as_deref(),
            req.cost,
            req.request_idx,
            &[],
        )
    })();
    match result {
        Ok(RouteOutcome::Ready(r)) => Json(*r).into_response(),
        Ok(RouteOutcome::Waiting(w)) => Json(w).into_response(),
        Err(e) => e.into_response(),
    }
}

fn id_of(obj: &serde_json::Map<String, Value>) -> Result<i64, ControlError> {
    int_field(obj, "id")?.ok_or_else(|| ControlError::BadRequest("id: required".into()))
}

/// An integer field, also as a numeric string (Vast's clients send both).
fn int_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, ControlError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Some)
            .ok_or_else(|| ControlError::BadRequest(format!("{name}: must be an integer"))),
    }
}

/// `tail` of the logs routes: a non-negative line count.
fn tail_of(obj: &serde_json::Map<String, Value>) -> Result<Option<usize>, ControlError> {
    int_field(obj, "tail")?
        .map(|t| {
            usize::try_from(t)
                .map_err(|_| ControlError::BadRequest("tail: must be 0 or more".into()))
        })
        .transpose()
}

/// `POST /get_endpoint_logs/`: `{id, tail?}` → `{info0, info1, trace, debug}`.
pub async fn endpoint_logs(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Logs>, ControlError> {
    let (id, key, obj) = asked(&headers, &q, &body)?;
    c.endpoint_logs(id, key.as_deref(), tail_of(&obj)?)
        .map(Json)
}

/// `POST /get_autogroup_logs/`: a workergroup's logs, same shape.
pub async fn group_logs(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Logs>, ControlError> {
    let (id, key, obj) = asked(&headers, &q, &body)?;
    c.group_logs(id, key.as_deref(), tail_of(&obj)?).map(Json)
}

/// A console read: the `id` it names, the key it presents, and its body.
type Asked = (i64, Option<String>, serde_json::Map<String, Value>);

/// Reads a console read's body.
fn asked(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Asked, ControlError> {
    let obj = object(body)?;
    let key = presented_key(headers, q, Some(&obj));
    Ok((id_of(&obj)?, key, obj))
}

/// `POST /update_workers/`: `{workergroup_id, cancel_update?}` with the account key → a rolling
/// update of the workergroup (`{"success": true, "workers_to_update": n}`), or its
/// cancellation (`{"success": true, "cancelled": bool}`).
pub async fn update_workers(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, ControlError> {
    let obj = object(&body)?;
    let key = presented_key(&headers, &q, Some(&obj));
    c.check_account(key.as_deref())?;
    let group = int_field(&obj, "workergroup_id")?
        .ok_or_else(|| ControlError::BadRequest("workergroup_id: required".into()))?;
    if obj.get("cancel_update").and_then(Value::as_bool) == Some(true) {
        let cancelled = c.cancel_update(group);
        return Ok(Json(
            serde_json::json!({"success": true, "cancelled": cancelled}),
        ));
    }
    let n = c.update_workers(group)?;
    Ok(Json(
        serde_json::json!({"success": true, "workers_to_update": n}),
    ))
}

/// `POST /get_endpoint_workers/`.
pub async fn endpoint_workers(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Vec<WorkerInfo>>, ControlError> {
    let (id, key, _) = asked(&headers, &q, &body)?;
    c.endpoint_workers(id, key.as_deref()).map(Json)
}

/// `POST /get_workergroup_workers/` and `/get_autogroup_workers/`.
pub async fn group_workers(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Vec<WorkerInfo>>, ControlError> {
    let (id, key, _) = asked(&headers, &q, &body)?;
    c.group_workers(id, key.as_deref()).map(Json)
}
