//! The pure scaling decision for one endpoint.
//!
//! Vast's documented model, made concrete:
//!
//! 1. `perf` = the mean benchmarked `max_perf` of the endpoint's workers (100 until one is known).
//! 2. Active capacity target = `max(predicted load, min_load) / target_util`, in workload
//!    units/s; active workers needed = `ceil(capacity / perf)`. Predicted load is the recent
//!    arrival rate of routed workload (an exponential average the loop keeps), taken as zero
//!    once the endpoint has had no request for the idle limit.
//! 3. Queue pressure: if the endpoint queue time (load on ready workers plus queued work, over
//!    their throughput) exceeds `target_queue_time`, add enough workers to bring it back; if
//!    requests wait and nothing is ready, at least one worker is needed (scale up from zero).
//!    `min_load > 0` also means at least one.
//! 4. Scale to zero only when permitted: `inactivity_timeout < 0` never; `> 0` only after that
//!    many seconds without a request.
//! 5. Total target = `max(active capacity × cold_mult, min_cold_load) / perf` workers, and at
//!    least `cold_workers` with the model loaded; everything capped by `max_workers`.
//! 6. Too few active: resume stopped workers first (seconds, benchmark cached), then launch.
//!    Too few in total: launch (they load, then idle out into the cold pool).
//! 7. Too many active: stop ready workers idle for longer than the idle limit
//!    (`inactivity_timeout` when positive, else the control plane's default), longest idle
//!    first; stop keeps them cold when the total target has room, else destroy.
//! 8. Errored workers are destroyed (except unreachable joined workers, which may come back:
//!    they are left out of every count, so their capacity is replaced at once); `suspended` endpoints are left alone; `stopped`
//!    endpoints have every running worker stopped.

use crate::endpoint::{EndpointParams, EndpointState};
use crate::registry::WorkerState;

/// Throughput assumed before any worker of the endpoint has been benchmarked.
pub const DEFAULT_PERF: f64 = 100.0;

/// One worker as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// Id.
    pub id: i64,
    /// State (stale and errored workers arrive as `Error`).
    pub state: WorkerState,
    /// Benchmark result, 0 if unknown.
    pub max_perf: f64,
    /// Reported plus routed load.
    pub load: f64,
    /// Seconds since it last had work (or since it became ready).
    pub idle_for: f64,
    /// Seconds in its current state.
    pub in_state_for: f64,
    /// An unreachable joined worker (`error`, reports stopped) that may still come back: it
    /// is neither destroyed nor counted, so its capacity is replaced at once, and it rejoins
    /// the pool when its reports resume (the surplus is then scaled down as usual).
    pub may_return: bool,
}

/// One workergroup: where new workers come from.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupView {
    /// Id.
    pub id: i64,
    /// Live workers in it.
    pub workers: u32,
    /// Its own cap, if any.
    pub max_workers: Option<u32>,
}

/// Everything `decide` needs about one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointView {
    /// Parameters.
    pub params: EndpointParams,
    /// Workers (destroying ones excluded).
    pub workers: Vec<WorkerView>,
    /// Workergroups.
    pub groups: Vec<GroupView>,
    /// Requests waiting in the global queue for this endpoint.
    pub queued: usize,
    /// Their workload.
    pub queued_load: f64,
    /// Predicted load, workload units per second.
    pub load_rate: f64,
    /// Seconds since the last request (infinite when none yet).
    pub since_last_request: f64,
}

/// Control-plane-wide knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Idle seconds before a surplus worker stops when `inactivity_timeout` is not positive.
    pub idle_stop_after: f64,
    /// Seconds an errored worker is kept (visible, holding its slot) before it is destroyed
    /// and replaced: a crash-looping worker is relaunched at most this often.
    pub error_hold: f64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Launch `count` new workers from a workergroup.
    Launch {
        /// Workergroup.
        workergroup_id: i64,
        /// How many.
        count: u32,
    },
    /// Start a stopped worker again.
    Resume {
        /// Worker.
        worker_id: i64,
    },
    /// Stop a worker, keeping it cold.
    Stop {
        /// Worker.
        worker_id: i64,
    },
    /// Remove a worker.
    Destroy {
        /// Worker.
        worker_id: i64,
    },
}

impl Action {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Launch { .. } => "launch",
            Action::Resume { .. } => "resume",
            Action::Stop { .. } => "stop",
            Action::Destroy { .. } => "destroy",
        }
    }
}

/// An action and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The action.
    pub action: Action,
    /// Fixed reason string (log field and metric label).
    pub reason: &'static str,
}

pub(crate) fn ceil_workers(capacity: f64, perf: f64) -> u32 {
    if capacity <= 0.0 || perf <= 0.0 {
        return 0;
    }
    let n = (capacity / perf - 1e-9).ceil();
    if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n.max(0.0) as u32
    }
}

/// Decides the actions for one endpoint.
pub fn decide(v: &EndpointView, tuning: Tuning) -> Vec<Decision> {
    let mut out = Vec::new();
    let Some(fleet) = Fleet::of(v, tuning, &mut out) else {
        return out;
    };
    let t = targets(v, tuning, &fleet);
    reconcile(v, &fleet, &t, &mut out);
    out
}

/// The endpoint's workers sorted by what the autoscaler does with them.
pub(crate) struct Fleet<'a> {
    /// Neither errored nor being destroyed.
    pub(crate) live: Vec<&'a WorkerView>,
    /// Errors still held: they occupy their slot against `max_workers`.
    pub(crate) held_errors: u32,
    /// Coming up or ready.
    pub(crate) active: Vec<&'a WorkerView>,
    /// Cold.
    pub(crate) stopped: Vec<&'a WorkerView>,
    /// Ready.
    pub(crate) ready: Vec<&'a WorkerView>,
    /// Mean benchmarked throughput ([`DEFAULT_PERF`] until one is known).
    pub(crate) perf: f64,
}

/// What a policy wants: active workers, workers in total (active and cold), and how long a
/// surplus ready worker must have been idle before it is stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Targets {
    /// Active (coming or ready) workers wanted.
    pub(crate) need_active: u32,
    /// Why, when that means scaling up (a fixed reason string).
    pub(crate) reason_up: &'static str,
    /// Workers with the model loaded (active or stopped) wanted.
    pub(crate) total_need: u32,
    /// Idle seconds before a surplus ready worker stops.
    pub(crate) idle_limit: f64,
}

impl<'a> Fleet<'a> {
    /// Sorts the workers, and pushes the decisions that come before any target: errored
    /// workers destroyed, every active worker of a `stopped` endpoint stopped. `None` when
    /// nothing else is to be decided (a suspended or stopped endpoint).
    pub(crate) fn of(
        v: &'a EndpointView,
        tuning: Tuning,
        out: &mut Vec<Decision>,
    ) -> Option<Fleet<'a>> {
        let p = &v.params;
        if p.endpoint_state == EndpointState::Suspended {
            return None;
        }
        for w in v.workers.iter().filter(|w| {
            w.state == WorkerState::Error && w.in_state_for >= tuning.error_hold && !w.may_return
        }) {
            out.push(Decision {
                action: Action::Destroy { worker_id: w.id },
                reason: "worker_error",
            });
        }
        let live: Vec<&WorkerView> = v
            .workers
            .iter()
            .filter(|w| !matches!(w.state, WorkerState::Error | WorkerState::Destroying))
            .collect();
        // Errors still held occupy their slot against max_workers, so a crash loop is paced.
        let held_errors = v
            .workers
            .iter()
            .filter(|w| {
                w.state == WorkerState::Error && w.in_state_for < tuning.error_hold && !w.may_return
            })
            .count() as u32;
        let is_active = |w: &&&WorkerView| w.state.is_coming() || w.state == WorkerState::Idle;
        let active: Vec<&WorkerView> = live.iter().filter(is_active).copied().collect();
        let stopped: Vec<&WorkerView> = live
            .iter()
            .filter(|w| w.state == WorkerState::Stopped)
            .copied()
            .collect();
        let ready: Vec<&WorkerView> = live
            .iter()
            .filter(|w| w.state == WorkerState::Idle)
            .copied()
            .collect();

        if p.endpoint_state == EndpointState::Stopped {
            for w in &active {
                out.push(Decision {
                    action: Action::Stop { worker_id: w.id },
                    reason: "endpoint_stopped",
                });
            }
            return None;
        }
        let known: Vec<f64> = v
            .workers
            .iter()
            .map(|w| w.max_perf)
            .filter(|p| *p > 0.0)
            .collect();
        let perf = if known.is_empty() {
            DEFAULT_PERF
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        Some(Fleet {
            live,
            held_errors,
            active,
            stopped,
            ready,
            perf,
        })
    }
}

/// Vast's documented targets (steps 2 to 5 of the module docs).
pub(crate) fn targets(v: &EndpointView, tuning: Tuning, fleet: &Fleet<'_>) -> Targets {
    let p = &v.params;
    let (active, ready, perf) = (&fleet.active, &fleet.ready, fleet.perf);
    let idle_limit = match p.inactivity_timeout {
        Some(t) if t > 0.0 => t,
        _ => tuning.idle_stop_after,
    };
    // An average of past arrivals says nothing once the endpoint has been quiet for the idle
    // limit (and an exponential average never reaches zero on its own).
    let predicted = if v.since_last_request >= idle_limit {
        0.0
    } else {
        v.load_rate
    };
    // Active target.
    let active_capacity = predicted.max(p.min_load) / p.target_util;
    let mut need_active = ceil_workers(active_capacity, perf);
    let mut reason_up = "predicted_load";
    if p.min_load > 0.0 && need_active == 0 {
        need_active = 1;
        reason_up = "min_load";
    }
    if v.queued > 0 && ready.is_empty() && need_active == 0 {
        need_active = 1;
        reason_up = "queued_requests";
    }
    let n = queue_pressure(v, fleet);
    if n > need_active {
        need_active = n;
        reason_up = "queue_time";
    }
    // Busy workers stay.
    let busy = ready.iter().filter(|w| w.load > 0.0).count() as u32;
    need_active = need_active.max(busy);
    // Scale-to-zero gate.
    if need_active == 0 && !active.is_empty() {
        let hold = match p.inactivity_timeout {
            Some(t) if t < 0.0 => true,
            Some(t) if t > 0.0 => v.since_last_request < t,
            _ => false,
        };
        if hold {
            need_active = 1;
        }
    }
    if need_active == 0 && matches!(p.inactivity_timeout, Some(t) if t < 0.0) {
        need_active = 1;
        reason_up = "never_scale_to_zero";
    }
    need_active = need_active.min(p.max_workers);

    // Total target.
    let total_capacity = (active_capacity * p.cold_mult).max(p.min_cold_load);
    let total_need = ceil_workers(total_capacity, perf)
        .max(need_active)
        .max(p.cold_workers)
        .min(p.max_workers);
    Targets {
        need_active,
        reason_up,
        total_need,
        idle_limit,
    }
}

/// Active workers the queue asks for: when the endpoint queue time (load on the ready workers
/// plus queued work, over their throughput) exceeds `target_queue_time`, enough to bring it
/// back; else 0.
pub(crate) fn queue_pressure(v: &EndpointView, fleet: &Fleet<'_>) -> u32 {
    let p = &v.params;
    let ready = &fleet.ready;
    let ready_perf: f64 = ready.iter().map(|w| w.max_perf).sum();
    let backlog: f64 = ready.iter().map(|w| w.load).sum::<f64>() + v.queued_load;
    if ready_perf > 0.0 && backlog / ready_perf > p.target_queue_time {
        let wanted_perf = if p.target_queue_time > 0.0 {
            backlog / p.target_queue_time
        } else {
            backlog
        };
        let extra = ceil_workers(wanted_perf - ready_perf, fleet.perf).max(1);
        (ready.len() as u32).saturating_add(extra)
    } else {
        0
    }
}

/// The actions that bring the fleet to the targets (steps 6 and 7 of the module docs):
/// resume then launch when too few are active, launch into the cold pool when too few are
/// loaded, stop (or destroy) idle surplus, trim surplus cold workers.
pub(crate) fn reconcile(v: &EndpointView, fleet: &Fleet<'_>, t: &Targets, out: &mut Vec<Decision>) {
    let p = &v.params;
    let (live, active, stopped, ready) = (&fleet.live, &fleet.active, &fleet.stopped, &fleet.ready);
    let held_errors = fleet.held_errors;
    let Targets {
        need_active,
        reason_up,
        total_need,
        idle_limit,
    } = *t;
    let n_active = active.len() as u32;
    let n_live = live.len() as u32;
    let mut room = p.max_workers.saturating_sub(n_live + held_errors);

    let launch = |count: u32, reason: &'static str, out: &mut Vec<Decision>, room: &mut u32| {
        let mut left = count.min(*room);
        let mut groups: Vec<GroupView> = v.groups.clone();
        groups.sort_by_key(|g| g.workers);
        for g in groups.iter_mut() {
            if left == 0 {
                break;
            }
            let cap = g
                .max_workers
                .map_or(u32::MAX, |m| m.saturating_sub(g.workers));
            let n = left.min(cap);
            if n > 0 {
                out.push(Decision {
                    action: Action::Launch {
                        workergroup_id: g.id,
                        count: n,
                    },
                    reason,
                });
                left -= n;
                *room -= n;
            }
        }
    };

    // A held error stands in for its replacement until the hold ends.
    let n_up = n_active + held_errors;
    if n_up < need_active {
        let mut missing = need_active - n_up;
        let mut cold: Vec<&&WorkerView> = stopped.iter().collect();
        cold.sort_by(|a, b| b.max_perf.total_cmp(&a.max_perf));
        for w in cold.into_iter().take(missing as usize) {
            out.push(Decision {
                action: Action::Resume { worker_id: w.id },
                reason: reason_up,
            });
            missing -= 1;
        }
        if missing > 0 {
            launch(missing, reason_up, out, &mut room);
        }
    } else if n_live + held_errors < total_need {
        launch(
            total_need - n_live - held_errors,
            "cold_pool",
            out,
            &mut room,
        );
    }

    if n_active > need_active {
        let limit = idle_limit;
        let mut idle: Vec<&&WorkerView> = ready
            .iter()
            .filter(|w| w.load <= 0.0 && w.idle_for >= limit)
            .collect();
        idle.sort_by(|a, b| b.idle_for.total_cmp(&a.idle_for));
        let excess = (n_active - need_active) as usize;
        // Loaded workers that remain after stopping: room for cold ones up to the total target.
        let mut kept = n_live;
        for w in idle.into_iter().take(excess) {
            if kept > total_need {
                out.push(Decision {
                    action: Action::Destroy { worker_id: w.id },
                    reason: "inactivity",
                });
                kept -= 1;
            } else {
                out.push(Decision {
                    action: Action::Stop { worker_id: w.id },
                    reason: "inactivity",
                });
            }
        }
    } else if n_live > total_need {
        // Trim the cold pool, oldest stopped first.
        let mut cold: Vec<&&WorkerView> = stopped.iter().collect();
        cold.sort_by(|a, b| b.in_state_for.total_cmp(&a.in_state_for));
        for w in cold.into_iter().take((n_live - total_need) as usize) {
            out.push(Decision {
                action: Action::Destroy { worker_id: w.id },
                reason: "cold_surplus",
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const T: Tuning = Tuning {
        idle_stop_after: 60.0,
        error_hold: 5.0,
    };

    fn params(f: impl FnOnce(&mut EndpointParams)) -> EndpointParams {
        let mut p = EndpointParams {
            cold_workers: 0,
            cold_mult: 1.0,
            ..EndpointParams::default()
        };
        f(&mut p);
        p
    }

    fn w(id: i64, state: WorkerState, load: f64, idle_for: f64) -> WorkerView {
        WorkerView {
            id,
            state,
            max_perf: 100.0,
            load,
            idle_for,
            in_state_for: idle_for,
            may_return: false,
        }
    }

    fn view(p: EndpointParams, workers: Vec<WorkerView>) -> EndpointView {
        let n = workers.len() as u32;
        EndpointView {
            params: p,
            workers,
            groups: vec![GroupView {
                id: 9,
                workers: n,
                max_workers: None,
            }],
            queued: 0,
            queued_load: 0.0,
            load_rate: 0.0,
            since_last_request: 0.0,
        }
    }

    fn launch(n: u32) -> Action {
        Action::Launch {
            workergroup_id: 9,
            count: n,
        }
    }

    fn actions(v: &EndpointView) -> Vec<Action> {
        decide(v, T).into_iter().map(|d| d.action).collect()
    }

    #[test]
    fn table() {
        use WorkerState::*;
        struct Case {
            name: &'static str,
            view: EndpointView,
            want: Vec<Action>,
        }
        let queued = |mut v: EndpointView, n: usize| {
            v.queued = n;
            v.queued_load = 100.0 * n as f64;
            v
        };
        let rate = |mut v: EndpointView, r: f64| {
            v.load_rate = r;
            v
        };
        let last = |mut v: EndpointView, s: f64| {
            v.since_last_request = s;
            v
        };
        let cases = vec![
            Case {
                name: "nothing to do at zero",
                view: view(params(|_| {}), vec![]),
                want: vec![],
            },
            Case {
                name: "queued request scales up from zero",
                view: queued(view(params(|_| {}), vec![]), 3),
                want: vec![launch(1)],
            },
            Case {
                name: "queued request with one coming waits",
                view: queued(view(params(|_| {}), vec![w(1, Loading, 0.0, 0.0)]), 3),
                want: vec![],
            },
            Case {
                name: "queued request resumes a cold worker before launching",
                view: queued(view(params(|_| {}), vec![w(1, Stopped, 0.0, 100.0)]), 1),
                want: vec![Action::Resume { worker_id: 1 }],
            },
            Case {
                name: "min_load keeps one active",
                view: view(params(|p| p.min_load = 10.0), vec![]),
                want: vec![launch(1)],
            },
            Case {
                name: "predicted load over target_util",
                // 250 / 0.9 = 277.8 units/s over perf 100: 3 workers.
                view: rate(view(params(|_| {}), vec![w(1, Idle, 50.0, 0.0)]), 250.0),
                want: vec![launch(2)],
            },
            Case {
                name: "never exceed max_workers",
                view: rate(
                    view(params(|p| p.max_workers = 2), vec![w(1, Idle, 50.0, 0.0)]),
                    1000.0,
                ),
                want: vec![launch(1)],
            },
            Case {
                name: "queue time over target adds workers",
                // 1500 load on 100/s = 15 s > 10 s: need 150/s more... 2 ready + 1.
                view: view(params(|_| {}), vec![w(1, Idle, 1500.0, 0.0)]),
                want: vec![launch(1)],
            },
            Case {
                name: "idle surplus stops after idle limit (cold pool kept)",
                view: view(params(|p| p.cold_workers = 1), vec![w(1, Idle, 0.0, 61.0)]),
                want: vec![Action::Stop { worker_id: 1 }],
            },
            Case {
                name: "idle surplus destroyed when no cold pool wanted",
                view: view(params(|_| {}), vec![w(1, Idle, 0.0, 61.0)]),
                want: vec![Action::Destroy { worker_id: 1 }],
            },
            Case {
                name: "a stale load average does not hold a worker",
                view: last(
                    rate(view(params(|_| {}), vec![w(1, Idle, 0.0, 61.0)]), 0.5),
                    61.0,
                ),
                want: vec![Action::Destroy { worker_id: 1 }],
            },
            Case {
                name: "a recent load average holds a worker",
                view: last(
                    rate(view(params(|_| {}), vec![w(1, Idle, 0.0, 61.0)]), 0.5),
                    10.0,
                ),
                want: vec![],
            },
            Case {
                name: "not idle long enough",
                view: view(params(|_| {}), vec![w(1, Idle, 0.0, 30.0)]),
                want: vec![],
            },
            Case {
                name: "inactivity_timeout sets the idle limit",
                view: last(
                    view(
                        params(|p| p.inactivity_timeout = Some(5.0)),
                        vec![w(1, Idle, 0.0, 6.0)],
                    ),
                    6.0,
                ),
                want: vec![Action::Destroy { worker_id: 1 }],
            },
            Case {
                name: "inactivity_timeout gates scale to zero",
                view: last(
                    view(
                        params(|p| p.inactivity_timeout = Some(5.0)),
                        vec![w(1, Idle, 0.0, 6.0)],
                    ),
                    2.0,
                ),
                want: vec![],
            },
            Case {
                name: "negative inactivity_timeout never scales to zero",
                view: view(
                    params(|p| p.inactivity_timeout = Some(-1.0)),
                    vec![w(1, Idle, 0.0, 1e6)],
                ),
                want: vec![],
            },
            Case {
                name: "busy workers are never stopped",
                view: view(params(|_| {}), vec![w(1, Idle, 10.0, 1e6)]),
                want: vec![],
            },
            Case {
                name: "cold_workers launches a pool",
                view: view(
                    params(|p| p.cold_workers = 2),
                    vec![w(1, Stopped, 0.0, 1.0)],
                ),
                want: vec![launch(1)],
            },
            Case {
                name: "cold surplus destroyed",
                view: view(
                    params(|p| p.cold_workers = 1),
                    vec![w(1, Stopped, 0.0, 5.0), w(2, Stopped, 0.0, 9.0)],
                ),
                want: vec![Action::Destroy { worker_id: 2 }],
            },
            Case {
                name: "errored workers destroyed and replaced",
                view: queued(view(params(|_| {}), vec![w(1, Error, 0.0, 6.0)]), 1),
                want: vec![Action::Destroy { worker_id: 1 }, launch(1)],
            },
            Case {
                name: "a fresh error is held: no replacement until the hold ends",
                view: queued(view(params(|_| {}), vec![w(1, Error, 0.0, 1.0)]), 1),
                want: vec![],
            },
            Case {
                name: "an unreachable joined worker is kept, and replaced at once",
                view: view(
                    params(|p| p.min_load = 150.0),
                    vec![
                        w(1, Idle, 0.0, 0.0),
                        WorkerView {
                            may_return: true,
                            ..w(2, Error, 0.0, 1.0)
                        },
                        WorkerView {
                            may_return: true,
                            ..w(3, Error, 0.0, 600.0)
                        },
                    ],
                ),
                want: vec![launch(1)],
            },
            Case {
                name: "suspended endpoint left alone",
                view: queued(
                    view(
                        params(|p| p.endpoint_state = EndpointState::Suspended),
                        vec![w(1, Error, 0.0, 0.0)],
                    ),
                    1,
                ),
                want: vec![],
            },
            Case {
                name: "stopped endpoint stops everything running",
                view: view(
                    params(|p| p.endpoint_state = EndpointState::Stopped),
                    vec![
                        w(1, Idle, 5.0, 0.0),
                        w(2, Loading, 0.0, 0.0),
                        w(3, Stopped, 0.0, 0.0),
                    ],
                ),
                want: vec![Action::Stop { worker_id: 1 }, Action::Stop { worker_id: 2 }],
            },
            Case {
                name: "cold_mult sizes the total",
                // 90 units/s / 0.9 = 100 -> 1 active; x3 = 3 total.
                view: rate(
                    view(params(|p| p.cold_mult = 3.0), vec![w(1, Idle, 10.0, 0.0)]),
                    90.0,
                ),
                want: vec![launch(2)],
            },
            Case {
                name: "min_cold_load sizes the total",
                view: view(params(|p| p.min_cold_load = 250.0), vec![]),
                want: vec![launch(3)],
            },
        ];
        for c in cases {
            assert_eq!(actions(&c.view), c.want, "case: {}", c.name);
        }
    }

    #[test]
    fn workergroup_cap_respected() {
        let mut v = view(params(|p| p.min_load = 1000.0), vec![]);
        v.groups = vec![
            GroupView {
                id: 1,
                workers: 0,
                max_workers: Some(2),
            },
            GroupView {
                id: 2,
                workers: 1,
                max_workers: None,
            },
        ];
        let a = actions(&v);
        assert_eq!(
            a,
            vec![
                Action::Launch {
                    workergroup_id: 1,
                    count: 2
                },
                Action::Launch {
                    workergroup_id: 2,
                    count: 10
                },
            ]
        );
    }
}
