//! Reports: fields, schedule, failover, outage and recovery, final flush.

use std::collections::BTreeSet;

use ferry_sim::{SimConfig, SimServer};
use serde_json::json;

use crate::harness::{body, eventually, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

#[tokio::test]
async fn loading_worker_sends_a_heartbeat_with_every_field() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    // The model log never says "loaded": the worker stays loading.
    let log = std::env::temp_dir().join(format!("ferry-never-{}.log", std::process::id()));
    let w = TestWorker::start(&cp.url, &sim.url(), &["--model-log", log.to_str().unwrap()]).await;
    eventually(|| async { !cp.statuses().is_empty() }).await;
    let s = &cp.statuses()[0];
    assert_eq!(s.id, 7);
    assert_eq!(s.loadtime, 0.0);
    assert_eq!(s.max_perf, 0.0);
    assert_eq!(s.url, PUBLIC_URL);
    assert_eq!(s.version, "1.1.0");
    assert!(s.disk_usage > 0.0);
    // Every key PyWorker sends is present on the wire.
    let raw = serde_json::to_value(s).unwrap();
    for k in [
        "id",
        "mtoken",
        "version",
        "loadtime",
        "cur_load",
        "rej_load",
        "new_load",
        "error_msg",
        "max_perf",
        "cur_perf",
        "cur_capacity",
        "max_capacity",
        "num_requests_working",
        "num_requests_recieved",
        "additional_disk_usage",
        "disk_usage",
        "working_request_idxs",
        "url",
    ] {
        assert!(raw.get(k).is_some(), "missing {k}");
    }
    w.stop().await;
}

/// The worker says it checks v2 tokens (`ferry_mac`) only after a report answer offers them:
/// Vast's control plane, which never does, never sees the key.
#[tokio::test]
async fn ferry_mac_is_announced_only_when_offered() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &["--assume-loaded-perf", "100", "--heartbeat-s", "1"],
    )
    .await;
    eventually(|| async { cp.statuses().len() >= 2 }).await;
    assert!(cp.statuses().iter().all(|s| !s.ferry_mac));
    cp.offer_mac();
    eventually(|| async { cp.statuses().iter().any(|s| s.ferry_mac) }).await;
    w.stop().await;

    // Without a master token there is no key to check with: never announced.
    let cp = FakeControlPlane::start().await;
    cp.offer_mac();
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &[
            "--assume-loaded-perf",
            "100",
            "--heartbeat-s",
            "1",
            "--master-token",
            "",
        ],
    )
    .await;
    eventually(|| async { cp.statuses().len() >= 3 }).await;
    assert!(cp.statuses().iter().all(|s| !s.ferry_mac));
    w.stop().await;
}

#[tokio::test]
async fn control_plane_outage_loses_no_report() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = TestWorker::start(&cp.url, &sim.url(), &["--assume-loaded-perf", "100"]).await;
    w.wait_key().await;
    for i in 0..3 {
        let res = w
            .post(
                "/v1/completions",
                &body(PUBLIC_URL, i, json!({"prompt": "x", "max_tokens": 1})),
            )
            .await;
        assert_eq!(res.status(), 200);
    }
    eventually(|| async { cp.finished().len() == 3 }).await;
    cp.set_down(true);
    for i in 3..8 {
        let res = w
            .post(
                "/v1/completions",
                &body(PUBLIC_URL, i, json!({"prompt": "x", "max_tokens": 1})),
            )
            .await;
        assert_eq!(
            res.status(),
            200,
            "the request path never waits on the control plane"
        );
    }
    let tracker = w.state.tracker().clone();
    eventually(|| async { tracker.finished_pending() == 5 }).await;
    cp.set_down(false);
    eventually(|| async { cp.finished().len() == 8 }).await;
    let idxs: BTreeSet<u64> = cp.finished().iter().map(|r| r.request_idx).collect();
    assert_eq!(idxs, (0..8).collect());
    // Every served unit of work is reported exactly once across all accepted status reports.
    eventually(|| async { cp.statuses().iter().map(|s| s.cur_perf).sum::<f64>() == 800.0 }).await;
    let received: f64 = cp.statuses().iter().map(|s| s.new_load).sum();
    assert_eq!(received, 800.0);
    w.stop().await;
}

#[tokio::test]
async fn reports_fail_over_across_the_report_addr_list() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let addrs = format!("http://{dead},{}", cp.url);
    let w = TestWorker::start(&addrs, &sim.url(), &["--assume-loaded-perf", "100"]).await;
    w.wait_key().await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 9, json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    eventually(|| async { cp.finished_for(9).len() == 1 }).await;
    eventually(|| async { !cp.statuses().is_empty() }).await;
    w.stop().await;
}

#[tokio::test]
async fn shutdown_flushes_the_last_reports() {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    // A long tick: without the final flush nothing would be sent before the worker stops.
    let w = TestWorker::start(
        &cp.url,
        &sim.url(),
        &["--assume-loaded-perf", "100", "--report-tick-ms", "60000"],
    )
    .await;
    w.wait_key().await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 10, json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    w.stop().await;
    assert_eq!(cp.finished_for(10).len(), 1);
    assert!(cp.statuses().iter().any(|s| s.cur_perf == 100.0));
}
