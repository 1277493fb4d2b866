//! Client-facing "run" API: `POST /route/` and the worker lists.
//!
//! `/route/` takes Vast's body `{"endpoint", "api_key", "cost", "request_idx",
//! "replay_timeout"}` with the endpoint's key as Bearer, in the body, or as `?api_key=` (the
//! official client sends all three). It answers either the signed grant
//! `{"__request_id", "cost", "endpoint", "reqnum", "request_idx", "signature", "url",
//! "ferry_exp", "ferry_sig"}` or the waiting body `{"endpoint", "status", "request_idx",
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
    match obj.get("id") {
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or_else(|| ControlError::BadRequest("id: must be an integer".into())),
        None => Err(ControlError::BadRequest("id: required".into())),
    }
}

/// `POST /get_endpoint_workers/`.
pub async fn endpoint_workers(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Vec<WorkerInfo>>, ControlError> {
    let obj = object(&body)?;
    let id = id_of(&obj)?;
    let key = presented_key(&headers, &q, Some(&obj));
    c.endpoint_workers(id, key.as_deref()).map(Json)
}

/// `POST /get_workergroup_workers/` and `/get_autogroup_workers/`.
pub async fn group_workers(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Vec<WorkerInfo>>, ControlError> {
    let obj = object(&body)?;
    let id = id_of(&obj)?;
    let key = presented_key(&headers, &q, Some(&obj));
    c.group_workers(id, key.as_deref()).map(Json)
}
