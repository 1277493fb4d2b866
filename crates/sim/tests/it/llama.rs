//! llama.cpp native `/completion`.

use ferry_sim::{generated_text, token_text, SimConfig};
use serde_json::json;

use crate::support::{assert_settled, post, post_json, read_sse, start, stats};

#[tokio::test]
async fn completion_returns_content_and_counts() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/completion",
        &json!({"prompt": "Building a website can be done in", "n_predict": 8}),
        200,
    )
    .await;
    assert_eq!(body["content"], generated_text(8));
    assert_eq!(body["stop"], true);
    assert_eq!(body["tokens_predicted"], 8);
    assert_eq!(body["tokens_evaluated"], 7);
    assert_eq!(body["stop_type"], "limit");
    assert_eq!(body["timings"]["predicted_n"], 8);
    assert_eq!(body["timings"]["prompt_n"], 7);
}

#[tokio::test]
async fn negative_n_predict_means_the_default() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/completion",
        &json!({"prompt": [1, 2], "n_predict": -1}),
        200,
    )
    .await;
    assert_eq!(body["tokens_predicted"], 16);
    assert_eq!(body["tokens_evaluated"], 2);
}

#[tokio::test]
async fn completion_stream_ends_with_stop_event_and_no_done() {
    let sim = start(SimConfig::default()).await;
    let resp = post(
        &sim,
        "/completion",
        &json!({"prompt": "x y", "n_predict": 4, "stream": true}),
    )
    .await;
    let sse = read_sse(resp).await;
    assert!(sse.error.is_none());
    assert!(!sse.raw.contains("[DONE]"));
    let events = sse.json();
    assert_eq!(events.len(), 4 + 1);
    for (i, event) in events[..4].iter().enumerate() {
        assert_eq!(event["content"], token_text(i as u32));
        assert_eq!(event["stop"], false);
        assert_eq!(event["tokens_predicted"], i + 1);
    }
    let last = &events[4];
    assert_eq!(last["stop"], true);
    assert_eq!(last["content"], "");
    assert_eq!(last["tokens_predicted"], 4);
    assert_eq!(last["tokens_evaluated"], 2);
    assert_eq!(last["timings"]["predicted_n"], 4);
    let s = stats(&sim).await;
    assert_eq!((s.completed, s.tokens_generated), (1, 4));
    assert_settled(&s);
}
