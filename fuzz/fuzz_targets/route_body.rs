//! `/route/` bodies: the client's request as the control plane reads it (`api::route::route`:
//! `api::object`, `api::presented_key`, then [`RouteRequest`]), and the control plane's answer
//! as a client reads it ([`RouteResponse`]: ready iff it has a `url`).
//!
//! Checks:
//! - `api::object` accepts exactly the JSON objects (and blank bodies, as `{}`);
//! - the key taken from the body is its non-empty string `api_key`;
//! - an accepted [`RouteRequest`] round-trips and has a finite cost;
//! - an accepted [`RouteResponse`] round-trips; a ready answer is one with a `url`, and the
//!   `auth_data` it becomes round-trips through [`AuthData`] unchanged.

#![no_main]

use std::collections::HashMap;

use bytes::Bytes;
use ferry_control::api::{object, presented_key};
use ferry_fuzz::assert_same;
use ferry_protocol::{AuthData, RouteRequest, RouteResponse};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let blank = data.iter().all(u8::is_ascii_whitespace);
    let as_value = serde_json::from_slice::<Value>(data).ok();
    match object(&body) {
        Ok(obj) => {
            assert!(blank || matches!(&as_value, Some(Value::Object(o)) if *o == obj));
            let key = presented_key(&HeaderMap::new(), &HashMap::new(), Some(&obj));
            let expected = obj
                .get("api_key")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty());
            assert_eq!(key.as_deref(), expected);
            if let Ok(req) = serde_json::from_value::<RouteRequest>(Value::Object(obj)) {
                let text = serde_json::to_vec(&req).expect("serializes");
                let back: RouteRequest = serde_json::from_slice(&text).expect("own output parses");
                assert_same(&back, &req);
                // JSON cannot carry NaN or infinity (`1e400` is refused, not saturated).
                assert!(req.cost.is_finite());
            }
        }
        Err(e) => {
            assert!(!blank);
            assert!(!matches!(as_value, Some(Value::Object(_))), "{e}");
        }
    }

    // The answer side.
    let Ok(resp) = serde_json::from_slice::<RouteResponse>(data) else {
        return;
    };
    let has_url = matches!(&as_value, Some(Value::Object(o)) if o.contains_key("url"));
    assert_eq!(matches!(resp, RouteResponse::Ready(_)), has_url);
    let again = serde_json::to_value(&resp).expect("serializes");
    let text = serde_json::to_vec(&again).expect("serializes");
    let back: RouteResponse = serde_json::from_slice(&text).expect("own output parses");
    assert_same(&back, &resp);
    if let RouteResponse::Ready(ready) = resp {
        let auth = ready.into_auth_data();
        assert_eq!(AuthData::from_value(&auth.to_value()), Ok(auth));
    }
});
