//! Each preset end to end against the matching sim dialect, and a custom TOML worker.

use std::time::Duration;

use ferry_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

use crate::harness::{body, eventually, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

struct Case {
    preset: &'static str,
    loaded_line: &'static str,
    route: &'static str,
    payload: Value,
    workload: f64,
}

async fn run_case(case: Case) -> Value {
    let cp = FakeControlPlane::start().await;
    let dir = std::env::temp_dir().join(format!(
        "ferry-preset-{}-{}",
        std::process::id(),
        case.preset
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("model.log");
    let sim = SimServer::start(SimConfig {
        load_time: Duration::from_millis(100),
        log_file: Some(log.clone()),
        loaded_line: case.loaded_line.to_string(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &[
            "--preset",
            case.preset,
            "--model-log",
            log.to_str().unwrap(),
            "--benchmark-runs",
            "1",
            "--benchmark-concurrency",
            "2",
            "--log-poll-ms",
            "20",
        ],
    )
    .await;
    w.wait_ready().await;
    let res = w
        .post(case.route, &body(PUBLIC_URL, 42, case.payload))
        .await;
    assert_eq!(res.status(), 200, "{}", case.preset);
    let text = res.text().await.unwrap();
    eventually(|| async { cp.statuses().iter().map(|s| s.cur_perf).sum::<f64>() == case.workload })
        .await;
    w.stop().await;
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

#[tokio::test]
async fn openai_preset_with_vllm_log_line_and_wrapped_payload() {
    let v = run_case(Case {
        preset: "vllm",
        loaded_line: "INFO:     Application startup complete.",
        route: "/v1/chat/completions",
        payload: json!({"input": {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5}}),
        workload: 5.0,
    })
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn openai_preset_streams_completions() {
    let v = run_case(Case {
        preset: "openai",
        loaded_line: "The server is fired up and ready to roll!",
        route: "/v1/completions",
        payload: json!({"model": "m", "prompt": "a", "max_tokens": 4, "stream": true}),
        workload: 4.0,
    })
    .await;
    let text = v.as_str().unwrap();
    assert!(text.contains("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn tgi_preset() {
    let v = run_case(Case {
        preset: "tgi",
        loaded_line: r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"Connected","target":"text_generation_router"}"#,
        route: "/generate",
        payload: json!({"inputs": "a b", "parameters": {"max_new_tokens": 4}}),
        workload: 4.0,
    })
    .await;
    assert_eq!(v["details"]["generated_tokens"], 4);
}

#[tokio::test]
async fn llamacpp_preset() {
    let v = run_case(Case {
        preset: "llamacpp",
        loaded_line: "0.00.247.433 I srv  llama_server: model loaded",
        route: "/completion",
        payload: json!({"prompt": "a", "n_predict": 3}),
        workload: 3.0,
    })
    .await;
    assert_eq!(v["tokens_predicted"], 3);
}

#[tokio::test]
async fn comfyui_preset_counts_resolution_and_steps() {
    let v = run_case(Case {
        preset: "comfyui",
        loaded_line: "BACKENDS_READY",
        route: "/generate/sync",
        payload: json!({"input": {"request_id": "r1", "modifier": "Text2Image",
            "modifications": {"prompt": "x", "width": 1024, "height": 1024, "steps": 28}}}),
        workload: 100.0,
    })
    .await;
    assert!(v.is_object(), "{v}");
}

#[tokio::test]
async fn hello_preset_echoes() {
    let v = run_case(Case {
        preset: "hello",
        loaded_line: "infer server has started",
        route: "/generate",
        payload: json!({"prompt": "hi", "max_tokens": 2}),
        workload: 2.0,
    })
    .await;
    assert_eq!(v["prompt"], "hi");
}

#[tokio::test]
async fn custom_toml_worker() {
    let cp = FakeControlPlane::start().await;
    let dir = std::env::temp_dir().join(format!("ferry-custom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("model.log");
    let toml_path = dir.join("worker.toml");
    std::fs::write(
        &toml_path,
        format!(
            r#"
model_log = "{}"
benchmark_runs = 1

[[route]]
path = "/my/generate"
model_path = "/generate"
workload = "parameters.max_new_tokens * 2"
parallel = false
max_queue_time = 30.0

[readiness]
loaded = ["my model is up"]
error = ["my model broke"]
health_endpoint = "/health"

[benchmark]
payload = {{ inputs = "warm", parameters = {{ max_new_tokens = 2 }} }}
concurrency = 1
"#,
            log.display()
        ),
    )
    .unwrap();
    let sim = SimServer::start(SimConfig {
        log_file: Some(log.clone()),
        loaded_line: "my model is up".into(),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &["--config", toml_path.to_str().unwrap()],
    )
    .await;
    w.wait_ready().await;
    let res = w
        .post(
            "/my/generate",
            &body(
                PUBLIC_URL,
                1,
                json!({"inputs": "a", "parameters": {"max_new_tokens": 3}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["details"]["generated_tokens"], 3);
    // Only the declared route is served.
    assert_eq!(
        w.post("/generate", &body(PUBLIC_URL, 2, json!({})))
            .await
            .status(),
        404
    );
    eventually(|| async { cp.statuses().iter().map(|s| s.cur_perf).sum::<f64>() == 6.0 }).await;
    sim.state.append_log("fatal: my model broke").unwrap();
    eventually(|| async {
        cp.statuses()
            .last()
            .is_some_and(|s| s.error_msg == "my model broke")
    })
    .await;
    w.stop().await;
}

struct CapHooks;

impl ferry_worker::hooks::Hooks for CapHooks {
    fn workload(&self, _route: &str, payload: &Value, _preset: f64) -> f64 {
        payload["prompt"].as_str().map_or(0.0, |p| p.len() as f64)
    }
    fn prepare(
        &self,
        _route: &str,
        mut payload: Value,
    ) -> Result<Value, ferry_worker::hooks::Rejection> {
        if payload["max_tokens"].as_u64().is_some_and(|n| n > 8) {
            return Err(ferry_worker::hooks::Rejection::new("max_tokens above 8"));
        }
        payload["max_tokens"] = json!(2);
        Ok(payload)
    }
}

#[tokio::test]
async fn code_hooks_count_workload_and_rewrite_payloads() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = TestWorker::start_with(
        &cp.url,
        &sim.url(),
        &["--assume-loaded-perf", "10"],
        Some(std::sync::Arc::new(CapHooks)),
    )
    .await;
    w.wait_key().await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 1, json!({"prompt": "abcdef", "max_tokens": 5})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["usage"]["completion_tokens"], 2,
        "the hook rewrote max_tokens"
    );
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 2, json!({"prompt": "a", "max_tokens": 50})),
        )
        .await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "max_tokens above 8"})
    );
    eventually(|| async { cp.statuses().iter().map(|s| s.cur_perf).sum::<f64>() == 6.0 }).await;
    w.stop().await;
}
