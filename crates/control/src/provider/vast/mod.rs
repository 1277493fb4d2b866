//! The `vast` provider: workers on machines rented from Vast through its REST API.
//!
//! - **launch**: search offers with the workergroup's filters (`search_params`, `gpu_ram`,
//!   `max_dph`, on top of Vast's defaults), cheapest first, skipping machines that failed
//!   recently; create an instance on the best one from the group's template or image and
//!   on-start script, with the worker's environment and label (see [`group`] and [`fleet`]).
//!   An offer taken before the create lands (Vast refuses the create) is skipped for the next
//!   one, up to `create_attempts` creates per launch. A create whose answer was lost is looked
//!   for by its label before anything else is tried: never two instances for one worker.
//!   `launch` returns once the instance exists; the worker stays `creating` until Vast says it
//!   runs.
//! - **follow**: one poll of the account's instance list per `poll_interval` for all
//!   instances (Vast rate-limits per account): running → [`ProviderEvent::Started`]; an
//!   instance that is not running by the load deadline, or fails while loading, is destroyed,
//!   its machine avoided for `bad_machine_ttl`, and the control plane hears
//!   [`ProviderEvent::Exited`], so the autoscaler replaces the worker (through the usual
//!   error → destroy → launch path, which shows in the worker's logs and state); an instance
//!   that stops on its own (an interruptible one outbid, a crash, the host offline) or
//!   vanishes → `Exited` with the reason.
//! - **stop / resume** (the cold tier): `PUT /instances/{id}/ {"state": ...}`; the disk with the
//!   model stays. A resume with no instance left (it vanished, or the control plane restarted
//!   while it was stopped) launches a new one.
//! - **destroy**: `DELETE`; a failure is retried on every poll until Vast confirms.
//!   Together with the sweep (every instance labelled for this control plane that is not a
//!   worker's current instance is destroyed) nothing this provider created is left running
//!   unaccounted for.
//! - **adopt** (at start): takes back the labelled instances of the workers the store counts
//!   as up, keeps stopped ones for a resume, destroys the rest.
//! - **shutdown**: Vast instances keep running and serving; the next start adopts them (they
//!   keep costing money meanwhile: to take a fleet down, scale its endpoint to zero or delete
//!   it before stopping the control plane). Doomed instances get one more destroy attempt.
//!
//! Every API call goes through [`api::Api`]: rate limits (429 and `Retry-After`), outages and
//! lost answers are retried there with jittered back-off (see its docs). The API key is a
//! [`Secret`]: it is sent in one header and appears in no log line or error.
//!
//! # Layout
//!
//! - `api.rs`: the REST calls, their wire format and the retry policy.
//! - `query.rs`: Vast's offer query language and the search a launch makes.
//! - `group.rs`: a workergroup's Vast fields, the instance's environment and the create body.
//! - `fleet.rs`: the instances owned, by worker; what each poll means (pure, tested).

pub mod api;
pub mod fleet;
pub mod group;
pub mod query;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::api::{Api, ApiError, Patience, RetryPolicy};
use self::fleet::{Fleet, Limits, Placed, ResumeTarget};
use self::group::VastGroup;
use super::{EventSink, LaunchSpec, Provider, ProviderError, ProviderEvent, ProviderKind};
use crate::secrets::Secret;

/// With no instance to follow, the instance list is read once per this many poll intervals
/// (a launch that failed after a lost create answer may still leave an instance to sweep).
const IDLE_POLL_EVERY: u64 = 12;

/// The Vast provider's settings.
#[derive(Debug, Clone)]
pub struct VastConfig {
    /// API base URL (`https://console.vast.ai`).
    pub api_url: String,
    /// API key.
    pub api_key: Secret,
    /// This control plane's name in instance labels (`ferry-<plane>-<worker>`): lower-case
    /// letters and digits.
    pub plane: String,
    /// How often the instance list is read.
    pub poll_interval: Duration,
    /// An instance not running this long after its create or resume is destroyed.
    pub load_deadline: Duration,
    /// Creates tried per launch (offers taken, lost answers).
    pub create_attempts: u32,
    /// API retries and timeouts.
    pub retry: RetryPolicy,
    /// How long a machine whose instance failed to load is avoided.
    pub bad_machine_ttl: Duration,
    /// `BACKEND` for workergroups that name none.
    pub backend: String,
}

/// Whether `plane` is usable in a label.
pub fn valid_plane(plane: &str) -> bool {
    (1..=32).contains(&plane.len())
        && plane
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// This control plane's label name kept in `<state-dir>/vast_plane`: read, or generated (8
/// random lower-case hex digits) and written on first use, so a restart finds its instances
/// again.
pub fn plane_in(state_dir: &std::path::Path) -> std::io::Result<String> {
    let path = state_dir.join("vast_plane");
    match std::fs::read_to_string(&path) {
        Ok(s) if valid_plane(s.trim()) => return Ok(s.trim().to_owned()),
        Ok(s) => {
            return Err(std::io::Error::other(format!(
                "{} holds {:?}, not 1 to 32 lower-case letters and digits",
                path.display(),
                s.trim()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let plane = crate::control::random_hex(4);
    std::fs::write(&path, format!("{plane}\n"))?;
    Ok(plane)
}

/// Rents workers from Vast.
pub struct VastProvider {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: VastConfig,
    api: Api,
    fleet: Mutex<Fleet>,
    events: Mutex<Option<EventSink>>,
    /// Stops the poll loop and launches between attempts.
    stop: CancellationToken,
    /// Stops API calls in flight (after shutdown's last destroys).
    api_cancel: CancellationToken,
    tasks: TaskTracker,
    polling: AtomicBool,
}

impl VastProvider {
    /// A provider with these settings.
    pub fn new(cfg: VastConfig) -> Result<VastProvider, ProviderError> {
        if !valid_plane(&cfg.plane) {
            return Err(ProviderError(format!(
                "vast: plane name {:?} must be 1 to 32 lower-case letters and digits",
                cfg.plane
            )));
        }
        if cfg.api_key.is_empty() {
            return Err(ProviderError("vast: the API key is empty".into()));
        }
        let api_cancel = CancellationToken::new();
        let api = Api::new(
            &cfg.api_url,
            cfg.api_key.clone(),
            cfg.retry.clone(),
            api_cancel.clone(),
        )
        .map_err(|e| ProviderError(format!("vast: {e}")))?;
        Ok(VastProvider {
            inner: Arc::new(Inner {
                fleet: Mutex::new(Fleet::new(&cfg.plane)),
                cfg,
                api,
                events: Mutex::new(None),
                stop: CancellationToken::new(),
                api_cancel,
                tasks: TaskTracker::new(),
                polling: AtomicBool::new(false),
            }),
        })
    }

    /// The label of a worker's instance.
    pub fn label(&self, worker_id: i64) -> String {
        self.inner.fleet().label(worker_id)
    }

    /// Workers with an instance or a launch in flight.
    pub fn tracked(&self) -> usize {
        self.inner.fleet().len()
    }

    /// Instances waiting for a confirmed destroy.
    pub fn doomed(&self) -> Vec<i64> {
        self.inner
            .fleet()
            .doomed()
            .into_iter()
            .map(|d| d.0)
            .collect()
    }
}

impl Inner {
    fn fleet(&self) -> MutexGuard<'_, Fleet> {
        match self.fleet.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn sink(&self) -> Option<EventSink> {
        match self.events.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            load_deadline: self.cfg.load_deadline,
            bad_machine_ttl: self.cfg.bad_machine_ttl,
        }
    }

    /// Starts the poll loop (once).
    fn ensure_polling(self: &Arc<Self>) {
        if self.polling.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        self.tasks.spawn(async move { this.poll_loop().await });
    }

    async fn poll_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            ticks += 1;
            // With nothing to follow, a slower look is enough for a late stray.
            let idle = {
                let f = self.fleet();
                f.is_empty() && f.doomed().is_empty()
            };
            if idle && ticks % IDLE_POLL_EVERY != 1 {
                continue;
            }
            match self.api.instances(Patience::Once).await {
                Ok(rows) => {
                    if failing {
                        tracing::info!("Vast instance list readable again");
                        failing = false;
                    }
                    let out = self.fleet().reconcile(&rows, Instant::now(), self.limits());
                    for ev in out.events {
                        self.emit(ev).await;
                    }
                    for (id, label) in out.relabel {
                        if let Err(e) = self.api.label(id, &label, Patience::Once).await {
                            tracing::debug!(instance = id, error = %e, "relabel failed; next poll retries");
                        }
                    }
                }
                Err(ApiError::Cancelled) => break,
                Err(e) if !failing => {
                    tracing::warn!(error = %e, code = e.code(),
                                   "listing Vast instances failed; retrying every poll");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "listing Vast instances failed again"),
            }
            self.destroy_doomed().await;
        }
    }

    /// One destroy attempt per doomed instance.
    async fn destroy_doomed(&self) {
        let doomed = self.fleet().doomed();
        for (id, why) in doomed {
            match self.api.destroy(id, Patience::Once).await {
                Ok(()) => {
                    self.fleet().destroyed(id);
                    tracing::info!(instance = id, reason = %why, "destroyed a Vast instance");
                }
                Err(ApiError::Cancelled) => break,
                Err(e) => {
                    tracing::debug!(instance = id, error = %e, "destroy failed; next poll retries");
                }
            }
        }
        crate::telemetry::vast_doomed(self.fleet().doomed().len());
    }

    async fn emit(&self, ev: ProviderEvent) {
        match &ev {
            ProviderEvent::Started { worker_id } => {
                tracing::info!(worker = worker_id, "Vast instance running");
            }
            ProviderEvent::Exited { worker_id, reason } => {
                tracing::warn!(worker = worker_id, reason = %reason, "Vast instance down");
            }
        }
        if let Some(s) = self.sink() {
            let _ = s.send(ev).await;
        }
    }

    async fn launch(self: &Arc<Self>, spec: LaunchSpec) -> Result<(), ProviderError> {
        let worker = spec.worker_id;
        let group = VastGroup::from_fields(&spec.vast)
            .map_err(|e| ProviderError(format!("workergroup {}: {e}", spec.workergroup_id)))?;
        self.ensure_polling();
        let Some(launch) = self.fleet().begin(worker, group.search.interruptible) else {
            return Ok(());
        };
        let placed = self.place(&spec, &group, launch).await;
        match placed {
            Ok(p) => {
                if self.fleet().placed(worker, launch, p, Instant::now()) {
                    tracing::info!(
                        worker,
                        instance = p.id,
                        machine = p.machine,
                        "Vast instance created"
                    );
                    if self.fleet().take_stop_wanted(worker) {
                        // Stopped while it was being created: the record says stopped.
                        if let Err(e) = self.stop_instance(worker).await {
                            tracing::warn!(worker, error = %e,
                                           "could not stop an instance stopped while created");
                        }
                    }
                    Ok(())
                } else {
                    self.destroy_doomed().await;
                    Err(ProviderError(
                        "the worker was destroyed while its instance was created".into(),
                    ))
                }
            }
            Err(e) => {
                self.fleet().abandon(worker, launch);
                Err(e)
            }
        }
    }

    /// Searches and creates until an instance exists (see the module docs).
    async fn place(
        &self,
        spec: &LaunchSpec,
        group: &VastGroup,
        launch: u64,
    ) -> Result<Placed, ProviderError> {
        let worker = spec.worker_id;
        let label = self.fleet().label(worker);
        let env = group.env(spec, &self.cfg.backend);
        let max = self.cfg.create_attempts.max(1);
        let mut tried = HashSet::new();
        let mut attempts = 0;
        let mut last = String::new();
        let gone = || ProviderError("the worker was destroyed while it was launched".into());
        while attempts < max {
            if !self.fleet().current(worker, launch) {
                return Err(gone());
            }
            if self.stop.is_cancelled() {
                return Err(ProviderError("the control plane is shutting down".into()));
            }
            let offers = self
                .api
                .search(&group.search.body())
                .await
                .map_err(|e| ProviderError(format!("searching Vast offers: {e}")))?;
            let found = offers.len();
            let bad = self.fleet().bad_machines(Instant::now());
            let candidates = group.search.pick(offers, &bad, &tried);
            if candidates.is_empty() {
                return Err(ProviderError(if tried.is_empty() {
                    format!(
                        "no Vast offer matches the workergroup ({found} found, none within \
                         its price cap and off the machines that failed recently)"
                    )
                } else {
                    format!("no Vast offer left to try after {attempts} create(s); last: {last}")
                }));
            }
            let mut candidates = candidates;
            while attempts < max && !candidates.is_empty() {
                if !self.fleet().current(worker, launch) {
                    return Err(gone());
                }
                let Some(claimed) = self.fleet().claim_first(&mut candidates) else {
                    break;
                };
                let offer = candidates.remove(0);
                attempts += 1;
                let price = group.search.price(&offer);
                let body = group.create_body(&env, &label, price);
                tracing::debug!(
                    worker,
                    offer = offer.id,
                    machine = offer.machine_id,
                    price,
                    gpu = offer.gpu_name.as_deref(),
                    "creating a Vast instance"
                );
                let created = self.api.create(offer.id, &body).await;
                self.fleet().release(claimed);
                match created {
                    Ok(id) => {
                        return Ok(Placed {
                            id,
                            machine: offer.machine_id,
                        })
                    }
                    Err(e @ (ApiError::Unknown(_) | ApiError::Decode(_))) => {
                        tracing::warn!(worker, offer = offer.id, error = %e,
                                       "create answer lost; looking for the instance by label");
                        let rows = self.api.instances(Patience::Persist).await.map_err(|l| {
                            ProviderError(format!(
                                "creating on offer {}: {e}; could not check: {l}",
                                offer.id
                            ))
                        })?;
                        if let Some(p) = self.fleet().find(&rows, worker) {
                            tracing::info!(worker, instance = p.id, "the lost create had landed");
                            return Ok(p);
                        }
                        tried.insert(offer.id);
                        last = format!("offer {}: {e}; no instance appeared", offer.id);
                    }
                    Err(e @ (ApiError::Rejected { .. } | ApiError::NotFound)) => {
                        tracing::info!(worker, offer = offer.id, error = %e,
                                       "Vast refused the create (offer taken?); trying the next offer");
                        tried.insert(offer.id);
                        last = format!("offer {}: {e}", offer.id);
                    }
                    Err(e) => {
                        return Err(ProviderError(format!(
                            "creating an instance on offer {}: {e}",
                            offer.id
                        )))
                    }
                }
            }
        }
        Err(ProviderError(format!(
            "no Vast instance after {attempts} create attempt(s); last: {last}"
        )))
    }

    async fn stop_instance(&self, worker: i64) -> Result<(), ProviderError> {
        let Some(id) = self.fleet().instance(worker) else {
            // A launch still creating stops its instance once it exists.
            self.fleet().stop_when_placed(worker);
            return Ok(());
        };
        match self.api.set_state(id, "stopped").await {
            Ok(()) => {
                self.fleet().stopped(worker);
                tracing::info!(worker, instance = id, "Vast instance stopped");
                Ok(())
            }
            Err(ApiError::NotFound) => {
                self.fleet().lost(worker);
                Ok(())
            }
            Err(e) => Err(ProviderError(format!("stopping Vast instance {id}: {e}"))),
        }
    }

    async fn resume(self: &Arc<Self>, spec: LaunchSpec) -> Result<(), ProviderError> {
        let worker = spec.worker_id;
        self.ensure_polling();
        let target = self.fleet().resume_target(worker);
        match target {
            ResumeTarget::AlreadyUp => Ok(()),
            ResumeTarget::Restart(id) => match self.api.set_state(id, "running").await {
                Ok(()) => {
                    self.fleet().resumed(worker, Instant::now());
                    tracing::info!(worker, instance = id, "Vast instance resuming");
                    Ok(())
                }
                Err(ApiError::NotFound) => {
                    self.fleet().lost(worker);
                    self.fleet().forget(worker);
                    self.launch(spec).await
                }
                Err(e) => Err(ProviderError(format!("resuming Vast instance {id}: {e}"))),
            },
            ResumeTarget::Fresh => {
                self.fleet().forget(worker);
                self.launch(spec).await
            }
        }
    }

    async fn destroy(&self, worker: i64) -> Result<(), ProviderError> {
        let Some(p) = self.fleet().remove(worker, "its worker was destroyed") else {
            return Ok(());
        };
        match self.api.destroy(p.id, Patience::Once).await {
            Ok(()) => {
                self.fleet().destroyed(p.id);
                tracing::info!(worker, instance = p.id, "destroyed a Vast instance");
            }
            Err(e) => {
                tracing::warn!(worker, instance = p.id, error = %e,
                               "destroying a Vast instance failed; retrying every poll");
            }
        }
        Ok(())
    }

    async fn adopt(self: &Arc<Self>, worker_ids: Vec<i64>, cold: Vec<i64>) -> Vec<i64> {
        self.ensure_polling();
        match self.api.instances(Patience::Once).await {
            Ok(rows) => {
                let got = self
                    .fleet()
                    .adopt(&rows, &worker_ids, &cold, Instant::now());
                let strays = self.fleet().doomed().len();
                tracing::info!(
                    adopted = got.adopted.len(),
                    wanted = worker_ids.len(),
                    cold = cold.len(),
                    restopped = got.to_stop.len(),
                    strays,
                    "Vast instances at start"
                );
                for worker in got.to_stop {
                    let this = Arc::clone(self);
                    self.tasks.spawn(async move {
                        if let Err(e) = this.stop_instance(worker).await {
                            tracing::warn!(worker, error = %e, "could not stop a cold worker's instance found running at start");
                        }
                    });
                }
                got.adopted
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list Vast instances at start; the workers \
                               are taken back on trust and matched at the first good poll");
                self.fleet().adopt_blind(&worker_ids)
            }
        }
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // A last try for the doomed; what stays is destroyed by the next start's adopt.
        self.destroy_doomed().await;
        let left = self.fleet().doomed().len();
        if left > 0 {
            tracing::warn!(
                left,
                "Vast instances still to destroy at shutdown; the next start destroys them"
            );
        }
        self.api_cancel.cancel();
    }
}

impl Provider for VastProvider {
    fn name(&self) -> &'static str {
        "vast"
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Vast
    }

    fn subscribe(&self, events: EventSink) {
        match self.inner.events.lock() {
            Ok(mut g) => *g = Some(events),
            Err(p) => *p.into_inner() = Some(events),
        }
    }

    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { self.inner.launch(spec).await }.boxed()
    }

    fn stop(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { self.inner.stop_instance(worker_id).await }.boxed()
    }

    fn resume(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { self.inner.resume(spec).await }.boxed()
    }

    fn destroy(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { self.inner.destroy(worker_id).await }.boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>> {
        async move {
            self.inner.shutdown().await;
            Vec::new()
        }
        .boxed()
    }

    fn check_group(
        &self,
        vast: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ProviderError> {
        VastGroup::from_fields(vast)
            .map(|_| ())
            .map_err(|e| ProviderError(e.0))
    }

    fn adopt(&self, up: Vec<i64>, cold: Vec<i64>) -> BoxFuture<'_, Option<Vec<i64>>> {
        async move { Some(self.inner.adopt(up, cold).await) }.boxed()
    }
}
