use std::sync::Arc;
use std::time::Duration;

use ferry_control::provider::local::{LocalConfig, LocalProvider};
use ferry_control::{Control, Settings};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::{eventually, key_pem};

/// The `local` provider launching real `ferry worker` + `ferry sim-model` processes. Needs the
/// `ferry` binary (`cargo build -p ferry`); run with `cargo test -p ferry-control -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn local_provider_runs_real_processes() {
    let exe = std::env::current_exe().unwrap();
    let Some(ferry) = ferry_control::provider::ferry_exe_near(&exe) else {
        panic!(
            "target/<profile>/ferry not found next to {}; run `cargo build -p ferry`",
            exe.display()
        );
    };
    let dir = std::env::temp_dir().join(format!("ferry-local-it-{}", std::process::id()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut s = Settings::for_url(&url);
    s.signing_key_pem = Some(key_pem());
    s.api_key = Some("acct-key".into());
    s.autoscale_interval = Duration::from_millis(200);
    s.idle_stop_after = Duration::from_secs(2);
    let provider = Arc::new(LocalProvider::new(LocalConfig {
        ferry_exe: ferry,
        state_dir: dir.clone(),
        model_cmd: None,
        backend: "openai".into(),
        stop_grace: Duration::from_secs(5),
        worker_env: [
            ("FERRY_REPORT_TICK_MS".to_string(), "100".to_string()),
            ("FERRY_HEARTBEAT_S".into(), "1".into()),
        ]
        .into_iter()
        .collect(),
    }));
    let control = Control::new(s, provider.clone()).await.unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    let done = tokio::spawn(ferry_control::run(listener, control.clone(), async move {
        st.cancelled().await
    }));
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{url}/api/v0/endptjobs/"))
        .bearer_auth("acct-key")
        .json(&json!({"endpoint_name": "loc", "cold_workers": 1, "cold_mult": 1.0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ep = r["result"].as_i64().unwrap();
    http.post(format!("{url}/api/v0/workergroups/"))
        .bearer_auth("acct-key")
        .json(&json!({"endpoint_id": ep}))
        .send()
        .await
        .unwrap();
    let key = control.endpoint_key("loc").unwrap();
    // Wait until a request is served through the real processes.
    let mut idx = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let grant = loop {
        let r: serde_json::Value = http
            .post(format!("{url}/route/"))
            .bearer_auth(&key)
            .json(&json!({"endpoint": "loc", "cost": 10, "request_idx": idx}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        idx = r["request_idx"].as_u64().unwrap();
        if r.get("url").is_some() {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker became ready: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resp = http.post(format!("{}/v1/completions", grant["url"].as_str().unwrap()))
        .json(&json!({"auth_data": grant, "payload": {"model": "m", "prompt": "hi", "max_tokens": 3}}))
        .send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // It idles out into a stopped (cold) worker: processes gone, state dir kept.
    eventually(|| async { provider.running_ids().is_empty() }).await;
    assert!(dir.join("instances").read_dir().unwrap().count() >= 1);
    stop.cancel();
    done.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
