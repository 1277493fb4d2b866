//! Loading, health, the model log, live control.

use std::time::Duration;

use ferry_sim::{SimConfig, SimKnobs, DEFAULT_LOADED_LINE, LOADING_MESSAGE};
use serde_json::{json, Value};

use crate::support::{
    assert_settled, client, eventually, get, post, post_json, start, stats, temp_log,
};

#[tokio::test]
async fn everything_is_503_while_loading_then_200() {
    let sim = start(SimConfig {
        load_time: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let resp = get(&sim, "/health").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": {"code": 503, "message": LOADING_MESSAGE, "type": "unavailable_error"}})
    );
    assert_eq!(get(&sim, "/v1/models").await.status(), 503);
    assert_eq!(get(&sim, "/info").await.status(), 503);
    post_json(&sim, "/v1/completions", &json!({"prompt": "x"}), 503).await;
    post_json(&sim, "/generate", &json!({"inputs": "x"}), 503).await;

    eventually("the model loads", || async {
        get(&sim, "/health").await.status() == 200
    })
    .await;
    let body: Value = get(&sim, "/health").await.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));
    post_json(&sim, "/v1/completions", &json!({"prompt": "x"}), 200).await;
    let s = stats(&sim).await;
    assert_eq!((s.requests, s.errors, s.completed), (3, 2, 1));
    assert_settled(&s);
}

#[tokio::test]
async fn log_gets_the_loaded_line_after_load_time() {
    let log = temp_log("load");
    let sim = start(SimConfig {
        load_time: Duration::from_millis(200),
        log_file: Some(log.clone()),
        ..SimConfig::default()
    })
    .await;
    let early = std::fs::read_to_string(&log).unwrap();
    assert!(early.contains("loading model"), "{early:?}");
    assert!(!early.contains(DEFAULT_LOADED_LINE), "{early:?}");
    assert_eq!(get(&sim, "/health").await.status(), 503);

    eventually("the loaded line is logged", || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains(DEFAULT_LOADED_LINE)
    })
    .await;
    // Logged only once the model really is loaded.
    assert_eq!(get(&sim, "/health").await.status(), 200);

    sim.state
        .append_log("Traceback (most recent call last):")
        .unwrap();
    post_json(
        &sim,
        "/sim/control",
        &json!({"log": "RuntimeError: Engine"}),
        200,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[lines.len() - 3..],
        [
            DEFAULT_LOADED_LINE,
            "Traceback (most recent call last):",
            "RuntimeError: Engine"
        ]
    );
    std::fs::remove_file(&log).unwrap();
}

#[tokio::test]
async fn custom_loaded_line_is_written_at_once_without_load_time() {
    let log = temp_log("instant");
    let _sim = start(SimConfig {
        log_file: Some(log.clone()),
        loaded_line: "llama_server: model loaded".into(),
        ..SimConfig::default()
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().last(), Some("llama_server: model loaded"));
    std::fs::remove_file(&log).unwrap();
}

#[tokio::test]
async fn request_log_has_one_line_per_model_request() {
    let log = temp_log("requests");
    let sim = start(SimConfig {
        request_log: Some(log.clone()),
        ..SimConfig::default()
    })
    .await;
    post_json(
        &sim,
        "/v1/completions",
        &json!({"prompt": "a\nb", "max_tokens": 1}),
        200,
    )
    .await;
    post_json(&sim, "/generate", &json!({"inputs": "c"}), 200).await;
    post_json(&sim, "/sim/control", &json!({"healthy": true}), 200).await;
    assert_eq!(get(&sim, "/health").await.status(), 200);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert!(lines[0].starts_with("/v1/completions {"), "{text:?}");
    assert!(lines[0].contains(r#""a\nb""#), "{text:?}");
    assert!(lines[1].starts_with("/generate {"), "{text:?}");
    std::fs::remove_file(&log).unwrap();
}

#[tokio::test]
async fn unwritable_log_fails_start() {
    let result = ferry_sim::SimServer::start(SimConfig {
        log_file: Some(temp_log("missing-dir").join("model.log")),
        ..SimConfig::default()
    })
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn control_toggles_health_but_not_generation() {
    let sim = start(SimConfig::default()).await;
    let knobs: SimKnobs = serde_json::from_value(
        post_json(&sim, "/sim/control", &json!({"healthy": false}), 200).await,
    )
    .unwrap();
    assert!(!knobs.healthy && knobs.loaded);
    let resp = get(&sim, "/health").await;
    assert_eq!(resp.status(), 503);
    // An unhealthy server still generates: the worker's health loop must catch it.
    post_json(&sim, "/v1/completions", &json!({}), 200).await;

    post_json(&sim, "/sim/control", &json!({"healthy": true}), 200).await;
    assert_eq!(get(&sim, "/health").await.status(), 200);

    sim.state.set_healthy(false);
    assert_eq!(get(&sim, "/health").await.status(), 503);
}

#[tokio::test]
async fn control_changes_live_knobs() {
    let sim = start(SimConfig::default()).await;
    let knobs: SimKnobs = serde_json::from_value(
        post_json(
            &sim,
            "/sim/control",
            &json!({"error_rate": 1.0, "token_delay_ms": 2, "ttft_ms": 1, "stall_ms": 0}),
            200,
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        knobs,
        SimKnobs {
            healthy: true,
            loaded: true,
            error_rate: 1.0,
            stall_ms: 0,
            token_delay_ms: 2,
            ttft_ms: 1
        }
    );
    post_json(&sim, "/v1/completions", &json!({}), 500).await;
    post_json(&sim, "/sim/control", &json!({"error_rate": 0.0}), 200).await;
    post_json(&sim, "/v1/completions", &json!({}), 200).await;

    // Live stall: a short client timeout proves the headers are held back.
    post_json(&sim, "/sim/control", &json!({"stall_ms": 30000}), 200).await;
    let err = client()
        .post(format!("{}/echo", sim.url()))
        .json(&json!({}))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());

    // Reload: 503 until loaded again.
    post_json(
        &sim,
        "/sim/control",
        &json!({"stall_ms": 0, "loaded": false}),
        200,
    )
    .await;
    assert_eq!(get(&sim, "/health").await.status(), 503);
    post_json(&sim, "/sim/control", &json!({"loaded": true}), 200).await;
    assert_eq!(get(&sim, "/health").await.status(), 200);
}

#[tokio::test]
async fn control_refuses_typos_and_bad_rates() {
    let sim = start(SimConfig::default()).await;
    let resp = post(&sim, "/sim/control", &json!({"healthyy": false})).await;
    assert_eq!(resp.status(), 400);
    let resp = post(&sim, "/sim/control", &json!({"error_rate": 2.0})).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(get(&sim, "/health").await.status(), 200);
}
