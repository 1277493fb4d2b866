//! Shared helpers: a client, SSE parsing, eventually-asserts, temp log paths.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_sim::{SimConfig, SimServer, SimStats};
use futures_util::StreamExt;
use serde_json::Value;

/// A client that ignores proxy env vars (the sim is on loopback).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn start(config: SimConfig) -> SimServer {
    SimServer::start(config).await.unwrap()
}

pub async fn post(server: &SimServer, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", server.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

pub async fn get(server: &SimServer, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", server.url()))
        .send()
        .await
        .unwrap()
}

/// POST, expect `status`, return the JSON body.
pub async fn post_json(server: &SimServer, path: &str, body: &Value, status: u16) -> Value {
    let resp = post(server, path, body).await;
    assert_eq!(resp.status().as_u16(), status, "POST {path} {body}");
    resp.json().await.unwrap()
}

/// The sim's counters, read over HTTP (as a worker test would).
pub async fn stats(server: &SimServer) -> SimStats {
    get(server, "/sim/stats").await.json().await.unwrap()
}

/// Retries `check` until it holds, for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One SSE event's data, with when it was complete and which network chunk completed it.
#[derive(Debug)]
pub struct Event {
    pub data: String,
    pub at: Instant,
    pub chunk: usize,
}

/// A stream read to its end (or its error), event by event.
#[derive(Debug)]
pub struct Sse {
    pub events: Vec<Event>,
    /// Network chunks received.
    pub chunks: usize,
    /// The body ended with an error (truncated, reset).
    pub error: Option<reqwest::Error>,
    /// Raw body received, for framing checks.
    pub raw: String,
}

impl Sse {
    pub fn data(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.data.as_str()).collect()
    }

    /// Every event that is JSON, parsed.
    pub fn json(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter_map(|e| serde_json::from_str(&e.data).ok())
            .collect()
    }
}

/// Splits complete `data:` events off the front of `buf`.
fn drain_events(buf: &mut String, chunk: usize, out: &mut Vec<Event>) {
    while let Some(end) = buf.find("\n\n") {
        let event: String = buf.drain(..end + 2).collect();
        let line = event.trim_end();
        let data = line
            .strip_prefix("data:")
            .unwrap_or_else(|| panic!("not a data event: {line:?}"));
        out.push(Event {
            data: data.strip_prefix(' ').unwrap_or(data).to_owned(),
            at: Instant::now(),
            chunk,
        });
    }
}

/// Reads a streaming response to the end, recording each event as it completes.
pub async fn read_sse(resp: reqwest::Response) -> Sse {
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut body = resp.bytes_stream();
    let (mut buf, mut raw, mut events, mut chunks, mut error) =
        (String::new(), String::new(), Vec::new(), 0, None);
    while let Some(next) = body.next().await {
        match next {
            Ok(bytes) => {
                chunks += 1;
                let text = std::str::from_utf8(&bytes).unwrap();
                raw.push_str(text);
                buf.push_str(text);
                drain_events(&mut buf, chunks, &mut events);
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(
        buf.is_empty() || error.is_some(),
        "trailing partial event {buf:?}"
    );
    Sse {
        events,
        chunks,
        error,
        raw,
    }
}

/// A fresh log path under the temp dir (not created).
pub fn temp_log(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "ferry-sim-test-{}-{n}-{name}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// Asserts `requests == completed + cancelled + errors` with nothing in flight.
pub fn assert_settled(s: &SimStats) {
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(s.requests, s.completed + s.cancelled + s.errors, "{s:?}");
}
