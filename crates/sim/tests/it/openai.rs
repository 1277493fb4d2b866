//! OpenAI-compatible routes.

use std::time::{Duration, Instant};

use ferry_sim::{generated_text, token_text, SimConfig, MODEL_ID};
use serde_json::{json, Value};

use crate::support::{assert_settled, client, get, post, post_json, read_sse, start, stats};

#[tokio::test]
async fn completion_returns_exact_tokens_and_usage() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/v1/completions",
        &json!({"model": "m", "prompt": "one two  three", "max_tokens": 5}),
        200,
    )
    .await;
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "m");
    assert_eq!(body["choices"][0]["text"], generated_text(5));
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
    let s = stats(&sim).await;
    assert_eq!((s.requests, s.completed, s.tokens_generated), (1, 1, 5));
    assert_settled(&s);
}

#[tokio::test]
async fn completion_without_limit_uses_the_default() {
    let sim = start(SimConfig {
        max_tokens_default: 7,
        ..SimConfig::default()
    })
    .await;
    let body = post_json(
        &sim,
        "/v1/completions",
        &json!({"prompt": ["a b", "c"]}),
        200,
    )
    .await;
    assert_eq!(body["model"], MODEL_ID);
    assert_eq!(body["choices"][0]["text"], generated_text(7));
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], 7);
}

#[tokio::test]
async fn completion_stream_sends_one_chunk_per_token_then_usage_and_done() {
    let sim = start(SimConfig::default()).await;
    let resp = post(
        &sim,
        "/v1/completions",
        &json!({"prompt": "hi there", "max_tokens": 4, "stream": true,
                "stream_options": {"include_usage": true}}),
    )
    .await;
    let sse = read_sse(resp).await;
    assert!(sse.error.is_none());
    let data = sse.data();
    assert_eq!(data.len(), 4 + 2, "{data:?}");
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks = sse.json();
    for (i, chunk) in chunks[..4].iter().enumerate() {
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], token_text(i as u32));
        let finish = if i == 3 { json!("length") } else { Value::Null };
        assert_eq!(chunk["choices"][0]["finish_reason"], finish);
        assert!(chunk.get("usage").is_none());
    }
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );
    let s = stats(&sim).await;
    assert_eq!((s.completed, s.tokens_generated), (1, 4));
    assert_settled(&s);
}

#[tokio::test]
async fn completion_stream_of_zero_tokens_still_finishes() {
    let sim = start(SimConfig::default()).await;
    let resp = post(
        &sim,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 0, "stream": true}),
    )
    .await;
    let sse = read_sse(resp).await;
    let chunks = sse.json();
    assert_eq!(sse.data().len(), 2);
    assert_eq!(chunks[0]["choices"][0]["text"], "");
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], "length");
    assert_eq!(sse.data()[1], "[DONE]");
}

#[tokio::test]
async fn chat_returns_message_and_counts_message_words() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/v1/chat/completions",
        &json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is two plus two"}]}
            ],
            "max_tokens": 99,
            "max_completion_tokens": 3
        }),
        200,
    )
    .await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], generated_text(3));
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );
}

#[tokio::test]
async fn chat_stream_starts_with_role_then_deltas() {
    let sim = start(SimConfig::default()).await;
    let resp = post(
        &sim,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "stream": true}),
    )
    .await;
    let sse = read_sse(resp).await;
    let data = sse.data();
    assert_eq!(data.len(), 1 + 3 + 1, "{data:?}");
    assert_eq!(data[4], "[DONE]");
    let chunks = sse.json();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks[1..]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, generated_text(3));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    // No usage chunk unless asked for.
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn chat_stream_usage_chunk_has_empty_choices() {
    let sim = start(SimConfig::default()).await;
    let resp = post(
        &sim,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "a b c"}], "max_tokens": 2,
                "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks = read_sse(resp).await.json();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
}

#[tokio::test]
async fn stream_chunks_arrive_one_token_at_a_time() {
    let delay = Duration::from_millis(25);
    let n = 6;
    let sim = start(SimConfig {
        token_delay: delay,
        ..SimConfig::default()
    })
    .await;
    let started = Instant::now();
    let resp = post(
        &sim,
        "/v1/completions",
        &json!({"prompt": "p", "max_tokens": n, "stream": true}),
    )
    .await;
    let sse = read_sse(resp).await;
    let tokens = &sse.events[..n as usize];
    for (i, event) in tokens.iter().enumerate() {
        let chunk: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(chunk["choices"][0]["text"], token_text(i as u32));
    }
    // Arrival order is generation order, and the body was not buffered into one piece: the
    // tokens came in several network chunks, spread over at least n token delays.
    assert!(tokens
        .windows(2)
        .all(|w| w[0].at <= w[1].at && w[0].chunk <= w[1].chunk));
    assert!(sse.chunks > 1, "whole stream arrived in one chunk");
    assert!(tokens.last().unwrap().chunk > tokens[0].chunk);
    assert!(started.elapsed() >= delay * n);
}

#[tokio::test]
async fn models_lists_the_sim_model() {
    let sim = start(SimConfig::default()).await;
    let resp = get(&sim, "/v1/models").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL_ID);
}

#[tokio::test]
async fn bad_requests_are_400_in_openai_shape() {
    let sim = start(SimConfig::default()).await;
    let resp = client()
        .post(format!("{}/v1/completions", sim.url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let body = post_json(&sim, "/v1/completions", &json!({"max_tokens": -1}), 400).await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    let s = stats(&sim).await;
    assert_eq!((s.requests, s.errors), (2, 2));
}
