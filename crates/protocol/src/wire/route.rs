//! `POST /route/`: the client asks the control plane for a worker.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::auth::{as_index, AuthData, Cost};

fn default_cost() -> f64 {
    100.0
}

/// Body of `POST /route/`, as the vastai SDK sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRequest {
    /// Endpoint name.
    pub endpoint: String,
    /// The endpoint's own API key (also sent as a Bearer token and `?api_key=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Estimated workload of the request; Vast's default is 100.
    #[serde(default = "default_cost")]
    pub cost: f64,
    /// 0 for a new request; the earlier answer's `request_idx` when polling or retrying, so the
    /// control plane counts the request once.
    #[serde(default)]
    pub request_idx: u64,
    /// Sent as 60.0 by the SDK; its server-side meaning is undocumented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_timeout: Option<f64>,
}

/// `/route/` answer when a worker was chosen. The client forwards this whole object to the
/// worker as `auth_data` (see [`RouteReady::into_auth_data`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteReady {
    /// Per-call id for logs (a UUID on Vast).
    #[serde(
        rename = "__request_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub request_id: Option<String>,
    /// The cost routed with.
    pub cost: f64,
    /// Endpoint name.
    pub endpoint: String,
    /// Per-worker request counter.
    pub reqnum: u64,
    /// Lifetime id of the logical request.
    pub request_idx: u64,
    /// Base64 signature over [`crate::vast_message`]`(url)`.
    pub signature: String,
    /// The chosen worker's base URL.
    pub url: String,
    /// Ferry token expiry, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ferry_exp: Option<u64>,
    /// Ferry v1 token: RSA signature (for workers that do not announce `ferry_mac`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ferry_sig: Option<String>,
    /// Ferry v2 token: HMAC-SHA256 tag under the chosen worker's [`crate::TokenKey`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ferry_mac: Option<String>,
    /// Any other keys, kept so the object reaches the worker whole.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RouteReady {
    /// The `auth_data` object the client sends to the worker: this answer, unchanged.
    pub fn into_auth_data(self) -> AuthData {
        let mut extra = self.extra;
        if let Some(id) = self.request_id {
            extra.insert("__request_id".into(), Value::String(id));
        }
        AuthData {
            cost: Cost::Number(self.cost),
            endpoint: self.endpoint,
            reqnum: self.reqnum,
            request_idx: self.request_idx,
            signature: self.signature,
            url: self.url,
            ferry_exp: self.ferry_exp,
            ferry_sig: self.ferry_sig,
            ferry_mac: self.ferry_mac,
            extra,
        }
    }
}

/// `/route/` answer when no worker is ready yet; the client polls again with the same cost and
/// `request_idx`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteWaiting {
    /// Endpoint name.
    #[serde(default)]
    pub endpoint: String,
    /// Human-readable breakdown, e.g. `"total workers: 2, loading workers: 1, standby workers:
    /// 1, error workers: 0"`.
    #[serde(default)]
    pub status: String,
    /// The request's index if assigned; 0 when absent. The Python client keeps its previous
    /// index when this is 0 (`route.request_idx or request_idx`).
    #[serde(default)]
    pub request_idx: u64,
    /// Per-call id for logs.
    #[serde(
        rename = "__request_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub request_id: Option<String>,
}

/// Either `/route/` answer. Like the Python client, a body is [`RouteResponse::Ready`] iff it
/// has a `url` key, whatever else it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RouteResponse {
    /// A worker was chosen.
    Ready(RouteReady),
    /// Keep polling.
    Waiting(RouteWaiting),
}

impl RouteResponse {
    /// The request index to reuse on the next poll or retry (0 when the answer has none).
    pub fn request_idx(&self) -> u64 {
        match self {
            RouteResponse::Ready(r) => r.request_idx,
            RouteResponse::Waiting(w) => w.request_idx,
        }
    }
}

impl<'de> Deserialize<'de> for RouteResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RouteResponse, D::Error> {
        use serde::de::Error;
        let mut obj = Map::<String, Value>::deserialize(d)?;
        if obj.contains_key("url") {
            serde_json::from_value(Value::Object(obj))
                .map(RouteResponse::Ready)
                .map_err(D::Error::custom)
        } else {
            // Waiting bodies are informational; read them leniently.
            let text = |v: Option<Value>| match v {
                Some(Value::String(s)) => s,
                _ => String::new(),
            };
            Ok(RouteResponse::Waiting(RouteWaiting {
                endpoint: text(obj.remove("endpoint")),
                status: text(obj.remove("status")),
                request_idx: obj.get("request_idx").and_then(as_index).unwrap_or(0),
                request_id: obj
                    .remove("__request_id")
                    .and_then(|v| v.as_str().map(str::to_owned)),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ready() -> Value {
        json!({
            "__request_id": "7304d39d",
            "cost": 100.0,
            "endpoint": "ep",
            "reqnum": 0,
            "request_idx": 25,
            "signature": "c2ln",
            "url": "https://217.63.96.43:32518"
        })
    }

    #[test]
    fn route_request_defaults() {
        let r: RouteRequest = serde_json::from_value(json!({"endpoint": "ep"})).expect("de");
        assert_eq!((r.cost, r.request_idx), (100.0, 0));
        assert_eq!(
            serde_json::to_value(&r).expect("ser"),
            json!({"endpoint": "ep", "cost": 100.0, "request_idx": 0})
        );
        let sdk = json!({"endpoint": "ep", "api_key": "k", "cost": 100, "request_idx": 0,
                         "replay_timeout": 60.0});
        let r: RouteRequest = serde_json::from_value(sdk).expect("de");
        assert_eq!(r.replay_timeout, Some(60.0));
    }

    #[test]
    fn ready_iff_url() {
        let r: RouteResponse = serde_json::from_value(ready()).expect("de");
        let RouteResponse::Ready(ready_body) = &r else {
            panic!("expected ready, got {r:?}");
        };
        assert_eq!(ready_body.request_id.as_deref(), Some("7304d39d"));
        assert_eq!(r.request_idx(), 25);
        assert_eq!(serde_json::to_value(&r).expect("ser"), ready());

        let w: RouteResponse = serde_json::from_value(json!({
            "endpoint": "ep", "status": "total workers: 1, loading workers: 1",
            "__request_id": "x"
        }))
        .expect("de");
        let RouteResponse::Waiting(waiting) = &w else {
            panic!("expected waiting, got {w:?}");
        };
        assert_eq!(waiting.request_idx, 0);
        assert_eq!(waiting.request_id.as_deref(), Some("x"));
        assert_eq!(
            serde_json::to_value(&w).expect("ser"),
            json!({"endpoint": "ep", "status": "total workers: 1, loading workers: 1",
                   "request_idx": 0, "__request_id": "x"})
        );

        let w: RouteResponse =
            serde_json::from_value(json!({"request_idx": 9, "status": "queued"})).expect("de");
        assert_eq!(w.request_idx(), 9);
        // A url makes it Ready even without the rest, so the missing fields are an error.
        assert!(serde_json::from_value::<RouteResponse>(json!({"url": "u"})).is_err());
    }

    #[test]
    fn ready_becomes_auth_data_unchanged() {
        let mut v = ready();
        v["ferry_exp"] = json!(1_700_000_000u64);
        v["ferry_sig"] = json!("sig");
        v["ferry_mac"] = json!("mac");
        v["future_key"] = json!([1]);
        let r: RouteReady = serde_json::from_value(v.clone()).expect("de");
        assert_eq!(r.extra.get("future_key"), Some(&json!([1])));
        let auth = r.into_auth_data();
        assert_eq!(serde_json::to_value(&auth).expect("ser"), v);
        assert_eq!(AuthData::from_value(&v).expect("auth"), auth);
    }
}
