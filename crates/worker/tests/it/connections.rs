//! Slow and numerous clients against the worker's listeners: a slowloris flood must leave signed
//! requests served, in process (connection limit 16) and as a process under a 64-descriptor limit.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_sim::{SimConfig, SimServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{body, eventually, FakeControlPlane, TestWorker};

/// A slowloris connection: a request line and no end of headers (None if refused or reset).
async fn trickler(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .ok()?;
    Some(s)
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// One signed completion on a fresh connection; true when it was served.
async fn signed_call(url: &str, public_url: &str, idx: u64) -> bool {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let payload = json!({"model": "m", "prompt": "hello", "max_tokens": 2});
    match http
        .post(format!("{url}/v1/completions"))
        .json(&body(public_url, idx, payload))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            let v: Value = r.json().await.unwrap();
            v["choices"][0]["text"] == "tok0 tok1 "
        }
        _ => false,
    }
}

#[tokio::test]
async fn a_slowloris_flood_cannot_starve_signed_requests() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &["--assume-loaded-perf", "100", "--max-connections", "16"],
    )
    .await;
    w.wait_key().await;
    let addr = addr_of(&w.url);
    let mut first = Vec::new();
    for _ in 0..24 {
        first.push(trickler(addr).await.unwrap());
    }
    let more = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..100 {
            held.extend(trickler(addr).await);
            tokio::task::yield_now().await;
        }
        held
    });
    for idx in 1..=5 {
        assert!(
            signed_call(&w.url, "http://127.0.0.1:3000", idx).await,
            "a signed request was starved by the flood"
        );
    }
    let _held = more.await.unwrap();
    for s in first.iter_mut().take(8) {
        assert!(closed(s).await, "an old trickler was never evicted");
    }
    w.stop().await;
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `ferry-worker` under `ulimit -n 64`, 200 slowloris connections across its three listeners:
/// signed requests, `/health` on the admin listener and the side listener are still served, and
/// SIGTERM still exits cleanly.
#[tokio::test]
async fn the_worker_process_survives_slowloris_at_64_open_files() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let (port, side, admin) = (free_port(), free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0""#)
        .arg(env!("CARGO_BIN_EXE_ferry-worker"))
        .env_clear()
        .env("WORKER_PORT", port.to_string())
        .env("WORKER_HTTP_PORT", side.to_string())
        .env("FERRY_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("FERRY_LISTEN_HOST", "127.0.0.1")
        .env("PUBLIC_IPADDR", "127.0.0.1")
        .env("REPORT_ADDR", &cp.url)
        .env("CONTAINER_ID", "12")
        .env("MASTER_TOKEN", "m")
        .env("MODEL_SERVER_URL", sim.url())
        .env("BACKEND", "openai")
        .env("FERRY_ASSUME_LOADED_PERF", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut idx = 0;
    eventually(|| {
        idx += 1;
        let url = url.clone();
        async move { signed_call(&url, &url, idx).await }
    })
    .await;

    let listeners = [
        addr_of(&url),
        format!("127.0.0.1:{side}").parse().unwrap(),
        format!("127.0.0.1:{admin}").parse().unwrap(),
    ];
    let mut held = Vec::new();
    for i in 0..200 {
        held.extend(trickler(listeners[i % 3]).await);
    }
    for _ in 0..5 {
        idx += 1;
        assert!(
            signed_call(&url, &url, idx).await,
            "a signed request was starved at 64 open files"
        );
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let health = http
        .get(format!("http://127.0.0.1:{admin}/health"))
        .send()
        .await
        .expect("the admin listener was starved");
    assert!(health.status().is_success());
    let side_answer = http
        .post(format!("http://127.0.0.1:{side}/session/end"))
        .json(&json!({}))
        .send()
        .await
        .expect("the side listener was starved");
    assert!(
        side_answer.status().is_client_error(),
        "{}",
        side_answer.status()
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry-worker did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    drop(held);
}
