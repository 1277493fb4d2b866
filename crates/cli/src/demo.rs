//! `ferry demo`: the whole system on one machine.
//!
//! Starts a control plane (local provider, state in a temporary directory), creates an endpoint
//! and a workergroup through the endpoint API, then sends a burst of plain and streaming requests
//! through Vast's route → worker flow with the Ferry SDK. The autoscaler starts local workers in
//! front of the built-in simulated LLM (or `--model-cmd`); the terminal shows workers by state as
//! they scale up, each answer, and a summary. Ctrl-C at any point shuts everything down cleanly.
//! It prints the web console's address and the key to sign in with; `--keep` keeps everything
//! running after the burst so the console can be explored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, FromArgMatches as _};
use ferry_client::{Client, RequestOptions};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const ACCOUNT_KEY: &str = "ferry-demo-account-key";
const ENDPOINT: &str = "demo";

/// Arguments of `ferry demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Model server command for the workers instead of the built-in simulated LLM. `{model_port}`,
    /// `{model_log}`, `{ferry}` and `{dir}` are substituted; it runs with `sh -c`.
    #[arg(long)]
    model_cmd: Option<String>,
    /// Worker preset for the model server (BACKEND).
    #[arg(long, default_value = "openai")]
    backend: String,
    /// Requests in the burst (half plain, half streaming).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    requests: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=512))]
    concurrency: u32,
    /// Tokens per request (`max_tokens`).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_tokens: u32,
    /// Most workers the autoscaler may start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    max_workers: u32,
    /// Keep the system running after the burst until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

/// Runs the demo; resolves when it is done or on Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let state_dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    let result = tokio::select! {
        r = demo(&args, &state_dir) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\nCtrl-C: shutting down");
            Ok(())
        }
    };
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

async fn demo(args: &DemoArgs, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        l.local_addr()?.port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let model_cmd = args.model_cmd.clone().unwrap_or_else(|| {
        // The simulated LLM: 20 ms per token and a short load, so scaling is visible.
        "{ferry} sim-model --listen 127.0.0.1:{model_port} --log-file {model_log} \
         --token-delay-ms 20 --load-time-ms 1500"
            .to_string()
    });
    let argv = [
        "control",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        &state_dir.display().to_string(),
        "--api-key",
        ACCOUNT_KEY,
        "--autoscale-interval-ms",
        "500",
        "--idle-stop-after-s",
        "30",
    ];
    let matches = ferry_control::ControlArgs::augment_args(clap::Command::new("control"))
        .try_get_matches_from(argv)
        .context("demo control plane arguments")?;
    let mut control_args = ferry_control::ControlArgs::from_arg_matches(&matches)?;
    // The demo's state is its own, in its state folder: never a database named by FERRY_STORE
    // or FERRY_DB for a real control plane.
    control_args.store = None;
    control_args.db = None;

    println!(
        "ferry demo: control plane at {base} (state in {})",
        state_dir.display()
    );
    let stop = CancellationToken::new();
    let stop_signal = stop.clone();
    let control = tokio::spawn(async move {
        ferry_control::run_cli(control_args, async move { stop_signal.cancelled().await }).await
    });
    let guard = StopOnDrop(stop.clone());

    let http = reqwest::Client::new();
    wait_healthy(&http, &base).await?;
    let endpoint_id = create_endpoint(&http, &base, args).await?;
    create_workergroup(&http, &base, endpoint_id, args, &model_cmd).await?;
    println!(
        "created endpoint {ENDPOINT:?} (id {endpoint_id}, max {} workers, scale from zero) and its workergroup ({})",
        args.max_workers,
        args.model_cmd.as_deref().unwrap_or("built-in simulated LLM")
    );
    println!("web console: {base}/ui/ (sign in with the account key {ACCOUNT_KEY})");

    let client = Client::builder().base_url(base.clone()).build()?;
    let endpoint = client
        .endpoint_from_account(ENDPOINT, &ferry_client::ApiKey::new(ACCOUNT_KEY))
        .await?;

    let monitor_stop = CancellationToken::new();
    let monitor = tokio::spawn(monitor(
        http.clone(),
        base.clone(),
        endpoint_id,
        endpoint.api_key().expose().to_string(),
        started,
        monitor_stop.clone(),
    ));

    println!(
        "sending {} requests ({} at a time): odd ones plain, even ones streaming",
        args.requests, args.concurrency
    );
    let limit = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.requests {
        let permit = limit.clone().acquire_owned().await?;
        let endpoint = endpoint.clone();
        let max_tokens = args.max_tokens;
        tasks.spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let stream = i % 2 == 1;
            let payload = json!({
                "model": "demo",
                "prompt": format!("Request {i}: tell me about ferries"),
                "max_tokens": max_tokens,
                "stream": stream,
            });
            let opts = RequestOptions {
                cost: f64::from(max_tokens),
                timeout: Some(Duration::from_secs(120)),
                ..RequestOptions::default()
            };
            let outcome = if stream {
                match endpoint
                    .request_stream("/v1/completions", &payload, &opts)
                    .await
                {
                    Ok(s) => {
                        let url = s.info.worker_url.clone();
                        let mut events = s.events();
                        let mut text = String::new();
                        let mut first: Option<Duration> = None;
                        while let Some(ev) = events.next().await {
                            let ev = ev?;
                            first.get_or_insert_with(|| t0.elapsed());
                            if let Some(t) = ev["choices"][0]["text"].as_str() {
                                text.push_str(t);
                            }
                        }
                        Ok((url, text, first))
                    }
                    Err(e) => Err(e),
                }
            } else {
                endpoint
                    .request("/v1/completions", &payload, &opts)
                    .await
                    .map(|r| {
                        let v: Value = r.json().unwrap_or(Value::Null);
                        let text = v["choices"][0]["text"].as_str().unwrap_or("").to_string();
                        (r.info.worker_url.clone(), text, None)
                    })
            };
            Ok::<_, ferry_client::Error>((i, stream, t0.elapsed(), outcome))
        });
    }
    let mut latencies = Vec::new();
    let mut workers_used: BTreeMap<String, u32> = BTreeMap::new();
    let mut failures = 0u32;
    while let Some(joined) = tasks.join_next().await {
        let (i, stream, elapsed, outcome) = joined??;
        match outcome {
            Ok((url, text, ttft)) => {
                latencies.push(elapsed);
                *workers_used.entry(url.clone()).or_default() += 1;
                let preview: String = text
                    .split_whitespace()
                    .take(4)
                    .collect::<Vec<_>>()
                    .join(" ");
                let kind = match ttft {
                    Some(t) => format!("stream (first token {:.0} ms)", t.as_secs_f64() * 1e3),
                    None => "plain".to_string(),
                };
                println!(
                    "  #{i:<3} {kind:<28} {:>6.2} s  via {url}  \"{preview} ...\"",
                    elapsed.as_secs_f64()
                );
            }
            Err(e) => {
                failures += 1;
                println!(
                    "  #{i:<3} {} failed: {e} ({})",
                    if stream { "stream" } else { "plain" },
                    e.code()
                );
            }
        }
    }
    monitor_stop.cancel();
    let _ = monitor.await;

    latencies.sort();
    let pct = |q: f64| -> f64 {
        let idx = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(idx).map_or(0.0, Duration::as_secs_f64)
    };
    println!();
    println!("summary: {} ok, {failures} failed", latencies.len());
    println!(
        "  latency p50 {:.2} s, p90 {:.2} s, max {:.2} s (includes cold start from zero workers)",
        pct(0.5),
        pct(0.9),
        pct(1.0)
    );
    println!("  requests per worker:");
    for (url, n) in &workers_used {
        println!("    {url}: {n}");
    }
    if failures > 0 {
        bail!("{failures} demo requests failed");
    }
    if args.keep {
        println!(
            "\nthe system keeps running at {base}; look around in the web console at {base}/ui/ \
             (key {ACCOUNT_KEY}); Ctrl-C to stop"
        );
        std::future::pending::<()>().await;
    }
    println!("\nshutting down (workers are stopped by the control plane)");
    drop(guard);
    match control.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("control plane: {e}")),
        Err(e) => Err(anyhow::anyhow!("control plane task: {e}")),
    }
}

/// Cancels the control plane when the demo ends for any reason (Ctrl-C included).
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn wait_healthy(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the demo control plane did not come up at {base}")
}

async fn post_json(http: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let res = http
        .post(&url)
        .bearer_auth(ACCOUNT_KEY)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: HTTP {status}: {v}");
    }
    Ok(v)
}

async fn create_endpoint(
    http: &reqwest::Client,
    base: &str,
    args: &DemoArgs,
) -> anyhow::Result<i64> {
    let v = post_json(
        http,
        format!("{base}/api/v0/endptjobs/"),
        json!({
            "endpoint_name": ENDPOINT,
            "cold_workers": 0,
            "max_workers": args.max_workers,
            "min_load": 0.0,
            "target_util": 0.9,
            "cold_mult": 1.0,
            "max_queue_time": 2.0,
            "target_queue_time": 1.0,
            "inactivity_timeout": 30,
        }),
    )
    .await?;
    v["result"]
        .as_i64()
        .with_context(|| format!("endpoint id missing in {v}"))
}

async fn create_workergroup(
    http: &reqwest::Client,
    base: &str,
    endpoint_id: i64,
    args: &DemoArgs,
    model_cmd: &str,
) -> anyhow::Result<()> {
    let bench_payload =
        json!({"model": "demo", "prompt": "warm up", "max_tokens": args.max_tokens});
    post_json(
        http,
        format!("{base}/api/v0/workergroups/"),
        json!({
            "endpoint_id": endpoint_id,
            "model_cmd": model_cmd,
            "backend": args.backend,
            "env": {
                "FERRY_BENCHMARK_RUNS": "1",
                "FERRY_BENCHMARK_CONCURRENCY": "4",
                "FERRY_BENCHMARK_PAYLOAD": bench_payload.to_string(),
            },
        }),
    )
    .await?;
    Ok(())
}

/// Prints workers by state once a second while the burst runs.
async fn monitor(
    http: reqwest::Client,
    base: String,
    endpoint_id: i64,
    key: String,
    started: Instant,
    stop: CancellationToken,
) {
    let mut last = String::new();
    loop {
        let line = match http
            .post(format!("{base}/get_endpoint_workers/"))
            .json(&json!({"id": endpoint_id, "api_key": key}))
            .send()
            .await
        {
            Ok(r) => match r.json::<Value>().await {
                Ok(Value::Array(ws)) => {
                    let mut by: BTreeMap<String, u32> = BTreeMap::new();
                    for w in &ws {
                        *by.entry(w["status"].as_str().unwrap_or("?").to_string())
                            .or_default() += 1;
                    }
                    let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
                    if parts.is_empty() {
                        "no workers yet".to_string()
                    } else {
                        parts.join(", ")
                    }
                }
                _ => "workers: ?".to_string(),
            },
            Err(_) => "workers: ?".to_string(),
        };
        if line != last {
            println!(
                "  [{:>5.1} s] workers: {line}",
                started.elapsed().as_secs_f64()
            );
            last = line;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
