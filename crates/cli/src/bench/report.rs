//! The end-of-run report: a table for people, JSON for machines (field names are stable).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::hist::Summary;
use super::load::Tally;

/// Version of the JSON layout; bumped on any incompatible change.
pub const SCHEMA: &str = "ferry-bench/v1";

/// Everything `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    /// `endpoint`, `worker` or `direct`.
    pub target_kind: &'static str,
    /// Endpoint name or URL.
    pub target: String,
    pub route: String,
    /// `concurrency` (closed loop) or `rate` (open loop).
    pub mode: &'static str,
    pub concurrency: usize,
    /// Requests per second asked for (open loop only).
    pub rate: Option<f64>,
    pub stream: bool,
    /// Wall time from the first request to the last answer, seconds.
    pub duration_s: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successful requests per second of wall time.
    pub throughput_rps: f64,
    /// Latency of successful requests (open loop: from the intended send time), ms.
    pub latency_ms: Option<Summary>,
    /// Time to first streamed event, ms.
    pub ttft_ms: Option<Summary>,
    /// Delay between consecutive streamed events, ms.
    pub itl_ms: Option<Summary>,
    /// How late requests left compared with the schedule, ms (open loop only). A large p99
    /// means the generator, not the server, was the limit: raise `-c`.
    pub send_lag_ms: Option<Summary>,
    /// Streamed events (tokens) received.
    pub tokens: u64,
    /// Tokens per second of wall time, all streams together.
    pub tokens_per_s: f64,
    /// Response bytes received.
    pub bytes: u64,
    /// Failed requests by kind (`http_503`, `connect`, `timeout`, `worker_error_503`, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
}

/// What describes the run besides its measurements.
pub struct RunInfo {
    pub target_kind: &'static str,
    pub target: String,
    pub route: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub stream: bool,
}

impl Report {
    pub fn new(info: RunInfo, tally: &Tally, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let errors = tally.errors_total();
        Report {
            schema: SCHEMA,
            target_kind: info.target_kind,
            target: info.target,
            route: info.route,
            mode: if info.rate.is_some() {
                "rate"
            } else {
                "concurrency"
            },
            concurrency: info.concurrency,
            rate: info.rate,
            stream: info.stream,
            duration_s: elapsed.as_secs_f64(),
            requests: tally.ok + errors,
            ok: tally.ok,
            errors,
            throughput_rps: tally.ok as f64 / secs,
            latency_ms: tally.latency.summary_ms(),
            ttft_ms: tally.ttft.summary_ms(),
            itl_ms: tally.itl.summary_ms(),
            send_lag_ms: if info.rate.is_some() {
                tally.send_lag.summary_ms()
            } else {
                None
            },
            tokens: tally.tokens,
            tokens_per_s: tally.tokens as f64 / secs,
            bytes: tally.bytes,
            errors_by_kind: tally.errors.clone(),
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let load = match self.rate {
            Some(r) => format!(
                "{r} req/s open loop, at most {} in flight",
                self.concurrency
            ),
            None => format!("{} concurrent", self.concurrency),
        };
        let _ = writeln!(
            s,
            "{} {}{} ({load}{})",
            self.target_kind,
            self.target,
            if self.target_kind == "direct" {
                String::new()
            } else {
                format!(" {}", self.route)
            },
            if self.stream { ", streaming" } else { "" }
        );
        let _ = writeln!(
            s,
            "requests   {} ok, {} errors in {:.2}s  ->  {:.1} req/s",
            self.ok, self.errors, self.duration_s, self.throughput_rps
        );
        let _ = writeln!(
            s,
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "", "p50", "p90", "p99", "max", "mean"
        );
        let mut row = |name: &str, v: &Option<Summary>| {
            if let Some(v) = v {
                let _ = writeln!(
                    s,
                    "{name:<22}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    ms(v.p50),
                    ms(v.p90),
                    ms(v.p99),
                    ms(v.max),
                    ms(v.mean)
                );
            }
        };
        row("latency", &self.latency_ms);
        row("time to first token", &self.ttft_ms);
        row("inter-token delay", &self.itl_ms);
        row("send lag (schedule)", &self.send_lag_ms);
        if self.stream {
            let _ = writeln!(
                s,
                "tokens     {} ({:.1} tokens/s)",
                self.tokens, self.tokens_per_s
            );
        }
        if !self.errors_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "errors     {}", kinds.join(", "));
        }
        s
    }
}

/// A millisecond figure with sensible precision.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}ms")
    } else if v >= 1.0 {
        format!("{v:.2}ms")
    } else {
        format!("{:.0}µs", v * 1000.0)
    }
}
