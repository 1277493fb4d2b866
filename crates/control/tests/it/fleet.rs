//! External workergroups: join tokens, workers joining from "elsewhere" (a real
//! `ferry_worker::Worker` started by the test, not by a provider), the desired count, the cold
//! directive, and a removed worker refusing requests.

use std::time::Duration;

use ferry_sim::{SimConfig, SimServer};
use ferry_worker::{Listeners, Worker, WorkerArgs};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::harness::{eventually, until_some, Cp, Opts};
use crate::inproc::InProc;

/// A worker started by "someone else" with a join token: sim + worker on this runtime.
struct Joined {
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_joined(control_url: &str, token: &str) -> Result<Joined, String> {
    let sim = SimServer::start(SimConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("ferry-joined-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let argv: Vec<String> = [
        "worker",
        "--worker-port",
        &port.to_string(),
        "--listen-host",
        "127.0.0.1",
        "--report-addr",
        control_url,
        "--join-token",
        token,
        "--model-server-url",
        &sim.url(),
        "--public-ipaddr",
        "127.0.0.1",
        "--report-tick-ms",
        "50",
        "--report-retry-ms",
        "50",
        "--heartbeat-s",
        "1",
        "--benchmark-cache",
        &dir.join(".has_benchmark").display().to_string(),
        "--preset",
        "openai",
        "--readiness",
        "health",
        "--worker-http-port",
        "0",
        "--shutdown-grace-s",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (args, presets) = WorkerArgs::parse_from(argv).map_err(|e| e.to_string())?;
    let mut settings = args.validate(&presets).map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let http = ferry_worker::control_client().map_err(|e| e.to_string())?;
    ferry_worker::join::join(&mut settings, &http, &stop)
        .await
        .map_err(|e| e.to_string())?;
    let url = settings.public_url.clone();
    let listeners = Listeners::bind(&settings)
        .await
        .map_err(|e| e.to_string())?;
    let worker = Worker::new(settings).map_err(|e| e.to_string())?;
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let _ = worker
            .run_with(listeners, async move { s.cancelled().await })
            .await;
        drop(sim);
    });
    Ok(Joined { url, stop, task })
}

impl Joined {
    /// Status of a request to one of its routes (the body is refused later, if ever read).
    async fn poke(&self) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/completions", self.url))
            .json(&json!({"auth_data": {}, "payload": {}}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn scale(cp: &Cp, group: i64) -> Value {
    let (st, v) = cp
        .req(
            Method::GET,
            &format!("/api/v0/workergroups/{group}/scale/"),
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_workers_join_go_cold_and_leave() {
    let cp = Cp::start(InProc::new(SimConfig::default(), false), Opts::default()).await;
    let (st, v) = cp
        .post(
            "/api/v0/endptjobs/",
            Some("acct-key"),
            json!({"endpoint_name": "ext", "min_load": 1, "cold_workers": 1, "max_workers": 2}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let ep = v["result"].as_i64().unwrap();
    // Refused providers: unknown, and known but not configured here.
    for (provider, want) in [
        ("cloud", "must be local, external or vast"),
        ("vast", "no vast provider"),
    ] {
        let (st, v) = cp
            .post(
                "/api/v0/workergroups/",
                Some("acct-key"),
                json!({"endpoint_id": ep, "provider": provider}),
            )
            .await;
        assert_eq!(st, 400, "{v}");
        assert!(v.to_string().contains(want), "{v}");
    }
    // Through launch_args, as the official client would send it.
    let (st, v) = cp
        .post(
            "/api/v0/workergroups/",
            Some("acct-key"),
            json!({"endpoint_id": ep, "launch_args": "{\"provider\": \"external\"}"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let group = v["id"].as_i64().unwrap();

    // The autoscaler wants one worker: nobody launches it, the desired count says so.
    let s = until_some(|| async {
        let s = scale(&cp, group).await;
        (s["desired_workers"] == 1).then_some(s)
    })
    .await;
    assert_eq!(s["waiting_to_join"], 1, "{s}");
    assert_eq!(s["provider"], "external", "{s}");
    assert!(cp.provider.launches.lock().unwrap().is_empty());
    let metrics = reqwest::get(format!("{}/metrics", cp.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "ferry_control_desired_workers{{workergroup=\"{group}\"}} 1"
        )),
        "{metrics}"
    );

    // Tokens: created once, listed without secrets, refused when wrong.
    let (st, v) = cp
        .post(
            &format!("/api/v0/workergroups/{group}/join_tokens/"),
            Some("acct-key"),
            json!({"label": "rack 2"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let token_id = v["id"].as_i64().unwrap();
    let (st, v) = cp
        .req(
            Method::GET,
            &format!("/api/v0/workergroups/{group}/join_tokens/"),
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0]["label"], "rack 2");
    assert!(!v.to_string().contains(&token[10..]), "{v}");
    let (st, v) = cp
        .post(
            "/join/",
            None,
            json!({"token": "fjt_1_00", "url": "http://127.0.0.1:9"}),
        )
        .await;
    assert_eq!(st, 401, "{v}");
    let (st, v) = cp
        .post("/join/", None, json!({"token": &token, "url": "not a url"}))
        .await;
    assert_eq!(st, 400, "{v}");

    // A worker joins: it takes the placeholder's id, loads, and serves routes.
    let placeholder = cp.workers(ep).await[0]["id"].as_i64().unwrap();
    let w = start_joined(&cp.url, &token).await.unwrap();
    let ready = cp.wait_ready(ep, 1).await;
    assert_eq!(ready[0]["id"].as_i64().unwrap(), placeholder);
    assert_eq!(ready[0]["url"], w.url.as_str());
    let (_, key) = {
        let (_, v) = cp
            .req(
                Method::GET,
                &format!("/api/v0/endptjobs/{ep}/"),
                Some("acct-key"),
                None,
            )
            .await;
        (ep, v["result"]["api_key"].as_str().unwrap().to_owned())
    };
    let r = cp.route("ext", &key, 10.0, 1).await;
    assert_eq!(r["url"], w.url.as_str(), "{r}");
    let s = scale(&cp, group).await;
    assert_eq!(
        (s["desired_workers"].as_u64(), s["ready"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );

    // Stopping the endpoint makes the worker cold: told in its report answer, it refuses.
    let (st, v) = cp
        .req(
            Method::PUT,
            &format!("/api/v0/endptjobs/{ep}/"),
            Some("acct-key"),
            Some(json!({"endpoint_state": "stopped"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    eventually(|| async { w.poke().await.1["code"] == "cold" }).await;
    assert_eq!(w.poke().await.0, 503);
    let s = scale(&cp, group).await;
    assert_eq!(
        (s["cold"].as_u64(), s["desired_active"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    // Active again: resumed, warm, routable.
    let (st, _) = cp
        .req(
            Method::PUT,
            &format!("/api/v0/endptjobs/{ep}/"),
            Some("acct-key"),
            Some(json!({"endpoint_state": "active"})),
        )
        .await;
    assert_eq!(st, 200);
    cp.wait_ready(ep, 1).await;
    eventually(|| async { w.poke().await.1["code"] != "cold" }).await;

    // A revoked token joins nobody; the worker that joined with it stays.
    let (st, v) = cp
        .req(
            Method::DELETE,
            &format!("/api/v0/join_tokens/{token_id}/"),
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let e = start_joined(&cp.url, &token).await.err().unwrap();
    assert!(e.contains("invalid or revoked join token"), "{e}");
    assert_eq!(cp.wait_ready(ep, 1).await.len(), 1);

    // Deleting the group forgets the worker: its next report is refused and it goes cold.
    let (st, v) = cp
        .req(
            Method::DELETE,
            &format!("/api/v0/workergroups/{group}/"),
            Some("acct-key"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    eventually(|| async { w.poke().await.1["code"] == "cold" }).await;
    w.stop().await;
    tokio::time::timeout(Duration::from_secs(30), cp.shutdown())
        .await
        .unwrap();
}
