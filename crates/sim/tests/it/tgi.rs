//! TGI routes.

use ferry_sim::{generated_text, token_text, SimConfig, MODEL_ID};
use serde_json::{json, Value};

use crate::support::{assert_settled, get, post, post_json, read_sse, start, stats};

#[tokio::test]
async fn generate_returns_text_and_details() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/generate",
        &json!({"inputs": "What is Deep Learning?", "parameters": {"max_new_tokens": 6}}),
        200,
    )
    .await;
    assert_eq!(body["generated_text"], generated_text(6));
    assert_eq!(body["details"]["generated_tokens"], 6);
    assert_eq!(body["details"]["finish_reason"], "length");
    let s = stats(&sim).await;
    assert_eq!((s.completed, s.tokens_generated), (1, 6));
}

#[tokio::test]
async fn generate_stream_sends_tgi_events() {
    let sim = start(SimConfig::default()).await;
    let resp = post(
        &sim,
        "/generate_stream",
        &json!({"inputs": "a b c d", "parameters": {"max_new_tokens": 3}}),
    )
    .await;
    let sse = read_sse(resp).await;
    assert!(sse.error.is_none());
    // TGI writes `data:` with no space.
    assert!(sse.raw.starts_with("data:{"), "{:?}", sse.raw);
    let events = sse.json();
    assert_eq!(events.len(), 3);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["token"]["id"], i);
        assert_eq!(event["token"]["text"], token_text(i as u32));
        assert_eq!(event["token"]["special"], false);
    }
    assert_eq!(events[0]["generated_text"], Value::Null);
    assert_eq!(events[0]["details"], Value::Null);
    assert_eq!(events[2]["generated_text"], generated_text(3));
    assert_eq!(events[2]["details"]["generated_tokens"], 3);
    assert_eq!(events[2]["details"]["input_length"], 4);
    assert_settled(&stats(&sim).await);
}

#[tokio::test]
async fn generate_uses_default_limit_and_refuses_zero() {
    let sim = start(SimConfig {
        max_tokens_default: 5,
        ..SimConfig::default()
    })
    .await;
    let body = post_json(&sim, "/generate", &json!({"inputs": "x"}), 200).await;
    assert_eq!(body["details"]["generated_tokens"], 5);
    let body = post_json(
        &sim,
        "/generate",
        &json!({"inputs": "x", "parameters": {"max_new_tokens": 0}}),
        422,
    )
    .await;
    assert_eq!(body["error_type"], "validation");
    assert!(body["error"].as_str().unwrap().contains("max_new_tokens"));
}

#[tokio::test]
async fn info_describes_the_model() {
    let sim = start(SimConfig::default()).await;
    let resp = get(&sim, "/info").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model_id"], MODEL_ID);
    assert!(body["max_total_tokens"].as_u64().unwrap() > 0);
}
