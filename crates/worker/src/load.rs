//! Load accounting: what the worker is doing, in the units and with the meaning of Vast's
//! `/worker_status/` and `/delete_requests/` reports.
//!
//! Every request that passes parsing gets a [`RequestGuard`] once admitted; the guard rides on the
//! response body, so its `Drop` records the outcome whether the request ends normally, fails, or
//! the client goes away (then it counts as cancelled, Vast's 499). Rejections (401, 429) are
//! recorded directly. Counters are sums since the last *successful* status report; a report
//! subtracts exactly what it carried, so nothing that happens while a report is in flight is lost
//! (PyWorker zeroes them and loses those increments).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{RequestRecord, RequestStatus};

/// Seconds since the Unix epoch, as Vast's timestamps are.
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sums since the last successful status report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub received: f64,
    pub served: f64,
    pub cancelled: f64,
    pub errored: f64,
    pub rejected: f64,
}

impl Counters {
    fn subtract(&mut self, sent: &Counters) {
        // Clamp at zero: float sums can leave -1e-13 behind.
        self.received = (self.received - sent.received).max(0.0);
        self.served = (self.served - sent.served).max(0.0);
        self.cancelled = (self.cancelled - sent.cancelled).max(0.0);
        self.errored = (self.errored - sent.errored).max(0.0);
        self.rejected = (self.rejected - sent.rejected).max(0.0);
    }
}

/// The model's readiness as reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelState {
    /// Seconds from worker start to ready; `None` until ready.
    pub loadtime: Option<f64>,
    /// Benchmark result, workload units per second.
    pub max_perf: f64,
    /// Fatal error text, if any.
    pub error_msg: Option<String>,
}

impl ModelState {
    /// Ready for traffic: loaded with a measured perf and no error.
    pub fn is_ready(&self) -> bool {
        self.loadtime.is_some() && self.max_perf > 0.0 && self.error_msg.is_none()
    }
}

#[derive(Debug, Clone, Copy)]
struct Working {
    request_idx: u64,
    workload: f64,
    /// A session hold: not part of the queue-time estimate.
    hold: bool,
}

#[derive(Debug)]
struct Inner {
    next_id: u64,
    working: HashMap<u64, Working>,
    /// Σ workload of working requests (cur_load).
    cur_load: f64,
    /// Σ workload of working requests outside sessions (the queue-time estimate's numerator).
    queued_load: f64,
    counters: Counters,
    /// Requests received (non-session starts and rejects); Vast reports the distinct reqnums.
    num_received: u64,
    /// Finished request lifetimes not yet accepted by the control plane, with a sequence number.
    finished: VecDeque<(u64, RequestRecord)>,
    next_seq: u64,
    dropped_records: u64,
    update_pending: bool,
    model: ModelState,
    /// Told by a Ferry control plane to stay cold (see [`Tracker::set_cold`]).
    cold: bool,
}

/// Shared load tracker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
    buffer_limit: usize,
}

/// A status snapshot taken for one report, with what to subtract when it is accepted.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    pub counters: Counters,
    pub cur_load: f64,
    pub num_working: usize,
    pub num_received: u64,
    pub working_request_idxs: Vec<u64>,
    pub model: ModelState,
    pub update_pending: bool,
    pub cold: bool,
}

/// How a request counts in the load sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary request: working, queue-time estimate, finished record.
    Plain,
    /// A session's own hold (PyWorker's `is_session` entry): working and cur_load, but not the
    /// queue-time estimate.
    SessionHold,
    /// A request inside a session: workload sums only.
    InSession,
}

/// What a finished request ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Error,
    Cancelled,
}

/// Capacity of the finished-record buffer kept once its records are sent.
const FINISHED_KEEP: usize = 1024;

impl Tracker {
    /// A tracker keeping at most `buffer_limit` unsent finished-request records.
    pub fn new(buffer_limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 0,
                working: HashMap::new(),
                cur_load: 0.0,
                queued_load: 0.0,
                counters: Counters::default(),
                num_received: 0,
                finished: VecDeque::new(),
                next_seq: 0,
                dropped_records: 0,
                // The first tick reports at once, as PyWorker's first loading heartbeat does.
                update_pending: true,
                model: ModelState::default(),
                cold: false,
            })),
            started: Instant::now(),
            buffer_limit: buffer_limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the sums inconsistent in a way that
        // matters more than stopping the worker would, so recover the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push_record(&self, inner: &mut Inner, record: RequestRecord) {
        if inner.finished.len() >= self.buffer_limit {
            inner.finished.pop_front();
            inner.dropped_records += 1;
            tracing::warn!(
                dropped = inner.dropped_records,
                "finished-request buffer full; dropping the oldest unsent record"
            );
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.finished.push_back((seq, record));
    }

    /// Estimated seconds of queued work: Σ workload outside sessions / max_perf (Vast's wait_time).
    pub fn wait_time(&self) -> f64 {
        let inner = self.lock();
        if inner.working.is_empty() {
            return 0.0;
        }
        inner.queued_load / inner.model.max_perf.max(1e-5)
    }

    /// Checks the queue-time limit and, if the request fits, admits it in one critical section so
    /// two concurrent arrivals cannot both slip under the limit.
    pub fn admit(
        &self,
        request_idx: u64,
        workload: f64,
        kind: Kind,
        max_queue_time: Option<f64>,
    ) -> Result<RequestGuard, f64> {
        let in_session = kind == Kind::InSession;
        let entered = epoch_now();
        let mut inner = self.lock();
        if let Some(limit) = max_queue_time {
            let wait = if inner.working.is_empty() {
                0.0
            } else {
                inner.queued_load / inner.model.max_perf.max(1e-5)
            };
            if wait > limit {
                drop(inner);
                self.reject(request_idx, workload, in_session, entered);
                return Err(wait);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        // As in PyWorker, requests inside a session count in the workload sums but not among the
        // working requests: the session's own hold entry stands for them.
        if !in_session {
            inner.working.insert(
                id,
                Working {
                    request_idx,
                    workload,
                    hold: kind == Kind::SessionHold,
                },
            );
            inner.cur_load += workload;
            if kind == Kind::Plain {
                inner.queued_load += workload;
            }
            inner.num_received += 1;
        }
        inner.counters.received += workload;
        inner.update_pending = true;
        drop(inner);
        Ok(RequestGuard {
            tracker: self.clone(),
            id,
            request_idx,
            workload,
            in_session,
            entered_queue_at: entered,
            work_started_at: 0.0,
            done: false,
        })
    }

    /// Records a rejected request (bad signature, queue full, session limit).
    pub fn reject(&self, request_idx: u64, workload: f64, in_session: bool, entered: f64) {
        let mut inner = self.lock();
        inner.counters.rejected += workload;
        inner.update_pending = true;
        if !in_session {
            inner.num_received += 1;
            self.push_record(
                &mut inner,
                RequestRecord {
                    request_idx,
                    success: false,
                    status: RequestStatus::Rejected,
                    entered_queue_at: entered,
                    work_started_at: 0.0,
                    work_completed_at: 0.0,
                },
            );
        }
    }

    fn finish(&self, guard: &RequestGuard, outcome: Outcome) {
        let now = epoch_now();
        let mut inner = self.lock();
        if let Some(w) = inner.working.remove(&guard.id) {
            inner.cur_load -= w.workload;
            if !w.hold {
                inner.queued_load -= w.workload;
            }
        }
        if inner.working.is_empty() {
            // Reset the running sums so float error cannot accumulate over millions of requests.
            inner.cur_load = 0.0;
            inner.queued_load = 0.0;
        }
        let status = match outcome {
            Outcome::Success => {
                inner.counters.served += guard.workload;
                inner.update_pending = true;
                RequestStatus::Success
            }
            Outcome::Error => {
                inner.counters.errored += guard.workload;
                inner.update_pending = true;
                RequestStatus::Error
            }
            // Vast does not wake the reporter for a cancel; the next tick or heartbeat carries it.
            Outcome::Cancelled => {
                inner.counters.cancelled += guard.workload;
                RequestStatus::Cancelled
            }
        };
        if !guard.in_session {
            let record = RequestRecord {
                request_idx: guard.request_idx,
                success: status.success(),
                status,
                entered_queue_at: guard.entered_queue_at,
                work_started_at: guard.work_started_at,
                work_completed_at: if outcome == Outcome::Cancelled {
                    0.0
                } else {
                    now
                },
            };
            self.push_record(&mut inner, record);
        }
    }

    /// Marks the model ready with its measured throughput; wakes the reporter at once.
    pub fn model_loaded(&self, max_perf: f64) {
        let loadtime = self.started.elapsed().as_secs_f64().max(1e-6);
        let mut inner = self.lock();
        inner.model.loadtime = Some(loadtime);
        inner.model.max_perf = max_perf;
        inner.update_pending = true;
    }

    /// Sets the fatal error message (PyWorker also marks the model "loaded" so it is reported).
    pub fn model_errored(&self, msg: impl Into<String>) {
        let mut inner = self.lock();
        inner.model.error_msg = Some(msg.into());
        inner.update_pending = true;
    }

    /// A Ferry control plane's directive: while cold the worker takes no requests (503) and
    /// says so in its reports and on `/ready`. A change is reported at the next tick.
    pub fn set_cold(&self, cold: bool) {
        let mut inner = self.lock();
        if inner.cold != cold {
            tracing::info!(cold, "control plane directive");
            inner.cold = cold;
            inner.update_pending = true;
        }
    }

    /// Whether the worker is cold.
    pub fn is_cold(&self) -> bool {
        self.lock().cold
    }

    /// Clears the error message if it is still `msg` (a recovered condition).
    pub fn clear_error(&self, msg: &str) {
        let mut inner = self.lock();
        if inner.model.error_msg.as_deref() == Some(msg) {
            inner.model.error_msg = None;
            inner.update_pending = true;
        }
    }

    /// Clears whatever error is set (the model became ready again).
    pub fn clear_any_error(&self) {
        let mut inner = self.lock();
        if inner.model.error_msg.take().is_some() {
            inner.update_pending = true;
        }
    }

    /// Current model state.
    pub fn model(&self) -> ModelState {
        self.lock().model.clone()
    }

    /// Takes a snapshot for a status report.
    pub fn status_snapshot(&self) -> StatusSnapshot {
        let inner = self.lock();
        StatusSnapshot {
            counters: inner.counters,
            cur_load: inner.cur_load.max(0.0),
            num_working: inner.working.len(),
            num_received: inner.num_received,
            working_request_idxs: inner.working.values().map(|w| w.request_idx).collect(),
            model: inner.model.clone(),
            update_pending: inner.update_pending,
            cold: inner.cold,
        }
    }

    /// The control plane accepted the report made from `snap`.
    pub fn status_sent(&self, snap: &StatusSnapshot) {
        let mut inner = self.lock();
        inner.counters.subtract(&snap.counters);
        inner.update_pending = false;
    }

    /// Up to `max` unsent finished-request records, oldest first, and the last sequence number.
    pub fn finished_batch(&self, max: usize) -> Option<(u64, Vec<RequestRecord>)> {
        let inner = self.lock();
        let last = inner
            .finished
            .get(inner.finished.len().min(max).checked_sub(1)?)?
            .0;
        let batch = inner
            .finished
            .iter()
            .take(max)
            .map(|(_, r)| r.clone())
            .collect();
        Some((last, batch))
    }

    /// The control plane accepted every record up to sequence `last`.
    pub fn finished_sent(&self, last: u64) {
        let mut inner = self.lock();
        while inner.finished.front().is_some_and(|(seq, _)| *seq <= last) {
            inner.finished.pop_front();
        }
        // A second of saturation leaves room for tens of thousands of records behind; once
        // they are sent, give it back (a steady load refills a small buffer without growing it).
        if inner.finished.capacity() > FINISHED_KEEP && inner.finished.len() <= FINISHED_KEEP / 4 {
            inner.finished.shrink_to(FINISHED_KEEP);
        }
    }

    /// Unsent finished-request records.
    pub fn finished_pending(&self) -> usize {
        self.lock().finished.len()
    }

    /// Requests now being handled (queued or executing).
    pub fn in_flight(&self) -> usize {
        self.lock().working.len()
    }
}

/// One admitted request. Record the outcome with [`RequestGuard::finish`]; dropping it unfinished
/// records a cancellation (the client went away).
#[derive(Debug)]
pub struct RequestGuard {
    tracker: Tracker,
    id: u64,
    request_idx: u64,
    workload: f64,
    in_session: bool,
    entered_queue_at: f64,
    work_started_at: f64,
    done: bool,
}

impl RequestGuard {
    /// Work began (after any FIFO wait).
    pub fn started(&mut self) {
        self.work_started_at = epoch_now();
    }

    /// Records the outcome; later calls and the drop do nothing.
    pub fn finish(&mut self, outcome: Outcome) {
        if !self.done {
            self.done = true;
            self.tracker.clone().finish(self, outcome);
        }
    }

    /// The request's workload.
    pub fn workload(&self) -> f64 {
        self.workload
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            self.tracker.clone().finish(self, Outcome::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_finish_and_report_accounting() {
        let t = Tracker::new(10);
        t.model_loaded(10.0);
        let mut a = t.admit(1, 20.0, Kind::Plain, Some(100.0)).unwrap();
        let b = t.admit(2, 30.0, Kind::Plain, Some(100.0)).unwrap();
        assert!((t.wait_time() - 5.0).abs() < 1e-9);
        let snap = t.status_snapshot();
        assert_eq!(snap.cur_load, 50.0);
        assert_eq!(snap.counters.received, 50.0);
        let mut idxs = snap.working_request_idxs.clone();
        idxs.sort();
        assert_eq!(idxs, vec![1, 2]);

        a.finish(Outcome::Success);
        drop(b); // client went away
        let snap2 = t.status_snapshot();
        assert_eq!(snap2.counters.served, 20.0);
        assert_eq!(snap2.counters.cancelled, 30.0);
        assert_eq!(snap2.cur_load, 0.0);

        // A report of the first snapshot subtracts only what it carried.
        t.status_sent(&snap);
        let snap3 = t.status_snapshot();
        assert_eq!(snap3.counters.received, 0.0);
        assert_eq!(snap3.counters.served, 20.0);

        let (last, batch) = t.finished_batch(100).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].status, RequestStatus::Success);
        assert!(batch[0].work_completed_at > 0.0);
        assert_eq!(batch[1].status, RequestStatus::Cancelled);
        assert!(batch[1].success);
        assert_eq!(batch[1].work_completed_at, 0.0);
        t.finished_sent(last);
        assert!(t.finished_batch(100).is_none());
    }

    #[test]
    fn queue_time_rejects_and_records() {
        let t = Tracker::new(10);
        t.model_loaded(1.0);
        let _a = t.admit(1, 5.0, Kind::Plain, Some(3.0)).unwrap();
        let err = t.admit(2, 1.0, Kind::Plain, Some(3.0)).unwrap_err();
        assert!((err - 5.0).abs() < 1e-9);
        let snap = t.status_snapshot();
        assert_eq!(snap.counters.rejected, 1.0);
        let (_, batch) = t.finished_batch(10).unwrap();
        assert_eq!(batch[0].status, RequestStatus::Rejected);
        assert!(!batch[0].success);
    }

    #[test]
    fn buffer_is_bounded_oldest_dropped() {
        let t = Tracker::new(3);
        for i in 0..5 {
            t.reject(i, 1.0, false, 0.0);
        }
        let (_, batch) = t.finished_batch(10).unwrap();
        let idxs: Vec<u64> = batch.iter().map(|r| r.request_idx).collect();
        assert_eq!(idxs, vec![2, 3, 4]);
    }

    #[test]
    fn session_requests_stay_out_of_records() {
        let t = Tracker::new(10);
        t.model_loaded(1.0);
        let mut g = t.admit(9, 4.0, Kind::InSession, None).unwrap();
        assert_eq!(t.wait_time(), 0.0);
        g.finish(Outcome::Success);
        assert!(t.finished_batch(10).is_none());
        assert_eq!(t.status_snapshot().counters.served, 4.0);
    }

    #[test]
    fn session_hold_counts_in_cur_load_but_not_queue_time() {
        let t = Tracker::new(10);
        t.model_loaded(1.0);
        let mut hold = t.admit(5, 50.0, Kind::SessionHold, None).unwrap();
        let snap = t.status_snapshot();
        assert_eq!(snap.cur_load, 50.0);
        assert_eq!(snap.working_request_idxs, vec![5]);
        assert_eq!(t.wait_time(), 0.0);
        hold.finish(Outcome::Success);
        let (_, batch) = t.finished_batch(10).unwrap();
        assert_eq!(batch[0].request_idx, 5);
        assert_eq!(batch[0].status, RequestStatus::Success);
    }
}
