use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn transform(toml_text: &str) -> Result<Option<Transform>, String> {
    let f: ResponseFile = toml::from_str(toml_text).map_err(|e| e.message().to_string())?;
    Transform::from_file(&f)
}

fn shape(toml_text: &str) -> Transform {
    transform(toml_text).unwrap().unwrap()
}

const OK: StatusCode = StatusCode::OK;

#[test]
fn an_empty_table_is_no_transform() {
    assert_eq!(transform("").unwrap(), None);
    assert_eq!(transform("drop = []\nrename = {}").unwrap(), None);
}

#[test]
fn pick_builds_a_new_object_from_named_fields() {
    let t = shape(
        r#"pick = { text = "choices.0.text", usage = { out = "usage.completion_tokens" }, gone = "nope" }"#,
    );
    let v = json!({"id": "c1", "choices": [{"text": "hello", "index": 0}], "usage": {"completion_tokens": 3}});
    assert_eq!(
        t.reshape(v),
        json!({"text": "hello", "usage": {"out": 3}}),
        "a missing field is left out"
    );
}

#[test]
fn comfyui_answer_reduced_to_its_image_paths() {
    let t = shape(r#"pick = { images = "output.*.url" }"#);
    let v = json!({"id": "r1", "status": "success", "output": [
        {"filename": "a.png", "url": "https://s3/a.png"},
        {"filename": "b.png", "url": "https://s3/b.png"},
    ]});
    assert_eq!(
        t.reshape(v),
        json!({"images": ["https://s3/a.png", "https://s3/b.png"]})
    );
}

#[test]
fn drop_rename_and_wrap_apply_in_that_order_after_pick() {
    let t = shape(
        r#"
        drop = ["usage", "choices.*.logprobs"]
        rename = { "choices.*.text" = "content", "choices" = "outputs" }
        wrap = "result"
        "#,
    );
    let v = json!({"choices": [{"text": "a", "logprobs": null}], "usage": {}, "id": "x"});
    assert_eq!(
        t.reshape(v),
        json!({"result": {"id": "x", "outputs": [{"content": "a"}]}})
    );
    // Pick first, then drop inside what was picked.
    let t = shape(
        r#"pick = { u = "usage" }
drop = ["u.prompt_tokens"]"#,
    );
    assert_eq!(
        t.reshape(json!({"usage": {"prompt_tokens": 1, "total_tokens": 2}})),
        json!({"u": {"total_tokens": 2}})
    );
}

#[test]
fn wrap_alone_keeps_scalars_and_arrays() {
    let t = shape(r#"wrap = "data""#);
    assert_eq!(t.reshape(json!([1, 2])), json!({"data": [1, 2]}));
    assert_eq!(t.reshape(json!("s")), json!({"data": "s"}));
}

#[test]
fn bad_settings_are_named() {
    for (text, named) in [
        (r#"pick = {}"#, "response.pick names no fields"),
        (
            r#"pick = { a = 1 }"#,
            "response.pick.a: expected a field path",
        ),
        (r#"pick = { a = { b = "x..y" } }"#, "response.pick.a.b"),
        (r#"drop = ["a."]"#, "response.drop"),
        (r#"rename = { "a.*" = "b" }"#, "response.rename"),
        (r#"rename = { "a" = "" }"#, "response.rename"),
        (r#"wrap = """#, "response.wrap"),
        (
            "[[error]]\nstatus = 503",
            "response.error[0]: needs model_status, field",
        ),
        (
            "[[error]]\nmodel_status = 500\nstatus = 700",
            "response.error[0]: status",
        ),
        (
            "[[error]]\nmodel_status = 500\nstatus = 101",
            "response.error[0]: status",
        ),
        (
            "[[error]]\nmodel_status = 1000\nstatus = 503",
            "model_status: 1000",
        ),
        ("[[error]]\nmodel_status = []\nstatus = 503", "model_status"),
        (
            "[[error]]\nmodel_status = 500\nequals = 1\nstatus = 503",
            "need a field",
        ),
        (
            "[[error]]\nfield = \"e\"\nequals = 1\ncontains = \"x\"\nstatus = 503",
            "not both",
        ),
        (
            "[[error]]\nmodel_status = 500\nstatus = 503\n[[error]]\nfield = \"\"\nstatus = 503",
            "response.error[1]: field",
        ),
    ] {
        let e = transform(text).unwrap_err();
        assert!(e.contains(named), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // Unknown keys are refused by name.
    let e = transform("pik = {}").unwrap_err();
    assert!(e.contains("pik"), "{e}");
}

#[test]
fn error_rules_map_status_and_fields_first_match_wins() {
    let t = shape(
        r#"
        [[error]]
        field = "status"
        equals = "failed"
        status = 500
        [[error]]
        model_status = [500, 502]
        field = "error.message"
        contains = "out of memory"
        status = 503
        [[error]]
        model_status = 400
        status = 422
        "#,
    );
    let apply = |status: u16, body: Value| {
        t.apply(
            StatusCode::from_u16(status).unwrap(),
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(apply(200, json!({"status": "failed"})).0, 500);
    assert_eq!(apply(200, json!({"status": "ok"})).0, 200);
    assert_eq!(
        apply(500, json!({"error": {"message": "CUDA out of memory"}})).0,
        503
    );
    assert_eq!(apply(502, json!({"error": {"message": "other"}})).0, 502);
    assert_eq!(apply(400, json!({"detail": "bad"})).0, 422);
    // Mapped answers keep their body (no reshaping of errors).
    assert_eq!(apply(400, json!({"detail": "bad"})).1, None);
    // A body that is not JSON matches no field rule, and is passed on unchanged.
    let (s, b) = t.apply(StatusCode::BAD_GATEWAY, b"<html>").unwrap();
    assert_eq!((s.as_u16(), b), (502, None));
    let (s, _) = t.apply(StatusCode::BAD_REQUEST, b"<html>").unwrap();
    assert_eq!(s, 422);
}

#[test]
fn wildcard_fields_match_when_any_value_does() {
    let t = shape("[[error]]\nfield = \"errors.*.code\"\nequals = 7\nstatus = 503");
    let b = json!({"errors": [{"code": 1}, {"code": 7}]}).to_string();
    assert_eq!(t.apply(OK, b.as_bytes()).unwrap().0, 503);
    let b = json!({"errors": []}).to_string();
    assert_eq!(t.apply(OK, b.as_bytes()).unwrap().0, 200);
    let t = shape("[[error]]\nfield = \"errors.*\"\nstatus = 503");
    assert_eq!(t.apply(OK, b.as_bytes()).unwrap().0, 200, "nothing reached");
}

#[test]
fn successes_that_are_not_json_are_refused_errors_are_not() {
    let t = shape(r#"pick = { text = "choices.0.text" }"#);
    let e = t.apply(OK, b"plain text").unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
    assert_eq!(t.apply(OK, b"").unwrap(), (OK, None));
    let err = StatusCode::INTERNAL_SERVER_ERROR;
    assert_eq!(t.apply(err, b"boom").unwrap(), (err, None));
    let (s, b) = t.apply(OK, br#"{"choices":[{"text":"hi"}]}"#).unwrap();
    assert_eq!((s, b.as_deref()), (OK, Some(&br#"{"text":"hi"}"#[..])));
}

#[test]
fn plans() {
    let reshape = shape(r#"wrap = "r""#);
    assert_eq!(reshape.plan(OK, false), Plan::ReadBody);
    assert_eq!(
        reshape.plan(OK, true),
        Plan::Relay {
            status: OK,
            reshape_events: true
        }
    );
    let err = StatusCode::INTERNAL_SERVER_ERROR;
    assert_eq!(
        reshape.plan(err, false),
        Plan::Relay {
            status: err,
            reshape_events: false
        },
        "error answers stream through unread"
    );
    let status_only = shape("[[error]]\nmodel_status = 500\nstatus = 503");
    assert_eq!(
        status_only.plan(err, false),
        Plan::Relay {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reshape_events: false
        }
    );
    assert_eq!(
        status_only.plan(OK, true),
        Plan::Relay {
            status: OK,
            reshape_events: false
        }
    );
    let field = shape("[[error]]\nfield = \"error\"\nstatus = 503");
    assert_eq!(field.plan(err, false), Plan::ReadBody);
    assert_eq!(
        field.plan(OK, true),
        Plan::Relay {
            status: OK,
            reshape_events: false
        },
        "a stream's status is sent before any field is seen"
    );
}

fn reshaper(t: &str) -> SseReshaper {
    SseReshaper::new(Arc::new(shape(t)), 1 << 20)
}

#[test]
fn sse_events_are_reshaped_and_the_rest_passes_through() {
    let mut r = reshaper(r#"pick = { text = "choices.0.text" }"#);
    let stream = concat!(
        ": keep-alive\n\n",
        "data: {\"choices\":[{\"text\":\"tok0 \"}]}\n\n",
        "event: delta\r\nid: 7\r\ndata: {\"choices\":\r\ndata: [{\"text\":\"tok1 \"}]}\r\n\r\n",
        "data: not json\n\n",
        "data: [DONE]\n\n",
    );
    let out = r.feed(stream.as_bytes()).unwrap();
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        concat!(
            ": keep-alive\n\n",
            "data: {\"text\":\"tok0 \"}\n\n",
            "event: delta\nid: 7\ndata: {\"text\":\"tok1 \"}\n\n",
            "data: not json\n\n",
            "data: [DONE]\n\n",
        )
    );
    assert!(r.finish().is_empty());
}

#[test]
fn an_event_split_anywhere_leaves_only_when_complete() {
    let mut r = reshaper(r#"wrap = "w""#);
    assert!(r.feed(b"data: {\"a\"").unwrap().is_empty());
    assert!(r.feed(b":1}\r").unwrap().is_empty());
    assert!(
        r.feed(b"\n\r").unwrap().is_empty(),
        "\\r\\n then a lone \\r"
    );
    assert_eq!(
        &r.feed(b"\ndata: 1\n").unwrap()[..],
        b"data: {\"w\":{\"a\":1}}\n\n"
    );
    assert_eq!(
        &r.finish()[..],
        b"data: 1\n",
        "an unterminated event, as it came"
    );
}

#[test]
fn an_event_past_the_limit_is_refused() {
    let mut r = SseReshaper::new(Arc::new(shape(r#"wrap = "w""#)), 16);
    assert!(r.feed(b"data: 12345").is_ok());
    assert!(r.feed(b"6789012345").is_err());
    // Complete events do not count against the limit, however large.
    let mut r = SseReshaper::new(Arc::new(shape(r#"wrap = "w""#)), 16);
    let big = format!("data: \"{}\"\n\n", "x".repeat(100));
    assert!(r.feed(big.as_bytes()).is_ok());
}

/// Splits `bytes` at the given cut points (taken modulo its length).
fn chunks(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    let n = bytes.len().max(1);
    cuts.iter_mut().for_each(|c| *c %= n);
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(&bytes[start..c]);
        start = c;
    }
    out.push(&bytes[start..]);
    out
}

fn sse_text() -> impl Strategy<Value = String> {
    let event = prop_oneof![
        Just("data: [DONE]".to_string()),
        Just(": ping".to_string()),
        "[a-z ]{0,8}".prop_map(|s| format!("data: {s}")),
        (0u32..100)
            .prop_map(|n| format!("data: {{\"choices\":[{{\"text\":\"t{n}\"}}],\"n\":{n}}}")),
        (0u32..100).prop_map(|n| format!("event: x\nid: {n}\ndata: {{\"n\":{n}}}")),
    ];
    let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    prop::collection::vec((event, eol), 0..8).prop_map(|evs| {
        evs.into_iter()
            .map(|(e, eol)| format!("{}{eol}{eol}", e.replace('\n', eol)))
            .collect()
    })
}

proptest! {
    /// A route without a transform: nothing is read, and nothing changes.
    #[test]
    fn no_shape_means_bytes_unchanged(body in prop::collection::vec(any::<u8>(), 0..256), status in 100u16..599) {
        let t = shape("[[error]]\nmodel_status = 599\nstatus = 503");
        let status = StatusCode::from_u16(status).unwrap();
        let (s, b) = t.apply(status, &body).unwrap();
        prop_assert!(b.is_none());
        prop_assert_eq!(s, status);
        prop_assert!(!t.reshapes());
    }

    /// Events with no JSON data pass through byte for byte, however the stream is cut.
    #[test]
    fn sse_without_json_is_unchanged(text in "(data: [a-z]{0,6}(\n|\r\n)(\n|\r\n)|: c\n\n|data: \\[DONE\\]\n\n){0,6}", cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let mut r = reshaper(r#"wrap = "w""#);
        let mut out = Vec::new();
        for c in chunks(text.as_bytes(), cuts) {
            out.extend_from_slice(&r.feed(c).unwrap());
        }
        out.extend_from_slice(&r.finish());
        prop_assert_eq!(String::from_utf8(out).unwrap(), text);
    }

    /// How a stream is cut into chunks never changes what the client gets.
    #[test]
    fn sse_output_does_not_depend_on_chunking(text in sse_text(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = {
            let mut r = reshaper(r#"pick = { text = "choices.0.text", n = "n" }"#);
            let mut out = r.feed(text.as_bytes()).unwrap().to_vec();
            out.extend_from_slice(&r.finish());
            out
        };
        let mut r = reshaper(r#"pick = { text = "choices.0.text", n = "n" }"#);
        let mut out = Vec::new();
        for c in chunks(text.as_bytes(), cuts) {
            out.extend_from_slice(&r.feed(c).unwrap());
        }
        out.extend_from_slice(&r.finish());
        prop_assert_eq!(out, whole);
    }

    /// Paths never panic, whatever the document and path, and a path built from a document's
    /// own keys finds what is there.
    #[test]
    fn paths_on_arbitrary_documents(keys in prop::collection::vec("[a-c0-2*]{1,2}", 1..4), doc in arb_json()) {
        let path: Path = keys.join(".").parse().unwrap();
        let _ = path.select(&doc);
        let mut d = doc.clone();
        path.remove(&mut d);
        // Removing an array element shifts the next one into its place; any other removal
        // leaves nothing for the same path to find.
        let last = keys.last().map(String::as_str).unwrap_or_default();
        if !last.bytes().all(|b| b.is_ascii_digit()) {
            let expected = path.fans_out().then(|| Value::Array(Vec::new()));
            prop_assert_eq!(path.select(&d), expected);
        }
        // A renamed field is found under its new name, and no longer under its old one.
        if let Some(last) = path.last_key().filter(|k| !k.bytes().all(|b| b.is_ascii_digit())) {
            let mut d = doc.clone();
            let before = path.select(&doc);
            path.rename(&mut d, "zz");
            let renamed: Path = format!("{}zz", &path.to_string()[..path.to_string().len() - last.len()]).parse().unwrap();
            if !path.fans_out() && before.is_some() {
                prop_assert_eq!(renamed.select(&d), before);
                prop_assert_eq!(path.select(&d), None);
            }
        }
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0i64..10).prop_map(Value::from),
        "[a-c]{0,2}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c0-2]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
