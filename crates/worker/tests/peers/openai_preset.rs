//! `--preset openai` in front of llama-server's OpenAI-compatible routes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{FakeControlPlane, TestWorker};
use crate::llama::{free_port, temp_path, LlamaServer, Model, MODEL_ALIAS};
use crate::stack::{greedy, sse_data, sse_json, wait_for, with, worker_flags, Preset, Stack};

/// The order a Vast instance starts things in: the worker first, tailing a log that does not
/// exist yet; then the model server. The worker must wait for the real `model loaded` line, run
/// the benchmark against the real server (filling `"model"` from `/v1/models`), pass `/health`,
/// and report ready with a measured max_perf.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn worker_started_first_becomes_ready_from_the_real_log_line_and_benchmark() {
    let log = temp_path("llama-server.log");
    let port = free_port();
    let cp = FakeControlPlane::start().await;
    let flags = worker_flags(Preset::OpenAi, &log);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let model_url = format!("http://127.0.0.1:{port}");
    let worker = TestWorker::start(&cp.url, &model_url, &flags).await;
    // Its first report (sent at once) says "loading": no loadtime, no max_perf.
    wait_for(
        "the worker's first status report",
        Duration::from_secs(20),
        || async { !cp.statuses().is_empty() },
        String::new,
    )
    .await;
    let first = cp.statuses()[0].clone();
    assert_eq!((first.loadtime, first.max_perf), (0.0, 0.0), "{first:?}");
    assert!(!worker.state.tracker().model().is_ready());

    let server = LlamaServer::start_on(Model::Tiny, 2, 256, &log, port).await;
    let stack = Stack { cp, server, worker };
    stack.wait_ready().await;
    let model = stack.worker.state.tracker().model();
    assert!(model.max_perf > 0.0, "{model:?}");
    assert!(model.loadtime.unwrap() > 0.0, "{model:?}");
    // The benchmark really went to the server: 1 warm-up + 2 concurrent requests of 8 tokens.
    let predicted = stack.server.metric("llamacpp:tokens_predicted_total").await;
    assert_eq!(predicted, 24.0, "benchmark tokens");
}

/// Plain and streaming completions and chat through the worker, with the tiny model whose EOS
/// never wins: the server generates exactly max_tokens each time, and the workload the worker
/// reports as served is the sum of the max_tokens.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn completions_and_chat_plain_and_streaming_count_exact_tokens() {
    let s = Stack::start(Preset::OpenAi, Model::Tiny, 2, 256).await;

    let plain = s
        .post_json(
            "/v1/completions",
            1,
            with(
                greedy(),
                json!({"model": MODEL_ALIAS, "prompt": "the cat", "max_tokens": 16}),
            ),
        )
        .await;
    assert_eq!(plain["usage"]["completion_tokens"], 16, "{plain}");
    assert_eq!(plain["choices"][0]["finish_reason"], "length", "{plain}");
    assert!(!plain["choices"][0]["text"].as_str().unwrap().is_empty());

    let text = s
        .post_sse(
            "/v1/completions",
            2,
            with(
                greedy(),
                json!({"model": MODEL_ALIAS, "prompt": "the dog", "max_tokens": 12, "stream": true,
                       "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
    let events = sse_json(&text);
    assert_eq!(usage_tokens(&events), 12, "{text}");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert!(!streamed.is_empty(), "{text}");

    let chat = s
        .post_json(
            "/v1/chat/completions",
            3,
            with(
                greedy(),
                json!({"model": MODEL_ALIAS, "max_tokens": 10,
                       "messages": [{"role": "user", "content": "the mat"}]}),
            ),
        )
        .await;
    assert_eq!(chat["usage"]["completion_tokens"], 10, "{chat}");
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant", "{chat}");

    let text = s
        .post_sse(
            "/v1/chat/completions",
            4,
            with(
                greedy(),
                json!({"model": MODEL_ALIAS, "max_tokens": 7, "stream": true,
                       "stream_options": {"include_usage": true},
                       "messages": [{"role": "user", "content": "a dog ran"}]}),
            ),
        )
        .await;
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"));
    let events = sse_json(&text);
    assert_eq!(usage_tokens(&events), 7, "{text}");
    assert!(
        events
            .iter()
            .any(|e| e["object"] == "chat.completion.chunk"),
        "{text}"
    );

    // Vast's `{"input": {...}}` wrapping is unwrapped before it reaches the server.
    let wrapped = s
        .post_json(
            "/v1/completions",
            5,
            json!({"input": with(greedy(), json!({"model": MODEL_ALIAS, "prompt": "a", "max_tokens": 5}))}),
        )
        .await;
    assert_eq!(wrapped["usage"]["completion_tokens"], 5, "{wrapped}");

    s.assert_served(&[1, 2, 3, 4, 5], 16.0 + 12.0 + 10.0 + 7.0 + 5.0)
        .await;
}

/// The real model through the worker answers sensibly with its own chat template; the workload
/// counted is what was asked for (max_tokens), not what EOS cut it to, as Vast counts it.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn smollm2_chat_through_the_worker_answers() {
    let s = Stack::start(Preset::OpenAi, Model::SmolLm2, 1, 512).await;
    let chat = s
        .post_json(
            "/v1/chat/completions",
            1,
            with(
                greedy(),
                json!({"model": MODEL_ALIAS, "max_tokens": 24,
                       "messages": [{"role": "user", "content": "What is 2+2?"}]}),
            ),
        )
        .await;
    let answer = chat["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains('4'), "{chat}");
    let used = chat["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&used), "{chat}");
    s.assert_served(&[1], 24.0).await;
}

/// `usage.completion_tokens` of a stream: on the finish chunk (llama-server's completions) or
/// on a separate `"choices": []` chunk (its chat route, and vLLM on both).
fn usage_tokens(events: &[Value]) -> u64 {
    let with_usage: Vec<&Value> = events.iter().filter(|e| e["usage"].is_object()).collect();
    assert_eq!(with_usage.len(), 1, "one usage chunk: {events:?}");
    with_usage[0]["usage"]["completion_tokens"]
        .as_u64()
        .unwrap()
}

/// llama-server closes the connection right after every streamed response (while advertising
/// `Keep-Alive: timeout=5, max=100` and no `Connection: close`). A pooled connection the worker
/// takes for the next request in that instant is already dead; the worker must not turn that
/// into a 502 for a request the server never saw.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn requests_right_after_streams_do_not_hit_the_closed_connection() {
    let s = Stack::start(Preset::OpenAi, Model::Tiny, 2, 256).await;
    let mut idx = 0;
    let mut failures = Vec::new();
    for _ in 0..25 {
        for stream in [true, false] {
            idx += 1;
            let payload = json!({"model": MODEL_ALIAS, "prompt": "a", "max_tokens": 2,
                                 "stream": stream});
            let res = s.post("/v1/completions", idx, payload).await;
            let status = res.status();
            let text = res.text().await.unwrap();
            if status != 200 {
                failures.push(format!("request {idx} (stream {stream}): {status} {text}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    s.assert_served(&(1..=idx).collect::<Vec<_>>(), 2.0 * idx as f64)
        .await;
}
