//! Worker-facing API: `GET /pubkey/`, `POST /worker_status/`, `POST /delete_requests/`, and
//! Ferry's `POST /join/`.
//!
//! Bodies are exactly what Vast's PyWorker and `ferry worker` send (read leniently, every
//! vintage). A report must name a worker this control plane launched (`id` / `worker_id` =
//! `CONTAINER_ID`) with its `mtoken` (`MASTER_TOKEN`): an unknown id and a wrong token are the
//! same `401`, a malformed body `400`, and none of them changes anything.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use ferry_protocol::{DeleteRequests, StatusAnswer, WorkerStatus};
use serde_json::json;

use crate::api::bearer;
use crate::control::{JoinRequest, Joined};
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

/// `POST /worker_status/`: `{"success": true, "cold": <bool>}` (`cold`: the directive for a
/// joined worker, see [`StatusAnswer`]).
pub async fn worker_status(
    State(c): State<Control>,
    body: Bytes,
) -> Result<Json<StatusAnswer>, ControlError> {
    let s: WorkerStatus = serde_json::from_slice(&body)
        .map_err(|e| ControlError::BadRequest(format!("malformed worker_status body: {e}")))?;
    Ok(Json(c.worker_status(&s)?))
}

/// `POST /join/`: a worker joins an external workergroup with a join token (see
/// [`crate::joins`]). Body `{"token": "fjt_...", "url": "http://host:port"}` (the token may come
/// as Bearer instead); answer `{"success": true, "worker_id", "mtoken", "endpoint",
/// "workergroup_id", "report_addr"}`: the worker's `CONTAINER_ID`, `MASTER_TOKEN`, and where to
/// report. An invalid or revoked token is `401`; a workergroup that takes no joined workers or
/// is full is `409`.
pub async fn join(
    State(c): State<Control>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Joined>, ControlError> {
    let req: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ControlError::BadRequest(format!("malformed join body: {e}")))?;
    let token = req
        .token
        .or_else(|| bearer(&headers))
        .ok_or_else(|| ControlError::Unauthorized("join token required".into()))?;
    Ok(Json(c.join(&token, &req.url).await?))
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
