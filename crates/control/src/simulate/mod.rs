//! `ferry simulate`: a request trace replayed through the control plane's own routing and
//! autoscaling code on a simulated clock.
//!
//! Nothing of the control plane is re-implemented here. The simulator holds the same
//! components the control plane guards with its mutex ([`crate::control`]'s state: catalog,
//! registry, queue, stats, a seeded tie-breaking RNG) and drives them through the same calls
//! the HTTP handlers and the autoscaler loop make, with the simulated second as `mono`:
//! `/route/` is `Stats::request` + `Queue::admit` + `Stats::routed` + dispatch (the registry's
//! routing index and `route::choose`'s rule) + `Queue::deliver`; `/worker_status/` is
//! `Registry::report` + dispatch; `/delete_requests/` is `Registry::finished` +
//! `Queue::finish` + dispatch; the tick is the tick's housekeeping, `autoscale::view`'s
//! `endpoint_view` and the endpoint's policy (`autoscale::decide_with`), whose decisions are
//! booked in the registry as the tick books them (launch = `Registry::create` + `started`,
//! resume = `resuming`, stop = `stopping` + `stop_done`, destroy = `doom` + `remove`).
//!
//! What is simulated is the outside world: the provider (a launch is ready after the cold
//! start, a resume after the resume time, a stop takes `stop_s`), the workers (they report
//! every second while up, serve `concurrency` requests at once, each at `real perf /
//! concurrency` workload units per second, the rest in their own FIFO, and post finished
//! requests at once) and the clients (a client waits for its grant, calls the worker at once,
//! and gives up after `client_timeout_s` in the queue: a rejected request). A worker's reports
//! carry what it finished since the previous one (`cur_perf`), from which the registry learns
//! its real throughput when it differs from its benchmark (`registry::capacity`).
//!
//! A run ends when every request is served or rejected and no worker is up any more (at most
//! an hour after the last arrival), so a policy pays for the idling it chooses after the
//! trace too. Billing: a worker costs `price_hot_s` per second from launch or resume until its stop
//! completes or it is destroyed, and `price_stopped_s` per second while stopped.
//!
//! # Layout
//!
//! - `trace.rs`: [`Trace`], the CSV reader and the transforms.
//! - `engine.rs`: the event loop ([`run`]).
//! - `outcome.rs`: what a run measured ([`Outcome`]), as a table, JSON or an SVG chart.

mod engine;
mod outcome;
mod trace;

pub use engine::run;
pub use outcome::{compare_table, svg_chart, Outcome, Percentiles, Sample};
pub use trace::{Request, Trace, TraceError};

use crate::endpoint::EndpointParams;
use crate::store::{Store, StoreError, Write};

/// A simulated worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerModel {
    /// Seconds from launch to loaded (ready).
    pub cold_start_s: f64,
    /// Seconds from resume (of a stopped worker) to ready.
    pub resume_s: f64,
    /// Seconds a stop takes (billed hot).
    pub stop_s: f64,
    /// What its start-up benchmark reports (`max_perf`), workload units per second.
    pub benchmark_perf: f64,
    /// What it really serves at full concurrency, workload units per second.
    pub real_perf: f64,
    /// Requests it serves at once.
    pub concurrency: u32,
}

impl Default for WorkerModel {
    fn default() -> Self {
        WorkerModel {
            cold_start_s: 120.0,
            resume_s: 20.0,
            stop_s: 2.0,
            benchmark_perf: 400.0,
            real_perf: 400.0,
            concurrency: 8,
        }
    }
}

/// Everything a run needs besides the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The endpoint's parameters, its policy included.
    pub params: EndpointParams,
    /// The workers.
    pub worker: WorkerModel,
    /// Price of a worker per second while up (launching, loading, ready, stopping).
    pub price_hot_s: f64,
    /// Price of a worker per second while stopped.
    pub price_stopped_s: f64,
    /// Autoscaler tick, seconds (`--autoscale-interval-ms`).
    pub tick_s: f64,
    /// Worker report period, seconds.
    pub report_s: f64,
    /// Idle limit when the endpoint sets none (`--idle-stop-after-s`).
    pub idle_stop_after_s: f64,
    /// `--stale-after-s`.
    pub stale_after_s: f64,
    /// `--pending-ttl-s`.
    pub pending_ttl_s: f64,
    /// A client gives up after waiting this long in the queue.
    pub client_timeout_s: f64,
    /// Seed of the router's tie-breaking.
    pub seed: u64,
    /// Width of the chart's time buckets, seconds.
    pub bucket_s: f64,
    /// Workers already loaded and ready when the trace starts (billed from then on).
    pub prewarm: u32,
    /// Whether the registry learns each worker's throughput from its reports
    /// (`registry::capacity`); off, the benchmark alone counts.
    pub learn_capacity: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            params: EndpointParams::default(),
            worker: WorkerModel::default(),
            // $1.20 per hour up, $0.02 per hour stopped (disk only).
            price_hot_s: 1.2 / 3600.0,
            price_stopped_s: 0.02 / 3600.0,
            tick_s: 1.0,
            report_s: 1.0,
            idle_stop_after_s: 60.0,
            stale_after_s: 30.0,
            pending_ttl_s: 60.0,
            client_timeout_s: 300.0,
            seed: 1,
            bucket_s: 10.0,
            prewarm: 0,
            learn_capacity: true,
        }
    }
}

/// A store that keeps nothing: a simulation has nothing to recover.
#[derive(Debug, Default)]
pub(crate) struct NullStore;

impl Store for NullStore {
    fn write(&self, _w: Write) {}
    fn flush(&self) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn close(&self) {}
}

#[cfg(test)]
mod tests;
