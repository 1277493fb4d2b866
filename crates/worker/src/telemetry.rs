//! Prometheus metrics: names defined once, bounded labels, explicit buckets, and one helper per
//! outcome so the log line and the counter cannot drift apart.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::forward::RelayObserver;
use crate::load::Outcome;

pub const REQUESTS: &str = "ferry_worker_requests_total";
pub const IN_FLIGHT: &str = "ferry_worker_in_flight";
pub const QUEUE_DEPTH: &str = "ferry_worker_fifo_waiting";
pub const WORKLOAD: &str = "ferry_worker_workload_total";
pub const UPSTREAM_LATENCY: &str = "ferry_worker_upstream_seconds";
pub const TTFB: &str = "ferry_worker_time_to_first_byte_seconds";
pub const STREAM_EVENTS: &str = "ferry_worker_stream_events_total";
pub const READY: &str = "ferry_worker_ready";
pub const MAX_PERF: &str = "ferry_worker_max_perf";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// A request ended before or without a relayed body (refused, failed upstream).
pub fn refused(route: &str, code: &'static str) {
    counter!(REQUESTS, "route" => route.to_string(), "outcome" => code).increment(1);
}

/// The FIFO line grew or shrank.
pub fn fifo_waiting(delta: f64) {
    gauge!(QUEUE_DEPTH).increment(delta);
}

/// Readiness changed.
pub fn model_state(ready: bool, max_perf: f64) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
    gauge!(MAX_PERF).set(max_perf);
}

/// Watches one relayed response: time to first byte, stream events, outcome, latency.
pub struct RequestObserver {
    route: String,
    started: Instant,
    first_byte: bool,
    sse: bool,
    events: u64,
    carry: bool,
}

impl RequestObserver {
    /// Starts watching a request admitted on `route` with `workload`.
    pub fn start(route: &str, workload: f64, sse: bool, started: Instant) -> Self {
        gauge!(IN_FLIGHT).increment(1.0);
        counter!(WORKLOAD, "route" => route.to_string()).increment(workload.max(0.0) as u64);
        histogram!(UPSTREAM_LATENCY, "route" => route.to_string())
            .record(started.elapsed().as_secs_f64());
        Self {
            route: route.to_string(),
            started,
            first_byte: false,
            sse,
            events: 0,
            carry: true,
        }
    }
}

impl RelayObserver for RequestObserver {
    fn on_chunk(&mut self, chunk: &Bytes) {
        if !self.first_byte {
            self.first_byte = true;
            histogram!(TTFB, "route" => self.route.clone())
                .record(self.started.elapsed().as_secs_f64());
        }
        if self.sse {
            // Count lines starting with "data:"; `carry` says the last chunk ended a line.
            let mut line_start = self.carry;
            for (i, b) in chunk.iter().enumerate() {
                if line_start && chunk[i..].starts_with(b"data:") {
                    self.events += 1;
                }
                line_start = *b == b'\n';
            }
            self.carry = line_start;
        }
    }

    fn on_end(&mut self, outcome: Outcome) {
        gauge!(IN_FLIGHT).decrement(1.0);
        let label = match outcome {
            Outcome::Success => "success",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        };
        counter!(REQUESTS, "route" => self.route.clone(), "outcome" => label).increment(1);
        if self.events > 0 {
            counter!(STREAM_EVENTS, "route" => self.route.clone()).increment(self.events);
        }
    }
}
