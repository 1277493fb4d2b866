//! `--preset llamacpp` in front of llama-server's native `/completion`.

use std::time::Duration;

use serde_json::json;

use crate::llama::Model;
use crate::stack::{greedy, sse_data, sse_json, with, Preset, Stack};

/// Plain and streaming `/completion` with the tiny model: `tokens_predicted` equals n_predict,
/// the stream ends on its `"stop": true` summary (this endpoint sends no `[DONE]`), and the
/// served workload reported is the sum of the n_predicts.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn native_completion_plain_and_streaming_count_exact_tokens() {
    let s = Stack::start(Preset::LlamaCpp, Model::Tiny, 2, 256).await;

    let plain = s
        .post_json(
            "/completion",
            1,
            with(greedy(), json!({"prompt": "the cat", "n_predict": 20})),
        )
        .await;
    assert_eq!(plain["tokens_predicted"], 20, "{plain}");
    assert_eq!(plain["stop_type"], "limit", "{plain}");
    assert!(!plain["content"].as_str().unwrap().is_empty(), "{plain}");

    let text = s
        .post_sse(
            "/completion",
            2,
            with(
                greedy(),
                json!({"prompt": "the dog", "n_predict": 9, "stream": true}),
            ),
        )
        .await;
    assert!(!sse_data(&text).iter().any(|d| d == "[DONE]"), "{text}");
    let events = sse_json(&text);
    let last = events.last().unwrap();
    assert_eq!(last["stop"], true, "{text}");
    assert_eq!(last["tokens_predicted"], 9, "{text}");
    assert_eq!(last["stop_type"], "limit", "{text}");
    let token_events = events.iter().filter(|e| e["stop"] == false).count();
    assert_eq!(token_events, 9, "one event per token: {text}");

    // The same greedy request gives the same text streamed or not.
    let again = s
        .post_json(
            "/completion",
            3,
            with(greedy(), json!({"prompt": "the dog", "n_predict": 9})),
        )
        .await;
    let streamed: String = events
        .iter()
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert_eq!(again["content"].as_str().unwrap(), streamed);

    s.assert_served(&[1, 2, 3], 20.0 + 9.0 + 9.0).await;
}

/// SmolLM2 through the native route knows its capitals.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn smollm2_native_completion_says_paris() {
    let s = Stack::start(Preset::LlamaCpp, Model::SmolLm2, 1, 512).await;
    let res = s
        .post_json(
            "/completion",
            1,
            with(
                greedy(),
                json!({"prompt": "The capital of France is", "n_predict": 8}),
            ),
        )
        .await;
    assert!(res["content"].as_str().unwrap().contains("Paris"), "{res}");
    let predicted = res["tokens_predicted"].as_u64().unwrap();
    assert!((1..=8).contains(&predicted), "{res}");
    s.assert_served(&[1], 8.0).await;
}

/// A bad client request is the client's problem, not the model server's: llama-server answers
/// 400 and logs `send_error: task id = N, error: request (...) exceeds the available context
/// size`; the worker relays the 400 and must stay ready. (Matching every `error: ` log line as
/// fatal would let one oversized prompt take the worker out of rotation for good.)
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn a_client_error_in_the_server_log_does_not_take_the_worker_down() {
    let s = Stack::start(Preset::LlamaCpp, Model::Tiny, 1, 128).await;
    // The tiny model's vocabulary is bytes: 600 characters are ~600 tokens > 128.
    let res = s
        .post(
            "/completion",
            1,
            json!({"prompt": "x".repeat(600), "n_predict": 4}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let err: serde_json::Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "exceed_context_size_error", "{err}");
    s.wait_for(
        "llama-server to log the request's error",
        Duration::from_secs(10),
        || async { s.server.log_text().contains("error: request") },
    )
    .await;
    // The worker polls the log every 20 ms: give it 50 polls to (wrongly) react.
    let tracker = s.worker.state.tracker().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        let model = tracker.model();
        assert!(
            model.is_ready(),
            "worker marked broken by a client error: {model:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = s
        .post_json(
            "/completion",
            2,
            with(greedy(), json!({"prompt": "the cat", "n_predict": 4})),
        )
        .await;
    assert_eq!(ok["tokens_predicted"], 4, "{ok}");
    // The 400 counts as served, as Vast counts it: the model server answered.
    s.assert_served(&[1, 2], 8.0).await;
    assert!(
        s.cp.statuses().iter().all(|st| st.error_msg.is_empty()),
        "{:?}",
        s.cp.statuses()
    );
}
