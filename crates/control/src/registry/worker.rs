//! One worker's record ([`WorkerRec`]), its state ([`WorkerState`]) and how the API lists it
//! ([`WorkerInfo`]). Its fields change only through the [`Registry`](super::Registry).

use std::sync::Arc;

use ferry_protocol::{TokenKey, WorkerStatus};
use serde::{Deserialize, Serialize};

use super::capacity::Capacity;
use super::pending::Pending;
use super::Origin;
use crate::config::ProviderKind;
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
    pub(super) id: i64,
    /// `MASTER_TOKEN`.
    pub(super) mtoken: String,
    /// Owning endpoint.
    pub(super) endpoint_id: i64,
    /// Owning workergroup.
    pub(super) workergroup_id: i64,
    /// Where it came from.
    #[serde(default)]
    pub(super) provider: ProviderKind,
    /// State.
    pub(super) state: WorkerState,
    /// Base URL the worker reports.
    #[serde(default)]
    pub(super) url: String,
    /// Unix seconds: created, last started, model loaded.
    pub(super) created_at: f64,
    /// Unix seconds of the last start.
    #[serde(default)]
    pub(super) started_at: f64,
    /// Unix seconds the model was first seen loaded in this run.
    #[serde(default)]
    pub(super) loaded_at: f64,
    /// Benchmark result.
    #[serde(default)]
    pub(super) max_perf: f64,
    /// Last `error_msg`.
    #[serde(default)]
    pub(super) error_msg: String,
    /// Last reported `cur_load`.
    #[serde(skip)]
    pub(super) cur_load: f64,
    /// Last reported `new_load`.
    #[serde(skip)]
    pub(super) new_load: f64,
    /// Exponential average of `cur_load`.
    #[serde(skip)]
    pub(super) cur_load_rolling_avg: f64,
    /// Last reported `cur_perf`.
    #[serde(skip)]
    pub(super) cur_perf: f64,
    /// Last reported `num_requests_working`.
    #[serde(skip)]
    pub(super) reqs_working: u64,
    /// Last reported `disk_usage`.
    #[serde(skip)]
    pub(super) disk_usage: f64,
    /// Monotonic seconds (control clock) of the last report.
    #[serde(skip)]
    pub(super) last_report: Option<f64>,
    /// In `error` because its reports stopped (cleared by the next report).
    #[serde(skip)]
    pub(super) unreachable: bool,
    /// Monotonic seconds of the last state change.
    #[serde(skip)]
    pub(super) state_since: f64,
    /// Monotonic seconds it last had work (routed or reported load).
    #[serde(skip)]
    pub(super) last_busy: f64,
    /// Routed load not yet seen in a report: `request_idx` → (cost, monotonic seconds).
    #[serde(skip)]
    pub(super) pending: Pending,
    /// Requests routed to it so far (`reqnum`).
    #[serde(skip)]
    pub(super) reqnum: u64,
    /// Cached `signature` for `url`.
    #[serde(skip)]
    pub(super) signature: Option<(String, String)>,
    /// Its v2 token key (from `mtoken`), while its reports say it checks `ferry_mac`.
    #[serde(skip)]
    pub(super) mac_key: Option<Arc<TokenKey>>,
    /// Throughput learned from its reports.
    #[serde(skip)]
    pub(super) capacity: Capacity,
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
    pub(super) fn new(id: i64, mtoken: String, origin: Origin, unix: f64, mono: f64) -> WorkerRec {
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
            pending: Pending::default(),
            reqnum: 0,
            signature: None,
            mac_key: None,
            capacity: Capacity::default(),
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
    /// What it serves, workload units per second: the throughput learned from its reports
    /// once known ([`Capacity`]), else its benchmark. The autoscaler sizes the fleet with
    /// this; routing does not (it orders workers by load over [`max_perf`](Self::max_perf)).
    /// Each worker learns alone, from report intervals far shorter than its requests, so
    /// identical workers carry estimates that differ by several times, and routing by them
    /// sends the work of a worker that reads slow to one that reads fast (docs/simulate.md,
    /// "Online capacity model").
    pub fn perf(&self) -> f64 {
        self.capacity.perf(self.max_perf)
    }
    /// Monotonic seconds it last had work.
    pub fn last_busy(&self) -> f64 {
        self.last_busy
    }
    /// Monotonic seconds of the last state change.
    pub fn state_since(&self) -> f64 {
        self.state_since
    }

    pub(super) fn set_state(&mut self, s: WorkerState, mono: f64) -> bool {
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
        self.pending.sum()
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
    pub(super) fn apply_status(&mut self, s: &WorkerStatus, unix: f64, mono: f64) -> bool {
        self.last_report = Some(mono);
        self.unreachable = false;
        self.cur_load = s.cur_load.max(0.0);
        self.new_load = s.new_load.max(0.0);
        self.cur_perf = s.cur_perf.max(0.0);
        self.cur_load_rolling_avg = 0.9 * self.cur_load_rolling_avg + 0.1 * self.cur_load;
        self.reqs_working = s.num_requests_working;
        self.disk_usage = s.disk_usage;
        if s.ferry_mac != self.mac_key.is_some() {
            self.mac_key = s
                .ferry_mac
                .then(|| TokenKey::derive(&self.mtoken).map(Arc::new))
                .flatten();
        }
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

    /// Feeds a report (already authenticated, not yet applied) to the learned throughput. A
    /// new benchmark result starts it over.
    pub(super) fn learn(&mut self, s: &WorkerStatus, mono: f64) {
        if s.max_perf > 0.0 && s.max_perf != self.max_perf {
            self.capacity.reset();
        }
        if let Some(prev) = self.last_report {
            let benchmark = if s.max_perf > 0.0 {
                s.max_perf
            } else {
                self.max_perf
            };
            self.capacity.observe(
                mono - prev,
                s.cur_perf.max(0.0),
                s.cur_load.max(0.0),
                benchmark,
            );
        }
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
