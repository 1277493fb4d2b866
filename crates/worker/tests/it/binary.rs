//! The lean `ferry-worker` binary as a process: configuration errors, a signed request served end
//! to end, and a clean exit on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

use crate::harness::{body, eventually, FakeControlPlane};

const BIN: &str = env!("CARGO_BIN_EXE_ferry-worker");

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits for the process to exit, killing it if it has not after `limit` (a hang guard).
async fn exit_code(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry-worker did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_configuration_is_one_line_and_exit_64() {
    let out = Command::new(BIN)
        .env("CONTAINER_ID", "not-a-number")
        .env("WORKER_PORT", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ferry-worker: CONTAINER_ID: must be an integer"),
        "{err}"
    );
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn serves_a_signed_request_and_exits_cleanly_on_sigterm() {
    serve_and_stop("1").await;
}

#[tokio::test]
async fn serves_on_a_thread_pool_too() {
    serve_and_stop("2").await;
}

/// One signed request through the binary on `threads` runtime threads, then SIGTERM.
async fn serve_and_stop(threads: &str) {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .env_clear()
        .env("WORKER_PORT", port.to_string())
        .env("WORKER_HTTP_PORT", free_port().to_string())
        .env("FERRY_LISTEN_HOST", "127.0.0.1")
        .env("PUBLIC_IPADDR", "127.0.0.1")
        .env("REPORT_ADDR", &cp.url)
        .env("CONTAINER_ID", "12")
        .env("MASTER_TOKEN", "m")
        .env("MODEL_SERVER_URL", sim.url())
        .env("BACKEND", "openai")
        .env("FERRY_ASSUME_LOADED_PERF", "100")
        .env("FERRY_LOG_FORMAT", "json")
        .env("FERRY_WORKER_THREADS", threads)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let payload = json!({"model": "m", "prompt": "hello", "max_tokens": 3});
    // Until it listens the connect fails; until the key is fetched it answers 401.
    let mut answer = None;
    for _ in 0..500 {
        let sent = http
            .post(format!("{url}/v1/completions"))
            .json(&body(&url, 1, payload.clone()))
            .send()
            .await;
        if let Ok(r) = sent {
            if r.status().is_success() {
                answer = Some(r.json::<Value>().await.unwrap());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = answer.expect("the worker never served the request");
    assert_eq!(answer["choices"][0]["text"], "tok0 tok1 tok2 ");
    // A forged grant is refused.
    let mut forged = body(&url, 2, payload);
    forged["auth_data"]["url"] = json!("http://127.0.0.1:1");
    let r = http
        .post(format!("{url}/v1/completions"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The finished request is reported, then SIGTERM drains and exits 0.
    eventually(|| async { !cp.finished_for(1).is_empty() }).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(30)).await,
        Some(0)
    );
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    // JSON logs (FERRY_LOG_FORMAT=json): one object per line.
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{logs}"
    );
    assert!(logs.contains("ferry worker stopped"), "{logs}");
}
