//! Failure knobs: error rate, injected status, stall, disconnects, client and server going away.

use std::time::Duration;

use ferry_sim::{token_text, SimConfig};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::{assert_settled, client, eventually, post, post_json, read_sse, start, stats};

#[tokio::test]
async fn error_rate_one_fails_every_model_request() {
    let sim = start(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    for path in ["/v1/completions", "/v1/chat/completions", "/completion"] {
        let body = post_json(&sim, path, &json!({"prompt": "x"}), 500).await;
        assert_eq!(body["error"]["code"], 500, "{path}");
        assert_eq!(body["error"]["type"], "server_error");
    }
    let body = post_json(&sim, "/generate", &json!({"inputs": "x"}), 500).await;
    assert_eq!(body["error_type"], "generation");
    // Not model routes: unaffected.
    assert_eq!(crate::support::get(&sim, "/health").await.status(), 200);
    let s = stats(&sim).await;
    assert_eq!((s.requests, s.errors, s.completed), (4, 4, 0));
    assert_settled(&s);
}

#[tokio::test]
async fn error_schedule_is_determined_by_the_seed() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let sim = start(SimConfig {
            error_rate: 0.5,
            seed,
            ..SimConfig::default()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..32 {
            out.push(post(&sim, "/echo", &json!({})).await.status().as_u16());
        }
        out
    }
    let a = statuses(42).await;
    assert_eq!(a, statuses(42).await);
    assert!(a.contains(&200) && a.contains(&500), "{a:?}");
}

#[tokio::test]
async fn per_request_status_is_answered_in_the_dialects_shape() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/v1/completions",
        &json!({"sim": {"status": 503}}),
        503,
    )
    .await;
    assert_eq!(body["error"]["type"], "unavailable_error");
    let body = post_json(
        &sim,
        "/generate",
        &json!({"inputs": "x", "sim": {"status": 429}}),
        429,
    )
    .await;
    assert_eq!(body["error_type"], "overloaded");
    let body = post_json(
        &sim,
        "/generate/sync",
        &json!({"input": {"modifier": "M", "sim": {"status": 500}}}),
        500,
    )
    .await;
    assert!(body["detail"].is_string());
    // A 2xx status is no failure.
    post_json(
        &sim,
        "/v1/completions",
        &json!({"sim": {"status": 200}}),
        200,
    )
    .await;
    let s = stats(&sim).await;
    assert_eq!((s.errors, s.completed), (3, 1));
}

#[tokio::test]
async fn disconnect_after_cuts_the_stream_mid_body() {
    let sim = start(SimConfig {
        disconnect_after: Some(3),
        ..SimConfig::default()
    })
    .await;
    let resp = post(
        &sim,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 10, "stream": true}),
    )
    .await;
    let sse = read_sse(resp).await;
    assert!(sse.error.is_some(), "body ended cleanly: {:?}", sse.raw);
    let texts: Vec<Value> = sse
        .json()
        .iter()
        .map(|c| c["choices"][0]["text"].clone())
        .collect();
    assert_eq!(
        texts,
        (0..3).map(|i| json!(token_text(i))).collect::<Vec<_>>()
    );
    assert!(!sse.raw.contains("[DONE]"));

    // A generation shorter than the cut point completes.
    let sse = read_sse(
        post(
            &sim,
            "/v1/completions",
            &json!({"max_tokens": 2, "stream": true}),
        )
        .await,
    )
    .await;
    assert!(sse.error.is_none());

    let s = stats(&sim).await;
    assert_eq!((s.errors, s.completed, s.tokens_generated), (1, 1, 5));
    assert_settled(&s);
}

#[tokio::test]
async fn per_request_disconnect_after_applies_to_every_stream_dialect() {
    let sim = start(SimConfig::default()).await;
    let cases = [
        (
            "/generate_stream",
            json!({"inputs": "x", "parameters": {"max_new_tokens": 5}}),
        ),
        (
            "/completion",
            json!({"prompt": "x", "n_predict": 5, "stream": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [], "max_tokens": 5, "stream": true}),
        ),
    ];
    for (path, mut body) in cases {
        body["sim"] = json!({"disconnect_after": 2});
        let sse = read_sse(post(&sim, path, &body).await).await;
        assert!(sse.error.is_some(), "{path} ended cleanly");
    }
    assert_eq!(stats(&sim).await.errors, 3);
}

#[tokio::test]
async fn disconnect_after_on_a_non_stream_request_fails_the_response() {
    let sim = start(SimConfig::default()).await;
    let result = client()
        .post(format!("{}/v1/completions", sim.url()))
        .json(&json!({"max_tokens": 5, "sim": {"disconnect_after": 1}}))
        .send()
        .await;
    // The cut may land before or after the headers are read; either way no body arrives.
    match result {
        Err(_) => {}
        Ok(resp) => assert!(resp.bytes().await.is_err()),
    }
}

#[tokio::test]
async fn stall_holds_back_the_headers() {
    let sim = start(SimConfig {
        stall: Some(Duration::from_secs(30)),
        ..SimConfig::default()
    })
    .await;
    let timeout = Duration::from_millis(200);
    for stream in [false, true] {
        let err = client()
            .post(format!("{}/v1/completions", sim.url()))
            .json(&json!({"stream": stream}))
            .timeout(timeout)
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
    // A per-request stall of zero overrides the configured one.
    post_json(
        &sim,
        "/v1/completions",
        &json!({"sim": {"stall_ms": 0}}),
        200,
    )
    .await;
    // Clients that gave up count as cancelled.
    eventually("stalled requests settle", || async {
        let s = stats(&sim).await;
        s.cancelled == 2 && s.completed == 1 && s.in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn per_request_stall_holds_back_the_headers() {
    let sim = start(SimConfig::default()).await;
    let err = client()
        .post(format!("{}/generate", sim.url()))
        .json(&json!({"inputs": "x", "sim": {"stall_ms": 30000}}))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn client_dropping_a_stream_stops_generation_and_counts_cancelled() {
    let sim = start(SimConfig {
        token_delay: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let resp = post(
        &sim,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 100000, "stream": true}),
    )
    .await;
    let mut body = resp.bytes_stream();
    let mut received = 0;
    while received < 2 {
        let chunk = body.next().await.unwrap().unwrap();
        received += chunk.windows(2).filter(|w| w == b"\n\n").count();
    }
    drop(body);
    eventually("the dropped stream is cancelled", || async {
        let s = stats(&sim).await;
        s.cancelled == 1 && s.in_flight == 0
    })
    .await;
    let produced = stats(&sim).await.tokens_generated;
    assert!((2..100000).contains(&produced), "{produced} tokens");
    // Generation really stopped: nothing more is produced afterwards.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(stats(&sim).await.tokens_generated, produced);
    assert_settled(&stats(&sim).await);
}

#[tokio::test]
async fn server_shutdown_resets_in_flight_streams() {
    let sim = start(SimConfig {
        token_delay: Duration::from_millis(10),
        ..SimConfig::default()
    })
    .await;
    let resp = post(
        &sim,
        "/generate_stream",
        &json!({"inputs": "x", "parameters": {"max_new_tokens": 100000}}),
    )
    .await;
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    let state = sim.state.clone();
    sim.shutdown().await;
    let mut error = None;
    while let Some(next) = body.next().await {
        if let Err(e) = next {
            error = Some(e);
            break;
        }
    }
    assert!(error.is_some(), "stream ended cleanly after a crash");
    let s = state.stats();
    assert_eq!((s.cancelled, s.in_flight), (1, 0));
}
