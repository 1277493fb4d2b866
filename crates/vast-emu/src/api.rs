//! The HTTP routes: Vast's (behind the gate: outage, rate limit, API key) and the emulator's
//! own under `/_emu/` (no key, never failing on purpose).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::create::CreateRequest;
use crate::error::ApiError;
use crate::knobs::{BootFailure, Gate, OutageMode};
use crate::query::{parse_limit, Query, Row};
use crate::server::{ConnKill, Emu};

/// Largest page of `GET /api/v1/instances/`.
const MAX_PAGE: usize = 25;

/// Most offers one search returns, whatever its limit.
const MAX_OFFERS: usize = 64;

/// The whole app.
pub(crate) fn build_app(emu: Emu) -> Router {
    let vast = Router::new()
        .route("/api/v0/bundles/", post(search_bundles))
        .route("/api/v0/search/asks/", put(search_asks))
        .route("/api/v0/asks/{id}/", put(create_instance))
        .route("/api/v1/instances/", get(list_instances_v1))
        .route(
            "/api/v0/instances/",
            get(list_instances_v0)
                .put(manage_instances)
                .delete(destroy_instances),
        )
        .route(
            "/api/v0/instances/{id}/",
            get(show_instance)
                .put(manage_instance)
                .delete(destroy_instance),
        )
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(emu.clone(), gate));
    let admin = Router::new()
        .route(
            "/_emu/health",
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route("/_emu/ledger", get(ledger))
        .route("/_emu/knobs", get(knobs))
        .route("/_emu/knobs/reset", post(reset_knobs))
        .route("/_emu/boot-delay", post(set_boot_delay))
        .route("/_emu/fail-boots", post(fail_boots))
        .route("/_emu/rate-limit", post(rate_limit))
        .route("/_emu/outage", post(outage))
        .route("/_emu/steal", post(steal))
        .route("/_emu/preempt/{id}", post(preempt));
    admin.merge(vast).with_state(emu)
}

/// Outage, then rate limit, then the API key.
async fn gate(State(emu): State<Emu>, req: Request, next: Next) -> Response {
    match emu.knobs().admit() {
        Gate::Pass => {}
        Gate::Outage(OutageMode::Unavailable) => return ApiError::Outage.into_response(),
        Gate::Outage(OutageMode::Reset) => {
            if let Some(ConnKill(kill)) = req.extensions().get::<ConnKill>() {
                kill.cancel();
                // The connection task drops this connection (and this request) now.
                std::future::pending::<()>().await;
            }
            return ApiError::Outage.into_response();
        }
        Gate::RateLimited(after) => return ApiError::RateLimited(after).into_response(),
    }
    if !authorized(&req, emu.api_key()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

fn authorized(req: &Request, key: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k.trim() == key);
    bearer || query_params(req.uri()).get("api_key").map(String::as_str) == Some(key)
}

/// The query string's parameters (percent-decoded, `+` as space; the last of a repeated
/// name wins).
fn query_params(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON object body; an empty body is `{}`.
fn object_body(body: &Bytes) -> Result<Row, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Row::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::BadRequest(format!(
            "the body must be a JSON object, got {other}"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!("the body is not JSON: {e}"))),
    }
}

fn bad_query(e: crate::query::QueryError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// `POST /api/v0/bundles/`: the search body is the query itself.
async fn search_bundles(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let q = object_body(&body)?;
    search(&emu, &q)
}

/// `PUT /api/v0/search/asks/`: `{"q": query, "select_cols": [...]}`.
async fn search_asks(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = object_body(&body)?;
    let q = match body.get("q") {
        Some(Value::Object(q)) => q.clone(),
        None | Some(Value::Null) => Row::new(),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "q must be an object, got {other}"
            )))
        }
    };
    search(&emu, &q)
}

fn search(emu: &Emu, q: &Row) -> Result<Json<Value>, ApiError> {
    let query = Query::from_search(q).map_err(bad_query)?;
    let bid = q.get("type").and_then(Value::as_str) == Some("bid");
    let mut offers = emu.cloud().search(&query, bid);
    offers.truncate(MAX_OFFERS);
    Ok(Json(json!({ "offers": offers })))
}

/// `PUT /api/v0/asks/{id}/`: rent an offer.
async fn create_instance(
    State(emu): State<Emu>,
    Path(offer_id): Path<u64>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req = CreateRequest::from_body(&object_body(&body)?)?;
    let created = emu
        .cloud()
        .create(offer_id, req, emu.knobs(), emu.run_token());
    let (id, order) = created.inspect_err(|e| {
        tracing::info!(offer_id, error = e.code(), "create refused");
    })?;
    tracing::info!(offer_id, instance = id, "instance created");
    if let Some(order) = order {
        emu.boot(order);
    }
    Ok(Json(json!({"success": true, "new_contract": id})))
}

/// `GET /api/v1/instances/?select_filters=..&order_by=..&limit=..&after_token=..&select_cols=..`:
/// one page, and the token of the next (the offset, as text) while there is one.
async fn list_instances_v1(State(emu): State<Emu>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = query_params(&uri);
    let json_param = |name: &str| -> Result<Option<Value>, ApiError> {
        params
            .get(name)
            .filter(|s| !s.is_empty())
            .map(|s| {
                serde_json::from_str(s)
                    .map_err(|e| ApiError::BadRequest(format!("{name} is not JSON: {e}")))
            })
            .transpose()
    };
    let filters = match json_param("select_filters")? {
        None | Some(Value::Null) => Row::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "select_filters must be an object, got {other}"
            )))
        }
    };
    let query =
        Query::from_select(&filters, json_param("order_by")?.as_ref()).map_err(bad_query)?;
    let limit = match params.get("limit") {
        Some(l) => parse_limit(&Value::String(l.clone())).map_err(bad_query)?,
        None => MAX_PAGE,
    }
    .clamp(1, MAX_PAGE);
    let offset = match params.get("after_token").filter(|t| !t.is_empty()) {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("bad after_token {t:?}")))?,
        None => 0,
    };
    let mut rows: Vec<Row> = emu
        .cloud()
        .rows()
        .into_iter()
        .filter(|r| query.matches(r))
        .collect();
    query.sort(&mut rows);
    let total = rows.len();
    let page: Vec<Row> = rows.into_iter().skip(offset).take(limit).collect();
    let next = (offset + page.len() < total).then(|| (offset + page.len()).to_string());
    let cols = match json_param("select_cols")? {
        Some(Value::Array(cols)) => {
            let cols: Vec<String> = cols
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect();
            (!cols.iter().any(|c| c == "*")).then_some(cols)
        }
        _ => None,
    };
    let page: Vec<Row> = match cols {
        Some(cols) => page
            .into_iter()
            .map(|r| r.into_iter().filter(|(k, _)| cols.contains(k)).collect())
            .collect(),
        None => page,
    };
    Ok(Json(json!({
        "instances": page,
        "next_token": next,
        "total_instances": total,
    })))
}

/// `GET /api/v0/instances/`: the legacy list, every instance at once.
async fn list_instances_v0(State(emu): State<Emu>) -> Json<Value> {
    Json(json!({ "instances": emu.cloud().rows() }))
}

/// `GET /api/v0/instances/{id}/`: `{"instances": row}`, or `{"instances": null}` for an id
/// that is not there (which `vastai.api.instances.show_instance` turns into `None`).
async fn show_instance(State(emu): State<Emu>, Path(id): Path<u64>) -> Json<Value> {
    Json(json!({ "instances": emu.cloud().row(id) }))
}

/// `PUT /api/v0/instances/{id}/`: `{"state": "running"|"stopped"}` and/or `{"label": ...}`.
async fn manage_instance(
    State(emu): State<Emu>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = object_body(&body)?;
    let state = match body.get("state") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "state must be a string, got {other}"
            )))
        }
    };
    if let Some(label) = body.get("label") {
        let label = match label {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "label must be a string, got {other}"
                )))
            }
        };
        emu.cloud().set_label(id, label)?;
    }
    if let Some(state) = state {
        set_state(&emu, id, &state)?;
    } else if !body.contains_key("label") {
        return Err(ApiError::BadRequest(
            "nothing to change: expected state or label".into(),
        ));
    }
    Ok(Json(json!({"success": true})))
}

fn set_state(emu: &Emu, id: u64, state: &str) -> Result<(), ApiError> {
    match state {
        "running" => {
            let order = emu.cloud().start(id, emu.run_token())?;
            tracing::info!(instance = id, booting = order.is_some(), "start");
            if let Some(order) = order {
                emu.boot(order);
            }
            Ok(())
        }
        "stopped" => {
            tracing::info!(instance = id, "stop");
            emu.cloud().stop(id)
        }
        other => Err(ApiError::BadRequest(format!(
            "state must be running or stopped, got {other:?}"
        ))),
    }
}

fn id_list(body: &Row, key: &str) -> Result<Vec<u64>, ApiError> {
    body.get(key)
        .and_then(Value::as_array)
        .and_then(|ids| ids.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| ApiError::BadRequest(format!("{key} must be a list of instance ids")))
}

/// `PUT /api/v0/instances/ {"ids": [...], "state": ...}`: start or stop several.
async fn manage_instances(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = object_body(&body)?;
    let ids = id_list(&body, "ids")?;
    let state = body
        .get("state")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("state must be running or stopped".into()))?;
    for id in ids {
        set_state(&emu, id, state)?;
    }
    Ok(Json(json!({"success": true})))
}

/// `DELETE /api/v0/instances/{id}/`.
async fn destroy_instance(
    State(emu): State<Emu>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    emu.cloud().destroy(id)?;
    tracing::info!(instance = id, "instance destroyed");
    Ok(Json(json!({"success": true})))
}

/// `DELETE /api/v0/instances/ {"instance_ids": [...]}`.
async fn destroy_instances(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let ids = id_list(&object_body(&body)?, "instance_ids")?;
    for id in ids {
        emu.cloud().destroy(id)?;
        tracing::info!(instance = id, "instance destroyed");
    }
    Ok(Json(json!({"success": true})))
}

// ---------------------------------------------------------------------------------------------
// /_emu/

async fn ledger(State(emu): State<Emu>) -> Json<Value> {
    Json(json!(emu.cloud().ledger()))
}

async fn knobs(State(emu): State<Emu>) -> Json<Value> {
    Json(json!(emu.knobs().snapshot()))
}

async fn reset_knobs(State(emu): State<Emu>) -> Json<Value> {
    emu.knobs().reset();
    Json(json!(emu.knobs().snapshot()))
}

fn admin_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootDelayBody {
    ms: u64,
}

async fn set_boot_delay(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let b: BootDelayBody = admin_body(&body)?;
    emu.knobs().set_boot_delay(Duration::from_millis(b.ms));
    Ok(Json(json!(emu.knobs().snapshot())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBootsBody {
    count: u32,
    #[serde(default = "default_boot_failure")]
    mode: BootFailure,
}

fn default_boot_failure() -> BootFailure {
    BootFailure::Hang
}

async fn fail_boots(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let b: FailBootsBody = admin_body(&body)?;
    emu.knobs().fail_boots(b.count, b.mode);
    Ok(Json(json!(emu.knobs().snapshot())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    next: Option<u32>,
    /// `0` (or `null` with the key present) lifts the limit.
    #[serde(default, deserialize_with = "some_or_null")]
    per_second: Option<Option<u32>>,
    retry_after_s: Option<f64>,
}

/// Tells a key set to `null` (`Some(None)`) from a missing key (`None`).
fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

async fn rate_limit(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let b: RateLimitBody = admin_body(&body)?;
    if let Some(after) = b.retry_after_s {
        let after = Duration::try_from_secs_f64(after)
            .map_err(|e| ApiError::BadRequest(format!("retry_after_s: {e}")))?;
        emu.knobs().set_retry_after(after);
    }
    if let Some(n) = b.next {
        emu.knobs().rate_limit_next(n);
    }
    if let Some(per_second) = b.per_second {
        emu.knobs()
            .rate_limit_per_second(per_second.and_then(NonZeroU32::new));
    }
    Ok(Json(json!(emu.knobs().snapshot())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageBody {
    ms: u64,
    #[serde(default = "default_outage_mode")]
    mode: OutageMode,
}

fn default_outage_mode() -> OutageMode {
    OutageMode::Unavailable
}

async fn outage(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let b: OutageBody = admin_body(&body)?;
    emu.knobs().outage(Duration::from_millis(b.ms), b.mode);
    Ok(Json(json!(emu.knobs().snapshot())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StealBody {
    offer_id: Option<u64>,
    next: Option<u32>,
}

async fn steal(State(emu): State<Emu>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let b: StealBody = admin_body(&body)?;
    if b.offer_id.is_none() && b.next.is_none() {
        return Err(ApiError::BadRequest("expected offer_id or next".into()));
    }
    if let Some(id) = b.offer_id {
        emu.knobs().steal_offer(id);
    }
    if let Some(n) = b.next {
        emu.knobs().steal_next_creates(n);
    }
    Ok(Json(json!(emu.knobs().snapshot())))
}

async fn preempt(State(emu): State<Emu>, Path(id): Path<u64>) -> Result<Json<Value>, ApiError> {
    emu.preempt(id)?;
    tracing::info!(instance = id, "instance outbid");
    Ok(Json(json!({"success": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%7B%22x%22%3A1%7D"), "{\"x\":1}");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn query_string() {
        let uri: Uri = "/x?api_key=k%2B1&limit=25&empty=&flag".parse().unwrap();
        let p = query_params(&uri);
        assert_eq!(p["api_key"], "k+1");
        assert_eq!(p["limit"], "25");
        assert_eq!(p["empty"], "");
        assert_eq!(p["flag"], "");
    }
}
