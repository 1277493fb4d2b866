//! [`Control`]: the control plane's shared state and every operation on it.
//!
//! One mutex guards the tables (endpoints, workergroups, workers, requests); every critical
//! section is short and synchronous (no `.await`, no RSA, no I/O inside), and every change is
//! written through to the [`Store`] thread. RSA signing happens outside the lock; the URL
//! signature is cached per worker URL (PKCS#1 v1.5 is deterministic).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{
    DeleteRequests, FerryClaims, RouteReady, RouteWaiting, SigningKey, WorkerStatus,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::autoscale::{Action, Decision, EndpointView, GroupView, Tuning, WorkerView};
use crate::config::Settings;
use crate::endpoint::{self, Endpoint, EndpointParams, Workergroup};
use crate::error::{ControlError, RunError, ROUTE_BAD_REQUEST};
use crate::provider::{LaunchSpec, Provider, ProviderEvent};
use crate::queue::{Queue, Req, ReqState};
use crate::registry::{WorkerRec, WorkerState};
use crate::route::{self, Candidate};
use crate::store::{kind, Loaded, Store};
use crate::telemetry;

const KV_SIGNING_KEY: &str = "signing_key_pem";
const KV_ACCOUNT_KEY: &str = "account_api_key";
const KV_IDX_CEILING: &str = "request_idx_ceiling";
const KV_NEXT_ID: &str = "next_id";
const KV_NEXT_WORKER_ID: &str = "next_worker_id";
/// A worker that stays in creating/loading this long is treated as failed.
const LOAD_DEADLINE_S: f64 = 3600.0;
/// An errored worker stays visible this long before it is destroyed and replaced.
const ERROR_HOLD_S: f64 = 5.0;
/// Assigned requests are forgotten after this long without a word.
const REQUEST_TTL_S: f64 = 3600.0;

/// Unix seconds now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn random_hex(bytes: usize) -> String {
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

#[derive(Debug, Default)]
struct EpStats {
    routed: f64,
    rate: f64,
    last_request: Option<f64>,
}

struct Inner {
    endpoints: BTreeMap<i64, Endpoint>,
    groups: BTreeMap<i64, Workergroup>,
    workers: BTreeMap<i64, WorkerRec>,
    q: Queue,
    stats: HashMap<i64, EpStats>,
    next_id: i64,
    next_worker_id: i64,
    rng: StdRng,
}

struct Grant {
    worker: i64,
    url: String,
    signature: Option<String>,
    reqnum: u64,
}

/// Shared control-plane state; cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    key: SigningKey,
    pubkey_pem: String,
    account_key: String,
    store: Store,
    provider: Arc<dyn Provider>,
    inner: Mutex<Inner>,
    changed: Notify,
    epoch: Instant,
    tasks: TaskTracker,
    cancel: CancellationToken,
    events: Mutex<Option<mpsc::Receiver<ProviderEvent>>>,
    last_tick: Mutex<f64>,
}

mod admin;
mod routing;
mod scaling;

impl Control {
    /// Opens the database, loads or creates the keys, restores the tables and subscribes to
    /// the provider. Blocking work (SQLite, RSA key generation) runs on the blocking pool.
    pub async fn new(settings: Settings, provider: Arc<dyn Provider>) -> Result<Control, RunError> {
        let db = settings.db.clone();
        let bits = settings.key_bits;
        let preset_pem = settings.signing_key_pem.clone();
        let (store, loaded, key, fresh_key) = tokio::task::spawn_blocking(move || {
            let (store, loaded) = Store::open(db.as_deref()).map_err(RunError::Store)?;
            let (key, fresh) = match loaded.kv.get(KV_SIGNING_KEY) {
                Some(pem) => (
                    SigningKey::from_pem(pem).map_err(|e| RunError::Key(e.to_string()))?,
                    false,
                ),
                None => match preset_pem {
                    Some(pem) => (
                        SigningKey::from_pem(&pem).map_err(|e| RunError::Key(e.to_string()))?,
                        true,
                    ),
                    None => (
                        SigningKey::generate(bits).map_err(|e| RunError::Key(e.to_string()))?,
                        true,
                    ),
                },
            };
            Ok::<_, RunError>((store, loaded, key, fresh))
        })
        .await
        .map_err(|e| RunError::Store(e.to_string()))??;
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
        let mut inner = restore(&loaded, &store)?;
        let pubkey_pem = key.public_key().to_pem();
        let (tx, rx) = mpsc::channel(1024);
        provider.subscribe(tx);
        adopt_instances(&mut inner, provider.as_ref(), &store).await;
        store.flush().await;
        Ok(Control {
            shared: Arc::new(Shared {
                settings,
                key,
                pubkey_pem,
                account_key,
                store,
                provider,
                inner: Mutex::new(inner),
                changed: Notify::new(),
                epoch: Instant::now(),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
                events: Mutex::new(Some(rx)),
                last_tick: Mutex::new(0.0),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.shared.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn mono(&self) -> f64 {
        self.shared.epoch.elapsed().as_secs_f64()
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

fn exclude_for(idx: u64, ex: &[String]) -> Option<(u64, &[String])> {
    if ex.is_empty() {
        None
    } else {
        Some((idx, ex))
    }
}

impl Inner {
    fn alloc_id(&mut self, store: &Store) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        store.set_kv(KV_NEXT_ID, self.next_id.to_string());
        id
    }

    fn release(&mut self, idx: u64) {
        if let Some(Req {
            state: ReqState::Assigned { worker, .. },
            ..
        }) = self.q.requests.get(&idx)
        {
            if let Some(w) = self.workers.get_mut(worker) {
                w.pending.remove(&idx);
            }
        }
    }

    fn doom(&mut self, pred: impl Fn(&WorkerRec) -> bool, mono: f64) -> Vec<i64> {
        let mut out = Vec::new();
        for w in self.workers.values_mut().filter(|w| pred(w)) {
            if w.state != WorkerState::Destroying {
                w.set_state(WorkerState::Destroying, mono);
                out.push(w.id);
            }
        }
        out
    }

    fn status_line(&self, ep_id: i64, mono: f64, stale: f64) -> String {
        let ws: Vec<&WorkerRec> = self
            .workers
            .values()
            .filter(|w| w.endpoint_id == ep_id)
            .collect();
        let count = |f: &dyn Fn(&WorkerRec) -> bool| ws.iter().filter(|w| f(w)).count();
        let ready = count(&|w| w.routable(mono, stale));
        let loading = count(&|w| w.state.is_coming());
        let standby = count(&|w| matches!(w.state, WorkerState::Stopped | WorkerState::Stopping));
        let error = count(&|w| w.state == WorkerState::Error);
        let (queued, _) = self.q.queued_for(ep_id);
        format!(
            "total workers: {}, loading workers: {loading}, standby workers: {standby}, error workers: {error}, ready workers: {ready}, queued requests: {queued}",
            ws.len()
        )
    }

    fn view(&mut self, ep_id: i64, mono: f64, stale: f64, dt: f64) -> Option<EndpointView> {
        let ep = self.endpoints.get(&ep_id)?;
        let st = self.stats.entry(ep_id).or_default();
        let inst = st.routed / dt;
        st.routed = 0.0;
        // Rises within ~2 s, decays over ~20 s, so a burst scales up fast and a lull does not flap.
        let alpha = if inst > st.rate {
            (dt / 2.0).min(1.0)
        } else {
            (dt / 20.0).min(1.0)
        };
        st.rate += alpha * (inst - st.rate);
        let load_rate = st.rate;
        let since_last_request = st.last_request.map_or(f64::INFINITY, |t| mono - t);
        let workers: Vec<WorkerView> = self
            .workers
            .values()
            .filter(|w| w.endpoint_id == ep_id && w.state != WorkerState::Destroying)
            .map(|w| {
                let state = if w.state == WorkerState::Idle
                    && !w.routable(mono, stale)
                    && w.silence(mono) > stale
                {
                    // Silent: not usable now; counted as coming until the error deadline.
                    WorkerState::Loading
                } else {
                    w.state
                };
                WorkerView {
                    id: w.id,
                    state,
                    max_perf: w.max_perf,
                    load: w.load(),
                    idle_for: mono - w.last_busy,
                    in_state_for: mono - w.state_since,
                }
            })
            .collect();
        let groups = self
            .groups
            .values()
            .filter(|g| g.endpoint_id == ep_id)
            .map(|g| GroupView {
                id: g.id,
                workers: self
                    .workers
                    .values()
                    .filter(|w| w.workergroup_id == g.id && w.state != WorkerState::Destroying)
                    .count() as u32,
                max_workers: g.max_workers,
            })
            .collect();
        let (queued, queued_load) = self.q.queued_for(ep_id);
        Some(EndpointView {
            params: ep.params.clone(),
            workers,
            groups,
            queued,
            queued_load,
            load_rate,
            since_last_request,
        })
    }
}

/// Takes back the instances that outlived the previous run (a crash leaves them serving). A
/// worker the store counts as up whose instance is gone is recorded as stopped: cold, so the
/// autoscaler resumes it from its disk when it is needed.
async fn adopt_instances(inner: &mut Inner, provider: &dyn Provider, store: &Store) {
    let up: Vec<i64> = inner
        .workers
        .values()
        .filter(|w| w.state.is_coming())
        .map(|w| w.id)
        .collect();
    let Some(adopted) = provider.adopt(up.clone()).await else {
        return;
    };
    for id in up.iter().filter(|id| !adopted.contains(id)) {
        if let Some(w) = inner.workers.get_mut(id) {
            tracing::warn!(
                worker = id,
                "instance not running after the restart; now stopped"
            );
            w.set_state(WorkerState::Stopped, 0.0);
            store.put_json(kind::WORKER, w.id, &*w);
        }
    }
    if !up.is_empty() {
        tracing::info!(
            adopted = adopted.len(),
            lost = up.len() - adopted.len(),
            "instances after restart"
        );
    }
}

fn restore(loaded: &Loaded, store: &Store) -> Result<Inner, RunError> {
    let parse_kv = |k: &str| loaded.kv.get(k).and_then(|v| v.parse::<i64>().ok());
    let mut inner = Inner {
        endpoints: BTreeMap::new(),
        groups: BTreeMap::new(),
        workers: BTreeMap::new(),
        q: Queue::new(
            loaded
                .kv
                .get(KV_IDX_CEILING)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0),
        ),
        stats: HashMap::new(),
        next_id: parse_kv(KV_NEXT_ID).unwrap_or(1),
        next_worker_id: parse_kv(KV_NEXT_WORKER_ID).unwrap_or(1001),
        rng: StdRng::from_entropy(),
    };
    // Persist a fresh ceiling block at once so a crash right after start reuses nothing.
    let (_, ceiling) = inner.q.alloc();
    if let Some(c) = ceiling {
        store.set_kv(KV_IDX_CEILING, c.to_string());
    }
    for (id, body) in loaded.of(kind::ENDPOINT) {
        match serde_json::from_str::<Endpoint>(body) {
            Ok(e) => {
                inner.endpoints.insert(id, e);
            }
            Err(e) => tracing::error!(id, error = %e, "unreadable endpoint record skipped"),
        }
    }
    for (id, body) in loaded.of(kind::WORKERGROUP) {
        match serde_json::from_str::<Workergroup>(body) {
            Ok(w) => {
                inner.groups.insert(id, w);
            }
            Err(e) => tracing::error!(id, error = %e, "unreadable workergroup record skipped"),
        }
    }
    for (id, body) in loaded.of(kind::WORKER) {
        match serde_json::from_str::<WorkerRec>(body) {
            Ok(mut w) => {
                // Until it reports again, a worker that was running is "loading"; stopped and
                // errored ones keep their state.
                w.state = match w.state {
                    WorkerState::Stopped | WorkerState::Stopping => WorkerState::Stopped,
                    WorkerState::Error => WorkerState::Error,
                    WorkerState::Destroying => WorkerState::Error,
                    _ => WorkerState::Loading,
                };
                inner.workers.insert(id, w);
            }
            Err(e) => tracing::error!(id, error = %e, "unreadable worker record skipped"),
        }
    }
    for (id, body) in loaded.of(kind::QUEUED) {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let (Some(ep), Some(cost)) = (v["endpoint_id"].as_i64(), v["cost"].as_f64()) else {
            continue;
        };
        let idx = id as u64;
        inner.q.requests.insert(
            idx,
            Req {
                endpoint_id: ep,
                cost,
                state: ReqState::Queued,
                touched: 0.0,
                persisted: true,
            },
        );
        inner.q.order.push_back(idx);
    }
    tracing::info!(
        endpoints = inner.endpoints.len(),
        workergroups = inner.groups.len(),
        workers = inner.workers.len(),
        queued = inner.q.order.len(),
        next_request_idx = inner.q.peek_next(),
        "state restored"
    );
    Ok(inner)
}
