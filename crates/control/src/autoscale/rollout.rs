//! Rolling updates of a workergroup (`/update_workers/`), after its model command, image or
//! env changed: its running workers are replaced one at a time. For each: a new worker is
//! launched from the workergroup as it is now, and only once it is ready is an old one taken
//! out of routing; the old one is destroyed when the requests already routed to it have
//! finished (or after [`DRAIN_MAX_S`]), and then the next replacement starts. So the group
//! never has fewer ready workers than before, and no request is cut off. Cold (stopped)
//! workers need no replacement: a resume starts them from the workergroup as it is now.
//!
//! A rollout advances one step per autoscaler tick and logs each step in the workergroup's
//! logs. A replacement that fails is retried; the autoscaler's own decisions go on beside it.

use std::collections::{BTreeMap, VecDeque};

use super::apply::Effect;
use super::Action;
use crate::control::{random_hex, unix_now, Control, State};
use crate::events::Level;
use crate::registry::WorkerState;

/// Longest wait for an old worker's requests to finish before it is destroyed anyway.
pub const DRAIN_MAX_S: f64 = 600.0;

#[derive(Debug)]
struct Rollout {
    endpoint: i64,
    /// Old workers still to replace, oldest first.
    old: VecDeque<i64>,
    /// The new worker being launched, until it is ready.
    replacement: Option<i64>,
    /// The old worker out of routing, and since when (monotonic seconds).
    draining: Option<(i64, f64)>,
}

/// Rolling updates under way, by workergroup.
#[derive(Debug, Default)]
pub struct Rollouts {
    by_group: BTreeMap<i64, Rollout>,
}

impl Rollouts {
    /// Whether a workergroup is being updated.
    pub fn active(&self, group: i64) -> bool {
        self.by_group.contains_key(&group)
    }
}

impl Control {
    /// `/update_workers/`: starts (or restarts, with the workers not yet replaced) a rolling
    /// update of a workergroup; returns how many workers it will replace.
    pub fn update_workers(&self, group: i64) -> Result<usize, crate::error::ControlError> {
        let mut g = self.lock();
        let s = &mut *g;
        let endpoint = s
            .catalog
            .group(group)
            .map(|wg| wg.endpoint_id)
            .ok_or_else(|| {
                crate::error::ControlError::NotFound(format!("no workergroup {group}"))
            })?;
        let old: VecDeque<i64> = s
            .registry
            .of_group(group)
            .filter(|w| w.state().is_coming() || w.state() == WorkerState::Idle)
            .map(|w| w.id())
            .collect();
        let n = old.len();
        let unix = unix_now();
        if n == 0 {
            s.rollouts.by_group.remove(&group);
            let text = "rolling update: no running worker to replace".to_owned();
            s.events
                .record(unix, endpoint, Some(group), Level::Info0, text);
            return Ok(0);
        }
        let text = format!("rolling update started: {n} worker(s) to replace");
        s.events
            .record(unix, endpoint, Some(group), Level::Info0, text);
        s.rollouts.by_group.insert(
            group,
            Rollout {
                endpoint,
                old,
                replacement: None,
                draining: None,
            },
        );
        Ok(n)
    }

    /// Cancels a workergroup's rolling update; true if one was under way. A replacement already
    /// launched stays; an old worker taken out of routing goes back in.
    pub fn cancel_update(&self, group: i64) -> bool {
        let mono = self.mono();
        let mut g = self.lock();
        let s = &mut *g;
        let Some(r) = s.rollouts.by_group.remove(&group) else {
            return false;
        };
        if let Some((w, _)) = r.draining {
            s.registry.undrain(w, mono);
        }
        s.events.record(
            unix_now(),
            r.endpoint,
            Some(group),
            Level::Info0,
            "rolling update cancelled".into(),
        );
        true
    }

    /// One step of every rolling update, under the lock; provider calls go to `effects`.
    pub(super) fn step_rollouts(&self, s: &mut State, mono: f64, effects: &mut Vec<Effect>) {
        let groups: Vec<i64> = s.rollouts.by_group.keys().copied().collect();
        for group in groups {
            self.step_rollout(s, group, mono, effects);
        }
    }

    fn step_rollout(&self, s: &mut State, group: i64, mono: f64, effects: &mut Vec<Effect>) {
        let store = self.store();
        let unix = unix_now();
        let Some(origin) = self.origin(s, group) else {
            s.rollouts.by_group.remove(&group);
            return;
        };
        let Some(r) = s.rollouts.by_group.get_mut(&group) else {
            return;
        };
        let endpoint = r.endpoint;
        let mut log = Vec::new();
        let mut launched = None;
        // 1. An old worker out of routing: destroyed once its requests are done.
        if let Some((w, since)) = r.draining {
            let busy = s.registry.get(w).map_or(0.0, |w| w.load());
            if busy > 0.0 && mono - since < DRAIN_MAX_S {
                return;
            }
            s.registry.doom(|x| x.id() == w, mono);
            effects.push(Effect::Act(Action::Destroy { worker_id: w }, None));
            log.push(format!("rolling update: worker {w} drained; destroying it"));
            r.draining = None;
        }
        // 2. A replacement coming up: once ready, the next old worker leaves routing.
        if let Some(n) = r.replacement {
            match s.registry.get(n).map(|w| w.state()) {
                Some(WorkerState::Idle) => {
                    r.replacement = None;
                    while let Some(old) = r.old.pop_front() {
                        let running = s.registry.get(old).is_some_and(|w| {
                            w.state().is_coming() || w.state() == WorkerState::Idle
                        });
                        if running {
                            s.registry.draining(old, mono);
                            r.draining = Some((old, mono));
                            log.push(format!(
                                "rolling update: worker {n} ready; worker {old} leaves routing"
                            ));
                            break;
                        }
                    }
                }
                Some(state) if state.is_coming() => {}
                _ => {
                    log.push(format!(
                        "rolling update: replacement {n} failed; launching another"
                    ));
                    r.replacement = None;
                }
            }
        }
        // 3. Nothing under way: the next replacement, or the end.
        if r.replacement.is_none() && r.draining.is_none() {
            r.old.retain(|w| {
                s.registry
                    .get(*w)
                    .is_some_and(|w| w.state().is_coming() || w.state() == WorkerState::Idle)
            });
            if r.old.is_empty() {
                s.rollouts.by_group.remove(&group);
                log.push("rolling update finished".into());
            } else {
                let id = s.registry.create(origin, random_hex(16), unix, mono, store);
                r.replacement = Some(id);
                log.push(format!(
                    "rolling update: launching worker {id} to replace one of {}",
                    r.old.len()
                ));
                launched = Some(id);
            }
        }
        if let Some(spec) = launched.and_then(|id| self.spec_for(s, id)) {
            if let Some(w) = s.registry.get(spec.worker_id) {
                effects.push(Effect::Launch(w.provider(), spec));
            }
        }
        for text in log {
            s.events
                .record(unix, endpoint, Some(group), Level::Info0, text);
        }
    }
}
