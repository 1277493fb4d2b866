//! Readiness, benchmark, errors and recovery, graceful shutdown.

use std::time::Duration;

use ferry_protocol::RequestStatus;
use ferry_sim::{SimConfig, SimServer, SimState};
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::{body, eventually, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

fn log_path(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-lc-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("model.log")
}

fn quick_bench() -> Vec<&'static str> {
    vec![
        "--benchmark-runs",
        "2",
        "--benchmark-concurrency",
        "2",
        "--health-interval-ms",
        "100",
        "--log-poll-ms",
        "20",
    ]
}

#[tokio::test]
async fn loading_then_ready_from_the_log_with_a_measured_max_perf() {
    let cp = FakeControlPlane::start().await;
    let log = log_path("ready");
    let sim = SimServer::start(SimConfig {
        load_time: Duration::from_millis(300),
        log_file: Some(log.clone()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut flags = vec!["--preset", "openai", "--model-log", log.to_str().unwrap()];
    flags.extend(quick_bench());
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_ready().await;
    let statuses = cp.statuses();
    eventually(|| async {
        cp.statuses()
            .iter()
            .any(|s| s.loadtime > 0.0 && s.max_perf > 0.0 && s.error_msg.is_empty())
    })
    .await;
    assert_eq!(
        statuses[0].loadtime, 0.0,
        "the first report is a loading heartbeat"
    );
    assert_eq!(statuses[0].max_perf, 0.0);
    // The benchmark really ran against the model (warm-up + 2 rounds of 2).
    assert!(sim.state.stats().completed >= 5, "{:?}", sim.state.stats());
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                1,
                json!({"model": "m", "prompt": "a", "max_tokens": 3}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    w.stop().await;
}

#[tokio::test]
async fn benchmark_cache_lets_a_restarted_worker_skip_the_benchmark() {
    let cp = FakeControlPlane::start().await;
    let log = log_path("cache");
    let cache = log.with_file_name("has_benchmark");
    let sim = SimServer::start(SimConfig {
        log_file: Some(log.clone()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut flags = vec![
        "--preset",
        "openai",
        "--model-log",
        log.to_str().unwrap(),
        "--benchmark-cache",
        cache.to_str().unwrap(),
    ];
    flags.extend(quick_bench());
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_ready().await;
    let perf = w.state.tracker().model().max_perf;
    w.stop().await;
    let cached: f64 = std::fs::read_to_string(&cache)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(cached, perf);

    let before = sim.state.stats().completed;
    let w2 = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w2.wait_ready().await;
    assert_eq!(w2.state.tracker().model().max_perf, perf);
    assert_eq!(
        sim.state.stats().completed,
        before,
        "no benchmark request was sent"
    );
    w2.stop().await;
}

#[tokio::test]
async fn health_readiness_mode_needs_no_log() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig {
        load_time: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut flags = vec!["--preset", "tgi", "--readiness", "health"];
    flags.extend(quick_bench());
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_ready().await;
    assert!(w.state.tracker().model().max_perf > 0.0);
    w.stop().await;
}

/// A control plane, a sim writing its log, and an openai-preset worker that became ready from it.
async fn ready_openai_worker(tag: &str) -> (FakeControlPlane, SimServer, TestWorker) {
    let cp = FakeControlPlane::start().await;
    let log = log_path(tag);
    let sim = SimServer::start(SimConfig {
        log_file: Some(log.clone()),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut flags = vec!["--preset", "openai", "--model-log", log.to_str().unwrap()];
    flags.extend(quick_bench());
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_ready().await;
    (cp, sim, w)
}

#[tokio::test]
async fn health_failure_is_reported_and_recovery_clears_it() {
    let (cp, sim, w) = ready_openai_worker("health").await;
    sim.state.set_healthy(false);
    eventually(|| async {
        cp.statuses()
            .last()
            .is_some_and(|s| s.error_msg.contains("Healthcheck failed with status: 503"))
    })
    .await;
    sim.state.set_healthy(true);
    eventually(|| async { cp.statuses().last().is_some_and(|s| s.error_msg.is_empty()) }).await;
    w.stop().await;
}

#[tokio::test]
async fn error_line_then_loaded_line_recovers() {
    let (cp, sim, w) = ready_openai_worker("errline").await;
    sim.state
        .append_log("RuntimeError: Engine core died")
        .unwrap();
    eventually(|| async {
        cp.statuses()
            .last()
            .is_some_and(|s| s.error_msg == "RuntimeError: Engine")
    })
    .await;
    sim.state
        .append_log("INFO:     Application startup complete.")
        .unwrap();
    eventually(|| async { cp.statuses().last().is_some_and(|s| s.error_msg.is_empty()) }).await;
    assert!(w.state.tracker().model().is_ready());
    w.stop().await;
}

#[tokio::test]
async fn model_server_dying_is_reported_and_its_restart_recovers() {
    let cp = FakeControlPlane::start().await;
    let log = log_path("die");
    let config = SimConfig {
        log_file: Some(log.clone()),
        ..SimConfig::default()
    };
    let sim = SimServer::start(config.clone()).await.unwrap();
    let addr = sim.addr;
    let mut flags = vec!["--preset", "openai", "--model-log", log.to_str().unwrap()];
    flags.extend(quick_bench());
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_ready().await;
    sim.shutdown().await;
    eventually(|| async {
        cp.statuses()
            .last()
            .is_some_and(|s| !s.error_msg.is_empty())
    })
    .await;
    // The model server comes back on the same port.
    let listener = TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let state = SimState::new(config);
    tokio::spawn(ferry_sim::run(listener, state, async move {
        s.cancelled().await
    }));
    eventually(|| async { cp.statuses().last().is_some_and(|s| s.error_msg.is_empty()) }).await;
    w.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn benchmark_before_the_model_listens_waits_instead_of_failing_forever() {
    let cp = FakeControlPlane::start().await;
    let log = log_path("early");
    // Reserve a port, free it, and point the worker at it: nothing listens yet.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    std::fs::write(&log, "INFO:     Application startup complete.\n").unwrap();
    let mut flags = vec!["--preset", "openai", "--model-log", log.to_str().unwrap()];
    flags.extend(quick_bench());
    let w = TestWorker::start(&cp.url, &format!("http://{addr}"), &flags).await;
    // The log says loaded, but the server is not up: the worker must not be ready...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!w.state.tracker().model().is_ready());
    assert!(
        w.state.tracker().model().error_msg.is_none(),
        "no permanent error"
    );
    // ...and becomes ready once it is.
    let listener = TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(ferry_sim::run(
        listener,
        SimState::new(SimConfig::default()),
        async move { s.cancelled().await },
    ));
    w.wait_ready().await;
    w.stop().await;
    stop.cancel();
}

#[tokio::test]
async fn sigterm_lets_an_open_stream_finish_and_reports_shutting_down() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig {
        token_delay: Duration::from_millis(30),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let w = TestWorker::start(&cp.url, &sim.url(), &["--assume-loaded-perf", "100"]).await;
    w.wait_key().await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                7,
                json!({"prompt": "a", "max_tokens": 20, "stream": true}),
            ),
        )
        .await;
    let mut stream = res.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    w.signal_stop();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("[DONE]"), "the stream ran to its end: {text}");
    w.join().await;
    let rec = cp.finished_for(7);
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].status, RequestStatus::Success);
    assert!(cp
        .statuses()
        .iter()
        .any(|s| s.error_msg == ferry_worker::SHUTTING_DOWN));
}
