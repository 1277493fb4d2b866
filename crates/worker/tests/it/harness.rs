//! Shared fixtures: a fake control plane, a signing key, and a worker started on port 0.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_protocol::{DeleteRequests, RequestRecord, SigningKey, WorkerStatus};
use ferry_worker::{AppState, Listeners, Worker, WorkerArgs};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One RSA key for the whole test binary (key generation is slow in debug builds).
pub fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(2048).expect("keygen"))
}

#[derive(Clone, Default)]
pub struct Recorded {
    pub statuses: Arc<Mutex<Vec<WorkerStatus>>>,
    pub finished: Arc<Mutex<Vec<RequestRecord>>>,
    pub delete_posts: Arc<Mutex<Vec<DeleteRequests>>>,
    pub down: Arc<AtomicBool>,
    pub pubkey_hits: Arc<Mutex<u32>>,
    /// Answer reports as a Ferry control plane that issues v2 tokens (`ferry_mac`) would.
    pub offers_mac: Arc<AtomicBool>,
}

/// A fake control plane: `/pubkey/`, `/worker_status/`, `/delete_requests/`.
pub struct FakeControlPlane {
    pub url: String,
    pub rec: Recorded,
    stop: CancellationToken,
}

impl FakeControlPlane {
    pub async fn start() -> Self {
        let rec = Recorded::default();
        let app = Router::new()
            .route("/pubkey/", get(pubkey))
            .route("/worker_status/", post(status))
            .route("/delete_requests/", post(delete))
            .with_state(rec.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            rec,
            stop,
        }
    }

    /// Answers reports with `{"success": true, "ferry_mac": true}` from now on.
    pub fn offer_mac(&self) {
        self.rec.offers_mac.store(true, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.rec.down.store(down, Ordering::SeqCst);
    }

    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.rec.statuses.lock().unwrap().clone()
    }

    pub fn finished(&self) -> Vec<RequestRecord> {
        self.rec.finished.lock().unwrap().clone()
    }

    pub fn finished_for(&self, request_idx: u64) -> Vec<RequestRecord> {
        self.finished()
            .into_iter()
            .filter(|r| r.request_idx == request_idx)
            .collect()
    }
}

impl Drop for FakeControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pubkey(State(rec): State<Recorded>) -> (StatusCode, String) {
    *rec.pubkey_hits.lock().unwrap() += 1;
    if rec.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    (StatusCode::OK, key().public_key().to_pem())
}

async fn status(
    State(rec): State<Recorded>,
    Json(body): Json<WorkerStatus>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if rec.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    rec.statuses.lock().unwrap().push(body);
    if rec.offers_mac.load(Ordering::SeqCst) {
        return Json(json!({"success": true, "ferry_mac": true})).into_response();
    }
    StatusCode::OK.into_response()
}

async fn delete(State(rec): State<Recorded>, Json(body): Json<DeleteRequests>) -> StatusCode {
    if rec.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    rec.finished
        .lock()
        .unwrap()
        .extend(body.requests.iter().cloned());
    rec.delete_posts.lock().unwrap().push(body);
    StatusCode::OK
}

/// A route grant as Vast's control plane makes it, for `url`.
pub fn auth_data(url: &str, request_idx: u64) -> Value {
    json!({
        "__request_id": format!("req-{request_idx}"),
        "cost": 100.0,
        "endpoint": "test-endpoint",
        "reqnum": request_idx,
        "request_idx": request_idx,
        "signature": key().sign_url(url).unwrap(),
        "url": url,
    })
}

/// The body a client posts to a worker route.
pub fn body(worker_url: &str, request_idx: u64, payload: Value) -> Value {
    json!({"auth_data": auth_data(worker_url, request_idx), "session_id": null, "payload": payload})
}

/// A running worker.
pub struct TestWorker {
    pub url: String,
    /// The plain-HTTP `/session/end` listener.
    pub side_url: Option<String>,
    /// The admin listener, when `--admin-addr` was given.
    pub admin_url: Option<String>,
    pub state: AppState,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestWorker {
    /// Starts a worker with test-friendly report timing plus `extra` flags.
    pub async fn start(cp_url: &str, model_url: &str, extra: &[&str]) -> TestWorker {
        Self::start_with(cp_url, model_url, extra, None).await
    }

    /// Like [`TestWorker::start`], with code-level hooks installed.
    pub async fn start_with(
        cp_url: &str,
        model_url: &str,
        extra: &[&str],
        hooks: Option<std::sync::Arc<dyn ferry_worker::hooks::Hooks>>,
    ) -> TestWorker {
        let settings = test_settings(cp_url, model_url, extra);
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listeners = Listeners::bind(&settings).await.unwrap();
        let addr = listeners.main.local_addr().unwrap();
        let side_url = listeners
            .side
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().unwrap()));
        let admin_url = listeners
            .admin
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().unwrap()));
        let mut worker = Worker::new(settings)
            .unwrap()
            .with_grace(Duration::from_secs(5));
        if let Some(h) = hooks {
            worker = worker.with_hooks(h);
        }
        let state = worker.state().clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let done = tokio::spawn(worker.run_with(listeners, async move { s.cancelled().await }));
        TestWorker {
            url: format!("{scheme}://{addr}"),
            side_url,
            admin_url,
            state,
            stop,
            done,
        }
    }

    /// Stops the worker and waits for its final flush.
    pub async fn stop(self) {
        self.stop.cancel();
        self.done.await.unwrap().unwrap();
    }

    /// Sends the shutdown signal without waiting (the worker drains in the background).
    pub fn signal_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for a worker whose stop was signalled to finish.
    pub async fn join(self) {
        self.done.await.unwrap().unwrap();
    }

    /// Waits until the worker reports itself ready.
    pub async fn wait_ready(&self) {
        let tracker = self.state.tracker().clone();
        eventually(|| async { tracker.model().is_ready() }).await;
    }

    /// Waits until the public key is loaded.
    pub async fn wait_key(&self) {
        let keys = self.state.keys().clone();
        eventually(|| async { keys.has_key() }).await;
    }

    /// Posts a body to a worker route.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// Worker settings for tests: quick report timing, a fresh benchmark cache, loopback ports,
/// plus `extra` flags (a flag given there replaces its default).
pub fn test_settings(cp_url: &str, model_url: &str, extra: &[&str]) -> ferry_worker::Settings {
    let defaults = [
        "--worker-port",
        "0",
        "--listen-host",
        "127.0.0.1",
        "--report-addr",
        cp_url,
        "--model-server-url",
        model_url,
        "--container-id",
        "7",
        "--master-token",
        "mtoken-secret",
        "--public-ipaddr",
        "127.0.0.1",
        "--public-port",
        "3000",
        "--report-tick-ms",
        "50",
        "--report-retry-ms",
        "50",
        "--benchmark-cache",
        "",
    ];
    let cache = std::env::temp_dir()
        .join(format!("ferry-it-{}-{}", std::process::id(), next_id()))
        .join("has_benchmark");
    let mut argv = vec!["worker".to_string()];
    // Defaults come in flag/value pairs; a flag given in `extra` replaces its default.
    for pair in defaults.chunks(2) {
        if !extra.contains(&pair[0]) {
            argv.push(pair[0].to_string());
            let v = if pair[0] == "--benchmark-cache" {
                cache.display().to_string()
            } else {
                pair[1].to_string()
            };
            argv.push(v);
        }
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    let (args, presets) = WorkerArgs::parse_from(argv).expect("args");
    args.validate(&presets).expect("settings")
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Polls `f` until it is true, failing after 20 s (a hang guard, not a performance assertion).
pub async fn eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
