//! Fixtures: a control plane on 127.0.0.1:0 with the in-process provider.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_control::{Control, Settings};
use ferry_protocol::SigningKey;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::inproc::InProc;

pub fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub fn key_pem() -> String {
    static K: OnceLock<String> = OnceLock::new();
    K.get_or_init(|| SigningKey::generate(2048).unwrap().to_pem().unwrap())
        .clone()
}

pub fn temp_db() -> PathBuf {
    std::env::temp_dir().join(format!(
        "ferry-control-it-{}-{}.db",
        std::process::id(),
        next_id()
    ))
}

pub struct Cp {
    pub url: String,
    /// The account key (`acct-key` unless [`Opts::api_key`] is `None`).
    pub acct: String,
    pub addr: SocketAddr,
    pub control: Control,
    pub provider: Arc<InProc>,
    pub http: reqwest::Client,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub struct Opts {
    pub db: Option<PathBuf>,
    /// PostgreSQL instead of SQLite.
    pub postgres: Option<ferry_control::store::PgTarget>,
    /// `None`: the control plane's own (generated, or the stored one).
    pub api_key: Option<String>,
    /// Start with the shared test signing key when the store has none (`false`: generate).
    pub preset_key: bool,
    pub addr: Option<SocketAddr>,
    pub stale_after: Duration,
    pub idle_stop_after: Duration,
    pub gateway_wait: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            db: None,
            postgres: None,
            api_key: Some("acct-key".into()),
            preset_key: true,
            addr: None,
            stale_after: Duration::from_secs(3),
            idle_stop_after: Duration::from_secs(60),
            gateway_wait: Duration::from_secs(20),
        }
    }
}

impl Cp {
    pub async fn start(provider: Arc<InProc>, o: Opts) -> Cp {
        let listener = TcpListener::bind(o.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let mut s = Settings::for_url(&url);
        s.db = o.db;
        s.postgres = o.postgres;
        s.signing_key_pem = o.preset_key.then(key_pem);
        s.api_key = o.api_key;
        s.autoscale_interval = Duration::from_millis(100);
        s.stale_after = o.stale_after;
        s.idle_stop_after = o.idle_stop_after;
        s.gateway.wait = o.gateway_wait;
        let control = Control::new(s, provider.clone()).await.unwrap();
        let stop = CancellationToken::new();
        let st = stop.clone();
        let done = tokio::spawn(ferry_control::run(listener, control.clone(), async move {
            st.cancelled().await
        }));
        Cp {
            acct: control.account_key().to_owned(),
            url,
            addr,
            control,
            provider,
            http: reqwest::Client::new(),
            stop,
            done,
        }
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        self.done.await.unwrap().unwrap();
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        send(
            &self.http,
            method,
            &format!("{}{path}", self.url),
            key,
            body,
        )
        .await
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, key, Some(body)).await
    }

    /// Creates an endpoint (+ one workergroup); returns (endpoint id, endpoint key, wg id).
    pub async fn endpoint(&self, name: &str, params: Value) -> (i64, String, i64) {
        let mut body = params;
        body["endpoint_name"] = json!(name);
        let (st, v) = self
            .post("/api/v0/endptjobs/", Some(&self.acct), body)
            .await;
        assert_eq!(st, 200, "{v}");
        let id = v["result"].as_i64().unwrap();
        let (st, v) = self
            .req(
                reqwest::Method::GET,
                &format!("/api/v0/endptjobs/{id}/"),
                Some(&self.acct),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
        let key = v["result"]["api_key"].as_str().unwrap().to_owned();
        let (st, v) = self
            .post(
                "/api/v0/workergroups/",
                Some(&self.acct),
                json!({"endpoint_id": id, "search_params": "", "template_hash": "x"}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        (id, key, v["id"].as_i64().unwrap())
    }

    pub async fn route(&self, ep: &str, key: &str, cost: f64, idx: u64) -> Value {
        let (st, v) = self
            .post(&format!("/route/?api_key={key}"), Some(key),
                  json!({"endpoint": ep, "api_key": key, "cost": cost, "request_idx": idx, "replay_timeout": 60.0}))
            .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    pub async fn workers(&self, ep_id: i64) -> Vec<Value> {
        let (st, v) = self
            .post(
                "/get_endpoint_workers/",
                None,
                json!({"id": ep_id, "api_key": self.acct}),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    pub async fn wait_ready(&self, ep_id: i64, n: usize) -> Vec<Value> {
        until_some(|| async {
            let out: Vec<Value> = self
                .workers(ep_id)
                .await
                .into_iter()
                .filter(|w| w["status"] == "idle")
                .collect();
            (out.len() >= n).then_some(out)
        })
        .await
    }
}

/// Polls `f` until true; fails after 45 s (a hang guard, not a performance assertion).
pub async fn eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 45 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` until it yields a value; same hang guard as [`eventually`].
pub async fn until_some<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 45 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one request (bearer `key`, JSON `body`) and returns its status and its body as JSON,
/// or as a JSON string when it is not JSON.
pub async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
