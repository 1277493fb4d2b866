//! Sessions: PyWorker's routes, bodies and statuses, expiry, callbacks, cancellation.

use std::time::Duration;

use ferry_protocol::RequestStatus;
use ferry_sim::{SimConfig, SimServer};
use serde_json::{json, Value};

use crate::harness::{auth_data, eventually, FakeControlPlane, TestWorker};

const PUBLIC_URL: &str = "http://127.0.0.1:3000";

async fn setup(extra: &[&str]) -> (FakeControlPlane, SimServer, TestWorker) {
    let cp = FakeControlPlane::start().await;
    let sim = SimServer::start(SimConfig {
        token_delay: Duration::from_millis(20),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let mut flags = vec!["--assume-loaded-perf", "100"];
    flags.extend_from_slice(extra);
    let w = TestWorker::start(&cp.url, &sim.url(), &flags).await;
    w.wait_key().await;
    (cp, sim, w)
}

async fn create(w: &TestWorker, idx: u64, payload: Value) -> (reqwest::StatusCode, Value, Value) {
    let auth = auth_data(PUBLIC_URL, idx);
    let res = w
        .post(
            "/session/create",
            &json!({"auth_data": auth, "session_id": null, "payload": payload}),
        )
        .await;
    let status = res.status();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body, auth)
}

#[tokio::test]
async fn create_get_health_request_end() {
    let (cp, sim, w) = setup(&[]).await;
    let (status, created, auth) = create(&w, 500, json!({"lifetime": 30})).await;
    assert_eq!(status, 201);
    let id = created["session_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 13);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    let exp0 = created["expiration"].as_f64().unwrap();

    let res = w
        .post(
            "/session/health",
            &json!({"session_id": id, "session_auth": auth}),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"ok": true}));
    let res = w
        .post(
            "/session/health",
            &json!({"session_id": id, "session_auth": {"x": 1}}),
        )
        .await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "session_auth is not valid"})
    );

    // A request inside the session extends it by its lifetime.
    let res = w
        .post(
            "/v1/completions",
            &json!({"auth_data": auth, "session_id": id, "payload": {"prompt": "a", "max_tokens": 2}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = w
        .post(
            "/session/get",
            &json!({"session_id": id, "session_auth": auth}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(info["auth_data"], auth);
    assert_eq!(info["lifetime"], 30.0);
    assert!((info["expiration"].as_f64().unwrap() - (exp0 + 30.0)).abs() < 1e-6);

    // The session's own hold is part of cur_load while it lives.
    eventually(|| async {
        cp.statuses()
            .last()
            .is_some_and(|s| s.cur_load == 100.0 && s.working_request_idxs == vec![500])
    })
    .await;

    // End it through the plain-HTTP side listener, as the control plane's webhooks do.
    let side = w.side_url.clone().unwrap();
    let res = reqwest::Client::new()
        .post(format!("{side}/session/end"))
        .json(&json!({"session_id": id, "session_auth": auth}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"ended": true, "removed_session": id})
    );
    let res = w
        .post(
            "/session/end",
            &json!({"session_id": id, "session_auth": auth}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let res = w
        .post(
            "/session/health",
            &json!({"session_id": id, "session_auth": auth}),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"ok": false}));
    let res = w
        .post(
            "/v1/completions",
            &json!({"auth_data": auth, "session_id": id, "payload": {"prompt": "a"}}),
        )
        .await;
    assert_eq!(res.status(), 410);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "invalid session"})
    );
    // The hold is finished as a success; the in-session request made no record of its own.
    eventually(|| async { cp.finished_for(500).len() == 1 }).await;
    assert_eq!(cp.finished_for(500)[0].status, RequestStatus::Success);
    drop(sim);
}

#[tokio::test]
async fn missing_fields_and_limits() {
    let (_cp, _sim, w) = setup(&["--max-sessions", "1"]).await;
    let res = w.post("/session/get", &json!({"session_auth": {}})).await;
    assert_eq!(res.status(), 422);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"error": "missing session_id"})
    );
    let res = w.post("/session/get", &json!({"session_id": "nope"})).await;
    assert_eq!(res.status(), 400);
    assert_eq!((create(&w, 1, json!({})).await).0, 201);
    assert_eq!((create(&w, 2, json!({})).await).0, 429);
}

#[tokio::test]
async fn expired_sessions_are_swept_and_call_on_close() {
    let (_cp, sim, w) = setup(&["--session-gc-ms", "50"]).await;
    let before = sim.state.stats().requests;
    let (status, _, _) = create(
        &w,
        600,
        json!({"lifetime": 0.2, "on_close_route": "/echo", "on_close_payload": {"why": "done"}}),
    )
    .await;
    assert_eq!(status, 201);
    let sessions = w.state.sessions().clone();
    eventually(|| async { sessions.is_empty() }).await;
    // The callback reached the model server.
    let state = sim.state.clone();
    eventually(|| async { state.stats().requests == before + 1 }).await;
}

#[tokio::test]
async fn ending_a_session_cancels_its_in_flight_requests() {
    let (_cp, sim, w) = setup(&[]).await;
    let (_, created, auth) = create(&w, 700, json!({})).await;
    let id = created["session_id"].as_str().unwrap().to_string();
    let url = w.url.clone();
    let (a, i) = (auth.clone(), id.clone());
    let pending = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .post(format!("{url}/v1/completions"))
            .json(&json!({"auth_data": a, "session_id": i, "payload": {"prompt": "a", "max_tokens": 1000, "stream": true}}))
            .send()
            .await
            .unwrap();
        res.text().await
    });
    let state = sim.state.clone();
    eventually(|| async { state.stats().in_flight == 1 }).await;
    let res = w
        .post(
            "/session/end",
            &json!({"session_id": id, "session_auth": auth}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // The client's stream is cut short and the model stops generating.
    assert!(pending.await.unwrap().is_err());
    eventually(|| async { state.stats().cancelled == 1 }).await;
}
