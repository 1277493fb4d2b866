//! Providers: where worker instances come from.
//!
//! The autoscaler asks a [`Provider`] to `launch`, `stop`, `resume` and `destroy` instances and
//! hears back through [`ProviderEvent`]s (started, exited). The control plane owns the worker
//! records and their ids/master tokens; the provider owns processes, machines or pods.
//!
//! - [`local::LocalProvider`] (the default): a model server process plus `ferry worker` per
//!   instance on this host, each with its own state directory (benchmark cache, logs) and
//!   loopback ports, kept across stop/resume so a cold worker restarts in seconds without
//!   re-benchmarking.
//! - [`vast::VastProvider`]: instances rented from Vast through its REST API (offer search,
//!   create, stop/resume, destroy), followed by polling the account's instance list.
//! - A Kubernetes provider would map an instance to a pod (or a 1-replica StatefulSet, so
//!   stop = scale to 0 keeps its volume with the benchmark cache), with the same env.

pub mod local;
pub mod vast;

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

pub use crate::config::ProviderKind;

/// What to launch (or resume).
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// `CONTAINER_ID`.
    pub worker_id: i64,
    /// `MASTER_TOKEN`.
    pub mtoken: String,
    /// `REPORT_ADDR`: the control plane's base URL.
    pub control_url: String,
    /// Endpoint name (informational, `FERRY_ENDPOINT`).
    pub endpoint: String,
    /// Workergroup id.
    pub workergroup_id: i64,
    /// Model server command; `None` uses the provider's default.
    pub model_cmd: Option<String>,
    /// Worker command instead of `ferry worker` (e.g. an official PyWorker script); same
    /// environment. `None` runs `ferry worker`.
    pub worker_cmd: Option<String>,
    /// Worker preset (`BACKEND`); `None` uses the provider's default.
    pub backend: Option<String>,
    /// Extra environment for the model server and the worker.
    pub env: BTreeMap<String, String>,
    /// The workergroup's Vast fields as stored (`search_params`, `gpu_ram`, `template_hash`,
    /// ...): what a provider renting machines reads.
    pub vast: serde_json::Map<String, serde_json::Value>,
}

/// What a provider tells the control plane.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// The instance's processes are running.
    Started {
        /// Worker id.
        worker_id: i64,
    },
    /// The instance died on its own.
    Exited {
        /// Worker id.
        worker_id: i64,
        /// Why.
        reason: String,
    },
}

/// Where providers send events.
pub type EventSink = mpsc::Sender<ProviderEvent>;

/// A provider failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

/// Launches and manages worker instances.
pub trait Provider: Send + Sync + 'static {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// The workergroups it serves (`provider` of a workergroup).
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }
    /// Gives the provider the channel for its events; called once, before any launch.
    fn subscribe(&self, events: EventSink);
    /// Creates and starts a new instance.
    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Stops an instance, keeping what a resume needs (disk, benchmark cache, ports).
    fn stop(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Starts a stopped instance again.
    fn resume(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Stops (if running) and removes an instance. Unknown ids are not an error.
    fn destroy(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Control-plane shutdown: stop everything this provider runs on this host. Returns the
    /// ids it stopped (they are recorded as `stopped`, resumable after a restart).
    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>>;
    /// At start, after a restart (clean or a crash): takes back control of the instances among
    /// `worker_ids` (the workers the store says were up) that are still running, and stops
    /// every other instance of this provider it finds (strays: stopped or deleted records,
    /// half-dead instances). Returns the ids taken back; `None` means this provider's
    /// instances do not outlive the control plane, so the records are left as they are.
    fn adopt(&self, worker_ids: Vec<i64>) -> BoxFuture<'_, Option<Vec<i64>>> {
        let _ = worker_ids;
        Box::pin(async { None })
    }
}

/// The default model server command: Ferry's simulated model.
pub const SIM_MODEL_CMD: &str =
    "{ferry} sim-model --listen 127.0.0.1:{model_port} --log-file {model_log}";

/// Locates the `ferry` binary next to a test binary (`target/<profile>/deps/<test>` →
/// `target/<profile>/ferry`).
pub fn ferry_exe_near(test_exe: &std::path::Path) -> Option<PathBuf> {
    let deps = test_exe.parent()?;
    let profile = deps.parent()?;
    let p = profile.join("ferry");
    p.exists().then_some(p)
}
