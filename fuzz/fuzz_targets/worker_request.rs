//! The body a client POSTs to a worker route, and what the worker does with it before the
//! signature check (`server::serve` steps 1-2): `parse_worker_request_raw`, then, for presets
//! whose workload formula needs it, the payload parsed, `{"input": ..}` unwrapped and counted
//! by every preset's formula.
//!
//! Checks:
//! - the raw and the owned parser agree (same error, same `auth_data` and `session_id`); the only
//!   way the raw one accepts what the owned one refuses is a payload `serde_json::Value` cannot
//!   hold (a number out of f64 range such as `1e400`, nesting deeper than 128, or a lone UTF-16
//!   surrogate escape such as `"\ud800"`): the known case the worker must answer 422, not 500;
//! - every refusal has Vast's status (410 or 422) and a JSON object body;
//! - the raw payload is a slice of the request body (zero-copy forwarding never falls back to a
//!   copy), starts with `{` and parses on its own;
//! - an accepted request re-serialized parses back to the same value (floats to the last bit
//!   or so: see `ferry_fuzz::same_json`);
//! - every preset's workload is finite and non-negative, whatever the payload.

#![no_main]

use std::sync::LazyLock;

use ferry_fuzz::{assert_same, is_subslice};
use ferry_protocol::{parse_worker_request, parse_worker_request_raw, RequestError};
use ferry_worker::backends::{Preset, PresetFile};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static PRESETS: LazyLock<Vec<Preset>> = LazyLock::new(|| {
    [
        "openai",
        "tgi",
        "llamacpp",
        "comfyui",
        "hello",
        "passthrough",
    ]
    .iter()
    .map(|n| Preset::resolve(n, &PresetFile::default()).expect("built-in preset"))
    .collect()
});

/// `server.rs`'s private `unwrap_input`, restated: Vast's OpenAI workers accept
/// `{"input": {...}}` as well as the bare payload.
fn unwrap_input(payload: &Value) -> &Value {
    match payload.get("input") {
        Some(inner) if inner.is_object() => inner,
        _ => payload,
    }
}

fuzz_target!(|data: &[u8]| {
    let raw = parse_worker_request_raw(data);
    let owned = parse_worker_request(data);

    if let Err(e) = &raw {
        assert!(matches!(e.status(), 410 | 422), "{e:?}");
        assert!(e.body().is_object());
        assert!(!e.code().is_empty());
    }

    match (&raw, &owned) {
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Err(a), Ok(_)) => panic!("raw parser refused ({a:?}) what the owned one accepted"),
        (Ok(r), Err(e)) => {
            assert_eq!(*e, RequestError::InvalidJson);
            let why = serde_json::from_str::<Value>(r.payload.get())
                .expect_err("owned parse failed, so the payload must not parse");
            let msg = why.to_string();
            // The raw parser only skips over the payload; a full parse also refuses numbers
            // beyond f64, nesting deeper than 128 and lone UTF-16 surrogate escapes.
            assert!(
                [
                    "number out of range",
                    "recursion limit",
                    "hex escape",
                    "unicode code point"
                ]
                .iter()
                .any(|known| msg.contains(known)),
                "unexpected payload parse failure: {msg}"
            );
        }
        (Ok(r), Ok(o)) => {
            assert_eq!(r.auth_data, o.auth_data);
            assert_eq!(r.session_id, o.session_id);
            assert!(o.payload.is_object());
        }
    }

    if let Ok(r) = &raw {
        let text = r.payload.get();
        assert!(is_subslice(data, text.as_bytes()), "payload was copied");
        assert!(text.starts_with('{'), "payload {text:?} is not an object");
    }

    let Ok(req) = owned else {
        return;
    };

    // Round trip: what a client (or `/session/get`) re-sends parses to the same request.
    let again = serde_json::to_vec(&req).expect("a parsed request serializes");
    let back = parse_worker_request(&again).expect("a re-serialized request parses");
    assert_same(&back, &req);

    // Workload: every preset, every route, wrapped or not.
    for preset in PRESETS.iter() {
        let payload = if preset.unwrap_input {
            unwrap_input(&req.payload)
        } else {
            &req.payload
        };
        for route in preset.routes.iter().chain(preset.passthrough.as_ref()) {
            let w = route.workload.count(payload);
            assert!(w.is_finite() && w >= 0.0, "{}: workload {w}", preset.name);
        }
    }
});
