//! `auth_data`: the control plane's `/route/` answer, forwarded by the client to the worker.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The error text Vast's worker gives for an absent `auth_data` key.
pub const MISSING_PARAMETER: &str = "missing parameter";

/// The request's workload estimate as the control plane sent it.
///
/// Vast's dataclass annotates `cost` as `str` while the control plane sends a float; both reach
/// the worker, so both are kept, and written back in the shape they arrived in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cost {
    /// A JSON number (what `run.vast.ai` sends, e.g. `100.0`).
    Number(f64),
    /// A JSON string.
    Text(String),
}

impl Cost {
    /// The numeric value: the number itself, or the trimmed text parsed as a finite float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cost::Number(n) => Some(*n),
            Cost::Text(s) => s.trim().parse::<f64>().ok().filter(|v| v.is_finite()),
        }
    }
}

impl From<f64> for Cost {
    fn from(v: f64) -> Cost {
        Cost::Number(v)
    }
}

/// The signed routing ticket a worker receives in every request body.
///
/// Vast's worker requires the six keys `cost endpoint reqnum request_idx signature url` and
/// ignores the rest; Ferry keeps the rest in [`AuthData::extra`] (for instance `__request_id`),
/// so that re-serializing — e.g. to answer `/session/get`, or to compare `session_auth` — gives
/// the object back whole. `ferry_exp` with `ferry_mac` (v2) or `ferry_sig` (v1) carry Ferry's
/// optional token (see
/// [`crate::token`]); if they are present but of the wrong type they are left in `extra` and the
/// token counts as missing, because Vast never fails a request over a key it does not know.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthData {
    /// Workload estimate the client routed with.
    pub cost: Cost,
    /// Endpoint name.
    pub endpoint: String,
    /// Per-worker request counter assigned by the control plane.
    pub reqnum: u64,
    /// Lifetime id of the logical request (kept across retries).
    pub request_idx: u64,
    /// Base64 RSA signature over [`crate::vast_message`]`(url)`.
    pub signature: String,
    /// The worker's base URL, as it reported it.
    pub url: String,
    /// Ferry token expiry, Unix seconds.
    pub ferry_exp: Option<u64>,
    /// Ferry v1 token: RSA signature, base64.
    pub ferry_sig: Option<String>,
    /// Ferry v2 token: HMAC-SHA256 tag under the worker's [`crate::TokenKey`], base64url.
    pub ferry_mac: Option<String>,
    /// Every other key, verbatim. Must not repeat the keys above; serialization skips any that do.
    pub extra: Map<String, Value>,
}

/// Per-field problems with an `auth_data` object, in Vast's field order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors {
    errors: Vec<(&'static str, &'static str)>,
}

impl FieldErrors {
    pub(crate) fn push(&mut self, field: &'static str, message: &'static str) {
        self.errors.push((field, message));
    }

    /// `(field, message)` pairs in the order Vast reports them.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.errors.iter().copied()
    }

    /// The message for one field, if it has a problem.
    pub fn get(&self, field: &str) -> Option<&'static str> {
        self.errors
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| *m)
    }

    /// Number of fields with a problem.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// True when no field has a problem.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `{"<field>": "<message>", ...}`: the value Vast puts under `"auth_data"` in its 422 body.
    pub fn to_value(&self) -> Value {
        Value::Object(
            self.errors
                .iter()
                .map(|(f, m)| ((*f).to_owned(), Value::String((*m).to_owned())))
                .collect(),
        )
    }

    /// Short fixed identifier for logs and metrics.
    pub fn code(&self) -> &'static str {
        "invalid_auth_data"
    }

    pub(crate) fn all_missing() -> FieldErrors {
        FieldErrors {
            errors: AuthData::REQUIRED
                .iter()
                .map(|f| (*f, MISSING_PARAMETER))
                .collect(),
        }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid auth_data:")?;
        for (i, (field, message)) in self.errors.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{field} {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// Removes `name` from `obj` and converts it, recording a missing or mistyped field.
fn take<T>(
    obj: &mut Map<String, Value>,
    errors: &mut FieldErrors,
    name: &'static str,
    type_message: &'static str,
    convert: impl FnOnce(Value) -> Option<T>,
) -> Option<T> {
    match obj.remove(name) {
        None => {
            errors.push(name, MISSING_PARAMETER);
            None
        }
        Some(v) => {
            let converted = convert(v);
            if converted.is_none() {
                errors.push(name, type_message);
            }
            converted
        }
    }
}

/// A non-negative integer; an integral float such as `25.0` counts, as it does for Python.
pub(crate) fn as_index(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_992.0)
            .map(|f| f as u64)
    })
}

fn string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

impl AuthData {
    /// The keys Vast's `AuthData` dataclass requires, in its declaration order (which is also
    /// the order of the per-field errors).
    pub const REQUIRED: [&'static str; 6] = [
        "cost",
        "endpoint",
        "reqnum",
        "request_idx",
        "signature",
        "url",
    ];

    /// Validates an `auth_data` value the way Vast's `AuthData.from_json_msg` does, plus type
    /// checks Vast leaves out.
    ///
    /// - each absent required key → `"missing parameter"` (Vast's text);
    /// - a present key of the wrong type → `"must be a number or string"` (`cost`),
    ///   `"must be a non-negative integer"` (`reqnum`, `request_idx`), `"must be a string"`
    ///   (the rest). Vast does no type checks here: a wrongly typed value fails later, as a 401
    ///   (signature) or an unhandled 500. Ferry reports it in the same 422 body instead;
    /// - a value that is not an object is reported as every field missing, which is what Vast
    ///   answers for an array or a string (it crashes with a 500 for a number or `null`).
    pub fn from_value(v: &Value) -> Result<AuthData, FieldErrors> {
        match v {
            Value::Object(obj) => AuthData::from_object(obj.clone()),
            _ => Err(FieldErrors::all_missing()),
        }
    }

    /// [`AuthData::from_value`] on an owned object, without copying.
    pub fn from_object(mut obj: Map<String, Value>) -> Result<AuthData, FieldErrors> {
        let mut errors = FieldErrors::default();
        let e = &mut errors;
        let cost = take(
            &mut obj,
            e,
            "cost",
            "must be a number or string",
            |v| match v {
                Value::Number(n) => n.as_f64().map(Cost::Number),
                Value::String(s) => Some(Cost::Text(s)),
                _ => None,
            },
        );
        let endpoint = take(&mut obj, e, "endpoint", "must be a string", string);
        let reqnum = take(
            &mut obj,
            e,
            "reqnum",
            "must be a non-negative integer",
            |v| as_index(&v),
        );
        let request_idx = take(
            &mut obj,
            e,
            "request_idx",
            "must be a non-negative integer",
            |v| as_index(&v),
        );
        let signature = take(&mut obj, e, "signature", "must be a string", string);
        let url = take(&mut obj, e, "url", "must be a string", string);

        let (
            Some(cost),
            Some(endpoint),
            Some(reqnum),
            Some(request_idx),
            Some(signature),
            Some(url),
        ) = (cost, endpoint, reqnum, request_idx, signature, url)
        else {
            return Err(errors);
        };

        let ferry_exp = obj.get("ferry_exp").and_then(as_index);
        if ferry_exp.is_some() {
            obj.remove("ferry_exp");
        }
        let ferry_sig = match obj.get("ferry_sig") {
            Some(Value::String(_)) => obj.remove("ferry_sig").and_then(string),
            _ => None,
        };
        let ferry_mac = match obj.get("ferry_mac") {
            Some(Value::String(_)) => obj.remove("ferry_mac").and_then(string),
            _ => None,
        };

        Ok(AuthData {
            cost,
            endpoint,
            reqnum,
            request_idx,
            signature,
            url,
            ferry_exp,
            ferry_sig,
            ferry_mac,
            extra: obj,
        })
    }

    /// The whole object as a JSON value (known keys, then `extra`).
    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        let cost = match &self.cost {
            Cost::Number(n) => Value::from(*n),
            Cost::Text(s) => Value::String(s.clone()),
        };
        obj.insert("cost".into(), cost);
        obj.insert("endpoint".into(), self.endpoint.clone().into());
        obj.insert("reqnum".into(), self.reqnum.into());
        obj.insert("request_idx".into(), self.request_idx.into());
        obj.insert("signature".into(), self.signature.clone().into());
        obj.insert("url".into(), self.url.clone().into());
        if let Some(exp) = self.ferry_exp {
            obj.insert("ferry_exp".into(), exp.into());
        }
        if let Some(sig) = &self.ferry_sig {
            obj.insert("ferry_sig".into(), sig.clone().into());
        }
        if let Some(mac) = &self.ferry_mac {
            obj.insert("ferry_mac".into(), mac.clone().into());
        }
        for (k, v) in &self.extra {
            if !obj.contains_key(k) {
                obj.insert(k.clone(), v.clone());
            }
        }
        Value::Object(obj)
    }

    /// The `__request_id` the control plane stamped on the `/route/` answer, if any.
    pub fn request_id(&self) -> Option<&str> {
        self.extra.get("__request_id").and_then(Value::as_str)
    }

    /// Whether serialization writes `key` from a typed field (so `extra` must not repeat it).
    fn is_emitted(&self, key: &str) -> bool {
        match key {
            "ferry_exp" => self.ferry_exp.is_some(),
            "ferry_sig" => self.ferry_sig.is_some(),
            "ferry_mac" => self.ferry_mac.is_some(),
            _ => AuthData::REQUIRED.contains(&key),
        }
    }
}

impl Serialize for AuthData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("cost", &self.cost)?;
        map.serialize_entry("endpoint", &self.endpoint)?;
        map.serialize_entry("reqnum", &self.reqnum)?;
        map.serialize_entry("request_idx", &self.request_idx)?;
        map.serialize_entry("signature", &self.signature)?;
        map.serialize_entry("url", &self.url)?;
        if let Some(exp) = self.ferry_exp {
            map.serialize_entry("ferry_exp", &exp)?;
        }
        if let Some(sig) = &self.ferry_sig {
            map.serialize_entry("ferry_sig", sig)?;
        }
        if let Some(mac) = &self.ferry_mac {
            map.serialize_entry("ferry_mac", mac)?;
        }
        for (k, v) in &self.extra {
            if !self.is_emitted(k) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// Same rules as [`AuthData::from_value`]; the error text is the [`FieldErrors`] display.
impl<'de> Deserialize<'de> for AuthData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AuthData, D::Error> {
        let obj = Map::<String, Value>::deserialize(deserializer)?;
        AuthData::from_object(obj).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "__request_id": "7304d39d-6a5e-45bf-b261-cc2607679685",
            "cost": 100.0,
            "endpoint": "my-comfy-endpoint",
            "reqnum": 0,
            "request_idx": 25,
            "signature": "c2ln",
            "url": "https://217.63.96.43:32518"
        })
    }

    #[test]
    fn round_trip_keeps_unknown_keys() {
        let auth = AuthData::from_value(&sample()).expect("valid");
        assert_eq!(
            auth.request_id(),
            Some("7304d39d-6a5e-45bf-b261-cc2607679685")
        );
        assert_eq!(auth.cost, Cost::Number(100.0));
        assert_eq!(auth.request_idx, 25);
        assert_eq!(serde_json::to_value(&auth).expect("ser"), sample());
        assert_eq!(auth.to_value(), sample());
        let back: AuthData = serde_json::from_value(sample()).expect("de");
        assert_eq!(back, auth);
    }

    #[test]
    fn cost_keeps_its_shape() {
        let mut v = sample();
        v["cost"] = json!("250");
        let auth = AuthData::from_value(&v).expect("valid");
        assert_eq!(auth.cost, Cost::Text("250".into()));
        assert_eq!(auth.cost.as_f64(), Some(250.0));
        assert_eq!(
            serde_json::to_value(&auth).expect("ser")["cost"],
            json!("250")
        );
        assert_eq!(Cost::Text("many".into()).as_f64(), None);
        assert_eq!(Cost::Text("inf".into()).as_f64(), None);
        v["cost"] = json!(7);
        let auth = AuthData::from_value(&v).expect("valid");
        assert_eq!(auth.cost.as_f64(), Some(7.0));
    }

    #[test]
    fn missing_fields_in_vast_order() {
        let err = AuthData::from_value(&json!({"url": "x", "endpoint": "e"})).unwrap_err();
        assert_eq!(
            err.to_value(),
            json!({
                "cost": "missing parameter",
                "reqnum": "missing parameter",
                "request_idx": "missing parameter",
                "signature": "missing parameter"
            })
        );
        let order: Vec<_> = err.iter().map(|(f, _)| f).collect();
        assert_eq!(order, ["cost", "reqnum", "request_idx", "signature"]);
        assert_eq!(err.code(), "invalid_auth_data");
        assert_eq!(
            err.to_string(),
            "invalid auth_data: cost missing parameter, reqnum missing parameter, \
             request_idx missing parameter, signature missing parameter"
        );
    }

    #[test]
    fn wrong_types_are_reported_alongside_missing() {
        let mut v = sample();
        v["reqnum"] = json!("3");
        v["cost"] = json!(null);
        v["url"] = json!(5);
        v.as_object_mut().map(|o| o.remove("signature"));
        let err = AuthData::from_value(&v).unwrap_err();
        assert_eq!(
            err.to_value(),
            json!({
                "cost": "must be a number or string",
                "reqnum": "must be a non-negative integer",
                "signature": "missing parameter",
                "url": "must be a string"
            })
        );
        v = sample();
        v["request_idx"] = json!(-1);
        assert_eq!(
            AuthData::from_value(&v).unwrap_err().get("request_idx"),
            Some("must be a non-negative integer")
        );
        v["request_idx"] = json!(25.0);
        assert_eq!(
            AuthData::from_value(&v)
                .expect("integral float")
                .request_idx,
            25
        );
    }

    #[test]
    fn non_object_is_all_missing() {
        for v in [json!([]), json!("auth"), json!(null), json!(3)] {
            let err = AuthData::from_value(&v).unwrap_err();
            assert_eq!(err.len(), 6);
            assert!(err.iter().all(|(_, m)| m == MISSING_PARAMETER));
        }
    }

    #[test]
    fn ferry_fields() {
        let mut v = sample();
        v["ferry_exp"] = json!(1_700_000_000u64);
        v["ferry_sig"] = json!("abc=");
        let auth = AuthData::from_value(&v).expect("valid");
        assert_eq!(auth.ferry_exp, Some(1_700_000_000));
        assert_eq!(auth.ferry_sig.as_deref(), Some("abc="));
        assert!(!auth.extra.contains_key("ferry_exp"));
        assert_eq!(serde_json::to_value(&auth).expect("ser"), v);

        // Mistyped token fields are not an error: they stay in `extra`, the token is absent.
        v["ferry_exp"] = json!("soon");
        v["ferry_sig"] = json!(1);
        let auth = AuthData::from_value(&v).expect("valid");
        assert_eq!((auth.ferry_exp, auth.ferry_sig.as_ref()), (None, None));
        assert_eq!(serde_json::to_value(&auth).expect("ser"), v);

        // The v2 token field, alone or beside v1's; mistyped, it stays in `extra`.
        let mut v = sample();
        v["ferry_exp"] = json!(1_700_000_000u64);
        v["ferry_mac"] = json!("tag");
        let auth = AuthData::from_value(&v).expect("valid");
        assert_eq!(auth.ferry_mac.as_deref(), Some("tag"));
        assert!(auth.ferry_sig.is_none() && !auth.extra.contains_key("ferry_mac"));
        assert_eq!(serde_json::to_value(&auth).expect("ser"), v);
        assert_eq!(auth.to_value(), v);
        v["ferry_mac"] = json!(["tag"]);
        let auth = AuthData::from_value(&v).expect("valid");
        assert!(auth.ferry_mac.is_none());
        assert_eq!(serde_json::to_value(&auth).expect("ser"), v);
    }

    #[test]
    fn serialization_skips_none_and_shadowing_extras() {
        let mut auth = AuthData::from_value(&sample()).expect("valid");
        auth.extra.insert("url".into(), json!("evil"));
        let v = serde_json::to_value(&auth).expect("ser");
        assert_eq!(v["url"], json!("https://217.63.96.43:32518"));
        assert!(v.get("ferry_exp").is_none() && v.get("ferry_sig").is_none());
        let text = serde_json::to_string(&auth).expect("ser");
        assert_eq!(text.matches("\"url\"").count(), 1);
    }
}
