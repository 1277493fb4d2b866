//! The load generator: closed loop (fixed concurrency) or open loop (fixed rate), and what one
//! request measures.
//!
//! Open loop is coordinated-omission aware: request `i` is due at `start + i / rate`, and its
//! latency is measured from that instant, so time spent waiting for an in-flight slot (a slow
//! server holding the generator back) counts against the server. Lateness up to
//! [`TIMER_SLACK`] is the timer's granularity (tokio's timer ticks every millisecond), not
//! backpressure, and is not charged; the lateness itself is reported as the send lag.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_client::{Endpoint, EventDecoder, RequestOptions};
use futures_util::{Stream, StreamExt as _};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::hist::Histogram;

/// Where each request goes.
pub enum Target {
    /// POST a pre-serialized body to a fixed URL (`--worker` with a placeholder grant, or
    /// `--direct` with the bare payload).
    Url {
        http: reqwest::Client,
        url: reqwest::Url,
        body: Bytes,
    },
    /// Through the SDK: `/route/` then the worker.
    Endpoint {
        endpoint: Endpoint,
        route: String,
        payload: serde_json::Value,
        opts: RequestOptions,
    },
}

/// How to pace requests and when to stop.
pub struct Plan {
    /// Most requests in flight (closed loop: exactly this many workers).
    pub concurrency: usize,
    /// Open loop: requests per second.
    pub rate: Option<f64>,
    /// Stop issuing after this many requests.
    pub max_requests: Option<u64>,
    /// Stop issuing after this long.
    pub duration: Option<Duration>,
    /// Read answers as SSE / NDJSON events and time them.
    pub stream: bool,
    /// Give up on one request after this long.
    pub timeout: Duration,
    /// Keep every request's (time, latency) for the chart.
    pub keep_points: bool,
}

/// One request's point on the chart.
#[derive(Clone, Copy)]
pub struct Point {
    /// Intended start, µs since the run began.
    pub at_us: u64,
    /// Latency, µs.
    pub latency_us: u64,
    /// Succeeded.
    pub ok: bool,
}

/// What a set of requests measured; one per shard, merged at the end.
#[derive(Default, Clone)]
pub struct Tally {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Histogram,
    pub ttft: Histogram,
    pub itl: Histogram,
    /// How late each request left compared with its schedule (open loop).
    pub send_lag: Histogram,
    pub tokens: u64,
    pub bytes: u64,
    pub points: Vec<Point>,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        self.ok += o.ok;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.latency.merge(&o.latency);
        self.ttft.merge(&o.ttft);
        self.itl.merge(&o.itl);
        self.send_lag.merge(&o.send_lag);
        self.tokens += o.tokens;
        self.bytes += o.bytes;
        self.points.extend_from_slice(&o.points);
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Live {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    pub latency_sum_us: AtomicU64,
}

const SHARDS: usize = 32;

/// Lateness of a scheduled send that is put down to timer granularity, not to the server.
pub const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Shared state of a run.
pub struct Run {
    pub target: Target,
    pub plan: Plan,
    pub start: Instant,
    pub live: Live,
    shards: Vec<Mutex<Tally>>,
}

/// What one request measured.
struct Measured {
    bytes: u64,
    tokens: u64,
    /// First event, since the intended start.
    ttft_us: Option<u64>,
}

impl Run {
    pub fn new(target: Target, plan: Plan) -> Arc<Run> {
        Arc::new(Run {
            target,
            plan,
            start: Instant::now(),
            live: Live::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Tally::default())).collect(),
        })
    }

    /// Runs the plan to the end and returns the merged tally and the wall time.
    pub async fn execute(self: &Arc<Run>) -> (Tally, Duration) {
        let tasks = TaskTracker::new();
        let next = Arc::new(AtomicU64::new(0));
        for w in 0..self.plan.concurrency {
            let run = self.clone();
            let next = next.clone();
            match self.plan.rate {
                Some(rate) => tasks.spawn(async move { run.open_sender(w, rate, &next).await }),
                None => tasks.spawn(async move { run.closed_worker(w, &next).await }),
            };
        }
        tasks.close();
        tasks.wait().await;
        let elapsed = self.start.elapsed();
        let mut total = Tally::default();
        for s in &self.shards {
            if let Ok(t) = s.lock() {
                total.merge(&t);
            }
        }
        total.points.sort_unstable_by_key(|p| p.at_us);
        (total, elapsed)
    }

    fn deadline(&self) -> Option<Instant> {
        self.plan.duration.map(|d| self.start + d)
    }

    async fn closed_worker(&self, w: usize, next: &AtomicU64) {
        let deadline = self.deadline();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if self.plan.max_requests.is_some_and(|n| i >= n) {
                return;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return;
            }
            self.one(w, now).await;
        }
    }

    /// Open loop, wrk2-style: `concurrency` senders claim tickets in order; ticket `i` is due
    /// at `start + i / rate`. A sender waits for its ticket's time, so at most `concurrency`
    /// requests are in flight; when all are busy, tickets are sent late and the lateness counts
    /// in their latency.
    async fn open_sender(&self, w: usize, rate: f64, next: &AtomicU64) {
        let deadline = self.deadline();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if self.plan.max_requests.is_some_and(|n| i >= n) {
                return;
            }
            let due = self.start + Duration::from_secs_f64(i as f64 / rate);
            if deadline.is_some_and(|d| due >= d) {
                return;
            }
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            self.one(w, due).await;
        }
    }

    /// Sends one request due at `due` and records it in `shard`.
    async fn one(&self, shard: usize, due: Instant) {
        let lag = due.elapsed();
        let lag_us = lag.as_micros() as u64;
        // Latency (and time to first token) counts from here: the schedule, less timer slack.
        let from = due + lag.min(TIMER_SLACK);
        self.live.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut itl = Vec::new();
        let result = tokio::time::timeout(self.plan.timeout, self.send(from, &mut itl)).await;
        let result = result.unwrap_or_else(|_| Err("timeout".to_owned()));
        let latency_us = from.elapsed().as_micros() as u64;
        self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.live.done.fetch_add(1, Ordering::Relaxed);
        self.live
            .latency_sum_us
            .fetch_add(latency_us, Ordering::Relaxed);
        if result.is_err() {
            self.live.errors.fetch_add(1, Ordering::Relaxed);
        }
        let at_us = due.saturating_duration_since(self.start).as_micros() as u64;
        let Some(cell) = self.shards.get(shard % SHARDS) else {
            return;
        };
        let Ok(mut t) = cell.lock() else {
            return;
        };
        t.send_lag.record(lag_us);
        if self.plan.keep_points {
            t.points.push(Point {
                at_us,
                latency_us,
                ok: result.is_ok(),
            });
        }
        match result {
            Ok(m) => {
                t.ok += 1;
                t.latency.record(latency_us);
                t.bytes += m.bytes;
                t.tokens += m.tokens;
                if let Some(f) = m.ttft_us {
                    t.ttft.record(f);
                }
                for gap in itl {
                    t.itl.record(gap);
                }
            }
            Err(kind) => *t.errors.entry(kind).or_default() += 1,
        }
    }

    async fn send(&self, due: Instant, itl: &mut Vec<u64>) -> Result<Measured, String> {
        match &self.target {
            Target::Url { http, url, body } => {
                let res = http
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| transport_kind(&e))?;
                let status = res.status().as_u16();
                if !(200..300).contains(&status) {
                    return Err(format!("http_{status}"));
                }
                let body = res.bytes_stream();
                consume(body, self.plan.stream, due, itl)
                    .await
                    .map_err(|e| transport_kind(&e))
            }
            Target::Endpoint {
                endpoint,
                route,
                payload,
                opts,
            } => {
                let res = endpoint
                    .request_stream(route, payload, opts)
                    .await
                    .map_err(|e| sdk_kind(&e))?;
                consume(res.bytes(), self.plan.stream, due, itl)
                    .await
                    .map_err(|e| sdk_kind(&e))
            }
        }
    }
}

/// Reads a body to its end; for streams, times the events.
async fn consume<S, E>(
    body: S,
    stream: bool,
    due: Instant,
    itl: &mut Vec<u64>,
) -> Result<Measured, E>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let mut body = pin!(body);
    let mut m = Measured {
        bytes: 0,
        tokens: 0,
        ttft_us: None,
    };
    let mut decoder = stream.then(EventDecoder::new);
    let mut last_event: Option<Instant> = None;
    let mut on_events = |decoder: &mut EventDecoder, m: &mut Measured| {
        let now = Instant::now();
        while decoder.next_event().is_some() {
            m.tokens += 1;
            match last_event {
                None => m.ttft_us = Some(now.saturating_duration_since(due).as_micros() as u64),
                Some(prev) => itl.push(now.saturating_duration_since(prev).as_micros() as u64),
            }
            last_event = Some(now);
        }
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        m.bytes += chunk.len() as u64;
        if let Some(d) = decoder.as_mut() {
            d.push(&chunk);
            on_events(d, &mut m);
        }
    }
    if let Some(d) = decoder.as_mut() {
        d.finish();
        on_events(d, &mut m);
    }
    Ok(m)
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connect".into()
    } else if e.is_timeout() {
        "timeout".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "transport".into()
    }
}

fn sdk_kind(e: &ferry_client::Error) -> String {
    match e.status() {
        Some(s) => format!("{}_{s}", e.code()),
        None => e.code().to_owned(),
    }
}
