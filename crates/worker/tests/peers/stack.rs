//! The fixture: fake control plane + real llama-server + an in-process `ferry worker` with a real
//! readiness sequence (log line, benchmark against the server, health, public key).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use ferry_protocol::{RequestRecord, RequestStatus};
use serde_json::{json, Value};

use crate::harness::{body, FakeControlPlane, TestWorker};
use crate::llama::{temp_path, LlamaServer, Model};

/// The url the harness's workers report and sign for.
pub const PUBLIC_URL: &str = "http://127.0.0.1:3000";

/// Which worker preset fronts the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// `--preset openai`: `/v1/completions`, `/v1/chat/completions`, workload = max_tokens.
    OpenAi,
    /// `--preset llamacpp`: `/completion`, workload = n_predict.
    LlamaCpp,
}

impl Preset {
    fn flags(self) -> [&'static str; 4] {
        match self {
            // "model": null makes the worker fill it from llama-server's /v1/models.
            Preset::OpenAi => [
                "--preset",
                "openai",
                "--benchmark-payload",
                r#"{"model":null,"prompt":"hello","max_tokens":8}"#,
            ],
            Preset::LlamaCpp => [
                "--preset",
                "llamacpp",
                "--benchmark-payload",
                r#"{"prompt":"hello","n_predict":8}"#,
            ],
        }
    }
}

/// A control plane, a llama-server and a worker in front of it.
pub struct Stack {
    pub cp: FakeControlPlane,
    pub server: LlamaServer,
    pub worker: TestWorker,
}

/// Worker flags for a fast, real readiness sequence against `log`.
pub fn worker_flags(preset: Preset, log: &Path) -> Vec<String> {
    let mut flags: Vec<String> = preset.flags().iter().map(|s| s.to_string()).collect();
    flags.extend(
        [
            "--model-log",
            log.to_str().unwrap(),
            "--benchmark-runs",
            "1",
            "--benchmark-concurrency",
            "2",
            "--benchmark-retry-s",
            "60",
            "--health-interval-ms",
            "200",
            "--log-poll-ms",
            "20",
        ]
        .map(String::from),
    );
    flags
}

impl Stack {
    /// Starts everything and waits until the worker is ready (which needs the benchmark to
    /// have measured a positive max_perf against the real server).
    pub async fn start(preset: Preset, model: Model, slots: u32, ctx_per_slot: u32) -> Stack {
        let log = temp_path("llama-server.log");
        let server = LlamaServer::start(model, slots, ctx_per_slot, &log).await;
        let cp = FakeControlPlane::start().await;
        let flags = worker_flags(preset, &log);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let worker = TestWorker::start(&cp.url, &server.url, &flags).await;
        let stack = Stack { cp, server, worker };
        stack.wait_ready().await;
        stack
    }

    /// Waits for the worker to be ready and to have reported it, then checks the report.
    pub async fn wait_ready(&self) {
        let tracker = self.worker.state.tracker().clone();
        self.wait_for(
            "the worker to become ready",
            Duration::from_secs(120),
            || {
                let t = tracker.clone();
                async move { t.model().is_ready() }
            },
        )
        .await;
        self.wait_for("a ready status report", Duration::from_secs(20), || async {
            self.cp.statuses().iter().any(|s| s.max_perf > 0.0)
        })
        .await;
        let ready = self
            .cp
            .statuses()
            .into_iter()
            .find(|s| s.max_perf > 0.0)
            .unwrap();
        assert!(ready.loadtime > 0.0, "{ready:?}");
        assert_eq!(ready.error_msg, "", "{ready:?}");
        assert!(ready.max_perf.is_finite(), "{ready:?}");
    }

    /// Polls `f` until true; on timeout fails with the server's log (a hang guard, not a
    /// speed assertion: the limits are generous for a busy 2-core machine).
    pub async fn wait_for<F, Fut>(&self, what: &str, limit: Duration, f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_for(what, limit, f, || self.server.log_text()).await;
    }

    /// Posts a signed request for `payload` to a worker route.
    pub async fn post(&self, path: &str, request_idx: u64, payload: Value) -> reqwest::Response {
        self.worker
            .post(path, &body(PUBLIC_URL, request_idx, payload))
            .await
    }

    /// Posts and returns the JSON answer, asserting 200.
    pub async fn post_json(&self, path: &str, request_idx: u64, payload: Value) -> Value {
        let res = self.post(path, request_idx, payload).await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    /// Posts a streaming request and returns the whole SSE text, asserting 200 + event-stream.
    pub async fn post_sse(&self, path: &str, request_idx: u64, payload: Value) -> String {
        let res = self.post(path, request_idx, payload).await;
        assert_eq!(res.status(), 200);
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        res.text().await.unwrap()
    }

    /// Sum of `cur_perf` (workload served) over every status report so far.
    pub fn served_workload(&self) -> f64 {
        self.cp.statuses().iter().map(|s| s.cur_perf).sum()
    }

    /// Waits until the control plane has the finished record of `request_idx`, and returns it.
    pub async fn record(&self, request_idx: u64) -> RequestRecord {
        self.wait_for(
            &format!("the finished record of request {request_idx}"),
            Duration::from_secs(20),
            || async { !self.cp.finished_for(request_idx).is_empty() },
        )
        .await;
        let recs = self.cp.finished_for(request_idx);
        assert_eq!(recs.len(), 1, "{recs:?}");
        recs[0].clone()
    }

    /// Asserts that the listed requests all finished with `Success` and that the served workload
    /// reported to the control plane adds up to `expected`.
    pub async fn assert_served(&self, idxs: &[u64], expected: f64) {
        for &i in idxs {
            let r = self.record(i).await;
            assert_eq!(r.status, RequestStatus::Success, "{r:?}");
        }
        self.wait_for(
            &format!("served workload {expected}"),
            Duration::from_secs(20),
            || async { (self.served_workload() - expected).abs() < 1e-9 },
        )
        .await;
        // Nothing more trickles in later (a double count would show up here).
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.served_workload(), expected);
    }
}

/// Polls `f` every 20 ms until true or `limit`; the panic carries `context()`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut f: F, context: impl Fn() -> String)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}; llama-server log:\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `data:` payloads of an SSE text, in order (`[DONE]` included as is).
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .flat_map(|ev| ev.lines())
        .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_string()))
        .collect()
}

/// The JSON `data:` payloads of an SSE text (`[DONE]` left out).
pub fn sse_json(text: &str) -> Vec<Value> {
    sse_data(text)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

/// Greedy sampling: the same output for the same prompt.
pub fn greedy() -> Value {
    json!({"temperature": 0.0, "top_k": 1, "seed": 42})
}

/// `base` with `extra`'s keys added.
pub fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}
