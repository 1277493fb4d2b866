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

pub mod capacity;
mod index;
mod pending;
mod worker;

pub use worker::{WorkerInfo, WorkerRec, WorkerState};

use std::collections::BTreeMap;

use ferry_protocol::WorkerStatus;

use crate::config::ProviderKind;
use crate::control::secret_eq;
use crate::error::ControlError;
use crate::route::Candidate;
use crate::store::{Kind, Loaded, Store};

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
/// - The routing index holds exactly the workers routable by their record, at their current
///   queue time, except ones a route found stale and that have not reported since: every
///   method that changes a record re-keys it (`index.rs`).
#[derive(Debug)]
pub struct Registry {
    workers: BTreeMap<i64, WorkerRec>,
    next_id: i64,
    index: index::RouteIndex,
    /// Whether reports teach each worker's [`capacity`] (on unless switched off).
    learn_capacity: bool,
}

impl Registry {
    /// The registry as the store left it. Until it reports again, a worker that was running is
    /// `loading`; stopped and errored ones keep their state. With `keep_idle` (a replica taking
    /// over from another, whose records are at most moments old) an `idle` worker stays
    /// routable as if it had just reported: its silence counts from now, so one that is gone
    /// turns stale after `--stale-after-s` like any other.
    pub fn restore(loaded: &Loaded, keep_idle: bool) -> Registry {
        let mut workers = BTreeMap::new();
        for (id, body) in loaded.of(Kind::Worker) {
            match serde_json::from_str::<WorkerRec>(body) {
                Ok(mut w) => {
                    w.state = match w.state {
                        WorkerState::Stopped | WorkerState::Stopping => WorkerState::Stopped,
                        WorkerState::Error | WorkerState::Destroying => WorkerState::Error,
                        WorkerState::Idle if keep_idle => {
                            w.last_report = Some(0.0);
                            WorkerState::Idle
                        }
                        _ => WorkerState::Loading,
                    };
                    workers.insert(id, w);
                }
                Err(e) => tracing::error!(id, error = %e, "unreadable worker record skipped"),
            }
        }
        Registry {
            index: index::RouteIndex::build(workers.values()),
            workers,
            next_id: loaded.kv_parsed(KV_NEXT_WORKER_ID).unwrap_or(1001),
            learn_capacity: true,
        }
    }

    /// Switches learning each worker's throughput from its reports on or off (off: the
    /// benchmark alone counts, as Vast does).
    pub fn set_learn_capacity(&mut self, on: bool) {
        self.learn_capacity = on;
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
        self.reindex(id);
        changed
    }

    /// Re-keys a worker in the routing index after a change to its record.
    fn reindex(&mut self, id: i64) {
        match self.workers.get(&id) {
            Some(w) => self.index.sync(w),
            None => self.index.forget(id),
        }
    }

    /// Applies `f` to a worker without persisting it (load and routing-only changes), then
    /// re-keys it.
    fn touch(&mut self, id: i64, f: impl FnOnce(&mut WorkerRec)) {
        if let Some(w) = self.workers.get_mut(&id) {
            f(w);
            self.index.sync(w);
        }
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
        self.reindex(id);
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
        let learn = self.learn_capacity;
        let w = self.authentic(s.id, &s.mtoken)?;
        if learn {
            w.learn(s, mono);
        }
        if w.apply_status(s, unix, mono) {
            self.persist(s.id, store);
        }
        self.reindex(s.id);
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
        self.reindex(id);
        Ok(())
    }

    /// Routes request `idx` of `cost` to a worker: its load counts as pending until
    /// acknowledged. Returns the worker's `reqnum` for it.
    pub fn assign(&mut self, worker: i64, idx: u64, cost: f64, mono: f64) -> Option<u64> {
        let w = self.workers.get_mut(&worker)?;
        w.reqnum += 1;
        w.pending.insert(idx, (cost, mono));
        w.last_busy = mono;
        let reqnum = w.reqnum;
        self.reindex(worker);
        Some(reqnum)
    }

    /// Takes a request's load off a worker (the request was re-routed or abandoned).
    pub fn release(&mut self, worker: i64, idx: u64) {
        self.touch(worker, |w| {
            w.pending.remove(&idx);
        });
    }

    /// The worker a request of `endpoint_id` goes to: the eligible one with the lowest
    /// estimated queue time, exact ties broken at random, workers at the URLs in `skip` left
    /// out (see [`crate::route::choose`]). Does not scan the endpoint's workers: it reads the
    /// front of the routing index, dropping from it the stale workers it meets.
    pub fn choose(
        &mut self,
        endpoint_id: i64,
        skip: &[String],
        max_queue_time: f64,
        (mono, stale_after): (f64, f64),
        rng: &mut impl rand::Rng,
    ) -> Option<i64> {
        self.index.choose(
            &self.workers,
            endpoint_id,
            skip,
            max_queue_time,
            mono,
            stale_after,
            rng,
        )
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
                max_perf: w.max_perf(),
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

    /// The key for `worker`'s v2 tokens, if its reports say it checks them.
    pub fn mac_key(&self, worker: i64) -> Option<std::sync::Arc<ferry_protocol::TokenKey>> {
        self.workers.get(&worker)?.mac_key.clone()
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

    /// The instance died on its own: a coming or ready worker becomes `error`. One already
    /// in `error` (its worker reported its own shutdown first) gets the provider's reason in
    /// front of its message: the provider knows why (outbid, host gone), the worker only
    /// that it was told to stop.
    pub fn exited(&mut self, id: i64, reason: String, mono: f64, store: &dyn Store) {
        self.update(id, store, |w| {
            if w.state == WorkerState::Error {
                if w.error_msg.contains(&reason) {
                    return false;
                }
                w.error_msg = if w.error_msg.is_empty() {
                    reason
                } else {
                    format!("{reason} (the worker said: {})", w.error_msg)
                };
                return true;
            }
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
        self.touch(id, |w| {
            w.set_state(WorkerState::Stopping, mono);
        });
    }

    /// A cancelled rolling update puts a worker it took out of routing back.
    pub fn undrain(&mut self, id: i64, mono: f64) {
        self.touch(id, |w| {
            if w.state == WorkerState::Stopping {
                w.set_state(WorkerState::Idle, mono);
            }
        });
    }

    /// The autoscaler is stopping a worker: no more load is counted on it.
    pub fn stopping(&mut self, id: i64, mono: f64) {
        self.touch(id, |w| {
            w.set_state(WorkerState::Stopping, mono);
            w.pending.clear();
        });
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
        for id in &out {
            self.reindex(*id);
        }
        out
    }

    /// Forgets a destroyed worker.
    pub fn remove(&mut self, id: i64, store: &dyn Store) {
        self.workers.remove(&id);
        self.index.forget(id);
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

    /// Workers of a provider the store counts as up (to adopt after a restart): coming up, or
    /// idle (kept routable by a replica taking over; see [`Registry::restore`]).
    pub fn coming(&self, provider: ProviderKind) -> Vec<i64> {
        self.iter()
            .filter(|w| {
                (w.state.is_coming() || w.state == WorkerState::Idle) && w.provider == provider
            })
            .map(|w| w.id)
            .collect()
    }

    /// Workers of a provider recorded as stopped (cold: their instances are kept for a resume).
    pub fn cold(&self, provider: ProviderKind) -> Vec<i64> {
        self.iter()
            .filter(|w| w.state == WorkerState::Stopped && w.provider == provider)
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
        let mut expired = Vec::new();
        for w in self.workers.values_mut() {
            let before = w.pending.len();
            w.pending.retain(|_, (_, at)| mono - *at < pending_ttl);
            if w.pending.len() != before {
                expired.push(w.id);
            }
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
        for id in &failed {
            self.persist(*id, store);
        }
        for id in expired.into_iter().chain(failed) {
            self.reindex(id);
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
mod tests;
