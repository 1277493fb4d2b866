//! The event loop: arrivals, ticks, reports, provider completions and finished requests in
//! time order, each handled through the control plane's own components (see the module docs
//! of [`crate::simulate`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use ferry_protocol::WorkerStatus;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::outcome::{Outcome, Recorder};
use super::{NullStore, SimConfig, Trace};
use crate::autoscale::view::{endpoint_view, Sources};
use crate::autoscale::{decide_with, Action, Tuning};
use crate::config::ProviderKind;
use crate::control::{restore, State};
use crate::endpoint::{EndpointPatch, EndpointRef, WorkergroupPatch};
use crate::error::ControlError;
use crate::queue::{Admission, ReqState};
use crate::registry::Origin;
use crate::store::Loaded;

/// An errored worker is held this long before it is replaced (as in the tick).
const ERROR_HOLD_S: f64 = 5.0;
/// A run ends at most this long after the last arrival, whatever the fleet does.
const TAIL_CAP_S: f64 = 3600.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Arrival(usize),
    Tick,
    Report(i64, u64),
    Ready(i64, u64),
    StopDone(i64, u64),
    Removed(i64),
    Finish(i64, u64),
    Timeout(u64),
}

#[derive(Debug, Clone, Copy)]
struct Event {
    at: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    /// Earliest first in a max-heap.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Loading,
    Ready,
    Stopping,
    Stopped,
    Gone,
}

/// A simulated worker instance.
#[derive(Debug)]
struct SimWorker {
    mtoken: String,
    /// Bumped by every lifecycle change: events of an earlier phase are ignored.
    epoch: u64,
    phase: Phase,
    /// When it last became ready.
    ready_at: f64,
    /// Billing: up since, stopped since.
    hot_since: Option<f64>,
    cold_since: Option<f64>,
    /// Requests executing, and waiting on the worker: (request_idx, cost).
    running: BTreeMap<u64, f64>,
    fifo: VecDeque<(u64, f64)>,
    /// Workload finished since its last report.
    served: f64,
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    arrival: f64,
    cost: f64,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    trace: &'a Trace,
    s: State,
    store: NullStore,
    ep: i64,
    origin: Origin,
    heap: BinaryHeap<Event>,
    seq: u64,
    now: f64,
    last_tick: f64,
    workers: BTreeMap<i64, SimWorker>,
    reqs: BTreeMap<u64, Tracked>,
    /// Requests not yet delivered, in arrival order.
    waiting: VecDeque<u64>,
    rec: Recorder,
    pending: usize,
}

fn setup_error(e: ControlError) -> String {
    format!("simulated endpoint: {e}")
}

/// Replays `trace` under `cfg`; the same inputs give the same outcome.
pub fn run(trace: &Trace, cfg: &SimConfig) -> Result<Outcome, String> {
    let store = NullStore;
    let mut s = restore(&Loaded::default(), &store, false);
    s.rng = StdRng::seed_from_u64(cfg.seed);
    s.registry.set_learn_capacity(cfg.learn_capacity);
    let p = &cfg.params;
    let patch = EndpointPatch {
        endpoint_name: Some("sim".into()),
        min_load: Some(p.min_load),
        min_cold_load: Some(p.min_cold_load),
        target_util: Some(p.target_util),
        cold_mult: Some(p.cold_mult),
        cold_workers: Some(p.cold_workers),
        max_workers: Some(p.max_workers),
        max_queue_time: Some(p.max_queue_time),
        target_queue_time: Some(p.target_queue_time),
        inactivity_timeout: p.inactivity_timeout,
        endpoint_state: Some(p.endpoint_state),
        autoscale_policy: Some(p.autoscale_policy),
        autoscaler_instance: None,
    };
    patch.validate().map_err(setup_error)?;
    let ep = s
        .catalog
        .create_endpoint(&patch, "sim-key".into(), 0.0, &store)
        .map_err(setup_error)?;
    let group = WorkergroupPatch {
        endpoint: Some(EndpointRef::Id(ep)),
        ..WorkergroupPatch::default()
    };
    let wg = s
        .catalog
        .create_group(&group, 0.0, &store)
        .map_err(setup_error)?;
    let w = &cfg.worker;
    if !(w.real_perf > 0.0 && w.benchmark_perf > 0.0 && w.concurrency > 0) {
        return Err("worker throughput and concurrency must be > 0".into());
    }
    if !(cfg.tick_s > 0.0 && cfg.report_s > 0.0 && cfg.bucket_s > 0.0) {
        return Err("tick, report and bucket periods must be > 0".into());
    }
    let mut sim = Sim {
        cfg,
        trace,
        s,
        store,
        ep,
        origin: Origin {
            endpoint_id: ep,
            workergroup_id: wg,
            provider: ProviderKind::Local,
        },
        heap: BinaryHeap::new(),
        seq: 0,
        now: 0.0,
        last_tick: 0.0,
        workers: BTreeMap::new(),
        reqs: BTreeMap::new(),
        waiting: VecDeque::new(),
        rec: Recorder::new(cfg.bucket_s),
        pending: trace.requests.len(),
    };
    for _ in 0..cfg.prewarm {
        let id = sim.launch();
        sim.ready(id, 0);
    }
    if !trace.requests.is_empty() {
        sim.push(trace.requests[0].at, Kind::Arrival(0));
    }
    sim.push(cfg.tick_s, Kind::Tick);
    sim.run_loop();
    Ok(sim.into_outcome())
}

impl Sim<'_> {
    fn push(&mut self, at: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn run_loop(&mut self) {
        while let Some(ev) = self.heap.pop() {
            self.now = ev.at;
            match ev.kind {
                Kind::Arrival(i) => self.arrival(i),
                Kind::Tick => {
                    self.tick();
                    let settled = !self.workers.values().any(|w| {
                        matches!(w.phase, Phase::Loading | Phase::Ready | Phase::Stopping)
                    });
                    let cap = self.trace.span() + TAIL_CAP_S;
                    if self.pending == 0 && (settled || self.now >= cap) {
                        // Every request is served or rejected and the fleet is down (or an
                        // hour has passed since the last arrival): the run ends here.
                        break;
                    }
                    self.push(self.now + self.cfg.tick_s, Kind::Tick);
                }
                Kind::Report(id, epoch) => {
                    if self.live(id, epoch) {
                        self.report(id);
                        self.push(self.now + self.cfg.report_s, Kind::Report(id, epoch));
                    }
                }
                Kind::Ready(id, epoch) => self.ready(id, epoch),
                Kind::StopDone(id, epoch) => self.stop_done(id, epoch),
                Kind::Removed(id) => self.s.registry.remove(id, &self.store),
                Kind::Finish(id, idx) => self.finish(id, idx),
                Kind::Timeout(idx) => self.timeout(idx),
            }
        }
    }

    /// Whether a worker is up (loading or ready) in the phase `epoch` names.
    fn live(&self, id: i64, epoch: u64) -> bool {
        self.workers
            .get(&id)
            .is_some_and(|w| w.epoch == epoch && matches!(w.phase, Phase::Loading | Phase::Ready))
    }

    fn stale(&self) -> f64 {
        self.cfg.stale_after_s
    }

    /// `/route/` for a new request.
    fn arrival(&mut self, i: usize) {
        let r = self.trace.requests[i];
        if let Some(next) = self.trace.requests.get(i + 1) {
            self.push(next.at, Kind::Arrival(i + 1));
        }
        let (now, ep) = (self.now, self.ep);
        self.s.stats.request(ep, now);
        let idx = match self.s.queue.admit(ep, 0, r.cost, now, &self.store) {
            Admission::New(idx) | Admission::Existing(idx) => idx,
        };
        self.s.stats.routed(ep, r.cost);
        self.reqs.insert(
            idx,
            Tracked {
                arrival: now,
                cost: r.cost,
            },
        );
        self.rec.arrival(now);
        self.waiting.push_back(idx);
        self.push(now + self.cfg.client_timeout_s, Kind::Timeout(idx));
        self.dispatch();
    }

    /// Serves the queue (the control plane's dispatch) and hands every request it assigned
    /// to its worker (the client's next poll gets the grant and calls the worker at once).
    fn dispatch(&mut self) {
        let (now, stale) = (self.now, self.stale());
        self.s.dispatch(&self.store, now, stale, None);
        self.deliver();
    }

    fn deliver(&mut self) {
        while let Some(&idx) = self.waiting.front() {
            match self.s.queue.get(idx).map(|r| r.state()) {
                None => {
                    self.waiting.pop_front();
                }
                Some(ReqState::Queued) => break,
                Some(ReqState::Assigned { .. }) => {
                    self.waiting.pop_front();
                    if let Some((worker, _)) = self.s.queue.deliver(idx) {
                        self.call_worker(worker, idx);
                    }
                }
            }
        }
    }

    /// The client calls the worker with its grant.
    fn call_worker(&mut self, worker: i64, idx: u64) {
        let Some(t) = self.reqs.get(&idx).copied() else {
            return;
        };
        let up = self
            .workers
            .get(&worker)
            .is_some_and(|w| w.phase == Phase::Ready);
        if !up {
            // The worker went away between grant and call: the client retries at once and
            // the request goes back to the front of the queue.
            if let Some(w) = self.s.queue.requeue_front(idx) {
                self.s.registry.release(w, idx);
            }
            self.waiting.push_front(idx);
            return;
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.fifo.push_back((idx, t.cost));
        }
        self.start_work(worker);
    }

    /// Starts what the worker has room for.
    fn start_work(&mut self, worker: i64) {
        let model = self.cfg.worker;
        let rate = model.real_perf / f64::from(model.concurrency);
        let mut started = Vec::new();
        if let Some(w) = self.workers.get_mut(&worker) {
            while w.running.len() < model.concurrency as usize {
                let Some((idx, cost)) = w.fifo.pop_front() else {
                    break;
                };
                w.running.insert(idx, cost);
                started.push((idx, cost, w.ready_at));
            }
        }
        for (idx, cost, ready_at) in started {
            if let Some(t) = self.reqs.get(&idx) {
                self.rec
                    .started(self.now, self.now - t.arrival, ready_at > t.arrival);
            }
            self.push(self.now + cost / rate, Kind::Finish(worker, idx));
        }
    }

    /// A request finished on its worker: `/delete_requests/`, then the next one starts.
    fn finish(&mut self, worker: i64, idx: u64) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        let Some(cost) = w.running.remove(&idx) else {
            return;
        };
        w.served += cost;
        let mtoken = w.mtoken.clone();
        if let Some(t) = self.reqs.remove(&idx) {
            self.rec.finished(self.now - t.arrival);
            self.pending -= 1;
        }
        // The registry answers an unknown worker with an error; a destroyed one is gone.
        let _ = self.s.registry.finished(worker, &mtoken, [idx]);
        self.s.queue.finish(idx, worker);
        self.start_work(worker);
        self.dispatch();
    }

    /// A client gives up on a request still waiting in the queue.
    fn timeout(&mut self, idx: u64) {
        let queued = matches!(
            self.s.queue.get(idx).map(|r| r.state()),
            Some(ReqState::Queued)
        );
        if queued {
            self.s.queue.abandon(idx, &self.store);
            self.reqs.remove(&idx);
            self.rec.rejected();
            self.pending -= 1;
        }
    }

    /// `/worker_status/` from a worker that is up.
    fn report(&mut self, id: i64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let served = std::mem::take(&mut w.served);
        let ready = w.phase == Phase::Ready;
        let working: Vec<u64> = w
            .running
            .keys()
            .copied()
            .chain(w.fifo.iter().map(|(i, _)| *i))
            .collect();
        let cur_load = w.running.values().sum::<f64>() + w.fifo.iter().map(|(_, c)| c).sum::<f64>();
        let status = WorkerStatus {
            id,
            mtoken: w.mtoken.clone(),
            loadtime: if ready { 1.0 } else { 0.0 },
            cur_load,
            cur_perf: served,
            max_perf: if ready {
                self.cfg.worker.benchmark_perf
            } else {
                0.0
            },
            num_requests_working: working.len() as u64,
            working_request_idxs: working,
            url: format!("http://sim-worker-{id}"),
            ..WorkerStatus::default()
        };
        // Its own worker's report: never refused.
        let _ = self
            .s
            .registry
            .report(&status, self.now, self.now, &self.store);
        self.dispatch();
    }

    fn ready(&mut self, id: i64, epoch: u64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.epoch != epoch || w.phase != Phase::Loading {
            return;
        }
        w.phase = Phase::Ready;
        w.ready_at = self.now;
        self.report(id);
    }

    fn stop_done(&mut self, id: i64, epoch: u64) {
        let now = self.now;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.epoch != epoch || w.phase != Phase::Stopping {
            return;
        }
        w.phase = Phase::Stopped;
        if let Some(since) = w.hot_since.take() {
            self.rec.hot(now - since);
        }
        w.cold_since = Some(now);
        self.s.registry.stop_done(id, Ok(()), now, &self.store);
    }

    /// The autoscaler tick: housekeeping, the view, the policy, and the decisions booked.
    fn tick(&mut self) {
        let (now, stale) = (self.now, self.stale());
        let dt = (now - self.last_tick).max(1e-3);
        self.last_tick = now;
        let ttls = (self.cfg.pending_ttl_s, f64::INFINITY);
        self.s.housekeep(&self.store, now, stale, ttls);
        self.deliver();
        let tuning = Tuning {
            idle_stop_after: self.cfg.idle_stop_after_s,
            error_hold: ERROR_HOLD_S,
        };
        let src = Sources {
            catalog: &self.s.catalog,
            registry: &self.s.registry,
            queue: &self.s.queue,
            stats: &mut self.s.stats,
        };
        if let Some(view) = endpoint_view(src, self.ep, now, stale, dt) {
            let policy = view.params.autoscale_policy;
            let history = self.s.stats.history(self.ep);
            for d in decide_with(policy, &view, tuning, history) {
                self.book(&d.action);
            }
        }
        let mut by_phase = [0u32; 3];
        for w in self.workers.values() {
            match w.phase {
                Phase::Ready => by_phase[0] += 1,
                Phase::Loading => by_phase[1] += 1,
                Phase::Stopped => by_phase[2] += 1,
                Phase::Stopping | Phase::Gone => {}
            }
        }
        let queued = self.s.queue.len();
        self.rec.tick(now, by_phase, queued);
        self.dispatch();
    }

    /// A new worker: its record (`creating`, at once `loading`: the provider started it) and
    /// its instance, ready after the cold start.
    fn launch(&mut self) -> i64 {
        let now = self.now;
        let mtoken = format!("sim-{}", self.seq);
        let id = self
            .s
            .registry
            .create(self.origin, mtoken.clone(), now, now, &self.store);
        self.s.registry.started(id, now, now, &self.store);
        self.workers.insert(
            id,
            SimWorker {
                mtoken,
                epoch: 0,
                phase: Phase::Loading,
                ready_at: f64::INFINITY,
                hot_since: Some(now),
                cold_since: None,
                running: BTreeMap::new(),
                fifo: VecDeque::new(),
                served: 0.0,
            },
        );
        self.push(now + self.cfg.worker.cold_start_s, Kind::Ready(id, 0));
        self.push(now + self.cfg.report_s, Kind::Report(id, 0));
        id
    }

    /// A decision booked as the control plane books it, with the provider's side simulated.
    fn book(&mut self, action: &Action) {
        let now = self.now;
        let model = self.cfg.worker;
        match *action {
            Action::Launch { count, .. } => {
                for _ in 0..count {
                    self.launch();
                    self.rec.launch();
                }
            }
            Action::Resume { worker_id } => {
                let Some(w) = self.workers.get_mut(&worker_id) else {
                    return;
                };
                if w.phase != Phase::Stopped {
                    return;
                }
                w.epoch += 1;
                w.phase = Phase::Loading;
                if let Some(since) = w.cold_since.take() {
                    self.rec.cold(now - since);
                }
                w.hot_since = Some(now);
                let epoch = w.epoch;
                self.s.registry.resuming(worker_id, now, now, &self.store);
                self.rec.resume();
                self.push(now + model.resume_s, Kind::Ready(worker_id, epoch));
                self.push(now + self.cfg.report_s, Kind::Report(worker_id, epoch));
            }
            Action::Stop { worker_id } => {
                let Some(w) = self.workers.get_mut(&worker_id) else {
                    return;
                };
                w.epoch += 1;
                w.phase = Phase::Stopping;
                let epoch = w.epoch;
                self.s.registry.stopping(worker_id, now);
                self.rec.stop();
                self.push(now + model.stop_s, Kind::StopDone(worker_id, epoch));
            }
            Action::Destroy { worker_id } => {
                let Some(w) = self.workers.get_mut(&worker_id) else {
                    return;
                };
                w.epoch += 1;
                w.phase = Phase::Gone;
                if let Some(since) = w.hot_since.take() {
                    self.rec.hot(now - since);
                }
                if let Some(since) = w.cold_since.take() {
                    self.rec.cold(now - since);
                }
                self.s.registry.doom(|r| r.id() == worker_id, now);
                self.rec.destroy();
                self.push(now + 1.0, Kind::Removed(worker_id));
            }
        }
    }

    fn into_outcome(mut self) -> Outcome {
        let end = self.now;
        for w in self.workers.values_mut() {
            if let Some(since) = w.hot_since.take() {
                self.rec.hot(end - since);
            }
            if let Some(since) = w.cold_since.take() {
                self.rec.cold(end - since);
            }
        }
        let cfg = self.cfg;
        let total_work = self.trace.total_work();
        self.rec.into_outcome(
            cfg,
            end,
            self.trace.requests.len(),
            total_work,
            cfg.params.autoscale_policy,
        )
    }
}
