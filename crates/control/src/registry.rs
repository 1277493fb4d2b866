//! The worker registry: one record per worker instance, its state as Vast names it, and what
//! its reports say.
//!
//! # States
//!
//! | State | Entered when | Routable |
//! |---|---|---|
//! | `creating` | the autoscaler asked the provider to launch it | no |
//! | `loading` | the provider started it (or the control plane restarted and awaits its report) | no |
//! | `model_loading` | it reports, but the model is not loaded and benchmarked yet | no |
//! | `idle` | it reports `loadtime > 0`, `max_perf > 0` and no `error_msg` (Vast's "ready") | yes, unless stale or over `max_queue_time` |
//! | `stopping` / `stopped` | the autoscaler stopped it; stopped = cold, resumable with its model and benchmark cache | no |
//! | `error` | it reported an `error_msg`, died, went silent for twice the stale limit, or the provider failed | no |
//! | `destroying` | being removed | no |
//!
//! A report authenticates with the worker's `id` (`CONTAINER_ID`) and `mtoken`
//! (`MASTER_TOKEN`), both assigned at launch. A ready report from a known worker
//! re-registers it as `idle`, which is how workers re-converge after a control-plane restart.

use std::collections::{BTreeMap, HashMap};

use ferry_protocol::WorkerStatus;
use serde::{Deserialize, Serialize};

use crate::config::ProviderKind;
use crate::control::secret_eq;
use crate::error::ControlError;
use crate::route::Candidate;
use crate::store::{Kind, Loaded, Store};

/// Worker state (Vast's names, lower case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Launch requested.
    Creating,
    /// Started, no report yet.
    Loading,
    /// Reporting, model not ready.
    ModelLoading,
    /// Ready.
    Idle,
    /// Being stopped.
    Stopping,
    /// Stopped with the model on disk (cold).
    Stopped,
    /// Unusable.
    Error,
    /// Being destroyed.
    Destroying,
}

impl WorkerState {
    /// Every state.
    pub const ALL: [WorkerState; 8] = [
        WorkerState::Creating,
        WorkerState::Loading,
        WorkerState::ModelLoading,
        WorkerState::Idle,
        WorkerState::Stopping,
        WorkerState::Stopped,
        WorkerState::Error,
        WorkerState::Destroying,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Creating => "creating",
            WorkerState::Loading => "loading",
            WorkerState::ModelLoading => "model_loading",
            WorkerState::Idle => "idle",
            WorkerState::Stopping => "stopping",
            WorkerState::Stopped => "stopped",
            WorkerState::Error => "error",
            WorkerState::Destroying => "destroying",
        }
    }

    /// Coming up: will be ready without further action.
    pub fn is_coming(self) -> bool {
        matches!(
            self,
            WorkerState::Creating | WorkerState::Loading | WorkerState::ModelLoading
        )
    }
}

/// One worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRec {
    /// `CONTAINER_ID`.
    id: i64,
    /// `MASTER_TOKEN`.
    mtoken: String,
    /// Owning endpoint.
    endpoint_id: i64,
    /// Owning workergroup.
    workergroup_id: i64,
    /// Where it came from.
    #[serde(default)]
    provider: ProviderKind,
    /// State.
    state: WorkerState,
    /// Base URL the worker reports.
    #[serde(default)]
    url: String,
    /// Unix seconds: created, last started, model loaded.
    created_at: f64,
    /// Unix seconds of the last start.
    #[serde(default)]
    started_at: f64,
    /// Unix seconds the model was first seen loaded in this run.
    #[serde(default)]
    loaded_at: f64,
    /// Benchmark result.
    #[serde(default)]
    max_perf: f64,
    /// Last `error_msg`.
    #[serde(default)]
    error_msg: String,
    /// Last reported `cur_load`.
    #[serde(skip)]
    cur_load: f64,
    /// Last reported `new_load`.
    #[serde(skip)]
    new_load: f64,
    /// Exponential average of `cur_load`.
    #[serde(skip)]
    cur_load_rolling_avg: f64,
    /// Last reported `cur_perf`.
    #[serde(skip)]
    cur_perf: f64,
    /// Last reported `num_requests_working`.
    #[serde(skip)]
    reqs_working: u64,
    /// Last reported `disk_usage`.
    #[serde(skip)]
    disk_usage: f64,
    /// Monotonic seconds (control clock) of the last report.
    #[serde(skip)]
    last_report: Option<f64>,
    /// In `error` because its reports stopped (cleared by the next report).
    #[serde(skip)]
    unreachable: bool,
    /// Monotonic seconds of the last state change.
    #[serde(skip)]
    state_since: f64,
    /// Monotonic seconds it last had work (routed or reported load).
    #[serde(skip)]
    last_busy: f64,
    /// Routed load not yet seen in a report: `request_idx` → (cost, monotonic seconds).
    #[serde(skip)]
    pending: HashMap<u64, (f64, f64)>,
    /// Requests routed to it so far (`reqnum`).
    #[serde(skip)]
    reqnum: u64,
    /// Cached `signature` for `url`.
    #[serde(skip)]
    signature: Option<(String, String)>,
}

/// A worker as the API lists it (the fields vastai's `Worker` reads). Fields in
/// alphabetical order, as the JSON always listed them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    /// Unix seconds created.
    pub created_at: f64,
    /// Last reported `cur_load`.
    pub cur_load: f64,
    /// Exponential average of `cur_load`.
    pub cur_load_rolling_avg: f64,
    /// Last reported `cur_perf`.
    pub cur_perf: f64,
    /// Last reported `disk_usage`.
    pub disk_usage: f64,
    /// Benchmark result.
    pub dlperf: f64,
    /// Owning endpoint.
    pub endpoint_id: i64,
    /// Last `error_msg`.
    pub error_msg: String,
    /// Id.
    pub id: i64,
    /// Unix seconds the model was loaded.
    pub loaded_at: f64,
    /// Benchmark result.
    pub measured_perf: f64,
    /// Last reported `new_load`.
    pub new_load: f64,
    /// Routed load not yet acknowledged.
    pub pending_load: f64,
    /// Benchmark result times reliability.
    pub perf: f64,
    /// 0 when errored, else 1.
    pub reliability: f64,
    /// Last reported `num_requests_working`.
    pub reqs_working: u64,
    /// Unix seconds of the last start.
    pub started_at: f64,
    /// State.
    pub status: WorkerState,
    /// Base URL.
    pub url: String,
    /// Owning workergroup.
    pub workergroup_id: i64,
}

impl WorkerRec {
    fn new(id: i64, mtoken: String, origin: Origin, unix: f64, mono: f64) -> WorkerRec {
        WorkerRec {
            id,
            mtoken,
            endpoint_id: origin.endpoint_id,
            workergroup_id: origin.workergroup_id,
            provider: origin.provider,
            state: WorkerState::Creating,
            url: String::new(),
            created_at: unix,
            started_at: unix,
            loaded_at: 0.0,
            max_perf: 0.0,
            error_msg: String::new(),
            cur_load: 0.0,
            new_load: 0.0,
            cur_load_rolling_avg: 0.0,
            cur_perf: 0.0,
            reqs_working: 0,
            disk_usage: 0.0,
            last_report: None,
            unreachable: false,
            state_since: mono,
            last_busy: mono,
            pending: HashMap::new(),
            reqnum: 0,
            signature: None,
        }
    }

    /// `CONTAINER_ID`.
    pub fn id(&self) -> i64 {
        self.id
    }
    /// `MASTER_TOKEN`.
    pub fn mtoken(&self) -> &str {
        &self.mtoken
    }
    /// Owning endpoint.
    pub fn endpoint_id(&self) -> i64 {
        self.endpoint_id
    }
    /// Owning workergroup.
    pub fn workergroup_id(&self) -> i64 {
        self.workergroup_id
    }
    /// Where it came from.
    pub fn provider(&self) -> ProviderKind {
        self.provider
    }
    /// State.
    pub fn state(&self) -> WorkerState {
        self.state
    }
    /// In `error` because its reports stopped; it may come back by itself.
    pub fn unreachable(&self) -> bool {
        self.unreachable && self.state == WorkerState::Error
    }
    /// Whether it should be cold (stopped by the autoscaler): what the answer to its report
    /// tells a joined worker.
    pub fn cold(&self) -> bool {
        matches!(self.state, WorkerState::Stopping | WorkerState::Stopped)
    }
    /// The last `error_msg` (empty when none).
    pub fn error_msg(&self) -> &str {
        &self.error_msg
    }
    /// Base URL the worker reports.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Benchmark result (0 until known).
    pub fn max_perf(&self) -> f64 {
        self.max_perf
    }
    /// Monotonic seconds it last had work.
    pub fn last_busy(&self) -> f64 {
        self.last_busy
    }
    /// Monotonic seconds of the last state change.
    pub fn state_since(&self) -> f64 {
        self.state_since
    }

    fn set_state(&mut self, s: WorkerState, mono: f64) -> bool {
        if self.state == s {
            return false;
        }
        tracing::info!(
            worker = self.id,
            from = self.state.as_str(),
            to = s.as_str(),
            "worker state"
        );
        self.state = s;
        self.state_since = mono;
        true
    }

    /// Routed load not yet acknowledged.
    pub fn pending_load(&self) -> f64 {
        self.pending.values().map(|(c, _)| c).sum()
    }

    /// Reported plus routed-since load.
    pub fn load(&self) -> f64 {
        self.cur_load + self.pending_load()
    }

    /// Seconds since the last report (infinite when none).
    pub fn silence(&self, mono: f64) -> f64 {
        self.last_report.map_or(f64::INFINITY, |t| mono - t)
    }

    /// Applies a `/worker_status/` report (already authenticated). Returns true when the
    /// state changed.
    fn apply_status(&mut self, s: &WorkerStatus, unix: f64, mono: f64) -> bool {
        self.last_report = Some(mono);
        self.unreachable = false;
        self.cur_load = s.cur_load.max(0.0);
        self.new_load = s.new_load.max(0.0);
        self.cur_perf = s.cur_perf.max(0.0);
        self.cur_load_rolling_avg = 0.9 * self.cur_load_rolling_avg + 0.1 * self.cur_load;
        self.reqs_working = s.num_requests_working;
        self.disk_usage = s.disk_usage;
        if !s.url.is_empty() && s.url != self.url {
            self.url = s.url.clone();
            self.signature = None;
        }
        for idx in &s.working_request_idxs {
            self.pending.remove(idx);
        }
        if self.cur_load > 0.0 || !self.pending.is_empty() {
            self.last_busy = mono;
        }
        if s.max_perf > 0.0 {
            self.max_perf = s.max_perf;
        }
        self.error_msg = s.error_msg.clone();
        // Stopping, stopped and destroying are our decisions; reports do not undo them
        // (a stopping worker reports "shutting down" on its way out).
        if matches!(
            self.state,
            WorkerState::Stopping | WorkerState::Stopped | WorkerState::Destroying
        ) {
            return false;
        }
        let next = if !s.error_msg.is_empty() {
            WorkerState::Error
        } else if s.loadtime > 0.0 && s.max_perf > 0.0 && !s.cold {
            WorkerState::Idle
        } else {
            WorkerState::ModelLoading
        };
        if next == WorkerState::Idle && self.state != WorkerState::Idle {
            self.loaded_at = unix;
            self.last_busy = mono;
        }
        self.set_state(next, mono)
    }

    /// Routable now?
    pub fn routable(&self, mono: f64, stale_after: f64) -> bool {
        self.state == WorkerState::Idle
            && self.max_perf > 0.0
            && !self.url.is_empty()
            && self.silence(mono) <= stale_after
    }

    /// The worker as `/get_endpoint_workers/` lists it.
    pub fn info(&self) -> WorkerInfo {
        let reliability = if self.state == WorkerState::Error {
            0.0
        } else {
            1.0
        };
        WorkerInfo {
            id: self.id,
            status: self.state,
            cur_load: self.cur_load,
            new_load: self.new_load,
            cur_load_rolling_avg: self.cur_load_rolling_avg,
            cur_perf: self.cur_perf,
            perf: self.max_perf * reliability,
            measured_perf: self.max_perf,
            dlperf: self.max_perf,
            reliability,
            reqs_working: self.reqs_working,
            disk_usage: self.disk_usage,
            loaded_at: self.loaded_at,
            started_at: self.started_at,
            created_at: self.created_at,
            url: self.url.clone(),
            endpoint_id: self.endpoint_id,
            workergroup_id: self.workergroup_id,
            error_msg: self.error_msg.clone(),
            pending_load: self.pending_load(),
        }
    }
}

/// Where a new worker record belongs and comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Owning endpoint.
    pub endpoint_id: i64,
    /// Owning workergroup.
    pub workergroup_id: i64,
    /// Its provider.
    pub provider: ProviderKind,
}

/// Key of the next worker id.
const KV_NEXT_WORKER_ID: &str = "next_worker_id";
/// A worker that stays in creating/loading this long is treated as failed.
pub const LOAD_DEADLINE_S: f64 = 3600.0;

/// Every worker by id, with the load routed to each and not yet acknowledged.
///
/// # Invariants
///
/// - Records change only through these methods, and every durable change (state, URL-less
///   fields of the record) is written through to the store.
/// - A pending entry `(worker, idx)` exists only between [`Registry::assign`] and the first of:
///   the worker's acknowledgement (`working_request_idxs` or `/delete_requests/`),
///   [`Registry::release`], the pending TTL, or the worker leaving service (stop, destroy).
/// - A report or a finished list counts only with the worker's own `mtoken`; an unknown id and
///   a wrong token get the same answer.
/// - The cached URL signature always belongs to the worker's current URL.
#[derive(Debug)]
pub struct Registry {
    workers: BTreeMap<i64, WorkerRec>,
    next_id: i64,
}

impl Registry {
    /// The registry as the store left it. Until it reports again, a worker that was running is
    /// `loading`; stopped and errored ones keep their state.
    pub fn restore(loaded: &Loaded) -> Registry {
        let mut workers = BTreeMap::new();
        for (id, body) in loaded.of(Kind::Worker) {
            match serde_json::from_str::<WorkerRec>(body) {
                Ok(mut w) => {
                    w.state = match w.state {
                        WorkerState::Stopped | WorkerState::Stopping => WorkerState::Stopped,
                        WorkerState::Error | WorkerState::Destroying => WorkerState::Error,
                        _ => WorkerState::Loading,
                    };
                    workers.insert(id, w);
                }
                Err(e) => tracing::error!(id, error = %e, "unreadable worker record skipped"),
            }
        }
        Registry {
            workers,
            next_id: loaded.kv_parsed(KV_NEXT_WORKER_ID).unwrap_or(1001),
        }
    }

    /// A worker.
    pub fn get(&self, id: i64) -> Option<&WorkerRec> {
        self.workers.get(&id)
    }

    /// Every worker, by id.
    pub fn iter(&self) -> impl Iterator<Item = &WorkerRec> {
        self.workers.values()
    }

    /// Workers of an endpoint.
    pub fn of_endpoint(&self, endpoint_id: i64) -> impl Iterator<Item = &WorkerRec> {
        self.iter().filter(move |w| w.endpoint_id == endpoint_id)
    }

    /// Workers of a workergroup.
    pub fn of_group(&self, workergroup_id: i64) -> impl Iterator<Item = &WorkerRec> {
        self.iter()
            .filter(move |w| w.workergroup_id == workergroup_id)
    }

    /// How many workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    fn persist(&self, id: i64, store: &dyn Store) {
        if let Some(w) = self.workers.get(&id) {
            store.put_json(Kind::Worker, id, w);
        }
    }

    fn update(
        &mut self,
        id: i64,
        store: &dyn Store,
        f: impl FnOnce(&mut WorkerRec) -> bool,
    ) -> bool {
        let changed = self.workers.get_mut(&id).is_some_and(f);
        if changed {
            self.persist(id, store);
        }
        changed
    }

    /// Registers a new worker in `creating` with a fresh id and master token.
    pub fn create(
        &mut self,
        origin: Origin,
        mtoken: String,
        unix: f64,
        mono: f64,
        store: &dyn Store,
    ) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        store.set_kv(KV_NEXT_WORKER_ID, self.next_id.to_string());
        let w = WorkerRec::new(id, mtoken, origin, unix, mono);
        self.workers.insert(id, w);
        self.persist(id, store);
        id
    }

    /// A worker joined `origin`'s workergroup: it claims the oldest placeholder the autoscaler
    /// made there (`creating`, never started), else it is registered anew. Either way it is
    /// `loading` at `url`, awaiting its first report. Returns its id and master token.
    pub fn join(
        &mut self,
        origin: Origin,
        url: &str,
        unix: f64,
        mono: f64,
        store: &dyn Store,
    ) -> (i64, String) {
        let placeholder = self
            .workers
            .values()
            .filter(|w| {
                w.workergroup_id == origin.workergroup_id
                    && w.state == WorkerState::Creating
                    && w.provider == ProviderKind::External
            })
            .min_by(|a, b| a.created_at.total_cmp(&b.created_at))
            .map(|w| w.id);
        let id = placeholder.unwrap_or_else(|| {
            self.create(origin, crate::control::random_hex(16), unix, mono, store)
        });
        self.update(id, store, |w| {
            w.url = url.to_owned();
            w.signature = None;
            w.started_at = unix;
            w.last_report = None;
            w.set_state(WorkerState::Loading, mono);
            true
        });
        let mtoken = self.workers.get(&id).map(|w| w.mtoken.clone());
        (id, mtoken.unwrap_or_default())
    }

    fn authentic(&mut self, id: i64, mtoken: &str) -> Result<&mut WorkerRec, ControlError> {
        self.workers
            .get_mut(&id)
            .filter(|w| secret_eq(Some(mtoken), &w.mtoken))
            .ok_or_else(ControlError::unknown_worker)
    }

    /// Applies a `/worker_status/` report from the worker it names.
    pub fn report(
        &mut self,
        s: &WorkerStatus,
        unix: f64,
        mono: f64,
        store: &dyn Store,
    ) -> Result<(), ControlError> {
        if self.authentic(s.id, &s.mtoken)?.apply_status(s, unix, mono) {
            self.persist(s.id, store);
        }
        Ok(())
    }

    /// `/delete_requests/`: the worker finished these requests; their load leaves its pending
    /// sum.
    pub fn finished(
        &mut self,
        id: i64,
        mtoken: &str,
        idxs: impl IntoIterator<Item = u64>,
    ) -> Result<(), ControlError> {
        let w = self.authentic(id, mtoken)?;
        for idx in idxs {
            w.pending.remove(&idx);
        }
        Ok(())
    }

    /// Routes request `idx` of `cost` to a worker: its load counts as pending until
    /// acknowledged. Returns the worker's `reqnum` for it.
    pub fn assign(&mut self, worker: i64, idx: u64, cost: f64, mono: f64) -> Option<u64> {
        let w = self.workers.get_mut(&worker)?;
        w.reqnum += 1;
        w.pending.insert(idx, (cost, mono));
        w.last_busy = mono;
        Some(w.reqnum)
    }

    /// Takes a request's load off a worker (the request was re-routed or abandoned).
    pub fn release(&mut self, worker: i64, idx: u64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.pending.remove(&idx);
        }
    }

    /// The workers of an endpoint as the router sees them, minus the URLs in `skip`.
    pub fn candidates(
        &self,
        endpoint_id: i64,
        skip: &[String],
        mono: f64,
        stale_after: f64,
    ) -> Vec<Candidate> {
        self.of_endpoint(endpoint_id)
            .filter(|w| !skip.contains(&w.url))
            .map(|w| Candidate {
                id: w.id,
                routable: w.routable(mono, stale_after),
                max_perf: w.max_perf,
                load: w.load(),
            })
            .collect()
    }

    /// Where a grant for `worker` points: its URL and the cached signature of that URL.
    pub fn grant_target(&self, worker: i64) -> Option<(String, Option<String>)> {
        let w = self.workers.get(&worker)?;
        let sig = w
            .signature
            .as_ref()
            .filter(|(u, _)| *u == w.url)
            .map(|(_, s)| s.clone());
        Some((w.url.clone(), sig))
    }

    /// Caches the signature of `url` for `worker`, if that is still its URL.
    pub fn cache_signature(&mut self, worker: i64, url: &str, signature: String) {
        if let Some(w) = self.workers.get_mut(&worker) {
            if w.url == url {
                w.signature = Some((url.to_owned(), signature));
            }
        }
    }

    /// The provider started the instance: `creating` → `loading`.
    pub fn started(&mut self, id: i64, unix: f64, mono: f64, store: &dyn Store) {
        self.update(id, store, |w| {
            if w.state != WorkerState::Creating {
                return false;
            }
            w.started_at = unix;
            w.set_state(WorkerState::Loading, mono);
            true
        });
    }

    /// The instance died on its own: a coming or ready worker becomes `error`.
    pub fn exited(&mut self, id: i64, reason: String, mono: f64, store: &dyn Store) {
        self.update(id, store, |w| {
            if !(w.state.is_coming() || w.state == WorkerState::Idle) {
                return false;
            }
            tracing::warn!(worker = id, reason = %reason, "worker exited");
            w.error_msg = reason;
            w.set_state(WorkerState::Error, mono);
            true
        });
    }

    /// A provider call failed: the worker is `error` with `msg`.
    pub fn fail(&mut self, id: i64, msg: String, mono: f64, store: &dyn Store) {
        self.update(id, store, |w| {
            w.error_msg = msg;
            w.set_state(WorkerState::Error, mono);
            true
        });
    }

    /// A stopped worker is being resumed: `loading`, awaiting its first report.
    pub fn resuming(&mut self, id: i64, unix: f64, mono: f64, store: &dyn Store) {
        self.update(id, store, |w| {
            w.started_at = unix;
            w.last_report = None;
            w.set_state(WorkerState::Loading, mono);
            true
        });
    }

    /// A rolling update takes a worker out of routing: no new requests, but the ones already
    /// routed to it stay counted until they finish (see `autoscale::rollout`).
    pub fn draining(&mut self, id: i64, mono: f64) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.set_state(WorkerState::Stopping, mono);
        }
    }

    /// A cancelled rolling update puts a worker it took out of routing back.
    pub fn undrain(&mut self, id: i64, mono: f64) {
        if let Some(w) = self.workers.get_mut(&id) {
            if w.state == WorkerState::Stopping {
                w.set_state(WorkerState::Idle, mono);
            }
        }
    }

    /// The autoscaler is stopping a worker: no more load is counted on it.
    pub fn stopping(&mut self, id: i64, mono: f64) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.set_state(WorkerState::Stopping, mono);
            w.pending.clear();
        }
    }

    /// The provider's stop returned: `stopped` (if still stopping) or `error`.
    pub fn stop_done(&mut self, id: i64, result: Result<(), String>, mono: f64, store: &dyn Store) {
        self.update(id, store, |w| {
            match result {
                Ok(()) => {
                    if w.state == WorkerState::Stopping {
                        w.set_state(WorkerState::Stopped, mono);
                    }
                }
                Err(e) => {
                    w.error_msg = format!("stop failed: {e}");
                    w.set_state(WorkerState::Error, mono);
                }
            }
            true
        });
    }

    /// Marks the matching workers `destroying` (no more load counted on them); returns the
    /// ids newly marked.
    pub fn doom(&mut self, pred: impl Fn(&WorkerRec) -> bool, mono: f64) -> Vec<i64> {
        let mut out = Vec::new();
        for w in self.workers.values_mut().filter(|w| pred(w)) {
            if w.state != WorkerState::Destroying {
                w.set_state(WorkerState::Destroying, mono);
                w.pending.clear();
                out.push(w.id);
            }
        }
        out
    }

    /// Forgets a destroyed worker.
    pub fn remove(&mut self, id: i64, store: &dyn Store) {
        self.workers.remove(&id);
        store.delete(Kind::Worker, id);
    }

    /// Records instances the provider stopped at shutdown as `stopped` (resumable).
    pub fn stopped_at_shutdown(&mut self, ids: &[i64], mono: f64, store: &dyn Store) {
        for id in ids {
            self.update(*id, store, |w| {
                if w.state == WorkerState::Destroying {
                    return false;
                }
                w.set_state(WorkerState::Stopped, mono);
                true
            });
        }
    }

    /// Workers of a provider the store counts as up (to adopt after a restart).
    pub fn coming(&self, provider: ProviderKind) -> Vec<i64> {
        self.iter()
            .filter(|w| w.state.is_coming() && w.provider == provider)
            .map(|w| w.id)
            .collect()
    }

    /// A worker whose instance did not survive the restart: `stopped` (cold), so the
    /// autoscaler resumes it from its disk when it is needed.
    pub fn lost(&mut self, id: i64, store: &dyn Store) {
        self.update(id, store, |w| {
            tracing::warn!(
                worker = id,
                "instance not running after the restart; now stopped"
            );
            w.set_state(WorkerState::Stopped, 0.0);
            true
        });
    }

    /// Housekeeping: forgets pending load older than `pending_ttl` (the client never called
    /// the worker), and fails ready workers silent for twice the stale limit and coming ones
    /// stuck past [`LOAD_DEADLINE_S`].
    pub fn housekeep(&mut self, mono: f64, stale_after: f64, pending_ttl: f64, store: &dyn Store) {
        let mut failed = Vec::new();
        for w in self.workers.values_mut() {
            w.pending.retain(|_, (_, at)| mono - *at < pending_ttl);
            let silent_too_long =
                w.state == WorkerState::Idle && w.silence(mono) > 2.0 * stale_after;
            // A joined worker that ran dry of reports may come back (a partition healing).
            let lost_contact = silent_too_long && w.provider == ProviderKind::External;
            let stuck = w.state.is_coming()
                && mono - w.state_since > LOAD_DEADLINE_S
                && w.silence(mono) > LOAD_DEADLINE_S;
            if silent_too_long || stuck {
                w.error_msg = if stuck {
                    "never became ready".into()
                } else if lost_contact {
                    format!("unreachable: no report for {:.0} s", w.silence(mono))
                } else {
                    "stopped reporting".into()
                };
                w.unreachable = lost_contact;
                tracing::warn!(worker = w.id, error = %w.error_msg, "worker failed");
                w.set_state(WorkerState::Error, mono);
                failed.push(w.id);
            }
        }
        for id in failed {
            self.persist(id, store);
        }
    }

    /// Every pending `(worker, request_idx)` entry (tests only).
    #[cfg(test)]
    pub(crate) fn pending_entries(&self) -> Vec<(i64, u64)> {
        self.iter()
            .flat_map(|w| w.pending.keys().map(move |i| (w.id, *i)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ORIGIN: Origin = Origin {
        endpoint_id: 1,
        workergroup_id: 2,
        provider: ProviderKind::Local,
    };

    fn status(loadtime: f64, max_perf: f64, err: &str) -> WorkerStatus {
        WorkerStatus {
            id: 1,
            mtoken: "t".into(),
            loadtime,
            max_perf,
            error_msg: err.into(),
            url: "http://127.0.0.1:1".into(),
            working_request_idxs: vec![5],
            ..WorkerStatus::default()
        }
    }

    #[test]
    fn report_drives_states_and_pending() {
        let mut w = WorkerRec::new(1, "t".into(), ORIGIN, 0.0, 0.0);
        w.pending.insert(5, (10.0, 0.0));
        w.pending.insert(6, (20.0, 0.0));
        assert!(w.apply_status(&status(0.0, 0.0, ""), 1.0, 1.0));
        assert_eq!(w.state, WorkerState::ModelLoading);
        assert_eq!(w.pending_load(), 20.0);
        assert!(w.apply_status(&status(2.0, 50.0, ""), 2.0, 2.0));
        assert_eq!(w.state, WorkerState::Idle);
        assert!(w.routable(2.5, 30.0));
        assert!(!w.routable(40.0, 30.0));
        assert!(w.apply_status(&status(2.0, 50.0, "boom"), 3.0, 3.0));
        assert_eq!(w.state, WorkerState::Error);
        w.set_state(WorkerState::Stopping, 4.0);
        assert!(!w.apply_status(&status(2.0, 50.0, ""), 5.0, 5.0));
        assert_eq!(w.state, WorkerState::Stopping);
    }

    #[test]
    fn reports_need_the_workers_own_token() {
        let s = crate::store::memory::MemoryStore::default();
        let mut r = Registry::restore(&s.loaded());
        let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
        let mut st = status(2.0, 50.0, "");
        st.id = id;
        st.mtoken = "wrong".into();
        let wrong = r.report(&st, 1.0, 1.0, &s).unwrap_err().to_string();
        st.id = id + 1;
        st.mtoken = "tok".into();
        let unknown = r.report(&st, 1.0, 1.0, &s).unwrap_err().to_string();
        assert_eq!(wrong, unknown, "one answer for both");
        assert!(r.finished(id, "wrong", [1]).is_err());
        st.id = id;
        r.report(&st, 1.0, 1.0, &s).unwrap();
        assert_eq!(r.get(id).unwrap().state(), WorkerState::Idle);
        // Persisted, and a restart maps a ready worker to loading until it reports again.
        let back = Registry::restore(&s.loaded());
        assert_eq!(back.get(id).unwrap().state(), WorkerState::Loading);
        // Ids are never reused across a restart.
        let mut back = back;
        assert!(back.create(ORIGIN, "t2".into(), 0.0, 0.0, &s) > id);
    }

    #[test]
    fn pending_load_lives_from_assignment_to_acknowledgement() {
        let s = crate::store::memory::MemoryStore::default();
        let mut r = Registry::restore(&s.loaded());
        let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
        assert_eq!(r.assign(id, 5, 10.0, 1.0), Some(1));
        assert_eq!(r.assign(id, 6, 20.0, 1.0), Some(2));
        assert_eq!(r.assign(id, 7, 30.0, 1.0), Some(3));
        assert_eq!(r.get(id).unwrap().pending_load(), 60.0);
        // Acknowledged by a report (5), finished (6), released (7): all gone, once each.
        r.report(&status_for(id, &[5]), 2.0, 2.0, &s).unwrap();
        r.finished(id, "tok", [6, 6]).unwrap();
        r.release(id, 7);
        assert_eq!(r.get(id).unwrap().pending_load(), 0.0);
        // Unacknowledged load expires after the pending TTL.
        r.assign(id, 8, 1.0, 10.0);
        r.housekeep(15.0, 30.0, 10.0, &s);
        assert_eq!(r.pending_entries(), vec![(id, 8)]);
        r.housekeep(20.0, 30.0, 10.0, &s);
        assert!(r.pending_entries().is_empty());
        // A worker leaving service carries no load.
        r.assign(id, 9, 1.0, 20.0);
        r.stopping(id, 21.0);
        assert!(r.pending_entries().is_empty());
    }

    #[test]
    fn silent_ready_workers_fail_and_signatures_follow_the_url() {
        let s = crate::store::memory::MemoryStore::default();
        let mut r = Registry::restore(&s.loaded());
        let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
        r.report(&status_for(id, &[]), 0.0, 0.0, &s).unwrap();
        r.cache_signature(id, "http://127.0.0.1:1", "sig".into());
        assert_eq!(
            r.grant_target(id),
            Some(("http://127.0.0.1:1".into(), Some("sig".into())))
        );
        let mut moved = status_for(id, &[]);
        moved.url = "http://127.0.0.1:2".into();
        r.report(&moved, 1.0, 1.0, &s).unwrap();
        assert_eq!(
            r.grant_target(id),
            Some(("http://127.0.0.1:2".into(), None))
        );
        // Stale (not routable) after the limit, failed after twice the limit.
        assert!(!r.get(id).unwrap().routable(32.0, 30.0));
        r.housekeep(60.0, 30.0, 60.0, &s);
        assert_eq!(r.get(id).unwrap().state(), WorkerState::Idle);
        r.housekeep(61.5, 30.0, 60.0, &s);
        assert_eq!(r.get(id).unwrap().state(), WorkerState::Error);
        assert_eq!(
            Registry::restore(&s.loaded()).get(id).unwrap().state(),
            WorkerState::Error
        );
    }

    fn status_for(id: i64, working: &[u64]) -> WorkerStatus {
        WorkerStatus {
            id,
            mtoken: "tok".into(),
            loadtime: 1.0,
            max_perf: 10.0,
            url: "http://127.0.0.1:1".into(),
            working_request_idxs: working.to_vec(),
            ..WorkerStatus::default()
        }
    }
}
