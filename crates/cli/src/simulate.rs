//! `ferry simulate`: replays a request trace through the control plane's routing and
//! autoscaling code on a simulated clock (see `ferry_control::simulate`), and prints what it
//! cost and how long requests waited, as a table or JSON, optionally with an SVG chart.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::ValueEnum;
use ferry_control::autoscale::AutoscalePolicy;
use ferry_control::endpoint::EndpointParams;
use ferry_control::simulate::{self, Outcome, SimConfig, Trace, WorkerModel};

/// `ferry simulate` arguments.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The trace: CSV with `TIMESTAMP, ContextTokens, GeneratedTokens` per request (the Azure
    /// LLM inference trace format; samples in data/azure-llm-inference-2023/).
    trace: PathBuf,

    /// The endpoint's scaling policy.
    #[arg(long, value_enum, default_value = "vast")]
    policy: Policy,
    /// Run every policy on the same trace and print them side by side.
    #[arg(long)]
    compare: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also write an SVG chart (arrivals, workers by state, queue time over time) here.
    #[arg(long)]
    svg: Option<PathBuf>,

    /// Play the trace this many times faster.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Multiply every inter-arrival gap longer than `--stretch-min-gap-s` by this.
    #[arg(long, default_value_t = 1.0)]
    stretch_gaps: f64,
    /// Gaps up to this many seconds are left as they are by `--stretch-gaps`.
    #[arg(long, default_value_t = 0.0)]
    stretch_min_gap_s: f64,
    /// Multiply every request's workload by this.
    #[arg(long, default_value_t = 1.0)]
    scale_sizes: f64,
    /// Play the trace this many times back to back.
    #[arg(long, default_value_t = 1)]
    tile: u32,
    /// Keep only the requests of the first this many seconds (after the transforms).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Workload = GeneratedTokens + this × ContextTokens (0: as the openai preset counts
    /// `max_tokens`).
    #[arg(long, default_value_t = 0.0)]
    context_weight: f64,

    /// Seconds from launch to a loaded, benchmarked worker.
    #[arg(long, default_value_t = 120.0)]
    cold_start_s: f64,
    /// Seconds from resuming a stopped worker to ready.
    #[arg(long, default_value_t = 20.0)]
    resume_s: f64,
    /// Seconds a stop takes.
    #[arg(long, default_value_t = 2.0)]
    stop_s: f64,
    /// A worker's benchmarked throughput (`max_perf`), workload units (tokens) per second.
    #[arg(long, default_value_t = 400.0)]
    perf: f64,
    /// What a worker really serves, if not its benchmark.
    #[arg(long)]
    real_perf: Option<f64>,
    /// Workers already loaded and ready when the trace starts.
    #[arg(long, default_value_t = 0)]
    prewarm: u32,
    /// Do not learn workers' throughput from their reports (the benchmark alone counts).
    #[arg(long)]
    no_learn_capacity: bool,
    /// Requests a worker serves at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Price of a worker per hour while up.
    #[arg(long, default_value_t = 1.2)]
    price_hot_per_hour: f64,
    /// Price of a worker per hour while stopped.
    #[arg(long, default_value_t = 0.02)]
    price_stopped_per_hour: f64,

    /// Endpoint `min_load` (default: Vast's).
    #[arg(long)]
    min_load: Option<f64>,
    /// Endpoint `min_cold_load`.
    #[arg(long)]
    min_cold_load: Option<f64>,
    /// Endpoint `target_util`.
    #[arg(long)]
    target_util: Option<f64>,
    /// Endpoint `cold_mult`.
    #[arg(long)]
    cold_mult: Option<f64>,
    /// Endpoint `cold_workers`.
    #[arg(long)]
    cold_workers: Option<u32>,
    /// Endpoint `max_workers`.
    #[arg(long)]
    max_workers: Option<u32>,
    /// Endpoint `max_queue_time`, seconds.
    #[arg(long)]
    max_queue_time: Option<f64>,
    /// Endpoint `target_queue_time`, seconds.
    #[arg(long)]
    target_queue_time: Option<f64>,
    /// Endpoint `inactivity_timeout`, seconds.
    #[arg(long, allow_negative_numbers = true)]
    inactivity_timeout: Option<f64>,

    /// The control plane's `--idle-stop-after-s`.
    #[arg(long, default_value_t = 60.0)]
    idle_stop_after_s: f64,
    /// The control plane's `--autoscale-interval-ms`.
    #[arg(long, default_value_t = 1000)]
    autoscale_interval_ms: u64,
    /// A client gives up after this long in the queue (a rejected request).
    #[arg(long, default_value_t = 300.0)]
    client_timeout_s: f64,
    /// Seed of the router's tie-breaking: the same seed gives the same numbers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Width of the chart's time buckets, seconds.
    #[arg(long, default_value_t = 10.0)]
    bucket_s: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Policy {
    Vast,
    Kpa,
    Ray,
    Ferry,
}

impl From<Policy> for AutoscalePolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::Vast => AutoscalePolicy::Vast,
            Policy::Kpa => AutoscalePolicy::Kpa,
            Policy::Ray => AutoscalePolicy::Ray,
            Policy::Ferry => AutoscalePolicy::Ferry,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
}

impl SimulateArgs {
    /// Checks the numbers once; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--speed", self.speed),
            ("--stretch-gaps", self.stretch_gaps),
            ("--perf", self.perf),
            ("--real-perf", self.real_perf.unwrap_or(self.perf)),
            ("--bucket-s", self.bucket_s),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name}: must be a number > 0"));
            }
        }
        let non_negative = [
            ("--stretch-min-gap-s", self.stretch_min_gap_s),
            ("--scale-sizes", self.scale_sizes),
            ("--context-weight", self.context_weight),
            ("--cold-start-s", self.cold_start_s),
            ("--resume-s", self.resume_s),
            ("--stop-s", self.stop_s),
            ("--price-hot-per-hour", self.price_hot_per_hour),
            ("--price-stopped-per-hour", self.price_stopped_per_hour),
            ("--idle-stop-after-s", self.idle_stop_after_s),
            ("--client-timeout-s", self.client_timeout_s),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name}: must be a number >= 0"));
            }
        }
        if self.concurrency == 0 {
            return Err("--concurrency: must be at least 1".into());
        }
        if self.tile == 0 {
            return Err("--tile: must be at least 1".into());
        }
        if self.autoscale_interval_ms == 0 {
            return Err("--autoscale-interval-ms: must be at least 1".into());
        }
        Ok(())
    }

    /// The trace, read and transformed.
    fn trace(&self) -> anyhow::Result<Trace> {
        let text = std::fs::read_to_string(&self.trace)
            .with_context(|| format!("cannot read {}", self.trace.display()))?;
        let mut t = Trace::parse_csv(&text, self.context_weight)
            .with_context(|| format!("{}", self.trace.display()))?
            .speed(self.speed)
            .stretch_gaps(self.stretch_gaps, self.stretch_min_gap_s)
            .scale_sizes(self.scale_sizes)
            .tile(self.tile);
        if let Some(d) = self.duration_s {
            t = t.truncate(d);
        }
        Ok(t)
    }

    fn config(&self, policy: AutoscalePolicy) -> SimConfig {
        let d = EndpointParams::default();
        let params = EndpointParams {
            min_load: self.min_load.unwrap_or(d.min_load),
            min_cold_load: self.min_cold_load.unwrap_or(d.min_cold_load),
            target_util: self.target_util.unwrap_or(d.target_util),
            cold_mult: self.cold_mult.unwrap_or(d.cold_mult),
            cold_workers: self.cold_workers.unwrap_or(d.cold_workers),
            max_workers: self.max_workers.unwrap_or(d.max_workers),
            max_queue_time: self.max_queue_time.unwrap_or(d.max_queue_time),
            target_queue_time: self.target_queue_time.unwrap_or(d.target_queue_time),
            inactivity_timeout: self.inactivity_timeout.or(d.inactivity_timeout),
            endpoint_state: d.endpoint_state,
            autoscale_policy: policy,
        };
        SimConfig {
            params,
            worker: WorkerModel {
                cold_start_s: self.cold_start_s,
                resume_s: self.resume_s,
                stop_s: self.stop_s,
                benchmark_perf: self.perf,
                real_perf: self.real_perf.unwrap_or(self.perf),
                concurrency: self.concurrency,
            },
            price_hot_s: self.price_hot_per_hour / 3600.0,
            price_stopped_s: self.price_stopped_per_hour / 3600.0,
            tick_s: self.autoscale_interval_ms as f64 / 1000.0,
            idle_stop_after_s: self.idle_stop_after_s,
            client_timeout_s: self.client_timeout_s,
            seed: self.seed,
            bucket_s: self.bucket_s,
            prewarm: self.prewarm,
            learn_capacity: !self.no_learn_capacity,
            ..SimConfig::default()
        }
    }
}

/// Runs `ferry simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let trace = args.trace()?;
    let policies: Vec<AutoscalePolicy> = if args.compare {
        AutoscalePolicy::ALL.to_vec()
    } else {
        vec![args.policy.into()]
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    for p in policies {
        let o = simulate::run(&trace, &args.config(p)).map_err(anyhow::Error::msg)?;
        outcomes.push(o);
    }
    match args.format {
        Format::Table => print!("{}", simulate::compare_table(&outcomes)),
        Format::Json => {
            let v = if outcomes.len() == 1 {
                serde_json::to_string_pretty(&outcomes[0])?
            } else {
                serde_json::to_string_pretty(&outcomes)?
            };
            println!("{v}");
        }
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "ferry simulate {} ({} requests)",
            args.trace
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            trace.requests.len()
        );
        std::fs::write(path, simulate::svg_chart(&outcomes, &title))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
