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
//! - [`external::ExternalProvider`]: workers started elsewhere (other hosts, a Kubernetes
//!   Deployment scaled on the control plane's desired count) that join with a token; the
//!   provider launches nothing, and stop/resume reach the worker as a directive in its report
//!   answer.
//!
//! A control plane holds one provider per [`ProviderKind`] ([`Providers`]); each workergroup
//! names its kind (`provider`, default `--provider`) and each worker record keeps the kind it
//! was created with.

pub mod external;
pub mod local;
#[cfg(test)]
pub(crate) mod recorder;
pub mod vast;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Checks a workergroup's Vast fields before the group is created or updated, so a group
    /// this provider could never launch is refused with the reason instead of failing at every
    /// launch.
    fn check_group(
        &self,
        vast: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ProviderError> {
        let _ = vast;
        Ok(())
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
    /// A replica hands over (docs/ha.md): stop watching the instances without stopping them,
    /// so they outlive this process for the next owner, which takes them back with
    /// [`Provider::adopt`]. Providers whose instances never depend on this process need
    /// nothing.
    fn hand_over(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// At start, after a restart (clean or a crash): takes back control of the instances among
    /// `up` (the workers the store says were up) that are still running, keeps the stopped
    /// instances of `cold` (the workers recorded as stopped: resumable) as they are, and stops
    /// every other instance of this provider it finds (strays: deleted records, half-dead
    /// instances). Returns the ids of `up` taken back; `None` means this provider's instances
    /// do not outlive the control plane, so the records are left as they are.
    fn adopt(&self, up: Vec<i64>, cold: Vec<i64>) -> BoxFuture<'_, Option<Vec<i64>>> {
        let _ = (up, cold);
        Box::pin(async { None })
    }
}

/// One provider per kind: the control plane's view of where workers come from. The external
/// provider is always there (it needs nothing); the others are there when configured.
#[derive(Clone)]
pub struct Providers {
    by_kind: BTreeMap<ProviderKind, Arc<dyn Provider>>,
}

impl Providers {
    /// The given providers (a later one of the same kind replaces an earlier one), plus the
    /// external provider unless one is given.
    pub fn new(list: impl IntoIterator<Item = Arc<dyn Provider>>) -> Providers {
        let mut by_kind: BTreeMap<ProviderKind, Arc<dyn Provider>> = BTreeMap::new();
        by_kind.insert(ProviderKind::External, Arc::new(external::ExternalProvider));
        for p in list {
            by_kind.insert(p.kind(), p);
        }
        Providers { by_kind }
    }

    /// The provider of `kind`, or why there is none.
    pub fn get(&self, kind: ProviderKind) -> Result<&Arc<dyn Provider>, ProviderError> {
        self.by_kind.get(&kind).ok_or_else(|| {
            ProviderError(format!(
                "no {} provider is configured on this control plane{}",
                kind.as_str(),
                match kind {
                    ProviderKind::Vast =>
                        " (give it a Vast API key: --vast-api-key-file or VAST_API_KEY)",
                    _ => "",
                }
            ))
        })
    }

    /// Every provider.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.by_kind.values()
    }
}

impl<P: Provider> From<Arc<P>> for Providers {
    fn from(p: Arc<P>) -> Providers {
        Providers::new([p as Arc<dyn Provider>])
    }
}

impl From<Arc<dyn Provider>> for Providers {
    fn from(p: Arc<dyn Provider>) -> Providers {
        Providers::new([p])
    }
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.by_kind.values().map(|p| p.name()))
            .finish()
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
