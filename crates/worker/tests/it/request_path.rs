//! The request path: statuses, admission, forwarding, signature checks.

use std::time::Duration;

use ferry_protocol::{FerryClaims, RequestStatus, TokenKey};
use ferry_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

use crate::harness::{auth_data, body, eventually, key, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

async fn setup(sim: SimConfig, extra: &[&str]) -> (FakeControlPlane, SimServer, TestWorker) {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(sim).await.unwrap();
    let mut flags = vec!["--assume-loaded-perf", "100"];
    flags.extend_from_slice(extra);
    let worker = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    if !extra.contains(&"--unsecured") {
        worker.wait_key().await;
    }
    (cp, sim, worker)
}

#[tokio::test]
async fn signed_request_is_proxied_and_reported() {
    let (cp, _sim, w) = setup(SimConfig::default(), &[]).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                11,
                json!({"model": "m", "prompt": "hello there", "max_tokens": 4}),
            ),
        )
        .await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    eventually(|| async { !cp.finished_for(11).is_empty() }).await;
    let rec = &cp.finished_for(11)[0];
    assert_eq!(rec.status, RequestStatus::Success);
    assert!(rec.success);
    assert!(rec.entered_queue_at > 0.0);
    assert!(rec.work_started_at >= rec.entered_queue_at);
    assert!(rec.work_completed_at >= rec.work_started_at);

    // The served workload (pass-through preset: Vast's default 100) shows up as cur_perf once.
    eventually(|| async { cp.statuses().iter().map(|s| s.cur_perf).sum::<f64>() == 100.0 }).await;
    let last = cp.statuses().last().cloned().unwrap();
    assert_eq!(last.id, 7);
    assert_eq!(last.mtoken, "mtoken-secret");
    assert_eq!(last.url, PUBLIC_URL);
    assert_eq!(last.max_perf, 100.0);
    assert!(last.loadtime > 0.0);
    assert_eq!(last.error_msg, "");
}

#[tokio::test]
async fn bad_bodies_get_422_with_vast_bodies() {
    let (_cp, _sim, w) = setup(SimConfig::default(), &[]).await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/v1/completions", w.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "invalid JSON"})
    );

    let res = w.post("/v1/completions", &json!({})).await;
    assert_eq!(res.status(), 422);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["auth_data"], "field missing");
    assert_eq!(v["payload"], "field missing");

    let mut auth = auth_data(PUBLIC_URL, 1);
    auth.as_object_mut().unwrap().remove("signature");
    let res = w
        .post(
            "/v1/completions",
            &json!({"auth_data": auth, "payload": {}}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["auth_data"]["signature"], "missing parameter");
}

#[tokio::test]
async fn bad_signature_is_401_and_counted_rejected() {
    let (cp, sim, w) = setup(SimConfig::default(), &[]).await;
    // Signed for another worker's url, presented with ours.
    let mut b = body(PUBLIC_URL, 21, json!({"prompt": "x", "max_tokens": 1}));
    b["auth_data"]["signature"] = json!(key().sign_url("http://10.0.0.1:1").unwrap());
    let res = w.post("/v1/completions", &b).await;
    assert_eq!(res.status(), 401);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "bad_signature");
    eventually(|| async { !cp.finished_for(21).is_empty() }).await;
    assert_eq!(cp.finished_for(21)[0].status, RequestStatus::Rejected);
    assert!(!cp.finished_for(21)[0].success);
    eventually(|| async { cp.statuses().iter().map(|s| s.rej_load).sum::<f64>() == 100.0 }).await;
    assert_eq!(
        sim.state.stats().requests,
        0,
        "a rejected request must not reach the model"
    );
}

#[tokio::test]
async fn once_our_signature_is_known_others_are_refused_and_respellings_accepted() {
    let (_cp, sim, w) = setup(SimConfig::default(), &[]).await;
    let payload = json!({"prompt": "x", "max_tokens": 1});
    // The valid signature verifies (RSA) and is remembered with its bytes.
    let good = body(PUBLIC_URL, 41, payload.clone());
    assert_eq!(w.post("/v1/completions", &good).await.status(), 200);
    // A well-formed signature over another url, presented for ours: other bytes than the one
    // valid signature, refused (without an RSA operation, which the answer cannot show).
    let mut forged = body(PUBLIC_URL, 42, payload.clone());
    forged["auth_data"]["signature"] = json!(key().sign_url("http://10.0.0.1:1").unwrap());
    let res = w.post("/v1/completions", &forged).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "bad_signature");
    // Garbage that is not base64 of the key's length: refused too.
    let mut garbage = body(PUBLIC_URL, 43, payload.clone());
    garbage["auth_data"]["signature"] = json!("AAAA");
    assert_eq!(w.post("/v1/completions", &garbage).await.status(), 401);
    // The valid signature with a line break inside, which Python's b64decode skips: the same
    // bytes, so still accepted, as PyWorker accepts it.
    let sig = good["auth_data"]["signature"].as_str().unwrap().to_owned();
    let mut respelled = body(PUBLIC_URL, 44, payload);
    respelled["auth_data"]["signature"] = json!(format!("{}\n{}", &sig[..64], &sig[64..]));
    assert_eq!(w.post("/v1/completions", &respelled).await.status(), 200);
    assert_eq!(
        sim.state.stats().requests,
        2,
        "only the two valid requests reach the model"
    );
}

#[tokio::test]
async fn requests_are_refused_until_the_key_is_loaded() {
    let cp = FakeControlPlane::start().await;
    cp.set_down(true);
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let w = TestWorker::start(&cp.url, &sim.url(), &["--assume-loaded-perf", "100"]).await;
    let b = body(PUBLIC_URL, 31, json!({"prompt": "x", "max_tokens": 1}));
    let res = w.post("/v1/completions", &b).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "no_public_key");
    cp.set_down(false);
    // The fetch retries with backoff 1, 2, 4 s...; the key arrives on a later attempt.
    w.wait_key().await;
    assert_eq!(w.post("/v1/completions", &b).await.status(), 200);
}

#[tokio::test]
async fn unsecured_accepts_any_signature() {
    let (_cp, _sim, w) = setup(SimConfig::default(), &["--unsecured", "true"]).await;
    let mut b = body(PUBLIC_URL, 41, json!({"prompt": "x", "max_tokens": 1}));
    b["auth_data"]["signature"] = json!("not-a-signature");
    assert_eq!(w.post("/v1/completions", &b).await.status(), 200);
}

#[tokio::test]
async fn queue_time_over_limit_is_429_with_retry_after() {
    let sim = SimConfig {
        token_delay: Duration::from_millis(50),
        ..SimConfig::default()
    };
    // max_perf 100/s and workload 100 per request: one request in flight means a 1 s wait.
    let (cp, _sim, w) = setup(sim, &["--max-queue-time", "0.5"]).await;
    let slow = body(PUBLIC_URL, 51, json!({"prompt": "x", "max_tokens": 40}));
    let url = w.url.clone();
    let first = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/completions"))
            .json(&slow)
            .send()
            .await
            .unwrap()
            .status()
    });
    let tracker = w.state.tracker().clone();
    eventually(|| async { tracker.in_flight() == 1 }).await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 52, json!({"prompt": "x", "max_tokens": 1})),
        )
        .await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(first.await.unwrap(), 200);
    eventually(|| async { !cp.finished_for(52).is_empty() }).await;
    assert_eq!(cp.finished_for(52)[0].status, RequestStatus::Rejected);
}

#[tokio::test]
async fn model_status_and_body_pass_through() {
    let (cp, _sim, w) = setup(SimConfig::default(), &[]).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                61,
                json!({"prompt": "x", "max_tokens": 1, "sim": {"status": 503}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 503);
    assert!(res.json::<Value>().await.unwrap().get("error").is_some());
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                62,
                json!({"prompt": "x", "max_tokens": 1, "sim": {"status": 400}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 400);
    eventually(|| async { !cp.finished_for(61).is_empty() && !cp.finished_for(62).is_empty() })
        .await;
    // A model 5xx is an error in the reports; a 4xx is the client's problem, served normally.
    assert_eq!(cp.finished_for(61)[0].status, RequestStatus::Error);
    assert_eq!(cp.finished_for(62)[0].status, RequestStatus::Success);
}

#[tokio::test]
async fn model_server_down_is_502_json() {
    let cp = FakeControlPlane::start().await;
    // Bind and drop a listener to get a port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let w = TestWorker::start(
        &cp.url,
        &format!("http://{dead}"),
        &["--assume-loaded-perf", "100"],
    )
    .await;
    w.wait_key().await;
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 71, json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["code"], "upstream_connect");
    eventually(|| async { !cp.finished_for(71).is_empty() }).await;
    assert_eq!(cp.finished_for(71)[0].status, RequestStatus::Error);
}

#[tokio::test]
async fn stalled_model_hits_first_byte_timeout_504() {
    let (cp, _sim, w) = setup(SimConfig::default(), &["--first-byte-timeout-s", "1"]).await;
    let res = w
        .post(
            "/v1/completions",
            &body(
                PUBLIC_URL,
                81,
                json!({"prompt": "x", "max_tokens": 1, "sim": {"stall_ms": 5000}}),
            ),
        )
        .await;
    assert_eq!(res.status(), 504);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "upstream_timeout"
    );
    eventually(|| async { !cp.finished_for(81).is_empty() }).await;
    assert_eq!(cp.finished_for(81)[0].status, RequestStatus::Error);
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_counts_cancelled() {
    let sim = SimConfig {
        token_delay: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let (cp, sim, w) = setup(sim, &[]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(format!("{}/v1/completions", w.url))
        .json(&body(
            PUBLIC_URL,
            91,
            json!({"prompt": "x", "max_tokens": 200}),
        ))
        .send()
        .await;
    assert!(err.is_err(), "the client gave up first");
    eventually(|| async { !cp.finished_for(91).is_empty() }).await;
    let rec = &cp.finished_for(91)[0];
    assert_eq!(rec.status, RequestStatus::Cancelled);
    assert!(rec.success, "Vast counts a cancel as success=true");
    assert_eq!(rec.work_completed_at, 0.0);
    // The model server saw its client (the worker) go away too.
    let state = sim.state.clone();
    eventually(|| async { state.stats().cancelled == 1 }).await;
}

#[tokio::test]
async fn fifo_routes_run_one_at_a_time_in_arrival_order() {
    let sim = SimConfig {
        token_delay: Duration::from_millis(30),
        ..SimConfig::default()
    };
    let (_cp, sim, w) = setup(sim, &["--fifo", "true"]).await;
    // The first request is the longest: in parallel it would finish last.
    let sizes = [12u32, 6, 1];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tracker = w.state.tracker().clone();
    for (i, n) in sizes.iter().enumerate() {
        let b = body(
            PUBLIC_URL,
            100 + i as u64,
            json!({"prompt": "x", "max_tokens": n}),
        );
        let url = w.url.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(format!("{url}/v1/completions"))
                .json(&b)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.bytes().await.unwrap();
            tx.send(i).unwrap();
        });
        // Arrival order is the order we send, once each is admitted.
        eventually(|| async { tracker.in_flight() == i + 1 }).await;
        // The model never sees more than one request at a time.
        assert!(sim.state.stats().in_flight <= 1);
    }
    let mut order = Vec::new();
    for _ in 0..sizes.len() {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, vec![0, 1, 2]);
}

#[tokio::test]
async fn ferry_token_expiry_and_replay_are_enforced_when_required() {
    let (_cp, _sim, w) = setup(SimConfig::default(), &["--require-ferry-token", "true"]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let grant = |idx: u64, exp: u64| {
        let mut b = body(PUBLIC_URL, idx, json!({"prompt": "x", "max_tokens": 1}));
        let claims = FerryClaims {
            url: PUBLIC_URL.to_string(),
            endpoint: "test-endpoint".to_string(),
            request_idx: idx,
            reqnum: idx,
            cost: 100.0,
            exp,
        };
        b["auth_data"]["ferry_exp"] = json!(exp);
        b["auth_data"]["ferry_sig"] = json!(key().sign_ferry(&claims).unwrap());
        b
    };
    // Plain Vast grant without the token: refused in strict mode.
    let res = w
        .post(
            "/v1/completions",
            &body(PUBLIC_URL, 200, json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(res.status(), 401);

    let good = grant(201, now + 60);
    assert_eq!(w.post("/v1/completions", &good).await.status(), 200);
    let replay = w.post("/v1/completions", &good).await;
    assert_eq!(replay.status(), 401);
    assert_eq!(
        replay.json::<Value>().await.unwrap()["code"],
        "token_replay"
    );

    let expired = w.post("/v1/completions", &grant(202, now - 5)).await;
    assert_eq!(expired.status(), 401);
    let code = expired.json::<Value>().await.unwrap()["code"].clone();
    assert!(code.as_str().unwrap().contains("expired"), "{code}");

    // A grant for another worker's url is refused even with a valid Vast signature.
    let mut other = grant(204, now + 60);
    other["auth_data"]["url"] = json!("http://10.9.9.9:1");
    other["auth_data"]["signature"] = json!(key().sign_url("http://10.9.9.9:1").unwrap());
    let res = w.post("/v1/completions", &other).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "wrong_worker");

    // A tampered cost breaks the token's signature.
    let mut tampered = grant(203, now + 60);
    tampered["auth_data"]["cost"] = json!(1.0);
    assert_eq!(w.post("/v1/completions", &tampered).await.status(), 401);
}

/// v2 tokens (`ferry_mac`, HMAC under a key derived from the worker's master token): accepted,
/// bound to every claim and to this worker's key, single use when required; v1 (RSA) tokens
/// from an older control plane still work; a worker without a master token refuses v2.
#[tokio::test]
async fn ferry_mac_tokens_and_compatibility() {
    let (_cp, _sim, w) = setup(SimConfig::default(), &["--require-ferry-token", "true"]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |idx: u64, exp: u64| FerryClaims {
        url: PUBLIC_URL.to_string(),
        endpoint: "test-endpoint".to_string(),
        request_idx: idx,
        reqnum: idx,
        cost: 100.0,
        exp,
    };
    // The harness's worker runs with --master-token mtoken-secret.
    let mine = TokenKey::derive("mtoken-secret").unwrap();
    let v2 = |key: &TokenKey, idx: u64, exp: u64| {
        let mut b = body(PUBLIC_URL, idx, json!({"prompt": "x", "max_tokens": 1}));
        b["auth_data"]["ferry_exp"] = json!(exp);
        b["auth_data"]["ferry_mac"] = json!(key.mac(&claims(idx, exp)));
        b
    };
    let code = |res: reqwest::Response| async move {
        let status = res.status().as_u16();
        let v = res.json::<Value>().await.unwrap_or_default();
        (status, v["code"].as_str().unwrap_or_default().to_string())
    };

    let good = v2(&mine, 501, now + 60);
    assert_eq!(w.post("/v1/completions", &good).await.status(), 200);
    assert_eq!(
        code(w.post("/v1/completions", &good).await).await,
        (401, "token_replay".into())
    );
    let expired = v2(&mine, 502, now - 1);
    assert_eq!(
        code(w.post("/v1/completions", &expired).await).await,
        (401, "token_expired".into())
    );
    // Another worker's key (another master token): refused.
    let theirs = TokenKey::derive("another-workers-secret").unwrap();
    assert_eq!(
        code(w.post("/v1/completions", &v2(&theirs, 503, now + 60)).await).await,
        (401, "token_bad_signature".into())
    );
    // A tampered cost or request_idx: refused.
    let mut cheaper = v2(&mine, 505, now + 60);
    cheaper["auth_data"]["cost"] = json!(1.0);
    assert_eq!(w.post("/v1/completions", &cheaper).await.status(), 401);
    let mut moved = v2(&mine, 506, now + 60);
    moved["auth_data"]["request_idx"] = json!(507);
    assert_eq!(w.post("/v1/completions", &moved).await.status(), 401);
    // Token stripped down to its expiry: missing, not a plain Vast grant.
    let mut stripped = v2(&mine, 508, now + 60);
    stripped["auth_data"]
        .as_object_mut()
        .unwrap()
        .remove("ferry_mac");
    assert_eq!(
        code(w.post("/v1/completions", &stripped).await).await,
        (401, "token_missing".into())
    );

    // Compatibility: an old control plane's v1 (RSA) token still verifies, once.
    let mut v1 = body(PUBLIC_URL, 510, json!({"prompt": "x", "max_tokens": 1}));
    v1["auth_data"]["ferry_exp"] = json!(now + 60);
    v1["auth_data"]["ferry_sig"] = json!(key().sign_ferry(&claims(510, now + 60)).unwrap());
    assert_eq!(w.post("/v1/completions", &v1).await.status(), 200);
    assert_eq!(w.post("/v1/completions", &v1).await.status(), 401);
    // The RSA signature is decoded leniently (Python's b64decode skips stray characters), so a
    // respelled copy still verifies: it is still the same grant, used twice.
    let mut respelled = v1.clone();
    let sig = respelled["auth_data"]["ferry_sig"]
        .as_str()
        .unwrap()
        .to_string();
    respelled["auth_data"]["ferry_sig"] = json!(format!("{sig}!"));
    assert_eq!(
        code(w.post("/v1/completions", &respelled).await).await,
        (401, "token_replay".into())
    );
    // A MAC moved into ferry_sig is not an RSA signature.
    let mut swapped = v2(&mine, 511, now + 60);
    let tag = swapped["auth_data"]["ferry_mac"].take();
    swapped["auth_data"]
        .as_object_mut()
        .unwrap()
        .remove("ferry_mac");
    swapped["auth_data"]["ferry_sig"] = tag;
    assert_eq!(
        code(w.post("/v1/completions", &swapped).await).await,
        (401, "token_bad_signature".into())
    );

    // A worker without a master token cannot check a v2 token: refused, never waved through.
    let (_cp2, _sim2, bare) = setup(SimConfig::default(), &["--master-token", ""]).await;
    assert_eq!(
        code(
            bare.post("/v1/completions", &v2(&mine, 520, now + 60))
                .await
        )
        .await,
        (401, "token_no_key".into())
    );
}

#[tokio::test]
async fn unknown_route_and_oversized_body() {
    let (_cp, _sim, w) = setup(SimConfig::default(), &["--max-body-bytes", "1000"]).await;
    let big = body(PUBLIC_URL, 300, json!({"prompt": "x".repeat(5000)}));
    let res = w.post("/v1/completions", &big).await;
    assert_eq!(res.status(), 413);
    let res = reqwest::Client::new()
        .get(format!("{}/v1/completions", w.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
}
