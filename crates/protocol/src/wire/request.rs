//! The body a client POSTs to a worker route: `{"auth_data": .., "payload": .., "session_id": ..}`.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::auth::{AuthData, FieldErrors};

/// A parsed worker request, payload as a JSON value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRequest {
    /// The signed routing ticket.
    pub auth_data: AuthData,
    /// The model payload (always a JSON object once parsed).
    pub payload: Value,
    /// The session the request belongs to, if any.
    pub session_id: Option<String>,
}

/// A parsed worker request whose payload is left as the exact bytes the client sent, so it can
/// be forwarded without a re-serialization pass (and with its key order intact).
#[derive(Debug, Clone)]
pub struct RawWorkerRequest<'a> {
    /// The signed routing ticket.
    pub auth_data: AuthData,
    /// The model payload, verbatim (always a JSON object).
    pub payload: &'a RawValue,
    /// The session the request belongs to, if any.
    pub session_id: Option<String>,
}

/// What is wrong with the `auth_data` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDataIssue {
    /// No `auth_data` key: Vast's `"field missing"`.
    Missing,
    /// Present but incomplete or mistyped.
    Fields(FieldErrors),
}

/// What is wrong with the `payload` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadIssue {
    /// No `payload` key: Vast's `"field missing"`.
    Missing,
    /// Present but not a JSON object (Vast's generic handler requires a dict).
    NotObject,
}

/// A worker request Vast's worker would refuse before looking at the signature.
///
/// [`RequestError::status`] and [`RequestError::body`] are exactly what Vast answers (vastai 1.9.1
/// `backend.py` `__handle_request`, `data_types.py` `get_data_from_request`):
///
/// | case | status | body |
/// |---|---|---|
/// | not JSON | 422 | `{"error": "invalid JSON"}` |
/// | no `auth_data` | 422 | `{"auth_data": "field missing"}` |
/// | `auth_data` incomplete | 422 | `{"auth_data": {"<field>": "missing parameter", ..}}` |
/// | no `payload` | 422 | `{"payload": "field missing"}` |
/// | `payload` not an object | 422 | `{"payload": {"data": "payload must be a dictionary"}}` |
/// | `session_id` neither string nor null | 410 | `{"error": "invalid session"}` |
///
/// Vast collects the `auth_data` and `payload` problems into one dict, so when both are wrong
/// the body carries both keys (`auth_data` first); it never stops at the first. A body that is
/// valid JSON but not an object counts as both members missing (Vast's answer for an array or a
/// string; for a number, `true` or `null` it crashes with a 500). The session check comes after
/// the 422 checks, as in Vast, where a non-string id simply fails the session lookup (a list or
/// object id crashes Vast's lookup with a 500; Ferry answers 410 for those too).
///
/// Two inputs Python's `json.loads` takes and `serde_json` refuses, answered here with the
/// invalid-JSON 422: the non-standard literals `NaN`/`Infinity`, and strings holding a lone
/// UTF-16 surrogate escape such as `"\ud800"`. Neither occurs in traffic from Vast's client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON (or not UTF-8, where Vast would give a 500).
    #[error("request body is not valid JSON")]
    InvalidJson,
    /// `auth_data` and/or `payload` are missing or malformed.
    #[error("invalid request fields")]
    Invalid {
        /// The `auth_data` problem, if any.
        auth_data: Option<AuthDataIssue>,
        /// The `payload` problem, if any.
        payload: Option<PayloadIssue>,
    },
    /// `session_id` is present and neither a string nor `null`: no session can match it.
    #[error("session_id is not a string")]
    InvalidSession,
}

impl RequestError {
    /// Short fixed identifier for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::InvalidJson => "invalid_json",
            RequestError::Invalid { .. } => "invalid_fields",
            RequestError::InvalidSession => "invalid_session",
        }
    }

    /// HTTP status Vast uses: 422, or 410 for [`RequestError::InvalidSession`].
    pub fn status(&self) -> u16 {
        match self {
            RequestError::InvalidSession => 410,
            _ => 422,
        }
    }

    /// The JSON body Vast returns, see the table on [`RequestError`].
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        match self {
            RequestError::InvalidJson => {
                body.insert("error".into(), "invalid JSON".into());
            }
            RequestError::InvalidSession => {
                body.insert("error".into(), "invalid session".into());
            }
            RequestError::Invalid { auth_data, payload } => {
                match auth_data {
                    Some(AuthDataIssue::Missing) => {
                        body.insert("auth_data".into(), "field missing".into());
                    }
                    Some(AuthDataIssue::Fields(errors)) => {
                        body.insert("auth_data".into(), errors.to_value());
                    }
                    None => {}
                }
                match payload {
                    Some(PayloadIssue::Missing) => {
                        body.insert("payload".into(), "field missing".into());
                    }
                    Some(PayloadIssue::NotObject) => {
                        let mut inner = Map::new();
                        inner.insert("data".into(), "payload must be a dictionary".into());
                        body.insert("payload".into(), Value::Object(inner));
                    }
                    None => {}
                }
            }
        }
        Value::Object(body)
    }
}

/// Parses a worker request body; see [`RequestError`] for the refusals.
pub fn parse_worker_request(body: &[u8]) -> Result<WorkerRequest, RequestError> {
    let raw = parse_worker_request_raw(body)?;
    let payload = serde_json::from_str(raw.payload.get()).map_err(|_| RequestError::InvalidJson)?;
    Ok(WorkerRequest {
        auth_data: raw.auth_data,
        payload,
        session_id: raw.session_id,
    })
}

/// [`parse_worker_request`] without materialising the payload: same checks, same errors.
pub fn parse_worker_request_raw(body: &[u8]) -> Result<RawWorkerRequest<'_>, RequestError> {
    let top: Top<'_> = serde_json::from_slice(body).map_err(|_| RequestError::InvalidJson)?;
    let members = match top {
        Top::Object(m) => m,
        Top::Other => Members::default(),
    };

    let auth_data = match members.auth_data {
        None => Err(AuthDataIssue::Missing),
        Some(raw) if is_object(raw) => {
            let obj: Map<String, Value> =
                serde_json::from_str(raw.get()).map_err(|_| RequestError::InvalidJson)?;
            AuthData::from_object(obj).map_err(AuthDataIssue::Fields)
        }
        // Vast reports every field missing for an array or string here; Ferry does so for any
        // non-object rather than crash as Vast does on a number or null.
        Some(_) => Err(AuthDataIssue::Fields(FieldErrors::all_missing())),
    };
    let payload = match members.payload {
        None => Err(PayloadIssue::Missing),
        Some(raw) if is_object(raw) => Ok(raw),
        Some(_) => Err(PayloadIssue::NotObject),
    };

    let (auth_data, payload) = match (auth_data, payload) {
        (Ok(a), Ok(p)) => (a, p),
        (a, p) => {
            return Err(RequestError::Invalid {
                auth_data: a.err(),
                payload: p.err(),
            })
        }
    };

    let session_id = match members.session_id {
        None => None,
        Some(raw) => match serde_json::from_str::<Option<String>>(raw.get()) {
            Ok(id) => id,
            Err(_) => return Err(RequestError::InvalidSession),
        },
    };

    Ok(RawWorkerRequest {
        auth_data,
        payload,
        session_id,
    })
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// The three members Vast looks at, borrowed from the body; the last occurrence of a repeated
/// key wins, as with Python's `json.loads`.
#[derive(Default)]
struct Members<'a> {
    auth_data: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    session_id: Option<&'a RawValue>,
}

enum Top<'a> {
    Object(Members<'a>),
    /// Valid JSON that is not an object.
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopVisitor(std::marker::PhantomData))
    }
}

struct TopVisitor<'a>(std::marker::PhantomData<&'a ()>);

enum Key {
    AuthData,
    Payload,
    SessionId,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "auth_data" => Key::AuthData,
                    "payload" => Key::Payload,
                    "session_id" => Key::SessionId,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for TopVisitor<'a> {
    type Value = Top<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'a>, A::Error> {
        let mut m = Members::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::AuthData => m.auth_data = Some(map.next_value()?),
                Key::Payload => m.payload = Some(map.next_value()?),
                Key::SessionId => m.session_id = Some(map.next_value()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Top::Object(m))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top<'a>, E> {
        Ok(Top::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top<'a>, E> {
        Ok(Top::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top<'a>, E> {
        Ok(Top::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'a>, E> {
        Ok(Top::Other)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Top<'a>, E> {
        Ok(Top::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top<'a>, E> {
        Ok(Top::Other)
    }
}

impl RawWorkerRequest<'_> {
    /// Converts to a [`WorkerRequest`] by parsing the payload.
    pub fn to_owned_request(&self) -> Result<WorkerRequest, serde_json::Error> {
        Ok(WorkerRequest {
            auth_data: self.auth_data.clone(),
            payload: serde_json::from_str(self.payload.get())?,
            session_id: self.session_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth() -> Value {
        json!({
            "__request_id": "r-1",
            "cost": 100.0,
            "endpoint": "ep",
            "reqnum": 3,
            "request_idx": 25,
            "signature": "c2ln",
            "url": "http://1.2.3.4:5"
        })
    }

    fn parse(v: &Value) -> Result<WorkerRequest, RequestError> {
        parse_worker_request(&serde_json::to_vec(v).expect("ser"))
    }

    fn body_of(v: &Value) -> Value {
        parse(v).unwrap_err().body()
    }

    #[test]
    fn parses_the_client_shape() {
        let req = parse(&json!({"auth_data": auth(), "session_id": null, "payload": {"a": 1}}))
            .expect("valid");
        assert_eq!(req.auth_data.request_idx, 25);
        assert_eq!(req.auth_data.request_id(), Some("r-1"));
        assert_eq!(req.payload, json!({"a": 1}));
        assert_eq!(req.session_id, None);
        let req = parse(&json!({"auth_data": auth(), "payload": {}, "session_id": "abc"}))
            .expect("valid");
        assert_eq!(req.session_id.as_deref(), Some("abc"));
    }

    #[test]
    fn invalid_json() {
        for body in [
            &b""[..],
            b"{",
            b"{\"a\":1} x",
            b"\xff",
            b"NaN",
            b"{\"a\": NaN}",
        ] {
            let err = parse_worker_request(body).unwrap_err();
            assert_eq!(err, RequestError::InvalidJson);
            assert_eq!(err.body(), json!({"error": "invalid JSON"}));
            assert_eq!((err.status(), err.code()), (422, "invalid_json"));
        }
    }

    #[test]
    fn missing_members() {
        assert_eq!(
            body_of(&json!({"payload": {}})),
            json!({"auth_data": "field missing"})
        );
        assert_eq!(
            body_of(&json!({"auth_data": auth()})),
            json!({"payload": "field missing"})
        );
        assert_eq!(
            body_of(&json!({})),
            json!({"auth_data": "field missing", "payload": "field missing"})
        );
    }

    #[test]
    fn auth_fields_and_payload_errors_are_merged() {
        let err =
            parse(&json!({"auth_data": {"url": "u", "cost": 1}, "payload": [1]})).unwrap_err();
        assert_eq!(err.code(), "invalid_fields");
        assert_eq!(
            err.body(),
            json!({
                "auth_data": {
                    "endpoint": "missing parameter",
                    "reqnum": "missing parameter",
                    "request_idx": "missing parameter",
                    "signature": "missing parameter"
                },
                "payload": {"data": "payload must be a dictionary"}
            })
        );
        // Key order in the serialized body is auth_data first, as in Vast.
        let text = serde_json::to_string(&err.body()).expect("ser");
        assert!(text.find("auth_data") < text.find("payload"));
    }

    #[test]
    fn null_payload_is_not_a_dictionary() {
        assert_eq!(
            body_of(&json!({"auth_data": auth(), "payload": null})),
            json!({"payload": {"data": "payload must be a dictionary"}})
        );
    }

    #[test]
    fn non_object_auth_data_reports_every_field() {
        let body = body_of(&json!({"auth_data": "x", "payload": {}}));
        assert_eq!(body["auth_data"].as_object().map(|o| o.len()), Some(6));
    }

    #[test]
    fn non_object_body_is_both_missing() {
        for v in [
            json!([1, 2]),
            json!("s"),
            json!(1),
            json!(null),
            json!(true),
        ] {
            assert_eq!(
                body_of(&v),
                json!({"auth_data": "field missing", "payload": "field missing"})
            );
        }
    }

    #[test]
    fn session_id_types() {
        let err = parse(&json!({"auth_data": auth(), "payload": {}, "session_id": 5})).unwrap_err();
        assert_eq!(err, RequestError::InvalidSession);
        assert_eq!(
            (err.status(), err.body()),
            (410, json!({"error": "invalid session"}))
        );
        // 422 problems win over a bad session id, as in Vast.
        let err = parse(&json!({"payload": {}, "session_id": 5})).unwrap_err();
        assert_eq!(err.status(), 422);
    }

    #[test]
    fn last_duplicate_key_wins() {
        let body = br#"{"payload": 1, "payload": {"k": 2}, "auth_data": {}, "auth_data": AUTH}"#;
        let text = String::from_utf8_lossy(body).replace("AUTH", &auth().to_string());
        let req = parse_worker_request(text.as_bytes()).expect("valid");
        assert_eq!(req.payload, json!({"k": 2}));
    }

    #[test]
    fn raw_payload_is_verbatim() {
        let body = format!(
            r#"{{ "payload" :  {{"z": 1, "a": [1.50, "\u00e9"]}} , "auth_data": {} }}"#,
            auth()
        );
        let req = parse_worker_request_raw(body.as_bytes()).expect("valid");
        assert_eq!(req.payload.get(), r#"{"z": 1, "a": [1.50, "\u00e9"]}"#);
        assert_eq!(
            req.to_owned_request().expect("parse").payload,
            json!({"z": 1, "a": [1.5, "é"]})
        );
    }
}
