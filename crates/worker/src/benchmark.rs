//! The throughput benchmark that sets `max_perf`, measured as PyWorker does: an optional
//! un-timed warm-up request, then `runs` rounds of `concurrency` concurrent requests; a round's
//! throughput is the workload of its successful (HTTP 200) responses over its elapsed time, and
//! the result is the best round. The result is cached in a file so a restarted (cold) worker skips
//! it; a cache that is unreadable, non-positive, or older than the configured age is ignored.
//!
//! Unlike PyWorker, a benchmark that cannot reach the model server (connection refused: the log
//! said "loaded" before the server listened) is retried until a deadline instead of locking the
//! worker into a permanent error.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::backends::Workload;
use crate::error::WorkerError;
use crate::forward::Upstream;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkSpec {
    /// Model server path the benchmark posts to.
    pub model_path: String,
    /// Payloads, used round-robin.
    pub payloads: Vec<Value>,
    /// Workload of each payload.
    pub workload: Workload,
    /// Timed rounds.
    pub runs: u32,
    /// Requests per round (1 for FIFO routes).
    pub concurrency: u32,
    /// One un-timed request first, to trigger lazy model loading.
    pub warmup: bool,
    /// Fill a null `"model"` in the payloads from the server's `/v1/models`.
    pub fill_model: bool,
}

/// Where and how long a result is cached.
#[derive(Debug, Clone)]
pub struct BenchmarkCache {
    pub path: PathBuf,
    /// Results older than this are rerun; `None` keeps them forever (PyWorker's behaviour).
    pub max_age: Option<Duration>,
}

impl BenchmarkCache {
    /// The cached result, if present, positive and fresh.
    pub fn load(&self) -> Option<f64> {
        let meta = std::fs::metadata(&self.path).ok()?;
        if let Some(max_age) = self.max_age {
            let age = SystemTime::now()
                .duration_since(meta.modified().ok()?)
                .unwrap_or_default();
            if age > max_age {
                tracing::info!(path = %self.path.display(), ?age, "benchmark cache is stale; rerunning");
                return None;
            }
        }
        let text = std::fs::read_to_string(&self.path).ok()?;
        let first = text.lines().next()?.trim();
        let perf: f64 = first.parse().ok()?;
        (perf.is_finite() && perf > 0.0).then_some(perf)
    }

    /// Stores a result (the same one-number format PyWorker's `.has_benchmark` uses).
    pub fn store(&self, perf: f64) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&self.path, format!("{perf}")) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot cache the benchmark result");
        }
    }
}

/// Why a benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    #[error("no successful responses from benchmark ({0})")]
    NoSuccess(String),
    #[error("model server unreachable: {0}")]
    Unreachable(String),
}

/// Runs the benchmark (or returns the cached result). `retry_until` bounds how long an
/// unreachable model server is waited for.
pub async fn run(
    upstream: &Upstream,
    spec: &BenchmarkSpec,
    cache: &BenchmarkCache,
    retry_until: Duration,
) -> Result<f64, BenchmarkError> {
    if let Some(perf) = cache.load() {
        tracing::info!(perf, path = %cache.path.display(), "using cached benchmark result");
        return Ok(perf);
    }
    let deadline = Instant::now() + retry_until;
    let mut delay = Duration::from_millis(200);
    loop {
        match measure(upstream, spec).await {
            Ok(perf) => {
                cache.store(perf);
                return Ok(perf);
            }
            Err(BenchmarkError::Unreachable(e)) if Instant::now() + delay < deadline => {
                tracing::info!(error = %e, "benchmark: model server not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn measure(upstream: &Upstream, spec: &BenchmarkSpec) -> Result<f64, BenchmarkError> {
    if spec.payloads.is_empty() {
        return Err(BenchmarkError::NoSuccess("no benchmark payload".into()));
    }
    let mut payloads = spec.payloads.clone();
    if spec.fill_model
        && payloads
            .iter()
            .any(|p| p.get("model").is_some_and(Value::is_null))
    {
        let model = served_model(upstream).await?;
        for p in &mut payloads {
            if p.get("model").is_some_and(Value::is_null) {
                p["model"] = Value::String(model.clone());
            }
        }
    }
    let bodies: Vec<(Bytes, f64)> = payloads
        .iter()
        .map(|p| {
            let bytes = serde_json::to_vec(p).unwrap_or_default();
            (Bytes::from(bytes), spec.workload.count(p))
        })
        .collect();
    let mut next = 0usize;
    let mut pick = || {
        let b = bodies[next % bodies.len()].clone();
        next += 1;
        b
    };
    if spec.warmup {
        let (body, _) = pick();
        one(upstream, &spec.model_path, body).await?;
    }
    let mut best = 0.0f64;
    let mut last_failure = String::new();
    for run in 1..=spec.runs.max(1) {
        let start = Instant::now();
        let batch: Vec<_> = (0..spec.concurrency.max(1)).map(|_| pick()).collect();
        let results = join_all(
            batch
                .into_iter()
                .map(|(body, w)| async move { (one(upstream, &spec.model_path, body).await, w) }),
        )
        .await;
        let elapsed = start.elapsed().as_secs_f64().max(1e-9);
        let mut ok = 0u32;
        let mut workload = 0.0;
        for (r, w) in results {
            match r {
                Ok(200) => {
                    ok += 1;
                    workload += w;
                }
                Ok(status) => last_failure = format!("HTTP {status}"),
                Err(BenchmarkError::Unreachable(e)) => return Err(BenchmarkError::Unreachable(e)),
                Err(e) => last_failure = e.to_string(),
            }
        }
        if ok == 0 {
            return Err(BenchmarkError::NoSuccess(last_failure));
        }
        let throughput = workload / elapsed;
        tracing::info!(run, ok, workload, elapsed, throughput, "benchmark round");
        best = best.max(throughput);
    }
    Ok(best)
}

/// The first model id from `/v1/models` (OpenAI servers reject unknown model names).
async fn served_model(upstream: &Upstream) -> Result<String, BenchmarkError> {
    let res = upstream
        .get("/v1/models", Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            WorkerError::UpstreamConnect(m) => BenchmarkError::Unreachable(m),
            other => BenchmarkError::NoSuccess(other.to_string()),
        })?;
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| BenchmarkError::NoSuccess(format!("reading /v1/models: {e}")))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| BenchmarkError::NoSuccess(format!("/v1/models is not JSON: {e}")))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BenchmarkError::NoSuccess("/v1/models lists no model".into()))
}

/// One request; returns the status after reading the whole body.
async fn one(upstream: &Upstream, path: &str, body: Bytes) -> Result<u16, BenchmarkError> {
    let res = upstream.post_json(path, body).await.map_err(|e| match e {
        WorkerError::UpstreamConnect(m) => BenchmarkError::Unreachable(m),
        other => BenchmarkError::NoSuccess(other.to_string()),
    })?;
    let status = res.status().as_u16();
    res.into_body()
        .collect()
        .await
        .map_err(|e| BenchmarkError::NoSuccess(format!("reading the response: {e}")))?;
    Ok(status)
}
