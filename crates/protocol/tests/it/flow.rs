//! One request's protocol path through the public API: control plane answers `/route/`, the
//! client forwards the answer as `auth_data`, the worker parses and verifies it.

use ferry_protocol::{
    parse_worker_request, parse_worker_request_raw, FerryClaims, RouteReady, RouteResponse,
    TokenError,
};
use serde_json::json;

use crate::{key, public};

#[test]
fn route_answer_to_verified_worker_request() {
    let url = "https://203.0.113.7:41000";
    let mut ready = RouteReady {
        request_id: Some("7304d39d-6a5e-45bf-b261-cc2607679685".into()),
        cost: 250.0,
        endpoint: "my-endpoint".into(),
        reqnum: 4,
        request_idx: 25,
        signature: key().sign_url(url).unwrap(),
        url: url.into(),
        ferry_exp: None,
        ferry_sig: None,
        ferry_mac: None,
        extra: Default::default(),
    };
    let exp = 1_800_000_000;
    ready.ferry_sig = Some(
        key()
            .sign_ferry(&FerryClaims::for_route(&ready, exp))
            .unwrap(),
    );
    ready.ferry_exp = Some(exp);

    // Over the wire as JSON, read back by a client that knows nothing of Ferry's keys.
    let route_body = serde_json::to_value(RouteResponse::Ready(ready)).unwrap();
    let RouteResponse::Ready(parsed) = serde_json::from_value(route_body.clone()).unwrap() else {
        panic!("ready answer read as waiting");
    };
    assert_eq!(parsed.request_idx, 25);

    // The Python client's request: the route answer, untouched, as auth_data.
    let worker_body = json!({"auth_data": route_body, "session_id": null,
                             "payload": {"prompt": "hi", "max_tokens": 8}});
    let bytes = serde_json::to_vec(&worker_body).unwrap();
    let req = parse_worker_request(&bytes).unwrap();
    public().verify_auth(&req.auth_data).unwrap();
    public().verify_ferry(&req.auth_data, exp - 60).unwrap();
    assert_eq!(
        public().verify_ferry(&req.auth_data, exp + 1),
        Err(TokenError::Expired { exp, now: exp + 1 })
    );
    assert_eq!(
        req.auth_data.request_id(),
        Some("7304d39d-6a5e-45bf-b261-cc2607679685")
    );
    // Re-serializing auth_data (e.g. for session_auth comparison) gives the original object.
    assert_eq!(
        serde_json::to_value(&req.auth_data).unwrap(),
        worker_body["auth_data"]
    );

    let raw = parse_worker_request_raw(&bytes).unwrap();
    assert_eq!(raw.payload.get(), r#"{"max_tokens":8,"prompt":"hi"}"#);

    // Tampering with the URL the worker sees breaks Vast's signature and the token alike.
    let mut moved = req.auth_data.clone();
    moved.url = "https://203.0.113.8:41000".into();
    assert!(public().verify_auth(&moved).is_err());
    assert_eq!(
        public().verify_ferry(&moved, exp - 60),
        Err(TokenError::BadSignature)
    );
}
