//! Route → call → retry against the scripted fakes.

use std::time::Duration;

use ferry_client::{Error, RequestOptions, RequestStatus, Tracker};
use serde_json::{json, Value};

use crate::fake::{client, dead_url, FakeControlPlane, FakeWorker, RouteAnswer, WorkerAnswer};

fn ok_answer() -> WorkerAnswer {
    WorkerAnswer::Json(200, json!({"choices": [{"text": "hello"}]}))
}

/// Collects every status the tracker goes through (polls are 10 ms+ apart, so none is missed).
fn record(tracker: &Tracker) -> tokio::task::JoinHandle<Vec<RequestStatus>> {
    let mut rx = tracker.subscribe();
    tokio::spawn(async move {
        let mut seen = vec![rx.borrow_and_update().status];
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().status;
            if seen.last() != Some(&s) {
                seen.push(s);
            }
            if s.is_final() {
                break;
            }
        }
        seen
    })
}

#[tokio::test]
async fn polling_keeps_request_idx_and_cost_then_forwards_the_grant_whole() {
    let w = FakeWorker::start(vec![ok_answer()]).await;
    let cp = FakeControlPlane::start(vec![
        RouteAnswer::Waiting(Some(42)),
        RouteAnswer::Waiting(None),
        RouteAnswer::Ready(w.url.clone(), 42),
    ])
    .await;
    let ep = client(&cp.url).endpoint("ep", "ep-key");
    let tracker = Tracker::new();
    let statuses = record(&tracker);
    let opts = RequestOptions {
        cost: 37.5,
        tracker: Some(tracker.clone()),
        ..RequestOptions::default()
    };
    let res = ep
        .request("/v1/completions", &json!({"prompt": "hi"}), &opts)
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().unwrap()["choices"][0]["text"], "hello");
    assert_eq!(res.info.request_idx, 42);
    assert_eq!(res.info.worker_url, w.url);

    // Same cost and request_idx on every poll, and the SDK's body shape.
    assert_eq!(cp.indices(), vec![0, 42, 42]);
    for b in cp.bodies() {
        let keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{b}");
        assert_eq!(b["endpoint"], "ep");
        assert_eq!(b["api_key"], "ep-key");
        assert_eq!(b["cost"], 37.5);
        assert_eq!(b["replay_timeout"], 60.0);
    }
    assert!(cp
        .auth_headers()
        .iter()
        .all(|h| h.as_deref() == Some("Bearer ep-key")));

    // The worker got the whole route answer (unknown keys included) as auth_data.
    let reqs = w.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].0, "/v1/completions");
    assert_eq!(reqs[0].1["auth_data"], cp.grants()[0]);
    assert_eq!(reqs[0].1["auth_data"]["future_key"], json!({"kept": true}));
    assert_eq!(reqs[0].1["session_id"], Value::Null);
    assert_eq!(reqs[0].1["payload"], json!({"prompt": "hi"}));

    let seen = statuses.await.unwrap();
    // The recorder may start after the request did, so New/Queued may be seen or not.
    assert!(
        seen.ends_with(&[
            RequestStatus::Polling,
            RequestStatus::InProgress,
            RequestStatus::Complete
        ]),
        "{seen:?}"
    );
    assert_eq!(tracker.progress().request_idx, 42);
}

#[tokio::test]
async fn reroutes_on_refused_429_and_5xx_with_the_same_request_idx() {
    let w = FakeWorker::start(vec![
        WorkerAnswer::Json(429, json!({"error": "queue full"})),
        WorkerAnswer::Json(503, json!({"error": "busy"})),
        ok_answer(),
    ])
    .await;
    let dead = dead_url().await;
    let cp = FakeControlPlane::start(vec![
        RouteAnswer::Ready(dead.clone(), 7),
        RouteAnswer::Ready(w.url.clone(), 7),
        RouteAnswer::Ready(w.url.clone(), 7),
        RouteAnswer::Ready(w.url.clone(), 7),
    ])
    .await;
    let tracker = Tracker::new();
    let statuses = record(&tracker);
    let opts = RequestOptions {
        tracker: Some(tracker.clone()),
        ..RequestOptions::default()
    };
    let res = client(&cp.url)
        .endpoint("ep", "k")
        .request("/generate", &json!({}), &opts)
        .await
        .unwrap();
    assert_eq!(res.info.retries, 3);
    assert_eq!(cp.indices(), vec![0, 7, 7, 7]);
    assert_eq!(w.requests().len(), 3);
    assert_eq!(tracker.progress().retries, 3);
    assert!(statuses.await.unwrap().contains(&RequestStatus::Retrying));
}

#[tokio::test]
async fn route_5xx_and_408_are_retried() {
    let w = FakeWorker::start(vec![ok_answer()]).await;
    let cp = FakeControlPlane::start(vec![
        RouteAnswer::Status(503, "down"),
        RouteAnswer::Status(408, "slow"),
        RouteAnswer::Ready(w.url.clone(), 3),
    ])
    .await;
    let res = client(&cp.url)
        .endpoint("ep", "k")
        .request("/x", &json!({}), &RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(res.info.retries, 2);
    assert_eq!(cp.indices(), vec![0, 0, 0]);
}

#[tokio::test]
async fn worker_4xx_is_final_and_typed() {
    let w = FakeWorker::start(vec![
        WorkerAnswer::Json(422, json!({"error": "bad payload"})),
        ok_answer(),
    ])
    .await;
    let cp = FakeControlPlane::start(vec![RouteAnswer::Ready(w.url.clone(), 1)]).await;
    let tracker = Tracker::new();
    let opts = RequestOptions {
        tracker: Some(tracker.clone()),
        ..RequestOptions::default()
    };
    let err = client(&cp.url)
        .endpoint("ep", "k")
        .request("/x", &json!({}), &opts)
        .await
        .unwrap_err();
    match &err {
        Error::WorkerError { status, body } => {
            assert_eq!(*status, 422);
            assert!(body.contains("bad payload"), "{body}");
        }
        other => panic!("expected WorkerError, got {other:?}"),
    }
    assert_eq!((err.code(), err.status()), ("worker_error", Some(422)));
    assert_eq!(cp.bodies().len(), 1);
    assert_eq!(w.requests().len(), 1);
    assert_eq!(tracker.status(), RequestStatus::Errored);
}

#[tokio::test]
async fn route_4xx_is_final_and_typed() {
    let cp = FakeControlPlane::start(vec![RouteAnswer::Status(
        401,
        r#"{"error": "Authentication failed"}"#,
    )])
    .await;
    cp.set_fallback(RouteAnswer::Status(500, "must not be called"));
    let err = client(&cp.url)
        .endpoint("ep", "wrong")
        .request("/x", &json!({}), &RequestOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RouteRejected { status: 401, body } if body.contains("Authentication failed")),
        "{err:?}"
    );
    assert_eq!(err.code(), "route_rejected");
    assert_eq!(cp.bodies().len(), 1);
}

#[tokio::test]
async fn retries_are_bounded() {
    let w = FakeWorker::start(vec![WorkerAnswer::Json(503, json!({"error": "x"})); 10]).await;
    let cp = FakeControlPlane::start(vec![]).await;
    cp.set_fallback(RouteAnswer::Ready(w.url.clone(), 5));
    let opts = RequestOptions {
        max_retries: 2,
        ..RequestOptions::default()
    };
    let err = client(&cp.url)
        .endpoint("ep", "k")
        .request("/x", &json!({}), &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WorkerError { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(w.requests().len(), 3);

    // retry = false: the first failure is final.
    let opts = RequestOptions {
        retry: false,
        ..RequestOptions::default()
    };
    let before = w.requests().len();
    let err = client(&cp.url)
        .endpoint("ep", "k")
        .request("/x", &json!({}), &opts)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(w.requests().len(), before + 1);
}

#[tokio::test]
async fn overall_timeout_while_no_worker_is_ready() {
    let cp = FakeControlPlane::start(vec![]).await;
    cp.set_fallback(RouteAnswer::Waiting(Some(9)));
    let tracker = Tracker::new();
    let opts = RequestOptions {
        timeout: Some(Duration::from_millis(200)),
        tracker: Some(tracker.clone()),
        ..RequestOptions::default()
    };
    let err = client(&cp.url)
        .endpoint("ep", "k")
        .request("/x", &json!({}), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(err.code(), "timeout");
    assert!(cp.bodies().len() >= 2, "polled {} times", cp.bodies().len());
    assert!(cp.indices()[1..].iter().all(|i| *i == 9));
    assert_eq!(tracker.status(), RequestStatus::Errored);
}

#[tokio::test]
async fn dropping_the_request_marks_it_cancelled() {
    let cp = FakeControlPlane::start(vec![]).await;
    cp.set_fallback(RouteAnswer::Waiting(Some(1)));
    let tracker = Tracker::new();
    let opts = RequestOptions {
        tracker: Some(tracker.clone()),
        ..RequestOptions::default()
    };
    let ep = client(&cp.url).endpoint("ep", "k");
    let payload = json!({});
    let fut = ep.request("/x", &payload, &opts);
    let _ = tokio::time::timeout(Duration::from_millis(50), fut).await;
    assert_eq!(tracker.status(), RequestStatus::Cancelled);
}

#[tokio::test]
async fn control_plane_down_is_a_transport_error_after_retries() {
    let dead = dead_url().await;
    let opts = RequestOptions {
        max_retries: 1,
        ..RequestOptions::default()
    };
    let err = client(&dead)
        .endpoint("ep", "k")
        .request("/x", &json!({}), &opts)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "transport", "{err:?}");
}

#[tokio::test]
async fn direct_worker_gets_a_placeholder_grant_without_routing() {
    let w = FakeWorker::start(vec![ok_answer()]).await;
    let c = client(&dead_url().await);
    let res = c
        .worker(format!("{}/", w.url))
        .request("/x", &json!({"a": 1}), &RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(res.info.status, 200);
    let body = &w.requests()[0].1;
    for k in [
        "cost",
        "endpoint",
        "reqnum",
        "request_idx",
        "signature",
        "url",
    ] {
        assert!(body["auth_data"].get(k).is_some(), "{k} missing: {body}");
    }
    assert_eq!(body["auth_data"]["url"], w.url.as_str());
}
