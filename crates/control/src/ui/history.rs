//! What the console shows: a [`Snapshot`] of each endpoint read under the control plane's lock
//! (read only), and its [`History`] over the last hour for the charts, sampled every
//! [`INTERVAL`] by a background task and kept in memory, bounded ([`KEEP`] samples per
//! endpoint; a deleted endpoint's series is dropped at the next sample).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::control::{unix_now, Control};
use crate::endpoint::Endpoint;
use crate::registry::WorkerState;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per endpoint: one hour.
pub const KEEP: usize = 720;
/// Samples the list's p99 queue time is taken over (five minutes).
const P99_WINDOW: usize = 60;

/// One endpoint now.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Requests routed since start.
    pub requests: u64,
    /// Workers ready to take requests.
    pub ready: u32,
    /// Workers coming up (creating, loading, model loading).
    pub loading: u32,
    /// Workers stopping or stopped (cold).
    pub cold: u32,
    /// Workers in error.
    pub error: u32,
    /// Workers whose instance runs (and costs): loading, ready or stopping.
    pub running: u32,
    /// Requests waiting in the global queue.
    pub queued: usize,
    /// Estimated queue time, seconds: the work on ready workers plus the queued work, over
    /// their benchmarked throughput (`None` while requests wait and no worker is ready).
    pub queue_time: Option<f64>,
}

/// One sample of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub unix: f64,
    /// Requests per second since the previous sample.
    pub rate: f64,
    /// See [`Snapshot`].
    pub ready: u32,
    /// See [`Snapshot`].
    pub loading: u32,
    /// See [`Snapshot`].
    pub cold: u32,
    /// See [`Snapshot`].
    pub error: u32,
    /// See [`Snapshot`].
    pub queued: usize,
    /// See [`Snapshot`].
    pub queue_time: Option<f64>,
    /// GPU-seconds used since the series began (running workers × time).
    pub gpu_seconds: f64,
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    last: Option<(f64, u64, u32)>,
    gpu_seconds: f64,
}

/// The last hour of every endpoint.
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<i64, Series>>,
}

/// Every endpoint's snapshot, in id order, read in one short critical section.
pub fn snapshots(c: &Control) -> Vec<Snapshot> {
    let (mono, stale) = (c.mono(), c.stale());
    let g = c.lock();
    let mut out: Vec<Snapshot> = g
        .catalog
        .endpoints()
        .map(|ep| {
            let mut s = Snapshot {
                endpoint: ep.clone(),
                requests: g.stats.totals(ep.id).0,
                ready: 0,
                loading: 0,
                cold: 0,
                error: 0,
                running: 0,
                queued: 0,
                queue_time: None,
            };
            let (mut work, mut perf) = (0.0, 0.0);
            for w in g.registry.of_endpoint(ep.id) {
                let state = w.state();
                match state {
                    WorkerState::Idle if w.routable(mono, stale) => {
                        s.ready += 1;
                        work += w.load();
                        perf += w.max_perf();
                    }
                    st if st.is_coming() => s.loading += 1,
                    WorkerState::Stopping | WorkerState::Stopped => s.cold += 1,
                    WorkerState::Error | WorkerState::Idle => s.error += 1,
                    _ => {}
                }
                if matches!(
                    state,
                    WorkerState::Loading
                        | WorkerState::ModelLoading
                        | WorkerState::Idle
                        | WorkerState::Stopping
                ) {
                    s.running += 1;
                }
            }
            let (queued, queued_work) = g.queue.queued_for(ep.id);
            s.queued = queued;
            work += queued_work;
            s.queue_time = if perf > 0.0 {
                Some(work / perf)
            } else if work > 0.0 {
                None
            } else {
                Some(0.0)
            };
            s
        })
        .collect();
    drop(g);
    out.sort_by_key(|s| s.endpoint.id);
    out
}

impl History {
    fn series(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Series>> {
        match self.series.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Adds a sample of every endpoint at monotonic second `mono`.
    pub fn record(&self, snaps: &[Snapshot], mono: f64, unix: f64) {
        let mut all = self.series();
        all.retain(|id, _| snaps.iter().any(|s| s.endpoint.id == *id));
        for s in snaps {
            let series = all.entry(s.endpoint.id).or_default();
            let rate = match series.last {
                Some((t, n, running)) if mono > t => {
                    series.gpu_seconds += f64::from(running) * (mono - t);
                    s.requests.saturating_sub(n) as f64 / (mono - t)
                }
                _ => 0.0,
            };
            series.last = Some((mono, s.requests, s.running));
            if series.samples.len() >= KEEP {
                series.samples.pop_front();
            }
            series.samples.push_back(Sample {
                unix,
                rate,
                ready: s.ready,
                loading: s.loading,
                cold: s.cold,
                error: s.error,
                queued: s.queued,
                queue_time: s.queue_time,
                gpu_seconds: series.gpu_seconds,
            });
        }
    }

    /// An endpoint's samples, oldest first.
    pub fn of(&self, endpoint_id: i64) -> Vec<Sample> {
        self.series()
            .get(&endpoint_id)
            .map(|s| s.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// An endpoint's latest request rate and the p99 of its estimated queue time over the
    /// last five minutes of samples (`None`: no sample, or waiting with nothing ready).
    pub fn recent(&self, endpoint_id: i64) -> (f64, Option<f64>) {
        let all = self.series();
        let Some(series) = all.get(&endpoint_id) else {
            return (0.0, None);
        };
        let rate = series.samples.back().map_or(0.0, |s| s.rate);
        let mut times: Vec<f64> = Vec::with_capacity(P99_WINDOW);
        for s in series.samples.iter().rev().take(P99_WINDOW) {
            match s.queue_time {
                Some(t) => times.push(t),
                None => return (rate, None),
            }
        }
        (rate, p99(&mut times))
    }
}

/// The 99th percentile (nearest rank) of `xs`, `None` when empty.
fn p99(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let rank = ((xs.len() as f64) * 0.99).ceil() as usize;
    xs.get(rank.saturating_sub(1)).copied()
}

/// Samples every endpoint each [`INTERVAL`] until the control plane shuts down.
pub async fn sample_loop(control: Control, history: std::sync::Arc<History>) {
    let cancel = control.cancel_token().clone();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                let snaps = snapshots(&control);
                history.record(&snaps, control.mono(), unix_now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::endpoint::EndpointParams;

    fn snap(id: i64, requests: u64, running: u32, queue_time: Option<f64>) -> Snapshot {
        Snapshot {
            endpoint: Endpoint {
                id,
                endpoint_name: format!("e{id}"),
                api_key: String::new(),
                created_at: 0.0,
                autoscaler_instance: None,
                params: EndpointParams::default(),
            },
            requests,
            ready: running,
            loading: 0,
            cold: 0,
            error: 0,
            running,
            queued: 0,
            queue_time,
        }
    }

    #[test]
    fn rates_gpu_seconds_bounds_and_deleted_endpoints() {
        let h = History::default();
        h.record(&[snap(1, 0, 2, Some(0.5))], 0.0, 100.0);
        h.record(&[snap(1, 50, 2, Some(2.0))], 5.0, 105.0);
        let s = h.of(1);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].rate, 10.0);
        assert_eq!(s[1].gpu_seconds, 10.0);
        assert_eq!(h.recent(1), (10.0, Some(2.0)));
        for i in 0..KEEP + 5 {
            h.record(&[snap(1, 50, 1, Some(1.0))], 10.0 + i as f64, 0.0);
        }
        assert_eq!(h.of(1).len(), KEEP);
        // Waiting with nothing ready: no queue time to report.
        h.record(&[snap(1, 50, 0, None)], 2000.0, 0.0);
        assert_eq!(h.recent(1).1, None);
        // An endpoint gone from the catalog is dropped.
        h.record(&[snap(2, 0, 0, Some(0.0))], 2001.0, 0.0);
        assert!(h.of(1).is_empty());
        assert_eq!(h.of(2).len(), 1);
    }

    #[test]
    fn p99_nearest_rank() {
        assert_eq!(p99(&mut []), None);
        let mut xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p99(&mut xs), Some(99.0));
        assert_eq!(p99(&mut [3.0, 1.0]), Some(3.0));
    }
}
