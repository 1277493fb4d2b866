//! A scripted fake control plane (`/route/`, the account API's `/api/v0/endptjobs/`, plus the
//! worker-facing `/pubkey/`, `/worker_status/`, `/delete_requests/`), a scripted fake worker,
//! both axum on 127.0.0.1:0, and a [`Trap`] standing in for every other host.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_client::{Backoff, Client};
use ferry_protocol::SigningKey;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One RSA key for the whole test binary.
pub fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(2048).expect("keygen"))
}

/// Serves `app` on 127.0.0.1:0 until the token is cancelled.
pub async fn serve(app: Router) -> (String, CancellationToken) {
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
    (format!("http://{addr}"), stop)
}

/// A URL nothing listens on.
pub async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A client with fast polls and retries, pointed at `route_url`.
pub fn client(route_url: &str) -> Client {
    Client::builder()
        .route_url(route_url)
        .backoff(Backoff {
            first_poll: Duration::from_millis(10),
            max_interval: Duration::from_millis(20),
        })
        .build()
        .unwrap()
}

/// One scripted `/route/` answer.
#[derive(Clone, Debug)]
pub enum RouteAnswer {
    /// No worker yet; `Some(idx)` includes `request_idx`.
    Waiting(Option<u64>),
    /// A signed grant for this worker URL and index.
    Ready(String, u64),
    /// An error status with a body.
    Status(u16, &'static str),
}

#[derive(Default)]
struct CpState {
    script: Mutex<VecDeque<RouteAnswer>>,
    /// Answer given once the script is empty.
    fallback: Mutex<Option<RouteAnswer>>,
    bodies: Mutex<Vec<Value>>,
    auth_headers: Mutex<Vec<Option<String>>>,
    grants: Mutex<Vec<Value>>,
    lookups: Mutex<Vec<Option<String>>>,
}

/// The account key the fake account API accepts.
pub const ACCOUNT_KEY: &str = "acct-key";
/// The endpoint key it returns for endpoint `ep`.
pub const EP_KEY: &str = "ep-key";

/// The fake control plane.
pub struct FakeControlPlane {
    pub url: String,
    state: Arc<CpState>,
    _stop: DropCancel,
}

struct DropCancel(CancellationToken);

impl Drop for DropCancel {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl FakeControlPlane {
    pub async fn start(script: Vec<RouteAnswer>) -> Self {
        let state = Arc::new(CpState::default());
        *state.script.lock().unwrap() = script.into();
        let app = Router::new()
            .route("/route/", post(route))
            .route("/api/v0/endptjobs/", get(endptjobs))
            .route("/pubkey/", get(|| async { key().public_key().to_pem() }))
            .route("/worker_status/", post(|| async { StatusCode::OK }))
            .route("/delete_requests/", post(|| async { StatusCode::OK }))
            .with_state(state.clone());
        let (url, stop) = serve(app).await;
        FakeControlPlane {
            url,
            state,
            _stop: DropCancel(stop),
        }
    }

    /// The answer once the script runs out (default: 500).
    pub fn set_fallback(&self, a: RouteAnswer) {
        *self.state.fallback.lock().unwrap() = Some(a);
    }

    /// Every `/route/` body received.
    pub fn bodies(&self) -> Vec<Value> {
        self.state.bodies.lock().unwrap().clone()
    }

    /// `request_idx` of every `/route/` call.
    pub fn indices(&self) -> Vec<u64> {
        self.bodies()
            .iter()
            .map(|b| b["request_idx"].as_u64().unwrap())
            .collect()
    }

    pub fn auth_headers(&self) -> Vec<Option<String>> {
        self.state.auth_headers.lock().unwrap().clone()
    }

    /// The `Authorization` header of every endpoint lookup (`GET /api/v0/endptjobs/`).
    pub fn lookups(&self) -> Vec<Option<String>> {
        self.state.lookups.lock().unwrap().clone()
    }

    /// Every ready answer given.
    pub fn grants(&self) -> Vec<Value> {
        self.state.grants.lock().unwrap().clone()
    }
}

/// A grant exactly as Vast's control plane shapes it, plus a key the client must forward.
pub fn grant(url: &str, idx: u64) -> Value {
    json!({
        "__request_id": format!("r-{idx}"),
        "cost": 100.0,
        "endpoint": "ep",
        "reqnum": idx,
        "request_idx": idx,
        "signature": key().sign_url(url).unwrap(),
        "url": url,
        "future_key": {"kept": true},
    })
}

/// The account API's endpoint list: endpoint `ep` with [`EP_KEY`], for [`ACCOUNT_KEY`] only.
async fn endptjobs(State(st): State<Arc<CpState>>, headers: HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    st.lookups.lock().unwrap().push(auth.clone());
    if auth.as_deref() != Some(&format!("Bearer {ACCOUNT_KEY}")) {
        return (StatusCode::UNAUTHORIZED, r#"{"detail":"bad key"}"#).into_response();
    }
    Json(json!({"success": true, "results": [{"id": 1, "endpoint_name": "ep", "api_key": EP_KEY}]}))
        .into_response()
}

async fn route(
    State(st): State<Arc<CpState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    st.bodies.lock().unwrap().push(body);
    st.auth_headers.lock().unwrap().push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let next = st.script.lock().unwrap().pop_front();
    let answer = next.or_else(|| st.fallback.lock().unwrap().clone());
    match answer {
        None => (StatusCode::INTERNAL_SERVER_ERROR, "script exhausted").into_response(),
        Some(RouteAnswer::Waiting(idx)) => {
            let mut v = json!({"endpoint": "ep", "status": "total workers: 1, loading workers: 1, standby workers: 0, error workers: 0", "__request_id": "w"});
            if let Some(i) = idx {
                v["request_idx"] = json!(i);
            }
            Json(v).into_response()
        }
        Some(RouteAnswer::Ready(url, idx)) => {
            let g = grant(&url, idx);
            st.grants.lock().unwrap().push(g.clone());
            Json(g).into_response()
        }
        Some(RouteAnswer::Status(code, body)) => {
            (StatusCode::from_u16(code).unwrap(), body.to_owned()).into_response()
        }
    }
}

/// One scripted worker answer.
#[derive(Clone, Debug)]
pub enum WorkerAnswer {
    /// This status and JSON body.
    Json(u16, Value),
    /// 200 with these chunks, `delay` apart, and this content type.
    Chunks(&'static str, Vec<&'static str>, Duration),
}

#[derive(Default)]
struct WorkerState {
    script: Mutex<VecDeque<WorkerAnswer>>,
    requests: Mutex<Vec<(String, Value)>>,
}

/// The fake worker: answers any POST from its script and records `(path, body)`.
pub struct FakeWorker {
    pub url: String,
    state: Arc<WorkerState>,
    _stop: DropCancel,
}

impl FakeWorker {
    pub async fn start(script: Vec<WorkerAnswer>) -> Self {
        let state = Arc::new(WorkerState::default());
        *state.script.lock().unwrap() = script.into();
        let app = Router::new().fallback(worker).with_state(state.clone());
        let (url, stop) = serve(app).await;
        FakeWorker {
            url,
            state,
            _stop: DropCancel(stop),
        }
    }

    pub fn requests(&self) -> Vec<(String, Value)> {
        self.state.requests.lock().unwrap().clone()
    }
}

async fn worker(State(st): State<Arc<WorkerState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    st.requests.lock().unwrap().push((path, body));
    let next = st.script.lock().unwrap().pop_front();
    match next {
        None => (StatusCode::INTERNAL_SERVER_ERROR, "worker script exhausted").into_response(),
        Some(WorkerAnswer::Json(code, v)) => {
            (StatusCode::from_u16(code).unwrap(), Json(v)).into_response()
        }
        Some(WorkerAnswer::Chunks(ct, chunks, delay)) => {
            let stream =
                futures_util::stream::unfold(chunks.into_iter(), move |mut it| async move {
                    let c = it.next()?;
                    tokio::time::sleep(delay).await;
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes())),
                        it,
                    ))
                });
            Response::builder()
                .header("content-type", ct)
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// Every host the user did not name: an HTTP proxy on 127.0.0.1 that records the request line of
/// each connection (`CONNECT console.vast.ai:443 HTTP/1.1` for https) and refuses it with 403,
/// so nothing goes further. Point a client at it with [`Trap::http_client`] (or, for a child
/// process, `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` with `NO_PROXY=127.0.0.1,localhost`).
pub struct Trap {
    pub url: String,
    hits: Arc<Mutex<Vec<String>>>,
    _stop: DropCancel,
}

impl Trap {
    pub async fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (h, s) = (hits.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    () = s.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                tokio::spawn(refuse(sock, h.clone()));
            }
        });
        Trap {
            url,
            hits,
            _stop: DropCancel(stop),
        }
    }

    /// The request line of every connection that reached the trap.
    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }

    /// An HTTP client that goes straight to 127.0.0.1 and through the trap for any other host.
    pub fn http_client(&self) -> reqwest::Client {
        let proxy = reqwest::Proxy::all(&self.url)
            .unwrap()
            .no_proxy(reqwest::NoProxy::from_string("127.0.0.1,localhost"));
        reqwest::Client::builder().proxy(proxy).build().unwrap()
    }
}

async fn refuse(mut sock: tokio::net::TcpStream, hits: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text
        .lines()
        .next()
        .unwrap_or("<no request line>")
        .to_owned();
    hits.lock().unwrap().push(line);
    let _ = sock
        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
}
