//! Endpoint and workergroup records: Vast's fields, their defaults, validation, and the JSON
//! the endpoint API answers with.
//!
//! # Endpoint parameters (Vast's names and meaning)
//!
//! | Field | Default | Meaning in Ferry |
//! |---|---|---|
//! | `min_load` | 0 | floor on predicted load (workload units/s); > 0 keeps ≥ 1 worker active |
//! | `min_cold_load` | 0 | floor on total (active + cold) capacity |
//! | `target_util` | 0.9 | active capacity = max(predicted load, min_load) / target_util |
//! | `cold_mult` | 2.5 | total capacity = active capacity × cold_mult |
//! | `cold_workers` | 5 | workers with the model loaded (ready or stopped) kept before any is destroyed |
//! | `max_workers` | 20 | hard cap on workers of the endpoint |
//! | `max_queue_time` | 30 s | a worker whose estimated queue time exceeds it gets no new request |
//! | `target_queue_time` | 10 s | endpoint queue time above which the autoscaler adds workers |
//! | `inactivity_timeout` | unset | seconds without requests before scaling to zero is allowed; 0 = no gating; negative = never scale to zero |
//! | `endpoint_state` | `active` | `active` managed; `suspended` left alone; `stopped` all workers stopped |
//!
//! Defaults are those of Vast's CLI (`vastai create endpoint`). Create bodies may send `null`
//! for any of them (the CLI does): `null` means "default" on create and "unchanged" on update.
//!
//! # Workergroups
//!
//! Vast's fields are stored as given (`template_hash`, `template_id`, `search_params`,
//! `launch_args`, `gpu_ram`, `test_workers`, ...). Ferry's own: `model_cmd` (the model server
//! command the local provider runs), `worker_cmd` (a worker command replacing `ferry worker`,
//! e.g. an official PyWorker script), `backend` (the worker preset, `BACKEND`), `env` (extra
//! environment for both processes) and `max_workers` (a per-group cap). They can be given as top-level keys or, since the
//! official client only forwards Vast's fields, as a JSON object in `launch_args`, e.g.
//! `launch_args='{"backend": "tgi", "model_cmd": "text-generation-launcher --port {model_port}"}'`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ControlError;

/// Endpoint state as Vast names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// The autoscaler manages the endpoint.
    #[default]
    Active,
    /// The autoscaler leaves it alone; workers keep their state.
    Suspended,
    /// Every worker is stopped.
    Stopped,
}

impl EndpointState {
    fn parse(s: &str) -> Option<EndpointState> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Some(EndpointState::Active),
            "suspended" => Some(EndpointState::Suspended),
            "stopped" => Some(EndpointState::Stopped),
            _ => None,
        }
    }
}

/// Scaling and routing parameters of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointParams {
    /// Floor on predicted load.
    pub min_load: f64,
    /// Floor on total capacity.
    pub min_cold_load: f64,
    /// Target utilisation of active capacity, (0, 1].
    pub target_util: f64,
    /// Total capacity multiple of active capacity.
    pub cold_mult: f64,
    /// Loaded workers kept (ready or stopped).
    pub cold_workers: u32,
    /// Hard cap on workers.
    pub max_workers: u32,
    /// Per-worker queue time limit for routing, seconds.
    pub max_queue_time: f64,
    /// Endpoint queue time that triggers scale-up, seconds.
    pub target_queue_time: f64,
    /// Idle seconds before scale to zero (see module docs).
    pub inactivity_timeout: Option<f64>,
    /// Managed, suspended or stopped.
    pub endpoint_state: EndpointState,
}

impl Default for EndpointParams {
    fn default() -> Self {
        EndpointParams {
            min_load: 0.0,
            min_cold_load: 0.0,
            target_util: 0.9,
            cold_mult: 2.5,
            cold_workers: 5,
            max_workers: 20,
            max_queue_time: 30.0,
            target_queue_time: 10.0,
            inactivity_timeout: None,
            endpoint_state: EndpointState::Active,
        }
    }
}

/// A stored endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Id.
    pub id: i64,
    /// Name used by `/route/`.
    pub endpoint_name: String,
    /// The endpoint's own key for `/route/` and the gateway.
    pub api_key: String,
    /// Unix seconds.
    pub created_at: f64,
    /// `autoscaler_instance` as sent (informational).
    #[serde(default)]
    pub autoscaler_instance: Option<String>,
    /// Parameters.
    #[serde(flatten)]
    pub params: EndpointParams,
}

impl Endpoint {
    /// The record as the endpoint API returns it (Vast's `EndpointData` keys).
    pub fn to_api(&self) -> Value {
        let mut v = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        v.insert("user_id".into(), Value::from(1));
        v.insert("auto_delete_in_seconds".into(), Value::Null);
        v.insert("auto_delete_due_24h".into(), Value::Bool(false));
        Value::Object(v)
    }
}

fn num(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, ControlError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ControlError::BadRequest(format!("{key}: not a finite number"))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| ControlError::BadRequest(format!("{key}: not a number"))),
        Some(_) => Err(ControlError::BadRequest(format!("{key}: not a number"))),
    }
}

fn count(body: &Map<String, Value>, key: &str) -> Result<Option<u32>, ControlError> {
    match num(body, key)? {
        None => Ok(None),
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX) => Ok(Some(f as u32)),
        Some(_) => Err(ControlError::BadRequest(format!(
            "{key}: must be a non-negative integer"
        ))),
    }
}

fn text(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ControlError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ControlError::BadRequest(format!("{key}: must be a string"))),
    }
}

/// Checks Vast's endpoint name rule: `^[a-zA-Z0-9_-]+$`, at most 255 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Applies the parameter keys present (and non-null) in `body` to `p`, validating each.
pub fn apply_params(p: &mut EndpointParams, body: &Map<String, Value>) -> Result<(), ControlError> {
    let nonneg = |k: &str, v: f64| {
        if v < 0.0 {
            Err(ControlError::BadRequest(format!("{k}: must be >= 0")))
        } else {
            Ok(v)
        }
    };
    if let Some(v) = num(body, "min_load")? {
        p.min_load = nonneg("min_load", v)?;
    }
    if let Some(v) = num(body, "min_cold_load")? {
        p.min_cold_load = nonneg("min_cold_load", v)?;
    }
    if let Some(v) = num(body, "target_util")? {
        if !(v > 0.0 && v <= 1.0) {
            return Err(ControlError::BadRequest(
                "target_util: must be in (0, 1]".into(),
            ));
        }
        p.target_util = v;
    }
    if let Some(v) = num(body, "cold_mult")? {
        p.cold_mult = nonneg("cold_mult", v)?;
    }
    if let Some(v) = count(body, "cold_workers")? {
        p.cold_workers = v;
    }
    if let Some(v) = count(body, "max_workers")? {
        p.max_workers = v;
    }
    if let Some(v) = num(body, "max_queue_time")? {
        p.max_queue_time = nonneg("max_queue_time", v)?;
    }
    if let Some(v) = num(body, "target_queue_time")? {
        p.target_queue_time = nonneg("target_queue_time", v)?;
    }
    if let Some(v) = num(body, "inactivity_timeout")? {
        p.inactivity_timeout = Some(v);
    }
    if let Some(s) = text(body, "endpoint_state")? {
        p.endpoint_state = EndpointState::parse(&s).ok_or_else(|| {
            ControlError::BadRequest("endpoint_state: must be active, suspended or stopped".into())
        })?;
    }
    Ok(())
}

/// Reads the endpoint name and `autoscaler_instance` of a create/update body.
pub fn name_of(body: &Map<String, Value>) -> Result<Option<String>, ControlError> {
    match text(body, "endpoint_name")? {
        None => Ok(None),
        Some(n) if valid_name(&n) => Ok(Some(n)),
        Some(_) => Err(ControlError::BadRequest(
            "endpoint_name: must match ^[a-zA-Z0-9_-]+$ (at most 255 characters)".into(),
        )),
    }
}

/// `autoscaler_instance` of a body.
pub fn instance_of(body: &Map<String, Value>) -> Result<Option<String>, ControlError> {
    text(body, "autoscaler_instance")
}

/// A stored workergroup (Vast calls them autojobs too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workergroup {
    /// Id.
    pub id: i64,
    /// Owning endpoint.
    pub endpoint_id: i64,
    /// Owning endpoint's name.
    pub endpoint_name: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Ferry: model server command (see [`crate::provider::LaunchSpec`]).
    #[serde(default)]
    pub model_cmd: Option<String>,
    /// Ferry: worker command replacing `ferry worker` (see [`crate::provider::LaunchSpec`]).
    #[serde(default)]
    pub worker_cmd: Option<String>,
    /// Ferry: worker preset.
    #[serde(default)]
    pub backend: Option<String>,
    /// Ferry: extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Optional per-group cap on workers.
    #[serde(default)]
    pub max_workers: Option<u32>,
    /// Every other field as sent (Vast's `template_hash`, `search_params`, ...).
    #[serde(flatten)]
    pub vast: Map<String, Value>,
}

const WG_FERRY_KEYS: [&str; 5] = ["model_cmd", "worker_cmd", "backend", "env", "max_workers"];
const WG_DROP_KEYS: [&str; 8] = [
    "id",
    "endpoint_id",
    "endpoint_name",
    "created_at",
    "client_id",
    "api_key",
    "autojob_id",
    "workergroup_id",
];

/// Applies a workergroup create/update body (endpoint fields resolved by the caller).
pub fn apply_workergroup(
    wg: &mut Workergroup,
    body: &Map<String, Value>,
) -> Result<(), ControlError> {
    let mut ferry = Map::new();
    if let Some(Value::String(la)) = body.get("launch_args") {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(la) {
            ferry.extend(m);
        }
    }
    for k in WG_FERRY_KEYS {
        if let Some(v) = body.get(k) {
            if !v.is_null() {
                ferry.insert(k.to_owned(), v.clone());
            }
        }
    }
    if let Some(v) = text(&ferry, "model_cmd")? {
        if v.trim().is_empty() {
            return Err(ControlError::BadRequest(
                "model_cmd: must not be empty".into(),
            ));
        }
        wg.model_cmd = Some(v);
    }
    if let Some(v) = text(&ferry, "worker_cmd")? {
        if v.trim().is_empty() {
            return Err(ControlError::BadRequest(
                "worker_cmd: must not be empty".into(),
            ));
        }
        wg.worker_cmd = Some(v);
    }
    if let Some(v) = text(&ferry, "backend")? {
        wg.backend = Some(v);
    }
    if let Some(v) = ferry.get("env") {
        let Value::Object(m) = v else {
            return Err(ControlError::BadRequest(
                "env: must be an object of strings".into(),
            ));
        };
        let mut env = BTreeMap::new();
        for (k, v) in m {
            let Value::String(s) = v else {
                return Err(ControlError::BadRequest(format!(
                    "env.{k}: must be a string"
                )));
            };
            env.insert(k.clone(), s.clone());
        }
        wg.env = env;
    }
    if let Some(v) = count(&ferry, "max_workers")? {
        wg.max_workers = Some(v);
    }
    for (k, v) in body {
        if WG_FERRY_KEYS.contains(&k.as_str()) || WG_DROP_KEYS.contains(&k.as_str()) {
            continue;
        }
        if v.is_null() {
            continue;
        }
        wg.vast.insert(k.clone(), v.clone());
    }
    Ok(())
}

impl Workergroup {
    /// The record as the API returns it.
    pub fn to_api(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(v) => v,
            Err(_) => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn params_nulls_and_validation() {
        let mut p = EndpointParams::default();
        let body = json!({"min_load": 5, "max_queue_time": null, "endpoint_state": "stopped",
                          "cold_workers": 0, "inactivity_timeout": -1});
        apply_params(&mut p, body.as_object().unwrap()).unwrap();
        assert_eq!(p.min_load, 5.0);
        assert_eq!(p.max_queue_time, 30.0);
        assert_eq!(p.cold_workers, 0);
        assert_eq!(p.inactivity_timeout, Some(-1.0));
        assert_eq!(p.endpoint_state, EndpointState::Stopped);
        for bad in [
            json!({"target_util": 0}),
            json!({"target_util": 1.5}),
            json!({"max_workers": -1}),
            json!({"cold_workers": 1.5}),
            json!({"min_load": "x"}),
            json!({"endpoint_state": "gone"}),
        ] {
            let before = p.clone();
            assert!(
                apply_params(&mut p, bad.as_object().unwrap()).is_err(),
                "{bad}"
            );
            let _ = before;
        }
        assert!(valid_name("a-b_9"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
    }

    #[test]
    fn workergroup_launch_args_json() {
        let mut wg = Workergroup {
            id: 1,
            endpoint_id: 2,
            endpoint_name: "e".into(),
            created_at: 0.0,
            model_cmd: None,
            worker_cmd: None,
            backend: None,
            env: BTreeMap::new(),
            max_workers: None,
            vast: Map::new(),
        };
        let body = json!({"template_hash": "abc", "search_params": "gpu_ram>=23",
                          "launch_args": "{\"backend\": \"tgi\", \"env\": {\"A\": \"1\"}}",
                          "client_id": "me", "gpu_ram": null});
        apply_workergroup(&mut wg, body.as_object().unwrap()).unwrap();
        assert_eq!(wg.backend.as_deref(), Some("tgi"));
        assert_eq!(wg.env.get("A").map(String::as_str), Some("1"));
        let api = wg.to_api();
        assert_eq!(api["template_hash"], "abc");
        assert_eq!(api["endpoint_id"], 2);
        assert!(api.get("client_id").is_none());
    }
}
