//! Scaling policies, selectable per endpoint (`autoscale_policy`), and the short history they
//! read ([`History`]).
//!
//! Every policy sorts the fleet and carries out its targets the same way as Vast's
//! (`Fleet`, `reconcile` in `decide.rs`): resume cold workers before launching, stop only idle workers,
//! keep the cold pool Vast's parameters ask for. They differ in how many active workers they
//! want and how long a surplus worker may idle:
//!
//! - `vast` (default): Vast's documented model, [`decide`](super::decide).
//! - `kpa`: Knative's KPA on the request-rate metric, in workload units: desired =
//!   rate / (perf × `target_util`) over a 60 s stable window, a 6 s panic window that takes
//!   over (and forbids scaling down) for 60 s when it asks for twice the ready workers, scale
//!   to zero 30 s after the stable window empties; surplus stops at once.
//! - `ray`: Ray Serve's autoscaler: desired = in-flight work (queued plus on workers), averaged
//!   over 30 s, over a target of [`RAY_TARGET_ONGOING_S`] seconds of work per worker; a change
//!   must hold for the upscale delay (30 s) or downscale delay (600 s) before it is made, except
//!   scaling up from zero.
//! - `ferry`: see `ferry_targets` (predictive scale-up, scale-down after twice the measured
//!   resume time, a cold tier sized from demand).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::decide::{ceil_workers, queue_pressure, reconcile, targets, Fleet, Targets};
use super::{Decision, EndpointView, Tuning};
use crate::registry::WorkerState;

/// Which policy scales an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalePolicy {
    /// Vast's documented model (today's `decide`).
    #[default]
    Vast,
    /// Knative-KPA-like.
    Kpa,
    /// Ray-Serve-like.
    Ray,
    /// Ferry's own.
    Ferry,
}

impl AutoscalePolicy {
    /// Every policy.
    pub const ALL: [AutoscalePolicy; 4] = [
        AutoscalePolicy::Vast,
        AutoscalePolicy::Kpa,
        AutoscalePolicy::Ray,
        AutoscalePolicy::Ferry,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AutoscalePolicy::Vast => "vast",
            AutoscalePolicy::Kpa => "kpa",
            AutoscalePolicy::Ray => "ray",
            AutoscalePolicy::Ferry => "ferry",
        }
    }

    /// Parses a wire name (any case).
    pub fn parse(s: &str) -> Option<AutoscalePolicy> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

/// Seconds of history kept.
const KEEP_S: f64 = 900.0;
/// KPA: stable and panic windows, seconds; panic threshold; scale-to-zero grace, seconds.
const KPA_STABLE_S: f64 = 60.0;
const KPA_PANIC_S: f64 = 6.0;
const KPA_PANIC_RATIO: f64 = 2.0;
const KPA_GRACE_S: f64 = 30.0;
/// Ray: target in-flight work per worker, in seconds of its throughput (Ray's
/// `target_ongoing_requests` is 2); look-back, upscale and downscale delays, seconds.
pub const RAY_TARGET_ONGOING_S: f64 = 2.0;
const RAY_LOOK_BACK_S: f64 = 30.0;
const RAY_UP_DELAY_S: f64 = 30.0;
const RAY_DOWN_DELAY_S: f64 = 600.0;

/// One tick as the history keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// History clock at the end of the tick.
    at: f64,
    /// Tick length, seconds.
    dt: f64,
    /// Workload routed during the tick, units per second.
    rate: f64,
    /// Work queued or on workers at the end of the tick.
    in_flight: f64,
}

/// What the policies remember of one endpoint: the last 15 minutes of ticks, and the
/// ready-up times measured from the workers' state changes. Its clock is the sum of the tick
/// lengths, so it runs on whatever clock drives the ticks (the simulator's included).
#[derive(Debug, Clone, Default)]
pub struct History {
    clock: f64,
    samples: VecDeque<Sample>,
    /// KPA: panic mode until this clock.
    panic_until: f64,
    /// Ray: a pending change (up?) and since when.
    ray_pending: Option<(bool, f64)>,
    /// Workers coming up: since when, and whether from cold (a resume).
    coming: BTreeMap<i64, (f64, bool)>,
    /// Workers stopped at the last look.
    stopped: BTreeSet<i64>,
    /// Measured seconds from resume to ready, and from launch to ready (running means).
    resume_s: Option<f64>,
    launch_s: Option<f64>,
    /// The quiet spell under way (seconds without routed work), and the last ones that
    /// ended (at most [`GAPS_KEPT`]).
    quiet: f64,
    gaps: VecDeque<f64>,
}

/// Quiet spells remembered.
pub const GAPS_KEPT: usize = 64;

fn mean(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.7 * o + 0.3 * new))
}

impl History {
    /// A tick of `dt` seconds in which `rate` workload units per second were routed.
    pub fn tick(&mut self, dt: f64, rate: f64) {
        self.clock += dt;
        if rate > 0.0 {
            if self.quiet > 0.0 {
                if self.gaps.len() == GAPS_KEPT {
                    self.gaps.pop_front();
                }
                self.gaps.push_back(self.quiet);
            }
            self.quiet = 0.0;
        } else {
            self.quiet += dt;
        }
        self.samples.push_back(Sample {
            at: self.clock,
            dt,
            rate,
            in_flight: 0.0,
        });
        while self
            .samples
            .front()
            .is_some_and(|s| self.clock - s.at > KEEP_S)
        {
            self.samples.pop_front();
        }
    }

    /// Records what the view shows: the work in flight, and workers becoming ready.
    fn observe(&mut self, v: &EndpointView) {
        let in_flight = v
            .workers
            .iter()
            .filter(|w| w.state == WorkerState::Idle)
            .map(|w| w.load)
            .sum::<f64>()
            + v.queued_load;
        if let Some(s) = self.samples.back_mut() {
            s.in_flight = in_flight;
        }
        let mut stopped = BTreeSet::new();
        for w in &v.workers {
            match w.state {
                WorkerState::Stopped => {
                    stopped.insert(w.id);
                }
                s if s.is_coming() => {
                    let resumed = self.stopped.contains(&w.id);
                    let since = self.clock - w.in_state_for;
                    self.coming.entry(w.id).or_insert((since, resumed));
                }
                WorkerState::Idle => {
                    if let Some((since, resumed)) = self.coming.remove(&w.id) {
                        let took = (self.clock - since).max(0.0);
                        if resumed {
                            self.resume_s = mean(self.resume_s, took);
                        } else {
                            self.launch_s = mean(self.launch_s, took);
                        }
                    }
                }
                _ => {}
            }
        }
        self.coming
            .retain(|id, _| v.workers.iter().any(|w| w.id == *id));
        self.stopped = stopped;
    }

    /// Mean routed rate over the last `window` seconds.
    fn mean_rate(&self, window: f64) -> f64 {
        self.window(window, |s| s.rate)
    }

    /// Mean in-flight work over the last `window` seconds.
    fn mean_in_flight(&self, window: f64) -> f64 {
        self.window(window, |s| s.in_flight)
    }

    fn window(&self, window: f64, f: impl Fn(&Sample) -> f64) -> f64 {
        let (mut sum, mut t) = (0.0, 0.0);
        for s in self.samples.iter().rev() {
            if self.clock - s.at >= window {
                break;
            }
            sum += f(s) * s.dt;
            t += s.dt;
        }
        if t > 0.0 {
            sum / t
        } else {
            0.0
        }
    }

    /// How long the last worker stays warm after the endpoint's last request: the `T` that
    /// minimizes, over the quiet spells seen, the expected idle seconds paid (`min(gap, T)`)
    /// plus the expected price of a cold start (`cold_cost` when the gap outlasts `T`), among
    /// `floor` and the spells' own lengths up to `cap`. This is the ski-rental choice made
    /// with the endpoint's own gap distribution.
    fn keep_warm(&self, cold_cost: f64, floor: f64, cap: f64) -> f64 {
        if self.gaps.is_empty() {
            return floor;
        }
        let n = self.gaps.len() as f64;
        let expected = |t: f64| {
            self.gaps
                .iter()
                .map(|g| if *g <= t { *g } else { t + cold_cost })
                .sum::<f64>()
                / n
        };
        let mut best = (expected(floor), floor);
        for g in &self.gaps {
            // A spell of g seconds was seen as g ticks of silence: one more tick covers it.
            let t = g + 1.0;
            if t > floor && t <= cap {
                let c = expected(t);
                if c < best.0 {
                    best = (c, t);
                }
            }
        }
        best.1
    }

    /// Measured seconds from resume to ready (`None` until one was seen).
    pub fn resume_s(&self) -> Option<f64> {
        self.resume_s
    }
}

/// The decisions of `policy` for one endpoint; `history` is the endpoint's, already ticked.
pub fn decide_with(
    policy: AutoscalePolicy,
    v: &EndpointView,
    tuning: Tuning,
    history: &mut History,
) -> Vec<Decision> {
    history.observe(v);
    if policy == AutoscalePolicy::Vast {
        return super::decide(v, tuning);
    }
    let mut out = Vec::new();
    let Some(fleet) = Fleet::of(v, tuning, &mut out) else {
        return out;
    };
    let vast = targets(v, tuning, &fleet);
    let mut t = match policy {
        AutoscalePolicy::Kpa => kpa_targets(v, &fleet, history),
        AutoscalePolicy::Ray => ray_targets(v, &fleet, history),
        _ => ferry_targets(v, tuning, &fleet, history, &vast),
    };
    // The endpoint's own floors hold under every policy.
    let p = &v.params;
    let busy = fleet.ready.iter().filter(|w| w.load > 0.0).count() as u32;
    t.need_active = t.need_active.max(busy);
    let keep_one = p.min_load > 0.0
        || matches!(p.inactivity_timeout, Some(x) if x < 0.0)
        || matches!(p.inactivity_timeout, Some(x) if x > 0.0 && v.since_last_request < x);
    if keep_one && t.need_active == 0 {
        t.need_active = 1;
    }
    t.need_active = t.need_active.min(p.max_workers);
    if policy != AutoscalePolicy::Ferry {
        // The same cold pool Vast's parameters ask for.
        t.total_need = vast.total_need;
    }
    t.total_need = t.total_need.max(t.need_active).min(p.max_workers);
    reconcile(v, &fleet, &t, &mut out);
    out
}

fn kpa_targets(v: &EndpointView, fleet: &Fleet<'_>, h: &mut History) -> Targets {
    let cap = fleet.perf * v.params.target_util;
    let want_stable = ceil_workers(h.mean_rate(KPA_STABLE_S), cap);
    let want_panic = ceil_workers(h.mean_rate(KPA_PANIC_S), cap);
    let ready = fleet.ready.len() as u32;
    let n_active = fleet.active.len() as u32;
    if want_panic > 0 && f64::from(want_panic) >= KPA_PANIC_RATIO * f64::from(ready) {
        h.panic_until = h.clock + KPA_STABLE_S;
    }
    let (mut need, mut reason) = if h.clock < h.panic_until {
        (want_panic.max(want_stable).max(n_active), "kpa_panic")
    } else {
        (want_stable, "kpa_stable")
    };
    if need == 0 && v.queued > 0 {
        need = 1;
        reason = "queued_requests";
    }
    if need == 0 && n_active > 0 && v.since_last_request < KPA_STABLE_S + KPA_GRACE_S {
        need = 1;
    }
    Targets {
        need_active: need,
        reason_up: reason,
        total_need: 0,
        idle_limit: 0.0,
    }
}

fn ray_targets(v: &EndpointView, fleet: &Fleet<'_>, h: &mut History) -> Targets {
    let target = fleet.perf * RAY_TARGET_ONGOING_S;
    let desired = ceil_workers(h.mean_in_flight(RAY_LOOK_BACK_S), target);
    let current = fleet.active.len() as u32;
    let mut need = current;
    if current == 0 && v.queued > 0 {
        need = desired.max(1);
        h.ray_pending = None;
    } else if desired != current {
        let up = desired > current;
        let since = match h.ray_pending {
            Some((was_up, since)) if was_up == up => since,
            _ => {
                h.ray_pending = Some((up, h.clock));
                h.clock
            }
        };
        let delay = if up { RAY_UP_DELAY_S } else { RAY_DOWN_DELAY_S };
        if h.clock - since >= delay {
            need = desired;
            h.ray_pending = None;
        }
    } else {
        h.ray_pending = None;
    }
    Targets {
        need_active: need,
        reason_up: "ray_ongoing",
        total_need: 0,
        idle_limit: 0.0,
    }
}

/// Ferry's policy.
///
/// - Active target from the arrival trend: the larger of the 10 s and 60 s mean rates, plus
///   the rise of the 10 s mean over the 60 s one carried forward over the measured resume
///   time, over perf × `target_util`; and Vast's queue pressure (backlog over ready
///   throughput above `target_queue_time`).
/// - The last worker weighs idling against the next cold start: it stays warm after the
///   last request for the time that minimizes the expected idle seconds plus the expected
///   price of a cold start over the endpoint's recent quiet spells (a cold start priced at
///   [`COLD_START_PRICE`] × the measured resume time: the resume is billed, and the requests
///   of a burst wait for it).
/// - Surplus workers (above the target) stop as soon as they are empty for the measured
///   resume time (at their first empty moment when more than twice the target): spreading
///   requests keeps every worker a little busy, so waiting for a long idle spell would keep
///   them all. Until the history covers [`LONG_WINDOW_S`], they wait the control plane's
///   idle limit instead: the rates seen so far under-state the load.
/// - Cold tier sized from demand, not launched ahead: the loaded workers kept (ready or
///   stopped) are those that were needed at the 60 s peak of the last 15 minutes (at least
///   one), never more than Vast's cold pool; none is launched just to fill the pool.
pub(crate) fn ferry_targets(
    v: &EndpointView,
    tuning: Tuning,
    fleet: &Fleet<'_>,
    h: &mut History,
    vast: &Targets,
) -> Targets {
    let p = &v.params;
    let cap = fleet.perf * p.target_util;
    let resume = h.resume_s.unwrap_or(30.0);
    let short = h.mean_rate(10.0);
    let long = h.mean_rate(LONG_WINDOW_S);
    let trend = ((short - long) / 25.0).max(0.0);
    let predicted = short.max(long) + trend * resume;
    let mut need = ceil_workers(predicted.max(p.min_load), cap);
    let mut reason = "ferry_predicted";
    if v.queued > 0 && fleet.ready.is_empty() && need == 0 {
        need = 1;
        reason = "queued_requests";
    }
    let pressure = queue_pressure(v, fleet);
    if pressure > need {
        need = pressure;
        reason = "queue_time";
    }
    if predicted > SPARE_ABOVE * cap {
        need = need.saturating_add(HOT_SPARES);
    }
    let keep = h.keep_warm(
        COLD_START_PRICE * resume,
        tuning.idle_stop_after.min(2.0 * resume),
        KEEP_WARM_MAX_S,
    );
    if need == 0 && !fleet.active.is_empty() && v.since_last_request < keep {
        need = 1;
    }
    // A large surplus (more than twice the target: left over from a burst or a cold start)
    // is shed at its first empty moment; a small one waits a resume time, so a worker
    // resumed for a burst is not stopped in the burst's next lull.
    let n_active = fleet.active.len() as u32;
    let idle_limit = if h.clock < LONG_WINDOW_S {
        tuning.idle_stop_after
    } else if n_active > 2 * need + 1 {
        1.0
    } else {
        (resume * SURPLUS_IDLE_RESUMES).max(1.0)
    };
    let loaded = fleet.live.len() as u32;
    let total_need = vast.total_need.min(loaded).max(need);
    Targets {
        need_active: need,
        reason_up: reason,
        total_need,
        idle_limit,
    }
}

/// Ferry: the long window of the arrival rate, seconds. Until the history covers it, the
/// rates under-state the load (a fresh control plane, or a policy just switched on, has seen
/// a few seconds of it), so surplus workers wait the control plane's idle limit, as under
/// Vast's policy, instead of being shed on that partial evidence.
pub const LONG_WINDOW_S: f64 = 60.0;
/// Ferry: ready workers kept above the target while the predicted load is above
/// [`SPARE_ABOVE`] of one worker's, for the bursts that come faster than a resume.
pub const HOT_SPARES: u32 = 1;
/// See [`HOT_SPARES`].
pub const SPARE_ABOVE: f64 = 0.5;
/// Ferry: a small surplus stops once empty for this many resume times.
pub const SURPLUS_IDLE_RESUMES: f64 = 1.0;
/// Ferry: the price of a cold start of the last worker, in multiples of the resume time.
pub const COLD_START_PRICE: f64 = 10.0;
/// Ferry: the last worker is never kept warm longer than this after the last request.
pub const KEEP_WARM_MAX_S: f64 = 600.0;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::autoscale::{Action, GroupView, WorkerView};
    use crate::endpoint::EndpointParams;

    const T: Tuning = Tuning {
        idle_stop_after: 60.0,
        error_hold: 5.0,
    };

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

    fn view(policy: AutoscalePolicy, workers: Vec<WorkerView>) -> EndpointView {
        EndpointView {
            params: EndpointParams {
                cold_workers: 0,
                cold_mult: 1.0,
                target_util: 1.0,
                autoscale_policy: policy,
                ..EndpointParams::default()
            },
            workers,
            groups: vec![GroupView {
                id: 9,
                workers: 0,
                max_workers: None,
            }],
            queued: 0,
            queued_load: 0.0,
            load_rate: 0.0,
            since_last_request: 0.0,
        }
    }

    fn launched(d: &[Decision]) -> u32 {
        d.iter()
            .map(|d| match d.action {
                Action::Launch { count, .. } => count,
                _ => 0,
            })
            .sum()
    }

    fn stopped(d: &[Decision]) -> usize {
        d.iter()
            .filter(|d| matches!(d.action, Action::Stop { .. } | Action::Destroy { .. }))
            .count()
    }

    #[test]
    fn names_round_trip() {
        for p in AutoscalePolicy::ALL {
            assert_eq!(AutoscalePolicy::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert_eq!(AutoscalePolicy::parse("KPA"), Some(AutoscalePolicy::Kpa));
        assert_eq!(AutoscalePolicy::parse("hpa"), None);
        assert_eq!(AutoscalePolicy::default(), AutoscalePolicy::Vast);
    }

    #[test]
    fn vast_is_decide() {
        let v = view(
            AutoscalePolicy::Vast,
            vec![w(1, WorkerState::Idle, 0.0, 61.0)],
        );
        let mut h = History::default();
        h.tick(1.0, 250.0);
        assert_eq!(
            decide_with(AutoscalePolicy::Vast, &v, T, &mut h),
            super::super::decide(&v, T)
        );
    }

    #[test]
    fn kpa_panics_on_a_burst_and_sheds_surplus_at_once() {
        let mut h = History::default();
        for _ in 0..60 {
            h.tick(1.0, 50.0);
        }
        let one = vec![w(1, WorkerState::Idle, 10.0, 0.0)];
        // 50 units/s over 60 s: one worker of 100; nothing to do.
        let v = view(AutoscalePolicy::Kpa, one.clone());
        assert_eq!(
            launched(&decide_with(AutoscalePolicy::Kpa, &v, T, &mut h)),
            0
        );
        // 6 s at 500 units/s: the panic window asks for 5, the stable one for 1.
        for _ in 0..6 {
            h.tick(1.0, 500.0);
        }
        let d = decide_with(AutoscalePolicy::Kpa, &v, T, &mut h);
        assert_eq!(launched(&d), 4, "{d:?}");
        assert!(d.iter().all(|d| d.reason == "kpa_panic"));
        // After 60 quiet seconds plus the grace, every empty worker goes, without an idle wait.
        let mut h = History::default();
        for _ in 0..100 {
            h.tick(1.0, 0.0);
        }
        let mut v = view(
            AutoscalePolicy::Kpa,
            vec![
                w(1, WorkerState::Idle, 0.0, 2.0),
                w(2, WorkerState::Idle, 0.0, 2.0),
            ],
        );
        v.since_last_request = 100.0;
        assert_eq!(
            stopped(&decide_with(AutoscalePolicy::Kpa, &v, T, &mut h)),
            2
        );
    }

    #[test]
    fn ray_waits_out_its_upscale_delay() {
        let mut h = History::default();
        // 1000 units in flight on one worker of 100/s: 5 workers at 2 s of work each.
        let mut v = view(
            AutoscalePolicy::Ray,
            vec![w(1, WorkerState::Idle, 1000.0, 0.0)],
        );
        v.queued = 0;
        for s in 0..RAY_UP_DELAY_S as u32 {
            h.tick(1.0, 100.0);
            let d = decide_with(AutoscalePolicy::Ray, &v, T, &mut h);
            assert_eq!(launched(&d), 0, "second {s}");
        }
        h.tick(1.0, 100.0);
        assert_eq!(
            launched(&decide_with(AutoscalePolicy::Ray, &v, T, &mut h)),
            4
        );
        // From zero it does not wait.
        let mut h = History::default();
        h.tick(1.0, 100.0);
        let mut v = view(AutoscalePolicy::Ray, vec![]);
        v.queued = 1;
        v.queued_load = 100.0;
        assert_eq!(
            launched(&decide_with(AutoscalePolicy::Ray, &v, T, &mut h)),
            1
        );
    }

    #[test]
    fn ferry_keeps_the_last_worker_through_the_quiet_spells_it_has_seen() {
        let mut h = History::default();
        // Spells of 90 s between bursts: cheaper to idle through them than to pay a cold
        // start priced at 10 x 30 s.
        for _ in 0..5 {
            h.tick(1.0, 50.0);
            for _ in 0..90 {
                h.tick(1.0, 0.0);
            }
        }
        h.tick(1.0, 50.0);
        let keep = h.keep_warm(COLD_START_PRICE * 30.0, 60.0, KEEP_WARM_MAX_S);
        assert_eq!(keep, 91.0);
        for _ in 0..80 {
            h.tick(1.0, 0.0);
        }
        let mut v = view(
            AutoscalePolicy::Ferry,
            vec![w(1, WorkerState::Idle, 0.0, 80.0)],
        );
        v.since_last_request = 80.0;
        assert_eq!(
            stopped(&decide_with(AutoscalePolicy::Ferry, &v, T, &mut h)),
            0
        );
        // Past the spells it knows, it stops.
        for _ in 0..20 {
            h.tick(1.0, 0.0);
        }
        v.since_last_request = 100.0;
        v.workers[0].idle_for = 100.0;
        assert_eq!(
            stopped(&decide_with(AutoscalePolicy::Ferry, &v, T, &mut h)),
            1
        );
        // Spells far longer than a cold start's price: stop at the floor.
        let mut h = History::default();
        for _ in 0..3 {
            h.tick(1.0, 50.0);
            for _ in 0..2000 {
                h.tick(1.0, 0.0);
            }
        }
        h.tick(1.0, 50.0);
        assert_eq!(h.keep_warm(300.0, 60.0, KEEP_WARM_MAX_S), 60.0);
    }

    #[test]
    fn ferry_keeps_a_prewarmed_fleet_until_its_history_covers_the_long_window() {
        // Four ready workers, one busy, 20 units/s routed: one worker of 100/s is the target
        // (no spare below half a worker's load), the other three are surplus, empty for 5 s.
        let mut workers: Vec<WorkerView> =
            (1..=4).map(|i| w(i, WorkerState::Idle, 0.0, 5.0)).collect();
        workers[0].load = 20.0;
        let v = view(AutoscalePolicy::Ferry, workers);
        let mut h = History::default();
        for _ in 0..5 {
            h.tick(1.0, 20.0);
        }
        // Five seconds of history: the surplus waits the control plane's idle limit.
        let d = decide_with(AutoscalePolicy::Ferry, &v, T, &mut h);
        assert_eq!(stopped(&d), 0, "{d:?}");
        // A full long window of the same load: the surplus is shed.
        for _ in 0..LONG_WINDOW_S as u32 {
            h.tick(1.0, 20.0);
        }
        let d = decide_with(AutoscalePolicy::Ferry, &v, T, &mut h);
        assert_eq!(stopped(&d), 3, "{d:?}");
    }

    #[test]
    fn ferry_sheds_a_large_surplus_and_never_launches_for_the_pool() {
        let mut h = History::default();
        for _ in 0..60 {
            h.tick(1.0, 100.0);
        }
        // 100 units/s: one worker (plus a spare above half a worker's load); eight ready,
        // six of them empty for 2 s: shed at once.
        let mut workers: Vec<WorkerView> =
            (1..=8).map(|i| w(i, WorkerState::Idle, 0.0, 2.0)).collect();
        workers[0].load = 50.0;
        workers[1].load = 50.0;
        let mut v = view(AutoscalePolicy::Ferry, workers);
        v.params.cold_workers = 5;
        let d = decide_with(AutoscalePolicy::Ferry, &v, T, &mut h);
        assert_eq!(stopped(&d), 6, "{d:?}");
        assert_eq!(launched(&d), 0);
        // Vast with the same cold pool setting launches to fill it.
        let mut v = view(AutoscalePolicy::Vast, vec![]);
        v.params.cold_workers = 5;
        assert_eq!(
            launched(&decide_with(AutoscalePolicy::Vast, &v, T, &mut h)),
            5
        );
        let mut v = view(AutoscalePolicy::Ferry, vec![]);
        v.params.cold_workers = 5;
        let mut quiet = History::default();
        quiet.tick(1.0, 0.0);
        assert_eq!(
            launched(&decide_with(AutoscalePolicy::Ferry, &v, T, &mut quiet)),
            0
        );
    }
}
