//! `/update_workers/`: a rolling update replaces every running worker of a workergroup under
//! load, each new one ready before an old one leaves, and no request is lost or run twice; the
//! logs routes tell what happened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_sim::SimConfig;
use serde_json::{json, Value};

use crate::harness::{eventually, Cp, Opts};
use crate::inproc::InProc;

/// One request as Vast's client makes it: route (polling while queued), call the worker, and
/// on a failed call route the same request again. Returns the number of failed calls.
async fn one_request(url: &str, key: &str, prompt: &str) -> Result<u32, String> {
    let http = reqwest::Client::new();
    let mut idx = 0u64;
    let mut failures = 0;
    for _ in 0..200 {
        let r: Value = http
            .post(format!("{url}/route/"))
            .bearer_auth(key)
            .json(&json!({"endpoint": "roll", "cost": 4, "request_idx": idx}))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        idx = r["request_idx"]
            .as_u64()
            .ok_or(format!("no request_idx: {r}"))?;
        let Some(worker) = r["url"].as_str() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let body =
            json!({"auth_data": r, "payload": {"model": "m", "prompt": prompt, "max_tokens": 4}});
        match http
            .post(format!("{worker}/v1/completions"))
            .json(&body)
            .send()
            .await
        {
            Ok(res) if res.status() == 200 => return Ok(failures),
            Ok(_) | Err(_) => failures += 1,
        }
    }
    Err(format!("{prompt}: gave up after 200 attempts"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_load_replaces_every_worker_and_loses_no_request() {
    let log = std::env::temp_dir().join(format!("ferry-rollout-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let sim = SimConfig {
        token_delay: Duration::from_millis(5),
        request_log: Some(log.clone()),
        ..SimConfig::default()
    };
    let cp = Cp::start(InProc::new(sim, false), Opts::default()).await;
    let (ep, key, wg) = cp
        .endpoint(
            "roll",
            json!({"cold_workers": 2, "max_workers": 4, "cold_mult": 1.0}),
        )
        .await;
    let before: Vec<i64> = cp
        .wait_ready(ep, 2)
        .await
        .iter()
        .map(|w| w["id"].as_i64().unwrap())
        .collect();

    // Load: 4 clients sending requests back to back until the update is over.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, key, stop) = (cp.url.clone(), key.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) || n < 5 {
                let prompt = format!("client{c}-req{n}");
                outcomes.push((prompt.clone(), one_request(&url, &key, &prompt).await));
                n += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, v) = cp
        .post(
            "/update_workers/",
            Some("acct-key"),
            json!({"workergroup_id": wg}),
        )
        .await;
    assert_eq!(
        (st, v),
        (200, json!({"success": true, "workers_to_update": 2}))
    );
    // Every old worker is replaced by a new, ready one.
    eventually(|| async {
        let ws = cp.workers(ep).await;
        let ids: Vec<i64> = ws.iter().map(|w| w["id"].as_i64().unwrap()).collect();
        let idle = ws.iter().filter(|w| w["status"] == "idle").count();
        before.iter().all(|b| !ids.contains(b)) && idle >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    let mut retried = 0;
    for c in clients {
        for (prompt, outcome) in c.await.unwrap() {
            sent += 1;
            match outcome {
                Ok(f) => retried += f,
                Err(e) => panic!("{prompt} was lost: {e}"),
            }
        }
    }
    assert!(
        sent >= 20,
        "the load ran through the update ({sent} requests)"
    );
    assert_eq!(
        retried, 0,
        "no call failed: old workers left routing before they stopped"
    );
    // None ran twice: each prompt reached a model exactly once.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        if let Some(p) = line.split('"').skip_while(|s| *s != "prompt").nth(2) {
            *seen.entry(p.to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen
        .iter()
        .filter(|(p, n)| **n > 1 && p.starts_with("client"))
        .collect();
    assert!(twice.is_empty(), "executed twice: {twice:?}");
    assert_eq!(
        seen.keys().filter(|p| p.starts_with("client")).count(),
        sent,
        "every request reached a model"
    );

    // The logs tell the story, newest last; the endpoint's key may read them, nobody else.
    let (st, logs) = cp
        .post("/get_autogroup_logs/", Some(&key), json!({"id": wg}))
        .await;
    assert_eq!(st, 200, "{logs}");
    let info0 = logs["info0"].as_str().unwrap();
    assert!(
        info0.contains("rolling update started: 2 worker(s) to replace"),
        "{info0}"
    );
    assert!(
        info0.trim_end().ends_with("rolling update finished"),
        "{info0}"
    );
    let (st, logs) = cp
        .post(
            "/get_endpoint_logs/",
            Some("acct-key"),
            json!({"id": ep, "tail": 3}),
        )
        .await;
    assert_eq!(st, 200);
    assert!(logs["info1"].as_str().unwrap().lines().count() <= 3);
    let all = logs["debug"].as_str().unwrap();
    assert!(!all.is_empty());
    let (st, full) = cp
        .post("/get_endpoint_logs/", Some("acct-key"), json!({"id": ep}))
        .await;
    assert_eq!(st, 200);
    let info1 = full["info1"].as_str().unwrap();
    assert!(info1.contains("autoscaler: launch 2 worker(s)"), "{info1}");
    assert!(
        info1.contains(&format!("worker {}: stopping -> destroying", before[0]))
            || info1.contains(&format!("worker {}: stopping -> removed", before[0])),
        "{info1}"
    );
    let (st, _) = cp
        .post("/get_endpoint_logs/", Some("wrong"), json!({"id": ep}))
        .await;
    assert_eq!(st, 401);
    let (st, v) = cp
        .post(
            "/update_workers/",
            Some(&key),
            json!({"workergroup_id": wg}),
        )
        .await;
    assert_eq!(st, 401, "only the account key updates workers: {v}");
    let (st, v) = cp
        .post(
            "/update_workers/",
            Some("acct-key"),
            json!({"workergroup_id": wg, "cancel_update": true}),
        )
        .await;
    assert_eq!((st, v), (200, json!({"success": true, "cancelled": false})));
    cp.shutdown().await;
    let _ = std::fs::remove_file(&log);
}
