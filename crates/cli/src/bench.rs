//! `ferry bench`: a load tester for an endpoint (through `/route/`), a single worker
//! (`--worker`, unsecured grant) or any URL (`--direct`, the bare payload, for baselines).
//!
//! Closed loop with `-c N` workers, or open loop at `--rate R` req/s with latency measured from
//! each request's intended send time (coordinated omission accounted for). Every run is
//! bounded by `-n` and/or `--duration`. Prints a table (or `--json`), optionally an SVG chart.
//!
//! Layout: `bench/load.rs` (pacing, one request, tallies), `bench/hist.rs` (log-linear
//! histogram), `bench/report.rs` (table and JSON), `bench/chart.rs` (SVG).

mod chart;
mod hist;
mod load;
mod report;

use std::io::IsTerminal as _;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use ferry_client::{Endpoint, RequestOptions};
use serde_json::json;

use crate::call::{
    ask_for_stream, check_url, normalize_route, parse_cost, parse_duration, read_payload,
    usage_error, ConnArgs,
};
use load::{Plan, Run, Target};
use report::{Report, RunInfo};

/// Payload used when none is given: a short OpenAI-style completion.
const DEFAULT_PAYLOAD: &str = r#"{"prompt": "Hello", "max_tokens": 16}"#;
/// Senders (the most requests in flight) of an open-loop run when `-c` is not given.
const OPEN_LOOP_DEFAULT_CAP: usize = 256;

/// Arguments of `ferry bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Endpoint name (through /route/); omit with --worker or --direct.
    pub endpoint: Option<String>,
    /// Worker route.
    #[arg(long, default_value = "/v1/completions")]
    pub route: String,
    /// JSON payload: inline, @file, or - for stdin [default: {"prompt": "Hello", "max_tokens": 16}].
    #[arg(long, short = 'p')]
    pub payload: Option<String>,
    /// POST the bare payload to this URL (no worker envelope): a baseline, e.g. the model server.
    #[arg(long, value_name = "URL", conflicts_with = "worker")]
    pub direct: Option<String>,
    /// Requests in flight (closed loop); with --rate, the most in flight [default: 8, or 256
    /// with --rate].
    #[arg(short = 'c', long)]
    pub concurrency: Option<NonZeroUsize>,
    /// Open loop: send this many requests per second whatever the latency.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Stop sending after this long (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(short = 'n', long = "requests")]
    pub requests: Option<u64>,
    /// Stream: add "stream": true to the payload and time tokens (TTFT, inter-token delay).
    #[arg(long)]
    pub stream: bool,
    /// Workload estimate sent to /route/.
    #[arg(long, default_value = "100", value_parser = parse_cost)]
    pub cost: f64,
    /// Give up on one request after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Retries per request through an endpoint (0: count every failure).
    #[arg(long, default_value = "0")]
    pub max_retries: u32,
    /// With --worker: the `auth_data` to send (JSON, @file or -), e.g. a grant signed for that
    /// worker, instead of the unsecured placeholder.
    #[arg(long, value_name = "JSON", requires = "worker")]
    pub auth_data: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write a latency-over-time chart (SVG) to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Seconds between progress lines when stderr is not a terminal (0: none).
    #[arg(long, default_value = "5")]
    pub progress_interval: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 10_000_000.0 => Ok(v),
        _ => Err(format!("{s:?} is not a rate in requests per second (> 0)")),
    }
}

/// Runs `ferry bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.requests.is_none() && args.duration.is_none() {
        usage_error("refusing an unbounded run: give -n/--requests, --duration, or both");
    }
    if args.requests == Some(0) {
        usage_error("-n/--requests must be at least 1");
    }
    let targets = [
        args.endpoint.is_some(),
        args.conn.worker.is_some(),
        args.direct.is_some(),
    ];
    match targets.iter().filter(|t| **t).count() {
        0 => usage_error("nothing to load: give an ENDPOINT name, --worker URL or --direct URL"),
        1 => {}
        _ => usage_error("give only one of ENDPOINT, --worker URL and --direct URL"),
    }
    let concurrency = args
        .concurrency
        .map(NonZeroUsize::get)
        .unwrap_or(if args.rate.is_some() {
            OPEN_LOOP_DEFAULT_CAP
        } else {
            8
        });
    let mut payload = read_payload(args.payload.as_deref(), DEFAULT_PAYLOAD);
    if args.stream {
        ask_for_stream(&mut payload);
    }
    let route = normalize_route(&args.route);
    let client = args.conn.client(concurrency).await?;

    let (target, kind, name) = if let Some(direct) = &args.direct {
        check_url("--direct", direct);
        let url = reqwest::Url::parse(direct).unwrap_or_else(|e| usage_error(e));
        let body = serde_json::to_vec(&payload).context("serializing the payload")?;
        (
            Target::Url {
                http: http_client(concurrency)?,
                url,
                body: Bytes::from(body),
            },
            "direct",
            direct.clone(),
        )
    } else if let Some(worker) = &args.conn.worker {
        let base = worker.trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}{route}"))
            .unwrap_or_else(|e| usage_error(format!("--worker {worker:?}: {e}")));
        let auth_data = match &args.auth_data {
            Some(a) => read_payload(Some(a), "{}"),
            None => Endpoint::placeholder_auth_data(base, args.cost),
        };
        let body = json!({
            "auth_data": auth_data,
            "session_id": null,
            "payload": payload,
        });
        let body = serde_json::to_vec(&body).context("serializing the payload")?;
        (
            Target::Url {
                http: http_client(concurrency)?,
                url,
                body: Bytes::from(body),
            },
            "worker",
            base.to_owned(),
        )
    } else {
        let endpoint = args
            .conn
            .endpoint(&client, args.endpoint.as_deref())
            .await?;
        let name = endpoint.name().to_owned();
        (
            Target::Endpoint {
                endpoint,
                route: route.clone(),
                payload,
                opts: RequestOptions {
                    cost: args.cost,
                    timeout: Some(args.timeout),
                    worker_timeout: args.timeout,
                    max_retries: args.max_retries,
                    retry: args.max_retries > 0,
                    tracker: None,
                },
            },
            "endpoint",
            name,
        )
    };

    let plan = Plan {
        concurrency,
        rate: args.rate,
        max_requests: args.requests,
        duration: args.duration,
        stream: args.stream,
        timeout: args.timeout,
        keep_points: args.chart.is_some(),
    };
    let run = Run::new(target, plan);
    let progress = spawn_progress(run.clone(), args.progress_interval, args.requests);
    let (tally, elapsed) = run.execute().await;
    progress.finish().await;

    let report = Report::new(
        RunInfo {
            target_kind: kind,
            target: name,
            route,
            concurrency,
            rate: args.rate,
            stream: args.stream,
        },
        &tally,
        elapsed,
    );
    if let Some(path) = &args.chart {
        std::fs::write(path, chart::render(&tally.points, &report))
            .with_context(|| format!("writing the chart to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        if let Some(path) = &args.chart {
            println!("chart      {}", path.display());
        }
    }
    Ok(())
}

/// The load generator's HTTP client: pooled keep-alive connections, no proxy, Nagle off.
fn http_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(ferry_client::USER_AGENT)
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")
}

/// The progress printer; `finish` stops it and clears the live line.
struct Progress {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    async fn finish(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

fn spawn_progress(run: Arc<Run>, plain_every_s: u64, total: Option<u64>) -> Progress {
    let stop = tokio_util::sync::CancellationToken::new();
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else if plain_every_s == 0 {
        return Progress { stop, task: None };
    } else {
        Duration::from_secs(plain_every_s)
    };
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let (mut last_done, mut last_lat) = (0u64, 0u64);
        loop {
            tokio::select! {
                _ = s.cancelled() => break,
                _ = tick.tick() => {}
            }
            let live = &run.live;
            let done = live.done.load(Ordering::Relaxed);
            let lat = live.latency_sum_us.load(Ordering::Relaxed);
            let d = done - last_done;
            let avg_ms = if d > 0 {
                (lat - last_lat) as f64 / d as f64 / 1000.0
            } else {
                0.0
            };
            let of = total.map(|n| format!("/{n}")).unwrap_or_default();
            let line = format!(
                "{:>7.1}s  {done}{of} done  {:.0} req/s  avg {avg_ms:.2}ms  {} errors  {} in flight",
                run.start.elapsed().as_secs_f64(),
                d as f64 / every.as_secs_f64(),
                live.errors.load(Ordering::Relaxed),
                live.in_flight.load(Ordering::Relaxed),
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("ferry bench: {line}");
            }
            (last_done, last_lat) = (done, lat);
        }
        if tty {
            eprint!("\r\x1b[2K");
        }
    });
    Progress {
        stop,
        task: Some(task),
    }
}
