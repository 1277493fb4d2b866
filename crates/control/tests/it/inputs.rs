use ferry_sim::SimConfig;
use serde_json::json;

use crate::harness::{Cp, Opts};
use crate::inproc::InProc;

/// Bad inputs on every route: a clear 4xx, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_4xx_and_change_nothing() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (ep_id, key, wg) = cp.endpoint("good", json!({"cold_workers": 0})).await;
    let next = cp.control.next_request_idx();

    // /route/
    let bad_route = "Invalid endpoint or missing required parameters";
    for body in [
        json!({}),
        json!({"endpoint": "nope", "cost": 1}),
        json!({"endpoint": "good", "cost": -1}),
        json!({"endpoint": "good", "cost": "x"}),
        json!([1]),
    ] {
        let (st, v) = cp.post("/route/", Some(&key), body.clone()).await;
        assert_eq!((st, v["error"].as_str()), (400, Some(bad_route)), "{body}");
    }
    let (st, v) = cp
        .post(
            "/route/",
            Some("wrong"),
            json!({"endpoint": "good", "cost": 1}),
        )
        .await;
    assert_eq!((st, v), (401, json!({"error": "Authentication failed"})));
    let (st, _) = cp
        .post("/route/", None, json!({"endpoint": "good", "cost": 1}))
        .await;
    assert_eq!(st, 401);
    // Body key and query key are accepted too.
    let (st, v) = cp
        .post(
            "/route/",
            None,
            json!({"endpoint": "good", "cost": 1, "api_key": key}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = cp
        .post(
            &format!("/route/?api_key={key}"),
            None,
            json!({"endpoint": "good", "cost": 1}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(cp.control.next_request_idx(), next + 2);
    // A made-up future index is not taken: the request gets the next real one.
    let v = cp.route("good", &key, 1.0, 1_000_000_000_000).await;
    assert_eq!(v["request_idx"].as_u64(), Some(next + 2));
    assert_eq!(cp.control.next_request_idx(), next + 3);

    // Worker reports.
    let (st, _) = cp
        .post(
            "/worker_status/",
            None,
            json!({"id": 999, "mtoken": "x", "max_perf": 1, "loadtime": 1}),
        )
        .await;
    assert_eq!(
        st, 401,
        "an unknown worker id is not confirmed: the same 401 as a wrong mtoken"
    );
    let (st, _) = cp
        .post(
            "/delete_requests/",
            None,
            json!({"worker_id": 999, "mtoken": "x", "requests": []}),
        )
        .await;
    assert_eq!(st, 401);
    let (st, v) = cp.post("/worker_status/", None, json!({"id": [1]})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("worker_status"));
    let (st, _) = cp
        .req(reqwest::Method::POST, "/delete_requests/", None, None)
        .await;
    assert_eq!(st, 400);
    assert!(cp.workers(ep_id).await.is_empty());

    // Console API.
    let (st, _) = cp
        .req(reqwest::Method::GET, "/api/v0/endptjobs/", None, None)
        .await;
    assert_eq!(st, 401);
    let (st, _) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/",
            Some("wrong"),
            None,
        )
        .await;
    assert_eq!(st, 401);
    for body in [
        json!({}),
        json!({"endpoint_name": "bad name"}),
        json!({"endpoint_name": "x", "target_util": 2}),
        json!({"endpoint_name": "good"}),
        json!({"endpoint_name": "y", "max_workers": -3}),
    ] {
        let (st, v) = cp
            .post("/api/v0/endptjobs/", Some("acct-key"), body.clone())
            .await;
        assert!(st == 400 || st == 409, "{body} → {st} {v}");
        assert!(v["error"].is_string());
    }
    let (st, _) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/12345/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/abc/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = cp
        .req(
            reqwest::Method::PUT,
            &format!("/api/v0/endptjobs/{ep_id}/"),
            Some("acct-key"),
            Some(json!({"cold_mult": -1})),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = cp
        .post(
            "/api/v0/workergroups/",
            Some("acct-key"),
            json!({"endpoint_id": 4242}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = cp
        .post(
            "/api/v0/autojobs/",
            Some("acct-key"),
            json!({"search_params": ""}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = cp
        .req(
            reqwest::Method::DELETE,
            "/api/v0/workergroups/777/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 404);
    let (st, v) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/endptjobs/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["cold_mult"], 2.5);
    let (st, v) = cp
        .req(
            reqwest::Method::GET,
            "/api/v0/autojobs/",
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    assert_eq!(v["results"][0]["id"], wg);

    // Worker lists.
    let (st, _) = cp
        .post(
            "/get_endpoint_workers/",
            None,
            json!({"id": ep_id, "api_key": "wrong"}),
        )
        .await;
    assert_eq!(st, 401);
    let (st, _) = cp
        .post(
            "/get_endpoint_workers/",
            None,
            json!({"api_key": "acct-key"}),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = cp
        .post(
            "/get_workergroup_workers/",
            None,
            json!({"id": 999, "api_key": "acct-key"}),
        )
        .await;
    assert_eq!(st, 404);
    let (st, v) = cp
        .post(
            "/get_autogroup_workers/",
            None,
            json!({"id": wg, "api_key": key}),
        )
        .await;
    assert_eq!((st, v), (200, json!([])));

    // Update and delete work, and deleting frees the name.
    let (st, _) = cp.req(reqwest::Method::PUT, &format!("/api/v0/endptjobs/{ep_id}/"), Some("acct-key"),
                         Some(json!({"endptjob_id": ep_id, "max_workers": 3, "min_load": null, "client_id": "me"}))).await;
    assert_eq!(st, 200);
    let (_, v) = cp
        .req(
            reqwest::Method::GET,
            &format!("/api/v0/endptjobs/{ep_id}/"),
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(v["result"]["max_workers"], 3);
    assert_eq!(v["result"]["min_load"], 0.0);
    let (st, _) = cp
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v0/endptjobs/{ep_id}/"),
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = cp
        .post(
            "/route/",
            Some(&key),
            json!({"endpoint": "good", "cost": 1}),
        )
        .await;
    // The deleted endpoint's key is no key of this control plane any more: authenticate first.
    assert_eq!(st, 401);
    let (st, v) = cp.req(reqwest::Method::GET, "/health", None, None).await;
    assert_eq!((st, &v["status"]), (200, &json!("ok")));
    let (st, v) = cp.req(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(st, 200);
    assert!(
        v.as_str().unwrap().contains("ferry_control_routes_total"),
        "{v}"
    );
    cp.shutdown().await;
}
