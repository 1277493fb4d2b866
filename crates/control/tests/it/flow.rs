use std::time::Duration;

use ferry_sim::SimConfig;
use serde_json::{json, Value};

use crate::harness::{eventually, temp_db, until_some, Cp, Opts};
use crate::inproc::InProc;

async fn call_worker(http: &reqwest::Client, grant: &Value, payload: Value) -> reqwest::Response {
    let url = format!("{}/v1/completions", grant["url"].as_str().unwrap());
    http.post(url)
        .json(&json!({"auth_data": grant, "session_id": null, "payload": payload}))
        .send()
        .await
        .unwrap()
}

/// A real worker and control plane settle on v2 tokens: once the worker's reports announce
/// `ferry_mac` (after the control plane's answer offered it), its grants carry a `ferry_mac`
/// and no RSA `ferry_sig`; the worker serves them and refuses one whose cost was changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_control_plane_switch_to_mac_tokens() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (_ep, key, _) = cp
        .endpoint("macs", json!({"cold_workers": 1, "max_workers": 1}))
        .await;
    // Poll one request (a delivered grant polled again is re-routed with a fresh grant) until
    // the worker has announced v2.
    let mut idx = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let grant = loop {
        let r = cp.route("macs", &key, 10.0, idx).await;
        idx = r["request_idx"].as_u64().unwrap_or(idx);
        if r.get("ferry_mac").is_some() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no v2 grant: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(grant.get("ferry_sig").is_none(), "{grant}");
    assert_eq!(grant["ferry_mac"].as_str().unwrap().len(), 43);
    let payload = json!({"model": "m", "prompt": "hi", "max_tokens": 1});
    let mut cheaper = grant.clone();
    cheaper["cost"] = json!(0.5);
    let res = call_worker(&cp.http, &cheaper, payload.clone()).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "token_bad_signature"
    );
    assert_eq!(call_worker(&cp.http, &grant, payload).await.status(), 200);
}

/// Scale up from zero on a queued request; waiting answer then served; route → worker call →
/// reports → delete_requests; same request_idx never counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_scales_from_zero_and_completes() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (ep_id, key, _) = cp
        .endpoint("ep1", json!({"cold_workers": 0, "max_workers": 2}))
        .await;
    assert!(cp.workers(ep_id).await.is_empty());

    let first = cp.route("ep1", &key, 50.0, 0).await;
    assert!(first.get("url").is_none(), "{first}");
    let idx = first["request_idx"].as_u64().unwrap();
    assert!(idx > 0);
    let status = first["status"].as_str().unwrap();
    assert!(
        status.contains("total workers: ")
            && status.contains("loading workers: ")
            && status.contains("standby workers: ")
            && status.contains("error workers: "),
        "{status}"
    );
    assert_eq!(cp.control.queue_len(), 1);
    // A second, later request queues behind it.
    let second = cp.route("ep1", &key, 50.0, 0).await;
    let idx2 = second["request_idx"].as_u64().unwrap();
    assert!(idx2 > idx);

    // Polling the same idx never adds a request.
    let grant = until_some(|| async {
        let r = cp.route("ep1", &key, 50.0, idx).await;
        assert_eq!(r["request_idx"].as_u64(), Some(idx));
        if r.get("url").is_some() {
            Some(r)
        } else {
            assert!(cp.control.queue_len() <= 2);
            None
        }
    })
    .await;
    // Exactly one worker was launched for this load.
    assert_eq!(cp.provider.launches.lock().unwrap().len(), 1);
    for k in [
        "signature",
        "reqnum",
        "cost",
        "endpoint",
        "__request_id",
        "ferry_exp",
    ] {
        assert!(grant.get(k).is_some(), "missing {k} in {grant}");
    }
    // Ferry's token: v1 (RSA) until the worker's reports announce v2, then v2; never both.
    assert!(
        grant.get("ferry_sig").is_some() != grant.get("ferry_mac").is_some(),
        "one Ferry token in {grant}"
    );
    let pem = reqwest::get(format!("{}/pubkey/", cp.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pk = ferry_protocol::PublicKey::from_pem(&pem).unwrap();
    pk.verify_url(
        grant["url"].as_str().unwrap(),
        grant["signature"].as_str().unwrap(),
    )
    .unwrap();

    let resp = call_worker(
        &cp.http,
        &grant,
        json!({"model": "m", "prompt": "hi", "max_tokens": 4}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["choices"][0]["text"]
        .as_str()
        .unwrap()
        .contains("tok0"));

    // The worker's delete_requests tells us it finished: the request leaves the table, and the
    // worker's pending load drops to zero.
    let wid = grant_worker(&cp, ep_id).await;
    // (The second request was dispatched to the same worker when it became ready, in queue
    // order, and waits for its poll: 50 units stay pending.)
    eventually(|| async { cp.control.worker(wid).unwrap()["pending_load"].as_f64() == Some(50.0) })
        .await;
    // The second request is served next (it was queued behind the first).
    let r2 = cp.route("ep1", &key, 50.0, idx2).await;
    assert!(r2.get("url").is_some(), "{r2}");
    let resp = call_worker(
        &cp.http,
        &r2,
        json!({"model": "m", "prompt": "x", "max_tokens": 2}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    eventually(|| async { cp.control.worker(wid).unwrap()["pending_load"].as_f64() == Some(0.0) })
        .await;
    cp.shutdown().await;
}

async fn grant_worker(cp: &Cp, ep_id: i64) -> i64 {
    cp.wait_ready(ep_id, 1).await[0]["id"].as_i64().unwrap()
}

/// Idle workers are released after the idle limit; with cold_workers=1 the worker is stopped
/// (cold) and resumed quickly for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_after_inactivity_then_resume() {
    let cp = Cp::start(
        InProc::new(SimConfig::default(), false),
        Opts {
            idle_stop_after: Duration::from_secs(1),
            ..Opts::default()
        },
    )
    .await;
    let (ep_id, key, _) = cp
        .endpoint(
            "ep2",
            json!({"cold_workers": 1, "cold_mult": 1.0, "inactivity_timeout": 1}),
        )
        .await;
    // cold_workers=1 launches one worker, which idles out into the cold pool.
    eventually(|| async {
        let ws = cp.workers(ep_id).await;
        ws.len() == 1 && ws[0]["status"] == "stopped"
    })
    .await;
    assert!(cp.provider.running().is_empty());
    let wid = cp.workers(ep_id).await[0]["id"].as_i64().unwrap();
    // A request resumes it (no new launch).
    let r = cp.route("ep2", &key, 10.0, 0).await;
    let idx = r["request_idx"].as_u64().unwrap();
    let grant = until_some(|| async {
        let r = cp.route("ep2", &key, 10.0, idx).await;
        r.get("url").is_some().then_some(r)
    })
    .await;
    assert_eq!(
        cp.provider
            .launches
            .lock()
            .unwrap()
            .iter()
            .filter(|i| **i == wid)
            .count(),
        2
    );
    assert_eq!(cp.workers(ep_id).await.len(), 1);
    let resp = call_worker(
        &cp.http,
        &grant,
        json!({"model": "m", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    cp.shutdown().await;
}

/// A worker dying mid-load: the router stops choosing it and its request re-routes with the
/// same request_idx to the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_is_skipped_and_requests_reroute() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (ep_id, key, _) = cp
        .endpoint(
            "ep3",
            json!({"min_load": 1000, "target_util": 1.0, "max_workers": 2, "cold_workers": 0}),
        )
        .await;
    let ws = cp.wait_ready(ep_id, 2).await;
    assert_eq!(ws.len(), 2);
    let g = cp.route("ep3", &key, 10.0, 0).await;
    let idx = g["request_idx"].as_u64().unwrap();
    let dead_url = g["url"].as_str().unwrap().to_owned();
    let dead = ws.iter().find(|w| w["url"] == dead_url.as_str()).unwrap()["id"]
        .as_i64()
        .unwrap();
    cp.provider.kill(dead);
    // Gateway calls right after the death (before it is detected) all succeed: a refused
    // connection re-routes the same request to the live worker.
    for _ in 0..6 {
        let resp = cp
            .http
            .post(format!("{}/ep3/v1/completions", cp.url))
            .bearer_auth(&key)
            .json(&json!({"model": "m", "prompt": "hi", "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // The client's call fails; it retries the same request_idx and lands elsewhere.
    let r = cp.route("ep3", &key, 10.0, idx).await;
    assert_eq!(r["request_idx"].as_u64(), Some(idx));
    let before = cp.control.next_request_idx();
    // Eventually the dead worker is never chosen (stale → error → replaced).
    eventually(|| async {
        let w = cp.control.worker(dead);
        w.is_none() || w.unwrap()["status"] == "error"
    })
    .await;
    for _ in 0..10 {
        let r = cp.route("ep3", &key, 1.0, idx).await;
        if let Some(u) = r.get("url") {
            assert_ne!(u.as_str().unwrap(), dead_url);
        }
    }
    // Re-routing the same idx never consumed new indexes.
    assert_eq!(cp.control.next_request_idx(), before);
    cp.shutdown().await;
}

/// Control plane restart: endpoints and the request_idx counter survive; running workers
/// re-register from their next report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_endpoints_and_counter_and_workers_reconverge() {
    let db = temp_db();
    let provider = InProc::new(SimConfig::default(), true);
    let cp = Cp::start(
        provider.clone(),
        Opts {
            db: Some(db.clone()),
            ..Opts::default()
        },
    )
    .await;
    let (ep_id, key, _) = cp
        .endpoint(
            "ep4",
            json!({"min_load": 1, "cold_workers": 0, "max_workers": 1}),
        )
        .await;
    cp.wait_ready(ep_id, 1).await;
    let g = cp.route("ep4", &key, 1.0, 0).await;
    let last_idx = g["request_idx"].as_u64().unwrap();
    let addr = cp.addr;
    cp.shutdown().await;

    let cp = Cp::start(
        provider.clone(),
        Opts {
            db: Some(db.clone()),
            addr: Some(addr),
            ..Opts::default()
        },
    )
    .await;
    let (st, v) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["results"][0]["endpoint_name"], "ep4");
    assert_eq!(v["results"][0]["api_key"], key.as_str());
    // The worker re-converges from its reports (no new launch).
    let ws = cp.wait_ready(ep_id, 1).await;
    assert_eq!(ws.len(), 1);
    assert_eq!(provider.launches.lock().unwrap().len(), 1);
    let g2 = cp.route("ep4", &key, 1.0, 0).await;
    assert!(g2["request_idx"].as_u64().unwrap() > last_idx, "{g2}");
    assert!(g2.get("url").is_some());
    cp.shutdown().await;
    drop(provider);
    let _ = std::fs::remove_file(&db);
}

/// The OpenAI gateway: waits for a worker, relays JSON and SSE streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_relays_json_and_streams() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (_, key, _) = cp.endpoint("ep5", json!({"cold_workers": 0})).await;
    // No worker yet: the gateway waits while the autoscaler launches one.
    let resp = cp.http.post(format!("{}/ep5/v1/chat/completions", cp.url))
        .bearer_auth(&key)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
        .send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("tok0"),
        "{v}"
    );

    let resp = cp
        .http
        .post(format!("{}/ep5/v1/completions", cp.url))
        .bearer_auth(&key)
        .json(&json!({"model": "m", "prompt": "hi", "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut chunks = 0;
    let mut text = String::new();
    let mut s = resp.bytes_stream();
    use futures_util::StreamExt;
    while let Some(c) = s.next().await {
        chunks += 1;
        text.push_str(&String::from_utf8_lossy(&c.unwrap()));
    }
    assert!(chunks >= 1);
    assert!(text.contains("tok2") && text.contains("[DONE]"), "{text}");

    let (st, _) = cp
        .post("/ep5/v1/completions", Some("wrong"), json!({"prompt": "x"}))
        .await;
    assert_eq!(st, 401);
    let (st, _) = cp
        .post("/nope/v1/completions", Some(&key), json!({"prompt": "x"}))
        .await;
    assert_eq!(st, 404);
    cp.shutdown().await;
}
