//! [`Control`]: the orchestrator. It owns the components behind one mutex and runs each
//! operation as a short sequence of their calls:
//!
//! | Component | File | Owns |
//! |---|---|---|
//! | [`Catalog`] | `catalog.rs` | endpoints and workergroups, name uniqueness, ids |
//! | [`Registry`] | `registry.rs` | workers, their states, pending load, signature cache |
//! | [`Queue`] | `queue.rs` | request lifetimes, the global FIFO, the `request_idx` counter |
//! | [`Stats`] | `stats.rs` | per-endpoint routed load → rate, last request |
//! | [`Store`] | `store/` | persistence (write-behind; SQLite or PostgreSQL) |
//!
//! The operations live where their names say: `/route/` and dispatch in `route/`, reports
//! and provider events in `control/reports.rs`, the console API in `control/console.rs`, who
//! may see what in `control/auth.rs`, the autoscaler's view and actions in `autoscale/`.
//!
//! Every critical section is short and synchronous (no `.await`, no RSA, no I/O inside); the
//! store is written through without blocking. RSA signing happens outside the lock; the URL
//! signature is cached per worker URL (PKCS#1 v1.5 is deterministic).
//!
//! Monotonic time is tokio's clock ([`tokio::time::Instant`]) counted in seconds from the
//! control plane's start, so tests can pause and advance it; wall-clock Unix seconds
//! ([`unix_now`]) are only for the wire and the records.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_protocol::{RouteReady, RouteWaiting, SigningKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::autoscale::rollout::Rollouts;
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::error::RunError;
use crate::events::Events;
use crate::joins::JoinTokens;
use crate::provider::{ProviderEvent, Providers};
use crate::queue::Queue;
use crate::registry::{Registry, WorkerInfo, WorkerState};
use crate::stats::Stats;
use crate::store::{Loaded, PgOptions, PostgresStore, SqliteStore, Store};
use crate::telemetry;

mod auth;
mod console;
mod fleet;
mod reports;

pub use fleet::{GroupScale, JoinRequest, Joined};
#[cfg(test)]
mod tests;

pub(crate) use auth::secret_eq;

const KV_SIGNING_KEY: &str = "signing_key_pem";
const KV_ACCOUNT_KEY: &str = "account_api_key";

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// A random UUIDv4 string (for `__request_id`).
pub fn uuid4() -> String {
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Result of a `/route/` call.
#[derive(Debug, Clone)]
pub enum RouteOutcome {
    /// A worker was chosen.
    Ready(Box<RouteReady>),
    /// Keep polling.
    Waiting(RouteWaiting),
}

/// The components, guarded together by [`Control`]'s mutex.
pub(crate) struct State {
    pub(crate) catalog: Catalog,
    pub(crate) registry: Registry,
    pub(crate) joins: JoinTokens,
    pub(crate) queue: Queue,
    pub(crate) stats: Stats,
    /// Recent history per endpoint and workergroup (the logs routes).
    pub(crate) events: Events,
    /// Rolling updates under way, by workergroup.
    pub(crate) rollouts: Rollouts,
    /// Breaks exact ties between workers.
    pub(crate) rng: StdRng,
}

/// Shared control-plane state; cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) key: SigningKey,
    pubkey_pem: String,
    pub(crate) account_key: String,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) providers: Providers,
    state: Mutex<State>,
    pub(crate) changed: Notify,
    epoch: Instant,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
    events: Mutex<Option<mpsc::Receiver<ProviderEvent>>>,
    pub(crate) last_tick: Mutex<f64>,
}

impl Control {
    /// Opens the store of `settings` (PostgreSQL with `--store`, else the SQLite file) and
    /// starts the control plane on it ([`Control::with_store`]). Opening (SQLite's I/O, the
    /// PostgreSQL connect with its retries) runs on the blocking pool.
    pub async fn new(
        settings: Settings,
        providers: impl Into<Providers>,
    ) -> Result<Control, RunError> {
        let db = settings.db.clone();
        let postgres = settings.postgres.clone();
        let (store, loaded) =
            tokio::task::spawn_blocking(move || -> Result<(Arc<dyn Store>, Loaded), String> {
                Ok(match postgres {
                    Some(target) => {
                        let (s, l) = PostgresStore::open_with(target, PgOptions::default())?;
                        (Arc::new(s), l)
                    }
                    None => {
                        let (s, l) = SqliteStore::open(db.as_deref())?;
                        (Arc::new(s), l)
                    }
                })
            })
            .await
            .map_err(|e| RunError::Store(e.to_string()))?
            .map_err(RunError::Store)?;
        Control::with_store(settings, providers, store, loaded).await
    }

    /// Starts the control plane on an open store and what it read: loads or creates the keys
    /// (RSA key generation on the blocking pool), restores the components, subscribes to the
    /// providers and takes back the instances that outlived the previous run.
    pub async fn with_store(
        settings: Settings,
        providers: impl Into<Providers>,
        store: Arc<dyn Store>,
        loaded: Loaded,
    ) -> Result<Control, RunError> {
        let (key, fresh_key) = {
            let pem = loaded.kv.get(KV_SIGNING_KEY).cloned();
            let preset = settings.signing_key_pem.clone();
            let bits = settings.key_bits;
            tokio::task::spawn_blocking(move || {
                let (key, fresh) = match (pem, preset) {
                    (Some(pem), _) => (SigningKey::from_pem(&pem), false),
                    (None, Some(pem)) => (SigningKey::from_pem(&pem), true),
                    (None, None) => (SigningKey::generate(bits), true),
                };
                key.map(|k| (k, fresh))
                    .map_err(|e| RunError::Key(e.to_string()))
            })
            .await
            .map_err(|e| RunError::Store(e.to_string()))??
        };
        if fresh_key {
            let pem = key.to_pem().map_err(|e| RunError::Key(e.to_string()))?;
            store.set_kv(KV_SIGNING_KEY, pem);
            tracing::info!("generated a new signing key");
        }
        let account_key = match (&settings.api_key, loaded.kv.get(KV_ACCOUNT_KEY)) {
            (Some(k), _) => k.clone(),
            (None, Some(k)) => k.clone(),
            (None, None) => {
                let k = random_hex(24);
                store.set_kv(KV_ACCOUNT_KEY, k.clone());
                tracing::info!("generated a new account API key");
                k
            }
        };
        let _ = telemetry::handle();
        let mut state = restore(&loaded, store.as_ref(), settings.replica.is_some());
        let pubkey_pem = key.public_key().to_pem();
        let providers = providers.into();
        let (tx, rx) = mpsc::channel(1024);
        for p in providers.iter() {
            p.subscribe(tx.clone());
        }
        adopt_instances(&mut state.registry, &providers, store.as_ref()).await;
        if let Err(e) = store.flush().await {
            telemetry::store_flush_behind("start", &e);
        }
        Ok(Control {
            shared: Arc::new(Shared {
                settings,
                key,
                pubkey_pem,
                account_key,
                store,
                providers,
                state: Mutex::new(state),
                changed: Notify::new(),
                epoch: Instant::now(),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                events: Mutex::new(Some(rx)),
                last_tick: Mutex::new(0.0),
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        match self.shared.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Monotonic seconds since start, on tokio's clock.
    pub(crate) fn mono(&self) -> f64 {
        self.shared.epoch.elapsed().as_secs_f64()
    }

    /// The stale limit, seconds.
    pub(crate) fn stale(&self) -> f64 {
        self.shared.settings.stale_after.as_secs_f64()
    }

    /// The store.
    pub(crate) fn store(&self) -> &dyn Store {
        self.shared.store.as_ref()
    }

    /// Settings.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// The account API key.
    pub fn account_key(&self) -> &str {
        &self.shared.account_key
    }

    /// PEM of the signing key's public half (`GET /pubkey/`).
    pub fn pubkey_pem(&self) -> &str {
        &self.shared.pubkey_pem
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.shared.key
    }

    /// Resolves when capacity or queue state may have changed.
    pub fn changed(&self) -> &Notify {
        &self.shared.changed
    }

    /// Background tasks' owner.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tasks
    }

    /// Cancelled on shutdown.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.shared.cancel
    }

    pub(crate) fn take_events(&self) -> Option<mpsc::Receiver<ProviderEvent>> {
        match self.shared.events.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }
    }
}

impl Control {
    /// Number of queued requests.
    pub fn queue_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Next `request_idx` that would be handed out.
    pub fn next_request_idx(&self) -> u64 {
        self.lock().queue.peek_next()
    }

    /// A worker's record as the API shows it.
    pub fn worker(&self, id: i64) -> Option<serde_json::Value> {
        let info = self.lock().registry.get(id).map(|w| w.info())?;
        serde_json::to_value(info).ok()
    }

    /// A worker's record.
    pub fn worker_info(&self, id: i64) -> Option<WorkerInfo> {
        self.lock().registry.get(id).map(|w| w.info())
    }

    /// Ids and states of all workers.
    pub fn worker_states(&self) -> Vec<(i64, WorkerState)> {
        self.lock()
            .registry
            .iter()
            .map(|w| (w.id(), w.state()))
            .collect()
    }

    /// Cancels the autoscaler, stops the provider's instances and records them as stopped.
    ///
    /// [`crate::run`] calls this while its HTTP server still accepts connections: a stopping
    /// worker reports "Worker shutting down" and flushes its finished requests before it
    /// exits, and with the listener already closed it would keep retrying until the stop
    /// grace ends in SIGKILL. Calling it again does nothing more.
    pub async fn stop_workers(&self) {
        self.shared.cancel.cancel();
        let mut stopped = Vec::new();
        for p in self.shared.providers.iter() {
            stopped.extend(p.shutdown().await);
        }
        let mono = self.mono();
        self.lock()
            .registry
            .stopped_at_shutdown(&stopped, mono, self.store());
    }

    /// Stops the provider's instances and records them as stopped ([`Control::stop_workers`]);
    /// waits for background tasks; flushes the database.
    pub async fn shutdown(&self) {
        self.stop_workers().await;
        self.shared.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.shared.tasks.wait())
            .await;
        self.durable("shutdown").await;
    }

    /// A replica's hand-over ([`crate::replica`]): cancels the autoscaler and the background
    /// loops, waits for them (bounded), makes every change durable and closes the store. The
    /// instances keep running: the next owner takes them back from the records.
    pub async fn hand_over(&self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.shared.tasks.wait())
            .await;
        for p in self.shared.providers.iter() {
            p.hand_over().await;
        }
        self.durable("hand-over").await;
        let store = self.shared.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }

    /// Awaits the store's flush before answering `what` as done. When the database cannot
    /// confirm in time the answer goes out anyway: the in-memory state already holds the change
    /// (a retry would conflict with it) and its write stays queued, in order, until the
    /// database takes it. Logged and counted (`ferry_control_store_flush_behind_total`).
    pub(crate) async fn durable(&self, what: &'static str) {
        if let Err(e) = self.shared.store.flush().await {
            telemetry::store_flush_behind(what, &e);
        }
    }
}

/// Takes back the instances that outlived the previous run (a crash leaves them serving). A
/// worker the store counts as up whose instance is gone is recorded as stopped: cold, so the
/// autoscaler resumes it from its disk when it is needed.
async fn adopt_instances(registry: &mut Registry, providers: &Providers, store: &dyn Store) {
    for p in providers.iter() {
        let up = registry.coming(p.kind());
        let cold = registry.cold(p.kind());
        let Some(adopted) = p.adopt(up.clone(), cold).await else {
            continue;
        };
        for id in up.iter().filter(|id| !adopted.contains(id)) {
            registry.lost(*id, store);
        }
        if !up.is_empty() {
            tracing::info!(
                provider = p.name(),
                adopted = adopted.len(),
                lost = up.len() - adopted.len(),
                "instances after restart"
            );
        }
    }
}

pub(crate) fn restore(loaded: &Loaded, store: &dyn Store, keep_idle: bool) -> State {
    let state = State {
        catalog: Catalog::restore(loaded),
        registry: Registry::restore(loaded, keep_idle),
        joins: JoinTokens::restore(loaded),
        queue: Queue::restore(loaded, store),
        stats: Stats::default(),
        events: Events::default(),
        rollouts: Rollouts::default(),
        rng: StdRng::from_entropy(),
    };
    tracing::info!(
        endpoints = state.catalog.endpoints().count(),
        workergroups = state.catalog.groups().count(),
        workers = state.registry.len(),
        queued = state.queue.len(),
        next_request_idx = state.queue.peek_next(),
        "state restored"
    );
    state
}
