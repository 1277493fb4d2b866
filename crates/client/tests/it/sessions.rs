//! Session wire shapes against the scripted fakes (the real worker is in `real_worker`).

use ferry_client::{Error, RequestOptions, SessionOptions};
use serde_json::json;

use crate::fake::{client, FakeControlPlane, FakeWorker, RouteAnswer, WorkerAnswer};

#[tokio::test]
async fn session_create_request_end_shapes() {
    let w = FakeWorker::start(vec![
        WorkerAnswer::Json(
            201,
            json!({"session_id": "abcDEF0123456", "expiration": 1e9}),
        ),
        WorkerAnswer::Json(503, json!({"error": "busy"})),
        WorkerAnswer::Json(200, json!({"ok": 1})),
        WorkerAnswer::Json(
            200,
            json!({"ended": true, "removed_session": "abcDEF0123456"}),
        ),
        WorkerAnswer::Json(410, json!({"error": "session already closed"})),
    ])
    .await;
    let cp = FakeControlPlane::start(vec![RouteAnswer::Ready(w.url.clone(), 21)]).await;
    let ep = client(&cp.url).endpoint("ep", "k");
    let opts = SessionOptions {
        cost: 5.0,
        lifetime: 30.0,
        on_close_route: Some("http://127.0.0.1:1/closed".into()),
        on_close_payload: Some(json!({"why": "done"})),
        ..SessionOptions::default()
    };
    let s = ep.session(&opts).await.unwrap();
    assert_eq!(s.id(), "abcDEF0123456");
    assert_eq!(s.url(), w.url);
    assert_eq!(s.auth_data(), &cp.grants()[0]);
    assert_eq!(cp.bodies()[0]["cost"], 5.0);

    // In the session: same worker and auth, session_id set, a 503 retried without routing.
    let res = s
        .request("/gen", &json!({"p": 1}), &RequestOptions::default())
        .await
        .unwrap();
    assert_eq!(res.info.retries, 1);
    s.end().await.unwrap();
    let err = s
        .request("/gen", &json!({"p": 2}), &RequestOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionClosed { .. }), "{err:?}");
    assert_eq!(err.code(), "session_closed");
    assert_eq!(cp.bodies().len(), 1, "session requests must not be routed");

    let reqs = w.requests();
    let paths: Vec<&str> = reqs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        ["/session/create", "/gen", "/gen", "/session/end", "/gen"]
    );
    assert_eq!(
        reqs[0].1,
        json!({"auth_data": cp.grants()[0], "session_id": null,
               "payload": {"lifetime": 30.0, "on_close_route": "http://127.0.0.1:1/closed",
                           "on_close_payload": {"why": "done"}}})
    );
    assert_eq!(
        reqs[1].1,
        json!({"auth_data": cp.grants()[0], "session_id": "abcDEF0123456", "payload": {"p": 1}})
    );
    assert_eq!(
        reqs[3].1,
        json!({"session_id": "abcDEF0123456", "session_auth": cp.grants()[0]})
    );
}

#[tokio::test]
async fn session_worker_gone_is_not_rerouted() {
    let w = FakeWorker::start(vec![WorkerAnswer::Json(
        201,
        json!({"session_id": "s1", "expiration": 1.0}),
    )])
    .await;
    let cp = FakeControlPlane::start(vec![RouteAnswer::Ready(w.url.clone(), 2)]).await;
    cp.set_fallback(RouteAnswer::Status(500, "must not be routed"));
    let s = client(&cp.url)
        .endpoint("ep", "k")
        .session(&SessionOptions::default())
        .await
        .unwrap();
    drop(w); // the worker goes away
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let err = s
        .request("/gen", &json!({}), &RequestOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "session_worker_gone", "{err:?}");
    assert_eq!(cp.bodies().len(), 1);
}
