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

use std::collections::HashMap;

use ferry_protocol::WorkerStatus;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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
    pub id: i64,
    /// `MASTER_TOKEN`.
    pub mtoken: String,
    /// Owning endpoint.
    pub endpoint_id: i64,
    /// Owning workergroup.
    pub workergroup_id: i64,
    /// State.
    pub state: WorkerState,
    /// Base URL the worker reports.
    #[serde(default)]
    pub url: String,
    /// Unix seconds: created, last started, model loaded.
    pub created_at: f64,
    /// Unix seconds of the last start.
    #[serde(default)]
    pub started_at: f64,
    /// Unix seconds the model was first seen loaded in this run.
    #[serde(default)]
    pub loaded_at: f64,
    /// Benchmark result.
    #[serde(default)]
    pub max_perf: f64,
    /// Last `error_msg`.
    #[serde(default)]
    pub error_msg: String,
    /// Last reported `cur_load`.
    #[serde(skip)]
    pub cur_load: f64,
    /// Last reported `new_load`.
    #[serde(skip)]
    pub new_load: f64,
    /// Exponential average of `cur_load`.
    #[serde(skip)]
    pub cur_load_rolling_avg: f64,
    /// Last reported `cur_perf`.
    #[serde(skip)]
    pub cur_perf: f64,
    /// Last reported `num_requests_working`.
    #[serde(skip)]
    pub reqs_working: u64,
    /// Last reported `disk_usage`.
    #[serde(skip)]
    pub disk_usage: f64,
    /// Monotonic seconds (control clock) of the last report.
    #[serde(skip)]
    pub last_report: Option<f64>,
    /// Monotonic seconds of the last state change.
    #[serde(skip)]
    pub state_since: f64,
    /// Monotonic seconds it last had work (routed or reported load).
    #[serde(skip)]
    pub last_busy: f64,
    /// Routed load not yet seen in a report: `request_idx` → (cost, monotonic seconds).
    #[serde(skip)]
    pub pending: HashMap<u64, (f64, f64)>,
    /// Requests routed to it so far (`reqnum`).
    #[serde(skip)]
    pub reqnum: u64,
    /// Cached `signature` for `url`.
    #[serde(skip)]
    pub signature: Option<(String, String)>,
}

impl WorkerRec {
    /// A new record in `creating`.
    pub fn new(
        id: i64,
        mtoken: String,
        endpoint_id: i64,
        workergroup_id: i64,
        unix: f64,
        mono: f64,
    ) -> WorkerRec {
        WorkerRec {
            id,
            mtoken,
            endpoint_id,
            workergroup_id,
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
            state_since: mono,
            last_busy: mono,
            pending: HashMap::new(),
            reqnum: 0,
            signature: None,
        }
    }

    /// Changes state; true when it changed.
    pub fn set_state(&mut self, s: WorkerState, mono: f64) -> bool {
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
    pub fn apply_status(&mut self, s: &WorkerStatus, unix: f64, mono: f64) -> bool {
        self.last_report = Some(mono);
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
        } else if s.loadtime > 0.0 && s.max_perf > 0.0 {
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

    /// The worker as `/get_endpoint_workers/` lists it (the fields vastai's `Worker` reads).
    pub fn to_api(&self) -> Value {
        let reliability = if self.state == WorkerState::Error {
            0.0
        } else {
            1.0
        };
        json!({
            "id": self.id,
            "status": self.state.as_str(),
            "cur_load": self.cur_load,
            "new_load": self.new_load,
            "cur_load_rolling_avg": self.cur_load_rolling_avg,
            "cur_perf": self.cur_perf,
            "perf": self.max_perf * reliability,
            "measured_perf": self.max_perf,
            "dlperf": self.max_perf,
            "reliability": reliability,
            "reqs_working": self.reqs_working,
            "disk_usage": self.disk_usage,
            "loaded_at": self.loaded_at,
            "started_at": self.started_at,
            "created_at": self.created_at,
            "url": self.url,
            "endpoint_id": self.endpoint_id,
            "workergroup_id": self.workergroup_id,
            "error_msg": self.error_msg,
            "pending_load": self.pending_load(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
        let mut w = WorkerRec::new(1, "t".into(), 1, 1, 0.0, 0.0);
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
}
