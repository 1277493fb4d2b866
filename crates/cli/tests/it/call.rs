//! `ferry call` against a real worker + sim, directly and through a fake `/route/`.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::stack::{ferry, ferry_env, stderr, stdout, Stack};
use crate::trap::Trap;

#[test]
fn call_prints_streamed_tokens_and_whole_answers() {
    let st = Stack::start("call-stream");
    let out = ferry(&[
        "call",
        "x",
        "/v1/completions",
        r#"{"prompt": "a b", "max_tokens": 4}"#,
        "--worker",
        &st.url,
        "--stream",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "tok0 tok1 tok2 tok3 \n");

    // Not streamed: the body as the worker sent it.
    let out = ferry(&[
        "call",
        "x",
        "v1/completions",
        r#"{"prompt": "a", "max_tokens": 2}"#,
        "--worker",
        &st.url,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["choices"][0]["text"], "tok0 tok1 ");

    // --raw: the SSE bytes themselves.
    let out = ferry(&[
        "call",
        "x",
        "/v1/completions",
        r#"{"prompt": "a", "max_tokens": 2, "stream": true}"#,
        "--worker",
        &st.url,
        "--raw",
    ]);
    let text = stdout(&out);
    assert!(text.starts_with("data: {"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Payload from a file.
    let file = crate::stack::scratch("call-stream").join("payload.json");
    std::fs::write(&file, r#"{"prompt": "a", "max_tokens": 3, "stream": true}"#).unwrap();
    let out = ferry(&[
        "call",
        "x",
        "/v1/completions",
        &format!("@{}", file.display()),
        "--worker",
        &st.url,
    ]);
    assert_eq!(stdout(&out), "tok0 tok1 tok2 \n", "{}", stderr(&out));
}

#[test]
fn call_failures_exit_1_with_the_error_code() {
    let st = Stack::start("call-fail");
    let out = ferry(&["call", "x", "/no/such/route", "{}", "--worker", &st.url]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("error[worker_error]"), "{err}");
    assert!(err.contains("HTTP 404"), "{err}");

    let dead = format!("http://127.0.0.1:{}", crate::stack::free_port());
    let out = ferry(&[
        "call",
        "x",
        "/v1/completions",
        "{}",
        "--worker",
        &dead,
        "--max-retries",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error[transport]"),
        "{}",
        stderr(&out)
    );
}

#[derive(Clone, Default)]
struct Seen {
    routes: Arc<Mutex<Vec<Value>>>,
    /// The `Authorization` header of every endpoint lookup.
    lookups: Arc<Mutex<Vec<Option<String>>>>,
    worker: String,
}

async fn route(State(s): State<Seen>, Json(body): Json<Value>) -> Json<Value> {
    s.routes.lock().unwrap().push(body);
    // An unsecured worker accepts any grant with the six keys.
    Json(
        json!({"cost": 100.0, "endpoint": "ep", "reqnum": 0, "request_idx": 5,
                "signature": "", "url": s.worker, "__request_id": "r"}),
    )
}

async fn endptjobs(State(s): State<Seen>, headers: HeaderMap) -> Json<Value> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    s.lookups.lock().unwrap().push(auth.map(str::to_owned));
    Json(json!({"results": [{"endpoint_name": "ep", "api_key": "looked-up"}]}))
}

/// A fake control plane (`/route/` granting `seen.worker`, `/api/v0/endptjobs/`); its URL.
async fn control_plane(seen: &Seen) -> String {
    let app = Router::new()
        .route("/route/", post(route))
        .route("/api/v0/endptjobs/", get(endptjobs))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    cp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_route_with_env_url_and_key_lookup() {
    let st = tokio::task::spawn_blocking(|| Stack::start("call-route"))
        .await
        .unwrap();
    let seen = Seen {
        worker: st.url.clone(),
        ..Seen::default()
    };
    let cp = control_plane(&seen).await;

    let cp2 = cp.clone();
    let out = tokio::task::spawn_blocking(move || {
        ferry_env(
            &[
                "call",
                "ep",
                "/v1/completions",
                r#"{"prompt": "a", "max_tokens": 2}"#,
                "--stream",
                "--cost",
                "12",
            ],
            &[
                ("VAST_AUTOSCALER_URL", &cp2),
                ("FERRY_ENDPOINT_KEY", "ep-key"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "tok0 tok1 \n");
    let routes = seen.routes.lock().unwrap().clone();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["endpoint"], "ep");
    assert_eq!(routes[0]["api_key"], "ep-key");
    assert_eq!(routes[0]["cost"], 12.0);

    // ferry bench through /route/: one route call per request, all answered.
    let cp3 = cp.clone();
    let out = tokio::task::spawn_blocking(move || {
        ferry_env(
            &[
                "bench",
                "ep",
                "-n",
                "20",
                "-c",
                "2",
                "--url",
                &cp3,
                "--json",
                "-p",
                r#"{"prompt": "a", "max_tokens": 1}"#,
            ],
            &[("FERRY_ENDPOINT_KEY", "ep-key")],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (r["target_kind"].as_str(), r["ok"].as_u64()),
        (Some("endpoint"), Some(20)),
        "{r}"
    );
    assert_eq!(seen.routes.lock().unwrap().len(), 21);

    // No endpoint key: looked up with the account key.
    let out = tokio::task::spawn_blocking(move || {
        ferry_env(
            &[
                "call",
                "ep",
                "/v1/completions",
                r#"{"prompt": "a", "max_tokens": 1}"#,
                "--url",
                &cp,
                "--webserver-url",
                &cp,
            ],
            &[("VAST_API_KEY", "account")],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let routes = seen.routes.lock().unwrap().clone();
    assert_eq!(routes[21]["api_key"], "looked-up");
}

/// The README's own example, `ferry call EP ROUTE PAYLOAD --url URL --api-key KEY`: the key
/// lookup, `/route/` and the call go to URL and to the worker it grants, and nowhere else.
/// Every other host goes through a trap proxy that records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_and_api_key_reach_no_host_but_the_named_one() {
    let st = tokio::task::spawn_blocking(|| Stack::start("call-hosts"))
        .await
        .unwrap();
    let seen = Seen {
        worker: st.url.clone(),
        ..Seen::default()
    };
    let cp = control_plane(&seen).await;
    let trap = Trap::start().await;
    let call = |extra: Vec<String>, env: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || {
            let mut args = vec![
                "call",
                "ep",
                "/v1/completions",
                r#"{"prompt": "a", "max_tokens": 2}"#,
            ];
            args.extend(extra.iter().map(String::as_str));
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ferry_env(&args, &env)
        })
    };

    let out = call(
        vec![
            "--url".into(),
            cp.clone(),
            "--api-key".into(),
            "account".into(),
        ],
        trap.env(),
    )
    .await
    .unwrap();
    assert_eq!(
        trap.hits(),
        Vec::<String>::new(),
        "left for a host not named"
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["choices"][0]["text"], "tok0 tok1 ");
    assert_eq!(
        seen.lookups.lock().unwrap().clone(),
        vec![Some("Bearer account".to_owned())]
    );
    let routes = seen.routes.lock().unwrap().clone();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["api_key"], "looked-up");

    // The same with the URL from the environment (FERRY_URL).
    let mut env = trap.env();
    env.push(("FERRY_URL", cp.clone()));
    env.push(("VAST_API_KEY", "account".into()));
    let out = call(vec![], env).await.unwrap();
    assert_eq!(
        trap.hits(),
        Vec::<String>::new(),
        "left for a host not named"
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(seen.lookups.lock().unwrap().len(), 2);

    // The trap does catch a child's requests: with no URL named, /route/ goes to Vast.
    let out = call(
        vec![
            "--endpoint-key".into(),
            "k".into(),
            "--max-retries".into(),
            "0".into(),
        ],
        trap.env(),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        trap.hits(),
        vec!["CONNECT run.vast.ai:443 HTTP/1.1".to_owned()]
    );
}
