//! Streams are relayed chunk by chunk, and failures on either side end them cleanly.

use std::time::Duration;

use ferry_protocol::RequestStatus;
use ferry_sim::{SimConfig, SimServer};
use futures_util::StreamExt;
use serde_json::json;

use crate::harness::{body, eventually, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

async fn setup(sim: SimConfig) -> (FakeControlPlane, SimServer, TestWorker) {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(sim).await.unwrap();
    let w = TestWorker::start(&cp.url, &sim.url(), &["--assume-loaded-perf", "100"]).await;
    w.wait_key().await;
    (cp, sim, w)
}

fn slow() -> SimConfig {
    SimConfig {
        token_delay: Duration::from_millis(40),
        ..SimConfig::default()
    }
}

/// Data events in an SSE text.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data:").map(|d| d.trim().to_string()))
        .collect()
}

#[tokio::test]
async fn sse_tokens_arrive_while_the_model_is_still_generating() {
    let (cp, sim, w) = setup(slow()).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                1,
                json!({"prompt": "a b", "max_tokens": 6, "stream": true}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    // The first token reached us while the model still had tokens to produce: no buffering.
    let stats = sim.state.stats();
    assert_eq!(
        stats.in_flight, 1,
        "model still generating when the first chunk arrived"
    );
    assert!(stats.tokens_generated < 6, "{stats:?}");
    let mut text = String::from_utf8_lossy(&first).to_string();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let evs = events(&text);
    assert_eq!(evs.last().map(String::as_str), Some("[DONE]"));
    let token_events = evs.iter().filter(|e| e.contains("\"text\"")).count();
    assert_eq!(token_events, 6);
    eventually(|| async { !cp.finished_for(1).is_empty() }).await;
    assert_eq!(cp.finished_for(1)[0].status, RequestStatus::Success);
}

#[tokio::test]
async fn client_leaving_mid_stream_stops_the_model_and_counts_cancelled() {
    let (cp, sim, w) = setup(slow()).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                2,
                json!({"prompt": "a", "max_tokens": 500, "stream": true}),
            ),
        )
        .await;
    let mut stream = res.bytes_stream();
    stream.next().await.unwrap().unwrap();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    eventually(|| async { !cp.finished_for(2).is_empty() }).await;
    assert_eq!(cp.finished_for(2)[0].status, RequestStatus::Cancelled);
    let state = sim.state.clone();
    eventually(|| async { state.stats().cancelled == 1 }).await;
    assert!(sim.state.stats().tokens_generated < 500);
}

#[tokio::test]
async fn model_dropping_mid_stream_ends_with_an_sse_error_event() {
    let (cp, _sim, w) = setup(slow()).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                3,
                json!({"prompt": "a", "max_tokens": 50, "stream": true, "sim": {"disconnect_after": 3}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("upstream_transport"), "{text}");
    eventually(|| async { !cp.finished_for(3).is_empty() }).await;
    assert_eq!(cp.finished_for(3)[0].status, RequestStatus::Error);
}

#[tokio::test]
async fn tgi_and_llamacpp_streams_pass_through() {
    let (_cp, _sim, w) = setup(SimConfig::default()).await;
    let res = w
        .post(
            "/generate_stream",
            &body(
                PUBLIC_URL,
                4,
                json!({"inputs": "a", "parameters": {"max_new_tokens": 3}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let evs = events(&res.text().await.unwrap());
    assert_eq!(evs.len(), 3);
    let res = w
        .post(
            "/completion",
            &body(
                PUBLIC_URL,
                5,
                json!({"prompt": "a", "n_predict": 4, "stream": true}),
            ),
        )
        .await;
    let evs = events(&res.text().await.unwrap());
    // Four tokens and the final stop chunk.
    assert_eq!(evs.len(), 5);
}
