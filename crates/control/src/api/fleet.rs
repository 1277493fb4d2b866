//! Console API for fleets (account key, like the rest of the console):
//!
//! | Call | Answer |
//! |---|---|
//! | `POST /api/v0/workergroups/{id}/join_tokens/` `{"label"?}` | `{"success": true, "id", "token"}` (the token is shown this once) |
//! | `GET /api/v0/workergroups/{id}/join_tokens/` | `{"success": true, "results": [{"id", "workergroup_id", "label", "created_at", "last_used_at", "joins"}]}` |
//! | `DELETE /api/v0/join_tokens/{id}/` | `{"success": true}`: revoked |
//! | `GET /api/v0/workergroups/{id}/scale/` | [`GroupScale`](crate::GroupScale) plus `"success": true` |
//!
//! The `scale` answer is what KEDA's `metrics-api` scaler reads (`valueLocation:
//! desired_workers`); see docs/kubernetes.md.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::api::endpoints::{auth, parse_id};
use crate::api::object;
use crate::error::ControlError;
use crate::Control;

type JsonResult = Result<Json<Value>, ControlError>;

/// `POST /api/v0/workergroups/{id}/join_tokens/`.
pub async fn create_join_token(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
    body: Bytes,
) -> JsonResult {
    let obj = object(&body);
    auth(&c, &headers, &q, obj.as_ref().ok())?;
    let obj = obj?;
    let label = match obj.get("label") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 200 => s.clone(),
        Some(_) => {
            return Err(ControlError::BadRequest(
                "label: must be a string of at most 200 bytes".into(),
            ))
        }
    };
    let (token_id, token) = c.create_join_token(parse_id(&id)?, label).await?;
    Ok(Json(
        json!({"success": true, "id": token_id, "token": token}),
    ))
}

/// `GET /api/v0/workergroups/{id}/join_tokens/`.
pub async fn list_join_tokens(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    let list = c.join_tokens(Some(parse_id(&id)?))?;
    Ok(Json(json!({"success": true, "results": list})))
}

/// `DELETE /api/v0/join_tokens/{id}/`.
pub async fn revoke_join_token(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    c.revoke_join_token(parse_id(&id)?).await?;
    Ok(Json(json!({"success": true})))
}

/// `GET /api/v0/workergroups/{id}/scale/`.
pub async fn group_scale(
    State(c): State<Control>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Path(id): Path<String>,
) -> JsonResult {
    auth(&c, &headers, &q, None)?;
    let scale = c.group_scale(parse_id(&id)?)?;
    let mut v = serde_json::to_value(scale).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("success".into(), Value::Bool(true));
    }
    Ok(Json(v))
}
