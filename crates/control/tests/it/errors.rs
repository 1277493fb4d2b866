//! Every surface answers errors in its audience's shape: Vast's console shape for the endpoint
//! API (so `vastai` prints the reason), OpenAI's for the gateway, Vast's run-host shape for
//! `/route/`; and every answer is counted once.

use ferry_sim::SimConfig;
use serde_json::json;

use crate::harness::{Cp, Opts};
use crate::inproc::InProc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_surface_shapes_its_errors_for_its_audience() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (ep_id, key, _) = cp.endpoint("shapes", json!({"cold_workers": 0})).await;

    // Console API: Vast's {"success": false, "error", "msg"}.
    let (st, v) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/",
            Some("wrong"),
            None,
        )
        .await;
    assert_eq!(st, 401);
    assert_eq!(
        v,
        json!({"success": false, "error": "unauthorized", "msg": "Authentication failed"})
    );
    let (st, v) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/999999/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(
        (st, &v["success"], &v["error"]),
        (404, &json!(false), &json!("not_found"))
    );
    assert!(v["msg"].as_str().unwrap().contains("999999"), "{v}");
    let (st, v) = cp
        .post(
            "/get_endpoint_workers/",
            Some("wrong"),
            json!({"id": ep_id}),
        )
        .await;
    assert_eq!((st, &v["msg"]), (401, &json!("Authentication failed")));
    // An error axum makes itself (the body limit) gets the same shape.
    let big = "x".repeat(2 << 20);
    let (st, v) = cp
        .post(
            "/api/v0/endptjobs/",
            Some("acct-key"),
            json!({"endpoint_name": big}),
        )
        .await;
    assert_eq!(
        (st, &v["success"], &v["error"]),
        (413, &json!(false), &json!("too_large"))
    );
    assert!(v["msg"].is_string(), "{v}");

    // A path nothing serves (a `vastai` command this control plane lacks).
    let (st, v) = cp
        .post("/api/v0/no-such-thing/", Some("acct-key"), json!({}))
        .await;
    assert_eq!((st, &v["error"]), (404, &json!("not_found")));
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("/api/v0/no-such-thing/"),
        "{v}"
    );

    // Gateway: OpenAI's shape.
    let (st, v) = cp
        .post(
            "/shapes/v1/completions",
            Some("wrong"),
            json!({"prompt": "x"}),
        )
        .await;
    assert_eq!(st, 401);
    assert_eq!(
        v,
        json!({"error": {"message": "Authentication failed", "type": "unauthorized", "code": 401}})
    );

    // The gateway lists the endpoint as its model, to its key holders only.
    let (st, v) = cp
        .req(reqwest::Method::GET, "/shapes/v1/models", Some(&key), None)
        .await;
    assert_eq!((st, &v["data"][0]["id"]), (200, &json!("shapes")), "{v}");
    let (st, v) = cp
        .req(
            reqwest::Method::GET,
            "/shapes/v1/models",
            Some("wrong"),
            None,
        )
        .await;
    assert_eq!((st, &v["error"]["code"]), (401, &json!(401)), "{v}");

    // /route/: Vast's exact run-host body.
    let (st, v) = cp
        .post(
            "/route/",
            Some("wrong"),
            json!({"endpoint": "shapes", "cost": 1}),
        )
        .await;
    assert_eq!((st, v), (401, json!({"error": "Authentication failed"})));

    // Counted once, by surface, code and source.
    let (_, m) = cp.req(reqwest::Method::GET, "/metrics", None, None).await;
    let m = m.as_str().unwrap().to_owned();
    for needle in [
        r#"surface="console""#,
        r#"code="unauthorized""#,
        r#"source="client""#,
        r#"surface="gateway""#,
        r#"code="too_large""#,
    ] {
        assert!(
            m.lines()
                .any(|l| l.starts_with("ferry_control_responses_total") && l.contains(needle)),
            "{needle} missing from /metrics"
        );
    }
    cp.shutdown().await;
}
