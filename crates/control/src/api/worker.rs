//! Worker-facing API: `GET /pubkey/`, `POST /worker_status/`, `POST /delete_requests/`.
//!
//! Bodies are exactly what Vast's PyWorker and `ferry worker` send (read leniently, every
//! vintage). A report must name a worker this control plane launched (`id` / `worker_id` =
//! `CONTAINER_ID`) with its `mtoken` (`MASTER_TOKEN`): an unknown id is `404`, a wrong token
//! `401`, a malformed body `400`, and none of them changes anything.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use ferry_protocol::{DeleteRequests, WorkerStatus};
use serde_json::json;

use crate::error::ControlError;
use crate::Control;

/// `GET /pubkey/`: the PEM public key workers verify route signatures with.
pub async fn pubkey(State(c): State<Control>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        c.pubkey_pem().to_owned(),
    )
}

/// `POST /worker_status/`.
pub async fn worker_status(
    State(c): State<Control>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ControlError> {
    let s: WorkerStatus = serde_json::from_slice(&body)
        .map_err(|e| ControlError::BadRequest(format!("malformed worker_status body: {e}")))?;
    c.worker_status(&s)?;
    Ok(Json(json!({"success": true})))
}

/// `POST /delete_requests/`.
pub async fn delete_requests(
    State(c): State<Control>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ControlError> {
    let d: DeleteRequests = serde_json::from_slice(&body)
        .map_err(|e| ControlError::BadRequest(format!("malformed delete_requests body: {e}")))?;
    let n = c.delete_requests(&d)?;
    Ok(Json(json!({"success": true, "deleted": n})))
}
