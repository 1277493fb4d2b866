//! What an attacker or a broken neighbour could do to the worker: hostile payload values,
//! bodies that are large, slow or sent to the wrong place, session callbacks to arbitrary
//! addresses, and start-up failures that used to go unreported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use ferry_sim::{SimConfig, SimServer};
use ferry_worker::Worker;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::{auth_data, body, eventually, test_settings, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

async fn setup(extra: &[&str]) -> (FakeControlPlane, SimServer, TestWorker) {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let mut flags = vec!["--assume-loaded-perf", "100", "--preset", "openai"];
    flags.extend_from_slice(extra);
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_key().await;
    (cp, sim, w)
}

/// Sends raw bytes and returns the status line of the answer (the first line), or "" if the
/// connection closed without one. A 10 s read bound keeps a wrong implementation from hanging.
async fn raw_status(addr: &str, head: &str, body: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let line = read_status(&mut s).await;
    (s, line)
}

async fn read_status(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within 10 s: the server is waiting for the body"
    );
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn host(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test]
async fn payload_values_no_parser_can_hold_get_422_not_500() {
    let (_cp, _sim, w) = setup(&[]).await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for payload in [
        r#"{"model": "m", "prompt": "x", "max_tokens": 1e400}"#.to_string(),
        format!(r#"{{"model": "m", "prompt": {deep}, "max_tokens": 3}}"#),
    ] {
        let auth = auth_data(PUBLIC_URL, 1);
        let raw = format!(r#"{{"auth_data": {auth}, "payload": {payload}}}"#);
        let res = reqwest::Client::new()
            .post(format!("{}/v1/completions", w.url))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 422, "{payload:.60}: {v}");
    }
    // A finite but absurd workload is capped, and the worker keeps reporting finite numbers.
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                2,
                json!({"model": "m", "prompt": "x", "max_tokens": 1e308}),
            ),
        )
        .await;
    assert!(res.status().is_client_error() || res.status().is_success());
    assert!(w.state.tracker().model().max_perf.is_finite());
    w.stop().await;
}

#[tokio::test]
async fn unknown_route_and_oversize_declared_bodies_are_refused_before_the_body_is_read() {
    let (_cp, _sim, w) = setup(&["--max-body-bytes", "1000000"]).await;
    let addr = host(&w.url).to_string();
    // 100 MB announced, not a byte sent: the answer comes from the headers alone.
    let (_s, line) = raw_status(
        &addr,
        "POST /no/such/route HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n\r\n",
        b"",
    )
    .await;
    assert!(line.contains(" 404 "), "{line}");
    let (_s, line) = raw_status(
        &addr,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n\r\n",
        b"",
    )
    .await;
    assert!(line.contains(" 413 "), "{line}");
    // Chunked, no length announced: refused as soon as it passes the limit.
    let chunk = vec![b'x'; 600_000];
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..2 {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    let line = read_status(&mut s).await;
    assert!(line.contains(" 413 "), "{line}");
    w.stop().await;
}

#[tokio::test]
async fn buffered_bodies_share_a_bounded_budget() {
    // Each body may be 200 kB; together they may hold 64 kB each for free plus 200 kB.
    let (_cp, _sim, w) = setup(&[
        "--max-body-bytes",
        "200000",
        "--body-budget-bytes",
        "200000",
    ])
    .await;
    let addr = host(&w.url).to_string();
    let head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 190000\r\n\r\n";
    let part = vec![b' '; 150_000]; // 86 kB over the free part: two fit, a third does not
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&part).await.unwrap();
        held.push(s);
    }
    // Let the worker take in the two partial bodies, then a third over the budget is refused.
    let refused = {
        let mut line = String::new();
        for _ in 0..50 {
            let (_s, l) = raw_status(&addr, head, &part).await;
            line = l;
            if line.contains(" 503 ") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        line
    };
    assert!(refused.contains(" 503 "), "{refused}");
    // Small requests are never starved by large ones.
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                1,
                json!({"model": "m", "prompt": "x", "max_tokens": 2}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Closing the held bodies gives their budget back.
    drop(held);
    let whole = vec![b' '; 190_000];
    eventually(|| async {
        let (_s, line) = raw_status(&addr, head, &whole).await;
        line.contains(" 422 ") // read whole, then found not to be JSON
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408() {
    let (_cp, _sim, w) = setup(&["--body-timeout-s", "1"]).await;
    let mut s = TcpStream::connect(host(&w.url)).await.unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let line = read_status(&mut s).await;
    assert!(line.contains(" 408 "), "{line}");
    w.stop().await;
}

#[tokio::test]
async fn session_callbacks_reach_only_the_model_server_or_listed_origins() {
    let (_cp, _sim, w) = setup(&["--session-callback-origins", "http://127.0.0.1:9"]).await;
    let create = |idx: u64, route: &str| {
        json!({
            "auth_data": auth_data(PUBLIC_URL, idx),
            "session_id": null,
            "payload": {"lifetime": 30, "on_close_route": route, "on_close_payload": {"a": 1}},
        })
    };
    for (i, route) in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:10/x",
        "//127.0.0.1:9/x",
    ]
    .iter()
    .enumerate()
    {
        let res = w
            .post("/session/create", &create(10 + i as u64, route))
            .await;
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 422, "{route}: {v}");
        assert!(v["payload"]["on_close_route"].is_string(), "{v}");
    }
    for (i, route) in ["/session_closed", "http://127.0.0.1:9/closed"]
        .iter()
        .enumerate()
    {
        let res = w
            .post("/session/create", &create(20 + i as u64, route))
            .await;
        assert!(res.status().is_success(), "{route}: {}", res.status());
    }
    w.stop().await;
}

#[tokio::test]
async fn a_taken_port_is_reported_and_retried_until_it_frees() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port().to_string();
    let settings = test_settings(
        &cp.url,
        &sim.url(),
        &[
            "--assume-loaded-perf",
            "100",
            "--worker-port",
            &port,
            "--no-side-listener",
            "true",
        ],
    );
    let worker = Arc::new(Worker::new(settings).unwrap());
    let stop = CancellationToken::new();
    let binding = {
        let (w, stop) = (worker.clone(), stop.clone());
        tokio::spawn(async move { w.bind(&stop).await.is_some() })
    };
    // The control plane hears why this worker is not serving.
    eventually(|| async {
        cp.statuses()
            .iter()
            .any(|s| s.error_msg.contains("failed to launch") && s.error_msg.contains(&port))
    })
    .await;
    assert!(
        !binding.is_finished(),
        "the worker gave up instead of retrying"
    );
    drop(squatter);
    assert!(binding.await.unwrap(), "bound once the port came free");
    assert_eq!(worker.state().tracker().model().error_msg, None);
}

#[tokio::test]
async fn a_benchmark_that_cannot_run_is_reported_and_retried() {
    let cp = FakeControlPlane::start().await;
    let garbage = Arc::new(AtomicBool::new(true));
    let g = garbage.clone();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/v1/models",
            get(move || {
                let g = g.clone();
                async move {
                    if g.load(Ordering::SeqCst) {
                        "<html>loading</html>".to_string()
                    } else {
                        json!({"data": [{"id": "m"}]}).to_string()
                    }
                }
            }),
        )
        .route(
            "/v1/completions",
            post(|| async {
                axum::Json(json!({"choices": [{"text": "x"}], "usage": {"completion_tokens": 1}}))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model_url = format!("http://{}", listener.local_addr().unwrap());
    let server_stop = CancellationToken::new();
    let s = server_stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    let w = TestWorker::start(
        &cp.url,
        &model_url,
        &[
            "--preset",
            "openai",
            "--readiness",
            "health",
            "--model-health-endpoint",
            "/health",
            "--benchmark-runs",
            "1",
            "--benchmark-concurrency",
            "1",
        ],
    )
    .await;
    eventually(|| async {
        cp.statuses()
            .iter()
            .any(|s| s.error_msg.contains("not JSON"))
    })
    .await;
    assert!(!w.state.tracker().model().is_ready());
    // The model server comes right: the worker gets there by itself, no new log line needed.
    garbage.store(false, Ordering::SeqCst);
    w.wait_ready().await;
    eventually(|| async {
        cp.statuses()
            .last()
            .is_some_and(|s| s.error_msg.is_empty() && s.max_perf > 0.0)
    })
    .await;
    w.stop().await;
    server_stop.cancel();
}
