//! The HTTP surface, one file per audience:
//!
//! - [`worker`]: what workers call (`/pubkey/`, `/worker_status/`, `/delete_requests/`,
//!   `/join/`).
//! - [`route`]: what clients call on Vast's "run" host (`/route/`, worker lists).
//! - [`endpoints`]: the console API (`/api/v0/endptjobs/`, `/api/v0/workergroups/`,
//!   `/api/v0/autojobs/`).
//! - [`fleet`]: join tokens and the desired worker count (`/api/v0/workergroups/{id}/...`).
//! - [`gateway`]: the OpenAI-compatible front (`/{endpoint}/v1/...`).
//! - [`outcome`]: the layer that gives each surface's errors their audience's shape and counts
//!   every answer.
//!
//! JSON stops here: [`patch`] reads console bodies into typed patches, and each handler turns
//! typed records into the answers' JSON.

pub mod endpoints;
pub mod fleet;
pub mod gateway;
pub mod outcome;
pub mod patch;
pub mod route;
pub mod worker;

use std::collections::HashMap;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ControlError;

/// Largest JSON body accepted by the control-plane APIs (the gateway has its own limit).
pub const MAX_BODY: usize = 1 << 20;

/// The Bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The key a request presents: Bearer, else `api_key` in the body, else `?api_key=`.
pub fn presented_key(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Option<&Map<String, Value>>,
) -> Option<String> {
    bearer(headers)
        .or_else(|| {
            body.and_then(|b| b.get("api_key"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .or_else(|| query.get("api_key").filter(|s| !s.is_empty()).cloned())
}

/// Parses a JSON object body; an empty body is an empty object.
pub fn object(body: &Bytes) -> Result<Map<String, Value>, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ControlError::BadRequest(
            "body must be a JSON object".into(),
        )),
        Err(e) => Err(ControlError::BadRequest(format!(
            "malformed JSON body: {e}"
        ))),
    }
}
