//! TLS, the update hook, and the admin listener.

use ferry_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

use crate::harness::{body, FakeControlPlane, TestWorker};

#[tokio::test]
async fn tls_when_use_ssl_is_true() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("ferry-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_path = dir.join("instance.crt");
    let key_path = dir.join("instance.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &[
            "--assume-loaded-perf",
            "100",
            "--use-ssl",
            "true",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    )
    .await;
    w.wait_key().await;
    assert!(w.url.starts_with("https://"));
    let public = "https://127.0.0.1:3000";
    assert_eq!(w.state.settings().public_url, public);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let res = client
        .post(format!("{}/v1/completions", w.url))
        .json(&body(public, 1, json!({"prompt": "a", "max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Plain HTTP to the TLS port fails.
    assert!(reqwest::Client::new()
        .post(format!("{}/v1/completions", w.url.replace("https", "http")))
        .json(&json!({}))
        .send()
        .await
        .is_err());
    w.stop().await;
}

#[tokio::test]
async fn update_hook_needs_the_master_token() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let marker = std::env::temp_dir().join(format!("ferry-force-update-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &[
            "--assume-loaded-perf",
            "1",
            "--force-update-file",
            marker.to_str().unwrap(),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/pyworker/update", w.url);
    let res = client.post(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "unauthorized"})
    );
    assert!(!marker.exists());
    let res = client
        .post(&url)
        .bearer_auth("mtoken-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"ok": true}));
    assert!(marker.exists());
    // The raw token (no "Bearer ") is accepted too, as PyWorker accepts it.
    let res = client
        .post(&url)
        .header("authorization", "mtoken-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    w.stop().await;
}

#[tokio::test]
async fn admin_health_ready_and_metrics() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &["--assume-loaded-perf", "50", "--admin-addr", "127.0.0.1:0"],
    )
    .await;
    w.wait_key().await;
    let admin = w.admin_url.clone().unwrap();
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{admin}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = client.get(format!("{admin}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["max_perf"], 50.0);
    let res = w
        .post(
            "/v1/completions",
            &body(
                "http://127.0.0.1:3000",
                1,
                json!({"prompt": "a", "max_tokens": 2, "stream": true}),
            ),
        )
        .await;
    res.text().await.unwrap();
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ferry_worker_requests_total",
        "ferry_worker_time_to_first_byte_seconds",
        "ferry_worker_upstream_seconds",
        "ferry_worker_stream_events_total",
        "ferry_worker_ready",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    w.signal_stop();
    // Draining: /ready says no.
    let tracker = w.state.clone();
    crate::harness::eventually(|| async { tracker.is_draining() }).await;
    w.join().await;
}
