//! The autoscaler's side of [`Control`]: one tick (housekeeping, a view and `decide` per
//! endpoint), the bookkeeping each decision needs at once under the lock, and the provider
//! calls that carry it out in background tasks.

use super::view::{endpoint_view, status_line, Sources};
use super::{decide_with, Action, Decision, Tuning};
use crate::config::ProviderKind;
use crate::control::{random_hex, unix_now, Control, State};
use crate::events::Level;
use crate::provider::LaunchSpec;
use crate::registry::Origin;
use crate::telemetry;

/// An errored worker stays visible this long before it is destroyed and replaced.
const ERROR_HOLD_S: f64 = 5.0;
/// Assigned requests are forgotten after this long without a word.
const REQUEST_TTL_S: f64 = 3600.0;

/// A provider call to make once the lock is released.
pub(super) enum Effect {
    Launch(ProviderKind, LaunchSpec),
    Act(Action, Option<LaunchSpec>),
}

impl Control {
    /// One autoscaler step: housekeeping, `decide` per endpoint, and the actions started.
    pub fn autoscale_tick(&self) -> Vec<Decision> {
        let (mono, stale) = (self.mono(), self.stale());
        let dt = {
            let mut last = match self.shared.last_tick.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let dt = (mono - *last).max(1e-3);
            *last = mono;
            dt
        };
        let tuning = Tuning {
            idle_stop_after: self.shared.settings.idle_stop_after.as_secs_f64(),
            error_hold: ERROR_HOLD_S,
        };
        let mut all = Vec::new();
        let mut effects = Vec::new();
        {
            let mut g = self.lock();
            let s = &mut *g;
            self.housekeeping(s, mono, stale);
            let ids: Vec<i64> = s.catalog.endpoints().map(|e| e.id).collect();
            for ep_id in ids {
                let src = Sources {
                    catalog: &s.catalog,
                    registry: &s.registry,
                    queue: &s.queue,
                    stats: &mut s.stats,
                };
                let Some(view) = endpoint_view(src, ep_id, mono, stale, dt) else {
                    continue;
                };
                let policy = view.params.autoscale_policy;
                for d in decide_with(policy, &view, tuning, s.stats.history(ep_id)) {
                    telemetry::scaling(ep_id, &d);
                    let group = match d.action {
                        Action::Launch { workergroup_id, .. } => Some(workergroup_id),
                        Action::Resume { worker_id }
                        | Action::Stop { worker_id }
                        | Action::Destroy { worker_id } => {
                            s.registry.get(worker_id).map(|w| w.workergroup_id())
                        }
                    };
                    let text = format!("autoscaler: {} ({})", describe(&d.action), d.reason);
                    s.events
                        .record(unix_now(), ep_id, group, Level::Info0, text);
                    self.begin(s, &d.action, mono, &mut effects);
                    all.push(d);
                }
            }
            self.step_rollouts(s, mono, &mut effects);
            self.observe(s, mono, stale);
            self.publish_desired(s);
            telemetry::workers_by_state(s.registry.iter().map(|w| w.state()));
            telemetry::queue_length(s.queue.len());
        }
        for effect in effects {
            let this = self.clone();
            match effect {
                Effect::Launch(kind, spec) => self.shared.tasks.spawn(async move {
                    let id = spec.worker_id;
                    let launched = match this.shared.providers.get(kind) {
                        Ok(p) => p.launch(spec).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = launched {
                        tracing::warn!(worker = id, error = %e, "launch failed");
                        this.mark_error(id, format!("launch failed: {e}"));
                    }
                }),
                Effect::Act(action, spec) => self
                    .shared
                    .tasks
                    .spawn(async move { this.apply(action, spec).await }),
            };
        }
        all
    }

    /// The bookkeeping of a decision, under the lock: new records for launches, states for
    /// resume, stop and destroy. The provider calls follow as `effects`.
    pub(super) fn begin(
        &self,
        s: &mut State,
        action: &Action,
        mono: f64,
        effects: &mut Vec<Effect>,
    ) {
        let store = self.store();
        match *action {
            Action::Launch {
                workergroup_id,
                count,
            } => {
                for _ in 0..count {
                    let Some(origin) = self.origin(s, workergroup_id) else {
                        break;
                    };
                    let id = s
                        .registry
                        .create(origin, random_hex(16), unix_now(), mono, store);
                    if let Some(spec) = self.spec_for(s, id) {
                        effects.push(Effect::Launch(origin.provider, spec));
                    }
                }
            }
            Action::Resume { worker_id } => {
                if let Some(spec) = self.spec_for(s, worker_id) {
                    s.registry.resuming(worker_id, unix_now(), mono, store);
                    effects.push(Effect::Act(action.clone(), Some(spec)));
                }
            }
            Action::Stop { worker_id } => {
                s.registry.stopping(worker_id, mono);
                effects.push(Effect::Act(action.clone(), None));
            }
            Action::Destroy { worker_id } => {
                s.registry.doom(|w| w.id() == worker_id, mono);
                effects.push(Effect::Act(action.clone(), None));
            }
        }
    }

    /// Carries out a resume, stop or destroy through the provider and records the outcome.
    pub(crate) async fn apply(&self, action: Action, spec: Option<LaunchSpec>) {
        let worker = match action {
            Action::Resume { worker_id }
            | Action::Stop { worker_id }
            | Action::Destroy { worker_id } => worker_id,
            Action::Launch { .. } => return,
        };
        let kind = self.lock().registry.get(worker).map(|w| w.provider());
        let p = match kind.map(|k| self.shared.providers.get(k)) {
            Some(Ok(p)) => p.clone(),
            Some(Err(e)) => {
                tracing::warn!(worker, error = %e, "no provider");
                self.mark_error(worker, e.to_string());
                return;
            }
            None => return,
        };
        match action {
            Action::Resume { worker_id } => {
                if let Some(spec) = spec {
                    if let Err(e) = p.resume(spec).await {
                        tracing::warn!(worker = worker_id, error = %e, "resume failed");
                        self.mark_error(worker_id, format!("resume failed: {e}"));
                    }
                }
            }
            Action::Stop { worker_id } => {
                let r = p.stop(worker_id).await.map_err(|e| e.to_string());
                let mono = self.mono();
                self.lock()
                    .registry
                    .stop_done(worker_id, r, mono, self.store());
            }
            Action::Destroy { worker_id } => {
                if let Err(e) = p.destroy(worker_id).await {
                    tracing::warn!(worker = worker_id, error = %e, "destroy failed");
                }
                self.lock().registry.remove(worker_id, self.store());
            }
            Action::Launch { .. } => {}
        }
        self.shared.changed.notify_waiters();
    }

    /// Worker lifecycle changes and status lines into the logs.
    fn observe(&self, s: &mut State, mono: f64, stale: f64) {
        let unix = unix_now();
        for w in s.registry.iter() {
            let at = (w.endpoint_id(), w.workergroup_id(), w.id());
            s.events.observe_worker(unix, at, w.state(), w.error_msg());
        }
        s.events.sweep(unix, |id| s.registry.get(id).is_some());
        for ep in s.catalog.endpoints() {
            let line = status_line(&s.registry, &s.queue, ep.id, mono, stale);
            s.events.observe_status(unix, ep.id, line);
        }
    }

    fn mark_error(&self, worker_id: i64, msg: String) {
        let mono = self.mono();
        self.lock()
            .registry
            .fail(worker_id, msg, mono, self.store());
    }

    /// Expires pending load, stale workers and unpolled requests; then serves the queue.
    fn housekeeping(&self, s: &mut State, mono: f64, stale: f64) {
        let settings = &self.shared.settings;
        let ttls = (
            settings.pending_ttl.as_secs_f64(),
            settings.queue_ttl.as_secs_f64(),
        );
        s.housekeep(self.store(), mono, stale, ttls);
    }

    /// Where a new worker of `workergroup_id` belongs and which provider makes it.
    pub(crate) fn origin(&self, s: &State, workergroup_id: i64) -> Option<Origin> {
        let g = s.catalog.group(workergroup_id)?;
        Some(Origin {
            endpoint_id: g.endpoint_id,
            workergroup_id,
            provider: g.provider.unwrap_or(self.shared.settings.provider.kind),
        })
    }

    pub(super) fn spec_for(&self, s: &State, worker_id: i64) -> Option<LaunchSpec> {
        let w = s.registry.get(worker_id)?;
        let wg = s.catalog.group(w.workergroup_id())?;
        Some(LaunchSpec {
            worker_id,
            mtoken: w.mtoken().to_owned(),
            control_url: self.shared.settings.report_addr(),
            endpoint: wg.endpoint_name.clone(),
            workergroup_id: wg.id,
            model_cmd: wg.model_cmd.clone(),
            worker_cmd: wg.worker_cmd.clone(),
            backend: wg.backend.clone(),
            env: wg.env.clone(),
            vast: wg.vast.clone(),
        })
    }
}

/// An action as a log line.
fn describe(action: &Action) -> String {
    match action {
        Action::Launch {
            workergroup_id,
            count,
        } => format!("launch {count} worker(s) in workergroup {workergroup_id}"),
        Action::Resume { worker_id } => format!("resume worker {worker_id}"),
        Action::Stop { worker_id } => format!("stop worker {worker_id}"),
        Action::Destroy { worker_id } => format!("destroy worker {worker_id}"),
    }
}

impl State {
    /// The tick's housekeeping at monotonic second `mono`: pending load older than the
    /// pending TTL, stale workers, queued requests unpolled for the queue TTL and assigned ones
    /// silent for an hour are expired; then the queue is served. `ttls` = (pending, queue),
    /// seconds. The control plane's tick and the simulator (`crate::simulate`) both run it.
    pub(crate) fn housekeep(
        &mut self,
        store: &dyn crate::store::Store,
        mono: f64,
        stale: f64,
        (pending_ttl, queue_ttl): (f64, f64),
    ) {
        self.registry.housekeep(mono, stale, pending_ttl, store);
        for (idx, worker) in self.queue.expire(mono, queue_ttl, REQUEST_TTL_S, store) {
            self.registry.release(worker, idx);
        }
        self.dispatch(store, mono, stale, None);
    }
}
