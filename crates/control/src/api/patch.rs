//! Console bodies → typed patches ([`EndpointPatch`], [`WorkergroupPatch`]): the one place the
//! endpoint and workergroup JSON is read.
//!
//! Read leniently, as Vast's clients send it: `null` means "not given" (the CLI sends every
//! field), numbers may come as strings, a workergroup's Ferry fields may also come as a JSON
//! object inside `launch_args` (the official client forwards only Vast's fields). Type errors
//! are answered here; ranges and rules are the patches' own [`validate`](EndpointPatch::validate).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::autoscale::AutoscalePolicy;
use crate::config::ProviderKind;
use crate::endpoint::{EndpointPatch, EndpointRef, EndpointState, WorkergroupPatch};
use crate::error::ControlError;

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError::BadRequest(msg.into())
}

fn num(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, ControlError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| bad(format!("{key}: not a finite number"))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| bad(format!("{key}: not a number"))),
        Some(_) => Err(bad(format!("{key}: not a number"))),
    }
}

fn count(body: &Map<String, Value>, key: &str) -> Result<Option<u32>, ControlError> {
    match num(body, key)? {
        None => Ok(None),
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX) => Ok(Some(f as u32)),
        Some(_) => Err(bad(format!("{key}: must be a non-negative integer"))),
    }
}

fn text(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ControlError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{key}: must be a string"))),
    }
}

/// An endpoint create/update body.
pub fn endpoint_patch(body: &Map<String, Value>) -> Result<EndpointPatch, ControlError> {
    let endpoint_state = match text(body, "endpoint_state")? {
        None => None,
        Some(s) => Some(
            EndpointState::parse(&s)
                .ok_or_else(|| bad("endpoint_state: must be active, suspended or stopped"))?,
        ),
    };
    let autoscale_policy = match text(body, "autoscale_policy")? {
        None => None,
        Some(s) => Some(
            AutoscalePolicy::parse(&s)
                .ok_or_else(|| bad("autoscale_policy: must be vast, kpa, ray or ferry"))?,
        ),
    };
    let patch = EndpointPatch {
        endpoint_name: text(body, "endpoint_name")?,
        min_load: num(body, "min_load")?,
        min_cold_load: num(body, "min_cold_load")?,
        target_util: num(body, "target_util")?,
        cold_mult: num(body, "cold_mult")?,
        cold_workers: count(body, "cold_workers")?,
        max_workers: count(body, "max_workers")?,
        max_queue_time: num(body, "max_queue_time")?,
        target_queue_time: num(body, "target_queue_time")?,
        inactivity_timeout: num(body, "inactivity_timeout")?,
        endpoint_state,
        autoscale_policy,
        autoscaler_instance: text(body, "autoscaler_instance")?,
    };
    Ok(patch)
}

/// Ferry's own workergroup fields.
const WG_FERRY_KEYS: [&str; 6] = [
    "model_cmd",
    "worker_cmd",
    "backend",
    "env",
    "max_workers",
    "provider",
];
/// Fields never stored as sent (ids, owners, credentials).
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

fn endpoint_ref(body: &Map<String, Value>) -> Result<Option<EndpointRef>, ControlError> {
    let by_id = match body.get("endpoint_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| bad("endpoint_id: must be an integer"))?,
        ),
    };
    let by_name = match body.get("endpoint_name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("endpoint_name: must be a string")),
    };
    Ok(by_id
        .map(EndpointRef::Id)
        .or(by_name.map(EndpointRef::Name)))
}

/// A workergroup create/update body.
pub fn workergroup_patch(body: &Map<String, Value>) -> Result<WorkergroupPatch, ControlError> {
    let endpoint = endpoint_ref(body)?;
    let mut ferry = Map::new();
    if let Some(Value::String(la)) = body.get("launch_args") {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(la) {
            ferry.extend(m);
        }
    }
    for k in WG_FERRY_KEYS {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            ferry.insert(k.to_owned(), v.clone());
        }
    }
    let env = match ferry.get("env") {
        None => None,
        Some(Value::Object(m)) => {
            let mut env = BTreeMap::new();
            for (k, v) in m {
                let Value::String(s) = v else {
                    return Err(bad(format!("env.{k}: must be a string")));
                };
                env.insert(k.clone(), s.clone());
            }
            Some(env)
        }
        Some(_) => return Err(bad("env: must be an object of strings")),
    };
    let vast = body
        .iter()
        .filter(|(k, v)| {
            !WG_FERRY_KEYS.contains(&k.as_str())
                && !WG_DROP_KEYS.contains(&k.as_str())
                && !v.is_null()
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let provider = match text(&ferry, "provider")? {
        None => None,
        Some(p) => Some(
            ProviderKind::parse(&p)
                .ok_or_else(|| bad("provider: must be local, external or vast"))?,
        ),
    };
    Ok(WorkergroupPatch {
        endpoint,
        provider,
        model_cmd: text(&ferry, "model_cmd")?,
        worker_cmd: text(&ferry, "worker_cmd")?,
        backend: text(&ferry, "backend")?,
        env,
        max_workers: count(&ferry, "max_workers")?,
        vast,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::endpoint::{EndpointParams, Workergroup};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn autoscale_policy_is_optional_and_checked() {
        let mut p = EndpointParams::default();
        endpoint_patch(&obj(json!({"min_load": 1})))
            .unwrap()
            .apply_params(&mut p);
        assert_eq!(p.autoscale_policy, AutoscalePolicy::Vast);
        let ferry = endpoint_patch(&obj(json!({"autoscale_policy": "Ferry"}))).unwrap();
        ferry.apply_params(&mut p);
        assert_eq!(p.autoscale_policy, AutoscalePolicy::Ferry);
        // Stored records from before the parameter existed read as Vast's.
        let old: EndpointParams = serde_json::from_value(json!({
            "min_load": 0.0, "min_cold_load": 0.0, "target_util": 0.9, "cold_mult": 2.5,
            "cold_workers": 5, "max_workers": 20, "max_queue_time": 30.0,
            "target_queue_time": 10.0, "inactivity_timeout": null, "endpoint_state": "active"
        }))
        .unwrap();
        assert_eq!(old.autoscale_policy, AutoscalePolicy::Vast);
        for bad in [
            json!({"autoscale_policy": "hpa"}),
            json!({"autoscale_policy": 1}),
        ] {
            assert!(endpoint_patch(&obj(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_nulls_and_validation() {
        let mut p = EndpointParams::default();
        let body = json!({"min_load": 5, "max_queue_time": null, "endpoint_state": "stopped",
                          "cold_workers": 0, "inactivity_timeout": -1});
        let patch = endpoint_patch(&obj(body)).unwrap();
        patch.validate().unwrap();
        patch.apply_params(&mut p);
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
            json!({"endpoint_name": "a b"}),
            json!({"endpoint_name": 3}),
        ] {
            let r = endpoint_patch(&obj(bad.clone())).and_then(|p| p.validate());
            assert!(r.is_err(), "{bad}");
        }
        // Numbers as strings, as some clients send them.
        let p = endpoint_patch(&obj(json!({"min_load": " 2.5 "}))).unwrap();
        assert_eq!(p.min_load, Some(2.5));
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
            provider: None,
            vast: Map::new(),
        };
        let body = json!({"template_hash": "abc", "search_params": "gpu_ram>=23",
                          "launch_args": "{\"backend\": \"tgi\", \"env\": {\"A\": \"1\"}}",
                          "client_id": "me", "gpu_ram": null, "endpoint_name": "e"});
        let patch = workergroup_patch(&obj(body)).unwrap();
        assert_eq!(patch.endpoint, Some(EndpointRef::Name("e".into())));
        patch.validate().unwrap();
        patch.apply(&mut wg);
        assert_eq!(wg.backend.as_deref(), Some("tgi"));
        assert_eq!(wg.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(wg.vast["template_hash"], "abc");
        assert!(wg.vast.get("client_id").is_none());
        assert!(wg.vast.get("gpu_ram").is_none());
        // The id wins over the name; bad types are refused.
        let p = workergroup_patch(&obj(json!({"endpoint_id": "7", "endpoint_name": "x"})));
        assert_eq!(p.unwrap().endpoint, Some(EndpointRef::Id(7)));
        for bad in [
            json!({"endpoint_id": "x"}),
            json!({"env": {"A": 1}}),
            json!({"env": "A=1"}),
            json!({"max_workers": -2}),
        ] {
            assert!(workergroup_patch(&obj(bad.clone())).is_err(), "{bad}");
        }
    }
}
