//! Session messages: `/session/create`, `/session/get`, `/session/health`, `/session/end`.
//!
//! A session reserves a worker: the client creates it through the normal route → worker flow
//! (worker route `/session/create`, the `payload` being a [`SessionCreate`]), then sends requests
//! with `session_id` set and its original `auth_data`, and finally ends it. The three management
//! calls identify the session by a [`SessionRef`], whose `session_auth` must equal the
//! `auth_data` the session was created with.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn default_lifetime() -> f64 {
    60.0
}

/// The `payload` of a `/session/create` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreate {
    /// Seconds the session lives, and the extension each request inside it grants.
    #[serde(default = "default_lifetime")]
    pub lifetime: f64,
    /// URL the worker POSTs to when the session closes (best effort, 10 s timeout).
    #[serde(default)]
    pub on_close_route: Option<String>,
    /// Body for that POST. Vast keeps it only when `on_close_route` is set.
    #[serde(default)]
    pub on_close_payload: Option<Value>,
}

impl Default for SessionCreate {
    fn default() -> Self {
        SessionCreate {
            lifetime: default_lifetime(),
            on_close_route: None,
            on_close_payload: None,
        }
    }
}

/// `201` answer to `/session/create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// 13 random ASCII letters and digits on Vast.
    pub session_id: String,
    /// Unix seconds.
    pub expiration: f64,
}

/// Body of `/session/get`, `/session/health` and `/session/end`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionRef {
    /// The session to act on.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Must equal the session's `auth_data`.
    #[serde(default)]
    pub session_auth: Option<Value>,
}

impl SessionRef {
    /// The id, treating `""` as absent as Vast's `if not session_id` does (→ 422
    /// `{"error": "missing session_id"}`).
    pub fn id(&self) -> Option<&str> {
        self.session_id.as_deref().filter(|s| !s.is_empty())
    }
}

/// `200` answer to `/session/get`. `on_close_*` are written as `null` when unset, as Vast does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's id.
    pub session_id: String,
    /// The `auth_data` the session was created with.
    pub auth_data: Value,
    /// Seconds each request extends the session by.
    pub lifetime: f64,
    /// Unix seconds.
    pub expiration: f64,
    /// Unix seconds.
    pub created_at: f64,
    /// Close callback URL.
    pub on_close_route: Option<String>,
    /// Close callback body.
    pub on_close_payload: Option<Value>,
}

/// `{"ok": bool}`: `/session/health` (false for an unknown session) and `/pyworker/update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OkBody {
    /// The answer.
    pub ok: bool,
}

/// `200` answer to `/session/end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    /// Always true.
    pub ended: bool,
    /// The id of the session removed.
    pub removed_session: String,
}

impl SessionEnded {
    /// The answer for ending `session_id`.
    pub fn new(session_id: impl Into<String>) -> Self {
        SessionEnded {
            ended: true,
            removed_session: session_id.into(),
        }
    }
}

/// `{"error": "..."}`, the body of every error Vast's worker and control plane describe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message.
    pub error: String,
}

impl ErrorBody {
    /// An error body with this message.
    pub fn new(error: impl Into<String>) -> Self {
        ErrorBody {
            error: error.into(),
        }
    }
}

/// The JSON body Vast's worker POSTs to `on_close_route` when a session closes: a copy of an
/// object `on_close_payload` (or `{}` when there is none) with `session_id` added unless already
/// present; any other payload is wrapped as `{"payload": <it>, "session_id": <id>}`.
pub fn session_close_body(on_close_payload: Option<&Value>, session_id: &str) -> Value {
    let mut body = match on_close_payload {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(obj)) => obj.clone(),
        Some(other) => {
            let mut m = Map::new();
            m.insert("payload".into(), other.clone());
            m
        }
    };
    body.entry("session_id")
        .or_insert_with(|| Value::String(session_id.to_owned()));
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_defaults_and_client_shape() {
        let c: SessionCreate = serde_json::from_value(json!({})).expect("de");
        assert_eq!(c, SessionCreate::default());
        assert_eq!(c.lifetime, 60.0);
        let c: SessionCreate = serde_json::from_value(
            json!({"lifetime": 60, "on_close_route": null, "on_close_payload": null}),
        )
        .expect("client shape");
        assert_eq!(c.on_close_route, None);
    }

    #[test]
    fn bodies() {
        assert_eq!(
            serde_json::to_value(SessionCreated {
                session_id: "abcDEF0123456".into(),
                expiration: 10.5
            })
            .expect("ser"),
            json!({"session_id": "abcDEF0123456", "expiration": 10.5})
        );
        assert_eq!(
            serde_json::to_value(SessionEnded::new("s1")).expect("ser"),
            json!({"ended": true, "removed_session": "s1"})
        );
        assert_eq!(
            serde_json::to_value(OkBody { ok: false }).expect("ser"),
            json!({"ok": false})
        );
        assert_eq!(
            serde_json::to_value(ErrorBody::new("invalid session")).expect("ser"),
            json!({"error": "invalid session"})
        );
        let info = SessionInfo {
            session_id: "s".into(),
            auth_data: json!({"url": "u"}),
            lifetime: 60.0,
            expiration: 2.0,
            created_at: 1.0,
            on_close_route: None,
            on_close_payload: None,
        };
        assert_eq!(
            serde_json::to_value(&info).expect("ser"),
            json!({"session_id": "s", "auth_data": {"url": "u"}, "lifetime": 60.0,
                   "expiration": 2.0, "created_at": 1.0, "on_close_route": null,
                   "on_close_payload": null})
        );
    }

    #[test]
    fn session_ref_empty_id_is_missing() {
        let r: SessionRef = serde_json::from_value(json!({"session_id": ""})).expect("de");
        assert_eq!(r.id(), None);
        let r: SessionRef = serde_json::from_value(json!({})).expect("de");
        assert_eq!((r.id(), r.session_auth.as_ref()), (None, None));
    }

    #[test]
    fn close_body_like_vast() {
        assert_eq!(session_close_body(None, "s"), json!({"session_id": "s"}));
        assert_eq!(
            session_close_body(Some(&json!({"a": 1})), "s"),
            json!({"a": 1, "session_id": "s"})
        );
        assert_eq!(
            session_close_body(Some(&json!({"session_id": "mine"})), "s"),
            json!({"session_id": "mine"})
        );
        assert_eq!(
            session_close_body(Some(&json!([1])), "s"),
            json!({"payload": [1], "session_id": "s"})
        );
    }
}
