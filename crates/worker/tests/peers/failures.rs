//! Failures with a real server: a client leaving mid-stream, the server dying mid-stream.

use std::time::Duration;

use ferry_protocol::RequestStatus;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::llama::{Model, MODEL_ALIAS};
use crate::stack::{greedy, sse_data, with, Preset, Stack};

/// Long enough that generation is still running when the test acts (SmolLM2 makes ~180 tok/s).
const LONG: u64 = 1000;

/// Reads a stream until it has carried `n` SSE data events; returns what it read.
async fn read_events(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    n: usize,
) -> String {
    let mut text = String::new();
    while sse_data(&text).len() < n {
        match stream.next().await {
            Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            None => panic!("stream ended after {text:?}"),
        }
    }
    text
}

/// A client that leaves mid-stream makes the worker drop the upstream connection, and
/// llama-server notices and frees the slot: generation stops far short of n_predict.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn client_leaving_mid_stream_stops_generation_on_the_server() {
    let s = Stack::start(Preset::LlamaCpp, Model::SmolLm2, 1, LONG as u32 + 64).await;
    let before = s.server.metric("llamacpp:tokens_predicted_total").await;
    let res = s
        .post(
            "/completion",
            1,
            with(
                greedy(),
                json!({"prompt": "Once upon a time", "n_predict": LONG, "ignore_eos": true,
                       "stream": true}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    read_events(&mut stream, 3).await;
    assert_eq!(s.server.busy_slots().await, 1, "generating while streaming");
    drop(stream);

    s.wait_for("the slot to go idle", Duration::from_secs(30), || async {
        s.server.busy_slots().await == 0
    })
    .await;
    let predicted = s.server.metric("llamacpp:tokens_predicted_total").await - before;
    assert!(
        predicted >= 3.0 && predicted < LONG as f64 / 2.0,
        "generation should stop soon after the client left, predicted {predicted} of {LONG}"
    );
    assert_eq!(s.server.metric("llamacpp:requests_processing").await, 0.0);
    assert_eq!(s.record(1).await.status, RequestStatus::Cancelled);
}

/// The model server dying mid-stream: the client gets a final SSE `event: error` from the worker
/// (the headers were already sent), the request is recorded as Error, and the worker reports an
/// error_msg so the control plane stops routing to it.
#[tokio::test]
#[ignore = "needs real peers: scripts/test.sh runs them"]
async fn server_killed_mid_stream_gives_an_sse_error_and_an_error_report() {
    let mut s = Stack::start(Preset::OpenAi, Model::SmolLm2, 1, LONG as u32 + 128).await;
    let res = s
        .post(
            "/v1/chat/completions",
            1,
            with(
                greedy(),
                json!({"model": MODEL_ALIAS, "max_tokens": LONG, "ignore_eos": true,
                       "stream": true,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut text = read_events(&mut stream, 3).await;
    s.server.kill();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut rest = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => rest.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => panic!("the worker cut the stream instead of ending it with an error event: {e}; got {rest:?}"),
            }
        }
        rest
    })
    .await
    .expect("the stream ends after the server died");
    text.push_str(&rest);
    assert!(!text.contains("[DONE]"), "{text}");
    let tail = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(tail.starts_with("event: error\n"), "last event: {tail:?}");
    let data: Value = serde_json::from_str(
        tail.lines()
            .nth(1)
            .unwrap()
            .trim_start_matches("data:")
            .trim(),
    )
    .unwrap();
    assert!(data["error"]["code"].is_string(), "{data}");
    assert!(data["error"]["message"].is_string(), "{data}");

    assert_eq!(s.record(1).await.status, RequestStatus::Error);
    s.wait_for(
        "a status report with error_msg",
        Duration::from_secs(20),
        || async { s.cp.statuses().iter().any(|st| !st.error_msg.is_empty()) },
    )
    .await;
    let st =
        s.cp.statuses()
            .into_iter()
            .find(|st| !st.error_msg.is_empty())
            .unwrap();
    assert!(st.max_perf > 0.0, "{st:?}");
}
