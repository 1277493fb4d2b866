//! Console API: endpoints (`/api/v0/endptjobs/`) and workergroups (`/api/v0/workergroups/`,
//! and the CLI's name `/api/v0/autojobs/`), authenticated with the account key (Bearer,
//! `?api_key=`, or `api_key` in the body).
//!
//! | Call | Answer |
//! |---|---|
//! | `GET /api/v0/endptjobs/` | `{"success": true, "results": [endpoint, ...]}` |
//! | `POST /api/v0/endptjobs/` | `{"success": true, "result": <id>}` |
//! | `GET /api/v0/endptjobs/{id}/` | `{"success": true, "result": endpoint}` |
//! | `PUT /api/v0/endptjobs/{id}/` | `{"success": true}` |
//! | `DELETE /api/v0/endptjobs/{id}/` | `{"success": true}` |
//! | `GET /api/v0/workergroups/` | `{"success": true, "results": [workergroup, ...]}` |
//! | `POST /api/v0/workergroups/` | `{"success": true, "id": <id>}` |
//! | `GET`/`PUT`/`DELETE /api/v0/workergroups/{id}/` | as for endpoints |
//!
//! An endpoint record carries Vast's keys (`id`, `endpoint_name`, `api_key`, `user_id`,
//! `created_at`, every scaling parameter, `auto_delete_in_seconds`, `auto_delete_due_24h`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::api::patch::{endpoint_patch, workergroup_patch};
use crate::api::{object, presented_key};
use crate::endpoint::{Endpoint, Workergroup};
use crate::error::ControlError;
use crate::Control;

type JsonResult = Result<Json<Value>, ControlError>;

pub(crate) fn auth(
    c: &Control,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Option<&Map<String, Value>>,
) -> Result<(), ControlError> {
    c.check_account(presented_key(headers, q, body).as_deref())
}

/// An endpoint as the API returns it (Vast's `EndpointData` keys).
fn endpoint_json(ep: &Endpoint) -> Value {
    let mut v = match serde_json::to_value(ep) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    v.insert("user_id".into(), Value::from(1));
    v.insert("auto_delete_in_seconds".into(), Value::Null);
    v.insert("auto_delete_due_24h".into(), Value::Bool(false));
    Value::Object(v)
}

/// A workergroup as the API returns it (its fields and Vast's as sent).
fn group_json(wg: &Workergroup) -> Value {
    serde_json::to_value(wg).unwrap_or(Value::Null)
}

pub(crate) fn parse_id(s: &str) -> Result<i64, ControlError> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| ControlError::BadRequest(format!("bad id {s:?}")))
}

/// `GET /api/v0/endptjobs/`.
pub async fn list_endpoints(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    let eps: Vec<Value> = c.endpoints().iter().map(endpoint_json).collect();
    Ok(Json(json!({"success": true, "results": eps})))
}

/// `POST /api/v0/endptjobs/`.
pub async fn create_endpoint(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body);
    auth(&c, &headers, &q, obj.as_ref().ok())?;
    let id = c.create_endpoint(&endpoint_patch(&obj?)?).await?;
    Ok(Json(json!({"success": true, "result": id})))
}

/// `GET /api/v0/endptjobs/{id}/`.
pub async fn get_endpoint(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    let ep = c.endpoint(parse_id(&id)?)?;
    Ok(Json(json!({"success": true, "result": endpoint_json(&ep)})))
}

/// `PUT /api/v0/endptjobs/{id}/`.
pub async fn update_endpoint(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body);
    auth(&c, &headers, &q, obj.as_ref().ok())?;
    let id = parse_id(&id)?;
    c.update_endpoint(id, &endpoint_patch(&obj?)?).await?;
    Ok(Json(json!({"success": true})))
}

/// `DELETE /api/v0/endptjobs/{id}/`.
pub async fn delete_endpoint(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body).ok();
    auth(&c, &headers, &q, obj.as_ref())?;
    c.delete_endpoint(parse_id(&id)?).await?;
    Ok(Json(json!({"success": true})))
}

/// `GET /api/v0/workergroups/`.
pub async fn list_groups(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    let groups: Vec<Value> = c.workergroups().iter().map(group_json).collect();
    Ok(Json(json!({"success": true, "results": groups})))
}

/// `POST /api/v0/workergroups/`.
pub async fn create_group(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body);
    auth(&c, &headers, &q, obj.as_ref().ok())?;
    let id = c.create_workergroup(&workergroup_patch(&obj?)?).await?;
    Ok(Json(json!({"success": true, "id": id})))
}

/// `GET /api/v0/workergroups/{id}/`.
pub async fn get_group(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    let wg = c.workergroup(parse_id(&id)?)?;
    Ok(Json(json!({"success": true, "result": group_json(&wg)})))
}

/// `PUT /api/v0/workergroups/{id}/`.
pub async fn update_group(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body);
    auth(&c, &headers, &q, obj.as_ref().ok())?;
    let id = parse_id(&id)?;
    c.update_workergroup(id, &workergroup_patch(&obj?)?).await?;
    Ok(Json(json!({"success": true})))
}

/// `DELETE /api/v0/workergroups/{id}/`.
pub async fn delete_group(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body).ok();
    auth(&c, &headers, &q, obj.as_ref())?;
    c.delete_workergroup(parse_id(&id)?).await?;
    Ok(Json(json!({"success": true})))
}
