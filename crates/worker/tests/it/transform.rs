//! `[route.response]` through the real worker in front of the sim: whole JSON answers and SSE
//! streams reshaped, model errors mapped to statuses, answers that are not JSON refused with 502,
//! and a bad table refused at start.

use std::time::Duration;

use axum::routing::post;
use ferry_protocol::RequestStatus;
use ferry_sim::{SimConfig, SimServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::harness::{body, eventually, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

/// Writes a worker TOML file and returns its path.
fn toml_file(text: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ferry-transform-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn worker(cp: &FakeControlPlane, model_url: &str, toml: &str, extra: &[&str]) -> TestWorker {
    let path = toml_file(toml);
    let mut args = vec![
        "--config",
        path.to_str().unwrap(),
        "--assume-loaded-perf",
        "100",
    ];
    args.extend_from_slice(extra);
    let w = TestWorker::start(&cp.url, model_url, &args).await;
    w.wait_key().await;
    w
}

const COMPLETION_TEXT: &str = r#"
[[route]]
path = "/v1/completions"
workload = "max_tokens"

[route.response]
pick = { text = "choices.0.text", tokens = "usage.completion_tokens" }
"#;

#[tokio::test]
async fn an_openai_completion_reduced_to_its_text() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = worker(&cp, &sim.url(), COMPLETION_TEXT, &[]).await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 1, json!({"prompt": "a b", "max_tokens": 3})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let len: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = res.text().await.unwrap();
    assert_eq!(len, text.len(), "the reshaped body's own length");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, json!({"text": "tok0 tok1 tok2 ", "tokens": 3}));
    eventually(|| async { !cp.finished_for(1).is_empty() }).await;
    assert_eq!(cp.finished_for(1)[0].status, RequestStatus::Success);
    w.stop().await;
}

#[tokio::test]
async fn a_stream_is_reshaped_event_by_event_as_it_arrives() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig {
        token_delay: Duration::from_millis(40),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let w = worker(&cp, &sim.url(), COMPLETION_TEXT, &[]).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                2,
                json!({"prompt": "a", "max_tokens": 5, "stream": true}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-length").is_none());
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    // The first reshaped event reached us while the model was still generating: no buffering.
    let stats = sim.state.stats();
    assert!(stats.tokens_generated < 5, "{stats:?}");
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let texts: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .collect();
    for (i, v) in texts.iter().take(5).enumerate() {
        assert_eq!(v, &json!({"text": format!("tok{i} ")}), "{text}");
    }
    eventually(|| async { !cp.finished_for(2).is_empty() }).await;
    assert_eq!(cp.finished_for(2)[0].status, RequestStatus::Success);
    w.stop().await;
}

#[tokio::test]
async fn a_comfyui_answer_reduced_to_its_images() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let toml = r#"
[[route]]
path = "/generate/sync"
parallel = false

[route.response]
pick = { id = "id", images = "output.*.local_path" }

[[route.response.error]]
field = "status"
equals = "failed"
status = 500
"#;
    let w = worker(&cp, &sim.url(), toml, &[]).await;
    let payload = json!({"input": {"request_id": "r1", "modifier": "Text2Image",
        "modifications": {"prompt": "a cat", "steps": 2}}});
    let res = w
        .post("/generate/sync", &body(PUBLIC_URL, 3, payload))
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{v}");
    assert!(images[0].as_str().unwrap().ends_with(".png"), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    w.stop().await;
}

#[tokio::test]
async fn model_errors_are_mapped_to_the_declared_status() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let toml = r#"
[[route]]
path = "/v1/completions"

[route.response]
pick = { text = "choices.0.text" }

[[route.response.error]]
model_status = 500
status = 503

[[route]]
path = "/echo"

[[route.response.error]]
field = "status"
equals = "failed"
status = 500
"#;
    let w = worker(&cp, &sim.url(), toml, &[]).await;
    // A status rule: the model's 500 becomes 503, with the model's own error body.
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                4,
                json!({"prompt": "a", "max_tokens": 2, "sim": {"status": 500}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], 500, "not reshaped: {v}");
    // A field rule on a 200: the answer says it failed.
    let res = w
        .post("/echo", &body(PUBLIC_URL, 5, json!({"status": "failed"})))
        .await;
    assert_eq!(res.status(), 500);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "failed"})
    );
    let res = w
        .post("/echo", &body(PUBLIC_URL, 6, json!({"status": "ok"})))
        .await;
    assert_eq!(res.status(), 200);
    eventually(|| async { !cp.finished_for(5).is_empty() && !cp.finished_for(6).is_empty() }).await;
    assert_eq!(cp.finished_for(5)[0].status, RequestStatus::Error);
    assert_eq!(cp.finished_for(6)[0].status, RequestStatus::Success);
    w.stop().await;
}

/// A model server whose `/text` answers 200 with plain text.
async fn text_model() -> String {
    let app = axum::Router::new().route("/text", post(|| async { "not json at all" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_answer_that_is_not_json_is_a_502_not_a_panic() {
    let cp = FakeControlPlane::start().await;
    let model = text_model().await;
    let toml = r#"
[[route]]
path = "/text"

[route.response]
wrap = "result"
"#;
    let w = worker(&cp, &model, toml, &[]).await;
    let res = w.post("/text", &body(PUBLIC_URL, 7, json!({}))).await;
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "upstream_not_json", "{v}");
    eventually(|| async { !cp.finished_for(7).is_empty() }).await;
    assert_eq!(cp.finished_for(7)[0].status, RequestStatus::Error);
    // The worker is fine afterwards.
    let res = w.post("/text", &body(PUBLIC_URL, 8, json!({}))).await;
    assert_eq!(res.status(), 502);
    w.stop().await;
}

#[tokio::test]
async fn an_answer_past_the_size_limit_is_a_502() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = worker(
        &cp,
        &sim.url(),
        COMPLETION_TEXT,
        &["--max-body-bytes", "1024", "--body-budget-bytes", "1024"],
    )
    .await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 9, json!({"prompt": "a", "max_tokens": 400})),
        )
        .await;
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "upstream_too_large", "{v}");
    w.stop().await;
}

#[test]
fn a_bad_response_table_stops_the_worker_at_start_with_exit_64() {
    let path = toml_file(
        r#"
[[route]]
path = "/v1/completions"
[route.response]
drop = ["choices..text"]
"#,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-worker"))
        .args(["--config", path.to_str().unwrap(), "--worker-port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "ferry-worker: BACKEND: route /v1/completions: response.drop: \"choices..text\" has an empty part"
        ),
        "{err}"
    );
}
