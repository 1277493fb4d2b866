//! What a caller without a key can learn or make the control plane do: nothing about which
//! endpoints, workergroups or workers exist, and no body read before the key is checked.

use std::time::Duration;

use ferry_sim::SimConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Cp, Opts};
use crate::inproc::InProc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_known_names_get_the_same_answer_without_a_key() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (ep_id, key, wg) = cp.endpoint("real", json!({"cold_workers": 0})).await;
    let (ep2, _, _) = cp.endpoint("with-worker", json!({"cold_workers": 1})).await;
    cp.wait_ready(ep2, 1).await;
    let workers = cp.control.worker_states();
    // Pairs of (known thing, made-up thing), asked with a wrong key and with none.
    let pairs: Vec<(&str, Value, Value)> = vec![
        (
            "/real/v1/completions",
            json!({"prompt": "x"}),
            json!({"prompt": "x"}),
        ),
        (
            "/get_endpoint_workers/",
            json!({"id": ep_id}),
            json!({"id": ep_id + 1000}),
        ),
        (
            "/get_workergroup_workers/",
            json!({"id": wg}),
            json!({"id": wg + 1000}),
        ),
        (
            "/route/",
            json!({"endpoint": "real", "cost": 1}),
            json!({"endpoint": "made-up", "cost": 1}),
        ),
    ];
    for (path, known, unknown) in pairs {
        let unknown_path = path.replace("/real/", "/made-up/");
        for k in [Some("wrong-key"), None] {
            let a = cp.post(path, k, known.clone()).await;
            let b = cp.post(&unknown_path, k, unknown.clone()).await;
            assert_eq!(a.0, 401, "{path} {k:?}: {a:?}");
            assert_eq!(a, b, "{path} {k:?}: known and unknown answered differently");
        }
    }
    // The same for worker reports: an unknown id and a wrong mtoken are one 401.
    let known_id = workers[0].0;
    let a = cp
        .post(
            "/worker_status/",
            None,
            json!({"id": known_id, "mtoken": "x", "max_perf": 1}),
        )
        .await;
    let b = cp
        .post(
            "/worker_status/",
            None,
            json!({"id": 987_654, "mtoken": "x", "max_perf": 1}),
        )
        .await;
    assert_eq!(a.0, 401);
    assert_eq!(a, b);
    // With a real key, a made-up name is reported as such.
    let (st, _) = cp
        .post(
            "/made-up/v1/completions",
            Some(&key),
            json!({"prompt": "x"}),
        )
        .await;
    assert_eq!(st, 404);
    cp.shutdown().await;
}

async fn status_line(addr: &str, head: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
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
        "no answer within 10 s: the gateway waits for the body"
    );
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_checks_the_key_and_size_before_reading_a_body() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (_, key, _) = cp.endpoint("gw", json!({"cold_workers": 0})).await;
    let addr = cp.addr.to_string();
    // 15 MB announced, nothing sent: a wrong key is refused from the headers alone.
    let line = status_line(
        &addr,
        "POST /gw/v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer nope\r\n\
         content-length: 15000000\r\n\r\n",
    )
    .await;
    assert!(line.contains(" 401 "), "{line}");
    // With the key, a body over the limit is refused before it is read.
    let line = status_line(
        &addr,
        &format!(
            "POST /gw/v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
             content-length: 100000000\r\n\r\n"
        ),
    )
    .await;
    assert!(line.contains(" 413 "), "{line}");
    cp.shutdown().await;
}
