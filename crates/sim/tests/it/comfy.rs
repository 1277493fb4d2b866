//! ComfyUI API wrapper `/generate/sync` and `/echo`.

use ferry_sim::{SimConfig, DEFAULT_STEPS};
use serde_json::json;

use crate::support::{client, post_json, start, stats};

#[tokio::test]
async fn sync_generation_with_modifier_counts_steps() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(
        &sim,
        "/generate/sync",
        &json!({"input": {"request_id": "req-1", "modifier": "Text2Image",
                          "modifications": {"prompt": "a cat", "width": 512, "height": 512, "steps": 3}}}),
        200,
    )
    .await;
    assert_eq!(body["id"], "req-1");
    assert_eq!(body["status"], "completed");
    let output = &body["output"][0];
    assert!(output["filename"].as_str().unwrap().ends_with(".png"));
    assert_eq!(output["type"], "output");
    assert_eq!(output["output_type"], "images");
    let s = stats(&sim).await;
    assert_eq!((s.completed, s.tokens_generated), (1, 3));
}

#[tokio::test]
async fn sync_generation_with_workflow_reads_sampler_steps() {
    let sim = start(SimConfig::default()).await;
    let workflow = json!({
        "3": {"class_type": "KSampler", "inputs": {"steps": 4, "seed": 1}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}}
    });
    let body = post_json(
        &sim,
        "/generate/sync",
        &json!({"input": {"workflow_json": workflow}}),
        200,
    )
    .await;
    assert_eq!(body["output"][0]["node_id"], "12");
    assert_eq!(stats(&sim).await.tokens_generated, 4);

    post_json(
        &sim,
        "/generate/sync",
        &json!({"input": {"workflow_json": {"1": {"class_type": "EmptyImage", "inputs": {}}}}}),
        200,
    )
    .await;
    assert_eq!(
        stats(&sim).await.tokens_generated,
        4 + u64::from(DEFAULT_STEPS)
    );
}

#[tokio::test]
async fn sync_generation_validates_like_the_wrapper() {
    let sim = start(SimConfig::default()).await;
    let body = post_json(&sim, "/generate/sync", &json!({"prompt": "x"}), 422).await;
    assert!(body["detail"].is_string());
    post_json(&sim, "/generate/sync", &json!({"input": {}}), 422).await;
    post_json(
        &sim,
        "/generate/sync",
        &json!({"input": {"modifier": "Text2Image", "workflow_json": {"1": {}}}}),
        422,
    )
    .await;
    assert_eq!(stats(&sim).await.errors, 3);
}

#[tokio::test]
async fn echo_returns_the_body_it_got() {
    let sim = start(SimConfig::default()).await;
    let raw = r#"{"prompt":"hello",  "n": [1, 2.5, null], "nested": {"k": "v"}}"#;
    let resp = client()
        .post(format!("{}/echo", sim.url()))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), raw);
    // Overrides work on /echo too.
    post_json(&sim, "/echo", &json!({"sim": {"status": 418}}), 418).await;
    let s = stats(&sim).await;
    assert_eq!((s.requests, s.completed, s.errors), (2, 1, 1));
}
