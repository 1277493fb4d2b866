//! Replicas on one real PostgreSQL database (docs/ha.md): one owner, followers handing
//! requests to it, a hand-over that keeps the endpoints, the queue and the workers, request
//! indexes unique across terms, and the fence that keeps a deposed owner's writes out.
//! The crash cases (SIGKILL of the owner, rolling restarts, the database down) run as
//! processes behind nginx in `scripts/ha-tests.sh`.

use std::sync::Arc;
use std::time::Duration;

use ferry_control::config::ReplicaSettings;
use ferry_control::{Providers, RunError, Settings};
use ferry_sim::SimConfig;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::{self, eventually, key_pem, until_some};
use crate::inproc::InProc;
use crate::pg::{pg_or_skip, PgCluster};

const ACCT: &str = "acct-key";

/// One replica running `ferry_control::replica::run` on its own listener.
struct Replica {
    url: String,
    stop: CancellationToken,
    done: JoinHandle<Result<(), RunError>>,
    http: reqwest::Client,
}

impl Replica {
    async fn start(
        listener: TcpListener,
        urls: &[String],
        pg: &PgCluster,
        provider: Arc<InProc>,
    ) -> Replica {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut s = Settings::for_url(&url);
        s.postgres = Some(pg.target());
        s.signing_key_pem = Some(key_pem());
        s.api_key = Some(ACCT.into());
        s.autoscale_interval = Duration::from_millis(100);
        s.stale_after = Duration::from_secs(5);
        s.replica = Some(ReplicaSettings {
            urls: urls.to_vec(),
            lease_ttl: Duration::from_secs(1),
            handoff_wait: Duration::from_secs(10),
        });
        let stop = CancellationToken::new();
        let st = stop.clone();
        let done = tokio::spawn(ferry_control::replica::run(
            listener,
            s,
            move |_| Ok(Providers::from(provider.clone())),
            async move { st.cancelled().await },
        ));
        Replica {
            url,
            stop,
            done,
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        harness::send(
            &self.http,
            method,
            &format!("{}{path}", self.url),
            Some(ACCT),
            body,
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn health(&self) -> Value {
        self.call(reqwest::Method::GET, "/health", None).await.1
    }

    async fn wait_role(&self, role: &str) -> Value {
        until_some(|| async {
            let h = self.health().await;
            (h["role"] == role).then_some(h)
        })
        .await
    }

    async fn route(&self, key: &str, idx: u64) -> Value {
        let resp = self
            .http
            .post(format!("{}/route/", self.url))
            .bearer_auth(key)
            .json(&json!({"endpoint": "ha", "api_key": key, "cost": 10.0, "request_idx": idx}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

async fn listeners(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    let mut ls = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", l.local_addr().unwrap()));
        ls.push(l);
    }
    (ls, urls)
}

async fn records(pg: &PgCluster, kind: &str) -> i64 {
    let c = PgCluster::client(&pg.url).await.unwrap();
    c.query_one(
        "SELECT count(*) FROM ferry_records WHERE kind = $1",
        &[&kind],
    )
    .await
    .unwrap()
    .get(0)
}

/// Two replicas: the first owns, the second hands every call to it (endpoint API, routes,
/// worker reports); at the owner's stop the second takes over at once with the endpoint, its
/// waiting request and its ready worker, and numbers requests above every earlier term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_hands_requests_over_and_takes_over_at_the_owners_stop() {
    let pg = pg_or_skip!();
    let provider = InProc::new(SimConfig::default(), true);
    let (mut ls, urls) = listeners(2).await;
    let b_listener = ls.pop().unwrap();
    let a = Replica::start(ls.pop().unwrap(), &urls, &pg, provider.clone()).await;
    let ha = a.wait_role("owner").await;
    let b = Replica::start(b_listener, &urls, &pg, provider.clone()).await;
    until_some(|| async {
        let h = b.health().await;
        (h["role"] == "follower" && h["owner"] == a.url.as_str()).then_some(())
    })
    .await;

    // The endpoint API through the follower.
    let (st, v) = b
        .post(
            "/api/v0/endptjobs/",
            json!({"endpoint_name": "ha", "min_load": 1, "cold_workers": 0, "max_workers": 1}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let ep = v["result"].as_i64().unwrap();
    let (st, v) = b
        .call(
            reqwest::Method::GET,
            &format!("/api/v0/endptjobs/{ep}/"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let key = v["result"]["api_key"].as_str().unwrap().to_owned();
    let (st, v) = b
        .post(
            "/api/v0/workergroups/",
            json!({"endpoint_id": ep, "search_params": "", "template_hash": "x"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // The worker launched by the owner reports through the list; a route through the
    // follower gets it once it is ready. Indexes of term t start at t << 32.
    let term_a = ha["epoch"].as_u64().unwrap();
    let granted = until_some(|| async {
        let r = b.route(&key, 0).await;
        r.get("url").is_some().then_some(r)
    })
    .await;
    let idx_a = granted["request_idx"].as_u64().unwrap();
    assert!(idx_a >= term_a << 32, "{granted}");
    assert_eq!(provider.running().len(), 1);

    // The owner stops: the follower takes the free lease, and its first route is a grant
    // to the same worker (kept routable), numbered in the new term.
    a.stop.cancel();
    a.done.await.unwrap().unwrap();
    let hb = b.wait_role("owner").await;
    let term_b = hb["epoch"].as_u64().unwrap();
    assert!(term_b > term_a, "{hb}");
    let r = b.route(&key, 0).await;
    assert_eq!(r["url"], granted["url"], "{r}");
    assert!(r["request_idx"].as_u64().unwrap() >= term_b << 32, "{r}");
    assert_eq!(provider.running().len(), 1, "no second launch");
    assert_eq!(records(&pg, "endpoint").await, 1);
    b.stop.cancel();
    b.done.await.unwrap().unwrap();
}

/// Another replica's take-over (the lease's term raised under the owner) fences the owner:
/// its next write is refused, nothing it changes after that reaches the database, and it
/// exits deposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_owner_writes_nothing_more_and_exits() {
    let pg = pg_or_skip!();
    let provider = InProc::new(SimConfig::default(), true);
    let (mut ls, urls) = listeners(1).await;
    let a = Replica::start(ls.pop().unwrap(), &urls, &pg, provider).await;
    a.wait_role("owner").await;
    let (st, v) = a
        .post("/api/v0/endptjobs/", json!({"endpoint_name": "before"}))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(records(&pg, "endpoint").await, 1);

    let c = PgCluster::client(&pg.url).await.unwrap();
    c.execute(
        "UPDATE ferry_lease SET epoch = epoch + 1, holder = 'elsewhere', url = 'http://127.0.0.1:9'",
        &[],
    )
    .await
    .unwrap();
    // The change is answered from memory (the database refuses it): never persisted.
    let _ = a
        .post("/api/v0/endptjobs/", json!({"endpoint_name": "after"}))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(30), a.done)
        .await
        .expect("the deposed replica exits")
        .unwrap();
    match ended {
        Err(RunError::Deposed(m)) => assert!(m.contains("another replica"), "{m}"),
        other => panic!("expected deposed, got {other:?}"),
    }
    eventually(|| async { records(&pg, "endpoint").await == 1 }).await;
    let names: Vec<String> = c
        .query(
            "SELECT body FROM ferry_records WHERE kind = 'endpoint'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(names.iter().all(|b| !b.contains("\"after\"")), "{names:?}");
}
