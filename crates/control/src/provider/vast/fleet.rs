//! [`Fleet`]: the Vast instances this control plane owns, by worker, and what each poll of the
//! instance list means for them. Pure bookkeeping (no I/O), so each transition is tested here.
//!
//! # Labels
//!
//! Every instance is created with the label `ferry-<plane>-<worker id>`, where `<plane>`
//! names this control plane (two control planes on one Vast account never touch each other's
//! instances). The label is how an instance is found again: after a create whose answer was
//! lost, after a restart ([`Fleet::adopt`]), and by the sweep below.
//!
//! # A worker's instance
//!
//! | Phase | Meaning | Leaves on |
//! |---|---|---|
//! | `Creating` | a launch is searching offers and creating | the create's answer (or the instance found by label) → `Booting` |
//! | `Adopting` | after a restart whose instance list failed: the instance is claimed by label at the first good poll | → `Running`/`Booting`, or `Down` if none |
//! | `Booting` | created or resumed; Vast is pulling the image and starting it | `running` → `Running` (event `Started`); down, or still loading at the load deadline → destroyed, the machine remembered as bad, `Down` (event `Exited`) |
//! | `Running` | up | exited, stopped by Vast (an interruptible one outbid), offline, or gone → `Down` (event `Exited`; the control plane then destroys the worker) |
//! | `Stopped` | stopped by the control plane (cold) | resume → `Booting` |
//! | `Down` | failed; waiting for the control plane's destroy | destroy |
//!
//! An instance missing from [`GONE_AFTER_MISSES`] lists in a row is gone (the list can lag a
//! create by a moment, so one miss is not enough).
//!
//! # Nothing leaked
//!
//! Once [`Fleet::adopt`] has run, every poll sweeps: an instance labelled for this control
//! plane that is not a worker's current instance (a stray of a failed or cancelled launch, a
//! duplicate of a create retried after a lost answer, a worker deleted meanwhile) is doomed.
//! Doomed instances are destroyed by the poll loop, retried every poll until Vast confirms.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::api::Instance;
use crate::provider::ProviderEvent;

/// Lists in a row an instance must be missing from to count as gone.
pub const GONE_AFTER_MISSES: u32 = 3;

/// An instance and the machine it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Instance id.
    pub id: i64,
    /// Machine id.
    pub machine: Option<i64>,
}

impl Placed {
    fn of(row: &Instance) -> Placed {
        Placed {
            id: row.id,
            machine: row.machine_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Creating,
    Adopting,
    /// `armed`: a down status counts as a failure. A resumed instance still shows the stopped
    /// state it is leaving until Vast picks the resume up, so it is armed only once it has been
    /// seen loading or running.
    Booting {
        since: Instant,
        armed: bool,
    },
    Running,
    Stopped,
    Down,
}

#[derive(Debug, Clone)]
struct Tracked {
    /// Which launch owns the record (a destroy during a launch makes the launch's result
    /// stale).
    launch: u64,
    instance: Option<Placed>,
    phase: Phase,
    interruptible: bool,
    misses: u32,
    /// A stop came while the launch was creating: the instance is stopped once it exists.
    stop_wanted: bool,
}

/// What an instance row says, for the provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Running as asked.
    Running,
    /// Being created, scheduled, pulled or started.
    Loading,
    /// Not running and not about to: exited, stopped (by Vast), offline; with why.
    Down(String),
}

/// Reads an instance row.
pub fn seen(r: &Instance) -> Seen {
    let actual = r.actual_status.as_deref().unwrap_or("").trim();
    let intended = r.intended_status.as_deref().unwrap_or("running").trim();
    let msg = r
        .status_msg
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty());
    let down = |what: &str| {
        Seen::Down(match msg {
            Some(m) => format!("{what} ({m})"),
            None => what.to_owned(),
        })
    };
    match actual {
        "running" if intended != "stopped" => Seen::Running,
        "exited" | "stopped" | "offline" | "failed" | "error" | "destroyed" => {
            down(&format!("status {actual}"))
        }
        _ if intended == "stopped" => down(&format!("status {actual}, stopping")),
        _ => Seen::Loading,
    }
}

/// What a resume does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeTarget {
    /// Start this stopped instance again.
    Restart(i64),
    /// It is already up (or coming up).
    AlreadyUp,
    /// No instance to restart: launch a new one.
    Fresh,
}

/// Time limits the poll applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// An instance not running this long after its create or resume is given up.
    pub load_deadline: Duration,
    /// How long a machine that failed stays avoided.
    pub bad_machine_ttl: Duration,
}

/// What [`Fleet::adopt`] took back.
#[derive(Debug, Default, PartialEq)]
pub struct Adopted {
    /// Workers that were up whose instances run or load.
    pub adopted: Vec<i64>,
    /// Cold workers whose instances were found up: to stop again.
    pub to_stop: Vec<i64>,
}

/// What a poll found to do besides destroying.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciled {
    /// Events for the control plane.
    pub events: Vec<ProviderEvent>,
    /// Instances whose label is not ours to set again: `(instance, label)`.
    pub relabel: Vec<(i64, String)>,
}

/// The instances this control plane owns (see the module docs).
#[derive(Debug)]
pub struct Fleet {
    prefix: String,
    workers: HashMap<i64, Tracked>,
    doomed: BTreeMap<i64, String>,
    bad_machines: HashMap<i64, Instant>,
    /// Offers a launch is creating on right now: concurrent launches of one group try other
    /// offers first instead of racing for the cheapest.
    claimed: HashSet<i64>,
    next_launch: u64,
    sweeping: bool,
}

impl Fleet {
    /// An empty fleet of the control plane named `plane`.
    pub fn new(plane: &str) -> Fleet {
        Fleet {
            prefix: format!("ferry-{plane}-"),
            workers: HashMap::new(),
            doomed: BTreeMap::new(),
            bad_machines: HashMap::new(),
            claimed: HashSet::new(),
            next_launch: 1,
            sweeping: false,
        }
    }

    /// A worker's instance label.
    pub fn label(&self, worker: i64) -> String {
        format!("{}{worker}", self.prefix)
    }

    fn worker_of(&self, label: Option<&str>) -> Option<i64> {
        label?.strip_prefix(&self.prefix)?.parse().ok()
    }

    /// A launch begins: its number, or `None` if the worker has an instance or a launch
    /// already.
    pub fn begin(&mut self, worker: i64, interruptible: bool) -> Option<u64> {
        if let Some(t) = self.workers.get(&worker) {
            if t.instance.is_some() || matches!(t.phase, Phase::Creating | Phase::Adopting) {
                return None;
            }
        }
        let launch = self.next_launch;
        self.next_launch += 1;
        self.workers.insert(
            worker,
            Tracked {
                launch,
                instance: None,
                phase: Phase::Creating,
                interruptible,
                misses: 0,
                stop_wanted: false,
            },
        );
        Some(launch)
    }

    /// Whether `launch` still owns the worker (it was not destroyed meanwhile).
    pub fn current(&self, worker: i64, launch: u64) -> bool {
        self.workers
            .get(&worker)
            .is_some_and(|t| t.launch == launch)
    }

    /// The launch created `placed`. `false`: the worker was destroyed meanwhile, and the
    /// instance is doomed.
    pub fn placed(&mut self, worker: i64, launch: u64, placed: Placed, now: Instant) -> bool {
        match self.workers.get_mut(&worker) {
            Some(t) if t.launch == launch => {
                t.instance = Some(placed);
                t.phase = Phase::Booting {
                    since: now,
                    armed: true,
                };
                t.misses = 0;
                true
            }
            _ => {
                self.doom(
                    placed.id,
                    "its worker was destroyed while it was being created",
                );
                false
            }
        }
    }

    /// The launch failed: forget the worker (an instance that shows up for it later is swept).
    pub fn abandon(&mut self, worker: i64, launch: u64) {
        if self.current(worker, launch) {
            self.workers.remove(&worker);
        }
    }

    /// Forgets a worker (destroy): its instance, if any, is doomed and returned.
    pub fn remove(&mut self, worker: i64, why: &str) -> Option<Placed> {
        let p = self.workers.remove(&worker)?.instance?;
        self.doom(p.id, why);
        Some(p)
    }

    /// The worker's instance.
    pub fn instance(&self, worker: i64) -> Option<i64> {
        self.workers.get(&worker)?.instance.map(|p| p.id)
    }

    /// A stop for a worker whose launch is still creating: `true` if it will be stopped once
    /// its instance exists (see [`Fleet::take_stop_wanted`]).
    pub fn stop_when_placed(&mut self, worker: i64) -> bool {
        match self.workers.get_mut(&worker) {
            Some(t) if t.instance.is_none() && t.phase == Phase::Creating => {
                t.stop_wanted = true;
                true
            }
            _ => false,
        }
    }

    /// Whether a stop came during the launch (cleared).
    pub fn take_stop_wanted(&mut self, worker: i64) -> bool {
        self.workers
            .get_mut(&worker)
            .is_some_and(|t| std::mem::take(&mut t.stop_wanted))
    }

    /// The control plane stopped the worker's instance.
    pub fn stopped(&mut self, worker: i64) {
        if let Some(t) = self.workers.get_mut(&worker) {
            t.phase = Phase::Stopped;
        }
    }

    /// The worker's instance is gone (Vast answered 404): a resume launches a new one.
    pub fn lost(&mut self, worker: i64) {
        if let Some(t) = self.workers.get_mut(&worker) {
            t.instance = None;
            t.phase = Phase::Stopped;
        }
    }

    /// What resuming the worker takes.
    pub fn resume_target(&self, worker: i64) -> ResumeTarget {
        match self.workers.get(&worker) {
            Some(Tracked {
                instance: Some(p),
                phase: Phase::Stopped | Phase::Down,
                ..
            }) => ResumeTarget::Restart(p.id),
            Some(Tracked {
                instance: Some(_), ..
            })
            | Some(Tracked {
                phase: Phase::Creating | Phase::Adopting,
                ..
            }) => ResumeTarget::AlreadyUp,
            _ => ResumeTarget::Fresh,
        }
    }

    /// The worker's stopped instance was asked to run again.
    pub fn resumed(&mut self, worker: i64, now: Instant) {
        if let Some(t) = self.workers.get_mut(&worker) {
            t.phase = Phase::Booting {
                since: now,
                armed: false,
            };
            t.misses = 0;
        }
    }

    /// Drops a worker without an instance (before a fresh launch replaces its record).
    pub fn forget(&mut self, worker: i64) {
        if self
            .workers
            .get(&worker)
            .is_some_and(|t| t.instance.is_none())
        {
            self.workers.remove(&worker);
        }
    }

    /// Marks an instance for destruction.
    pub fn doom(&mut self, instance: i64, why: &str) {
        self.doomed
            .entry(instance)
            .or_insert_with(|| why.to_owned());
    }

    /// Instances to destroy, with why.
    pub fn doomed(&self) -> Vec<(i64, String)> {
        self.doomed
            .iter()
            .map(|(id, why)| (*id, why.clone()))
            .collect()
    }

    /// Vast confirmed the destroy.
    pub fn destroyed(&mut self, instance: i64) {
        self.doomed.remove(&instance);
    }

    /// Machines to avoid now.
    pub fn bad_machines(&mut self, now: Instant) -> HashSet<i64> {
        self.bad_machines.retain(|_, until| *until > now);
        self.bad_machines.keys().copied().collect()
    }

    fn mark_bad(&mut self, machine: Option<i64>, until: Instant) {
        if let Some(m) = machine {
            self.bad_machines.insert(m, until);
        }
    }

    /// Orders `offers` (cheapest first) so that offers another launch is creating on come
    /// last, and claims the first.
    pub fn claim_first(&mut self, offers: &mut [super::api::Offer]) -> Option<i64> {
        offers.sort_by_key(|o| self.claimed.contains(&o.id));
        let first = offers.first()?.id;
        self.claimed.insert(first);
        Some(first)
    }

    /// The create on `offer` has answered.
    pub fn release(&mut self, offer: i64) {
        self.claimed.remove(&offer);
    }

    /// Number of workers with an instance or a launch.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The row labelled for `worker` that a lost create may have made (not doomed; the
    /// lowest id if several).
    pub fn find(&self, rows: &[Instance], worker: i64) -> Option<Placed> {
        rows.iter()
            .filter(|r| self.worker_of(r.label.as_deref()) == Some(worker))
            .filter(|r| !self.doomed.contains_key(&r.id))
            .min_by_key(|r| r.id)
            .map(Placed::of)
    }

    /// After a restart: takes back the instances of `wanted` workers that are up, keeps those
    /// that are stopped or down as stopped (not returned: the control plane records them as
    /// stopped and a resume starts them again), dooms every other instance of this control
    /// plane, and starts sweeping. Returns the workers taken back.
    pub fn adopt(
        &mut self,
        rows: &[Instance],
        wanted: &[i64],
        cold: &[i64],
        now: Instant,
    ) -> Adopted {
        self.sweeping = true;
        let cold: HashSet<i64> = cold.iter().copied().collect();
        let wanted: HashSet<i64> = wanted.iter().copied().chain(cold.iter().copied()).collect();
        let mut by_worker: BTreeMap<i64, Vec<&Instance>> = BTreeMap::new();
        for r in rows {
            if let Some(w) = self.worker_of(r.label.as_deref()) {
                by_worker.entry(w).or_default().push(r);
            }
        }
        let mut adopted = Vec::new();
        let mut to_stop = Vec::new();
        for (worker, mut rows) in by_worker {
            if !wanted.contains(&worker) || self.workers.contains_key(&worker) {
                for r in rows {
                    self.doom(
                        r.id,
                        "left by an earlier run for a worker that is no longer up",
                    );
                }
                continue;
            }
            rows.sort_by_key(|r| (rank(&seen(r)), r.id));
            let mut rest = rows.into_iter();
            let Some(best) = rest.next() else { continue };
            for r in rest {
                self.doom(r.id, "a second instance of one worker");
            }
            let phase = match seen(best) {
                Seen::Running => Phase::Running,
                Seen::Loading => Phase::Booting {
                    since: now,
                    armed: true,
                },
                Seen::Down(_) => Phase::Stopped,
            };
            if cold.contains(&worker) {
                // A cold worker keeps its instance (disk, model) for a resume; one found up
                // (the last run died mid-stop) is stopped again.
                if phase != Phase::Stopped {
                    to_stop.push(worker);
                }
            } else if phase != Phase::Stopped {
                adopted.push(worker);
            }
            self.workers.insert(
                worker,
                Tracked {
                    launch: 0,
                    instance: Some(Placed::of(best)),
                    phase,
                    interruptible: false,
                    misses: 0,
                    stop_wanted: false,
                },
            );
        }
        adopted.sort_unstable();
        Adopted { adopted, to_stop }
    }

    /// After a restart whose instance list failed (cold workers are not taken back on trust:
    /// their instances are swept as strays at the first good poll, and a resume launches anew): takes back every `wanted` worker on
    /// trust, to be matched with its instance at the first good poll. Starts sweeping.
    pub fn adopt_blind(&mut self, wanted: &[i64]) -> Vec<i64> {
        self.sweeping = true;
        for w in wanted {
            self.workers.entry(*w).or_insert(Tracked {
                launch: 0,
                instance: None,
                phase: Phase::Adopting,
                interruptible: false,
                misses: 0,
                stop_wanted: false,
            });
        }
        wanted.to_vec()
    }

    /// One poll: what the instance list says about each worker's instance (see the module
    /// docs), and the sweep. New dooms are read with [`Fleet::doomed`].
    pub fn reconcile(&mut self, rows: &[Instance], now: Instant, limits: Limits) -> Reconciled {
        let mut out = Reconciled::default();
        let by_id: HashMap<i64, &Instance> = rows.iter().map(|r| (r.id, r)).collect();
        let mut ours: BTreeMap<i64, Vec<&Instance>> = BTreeMap::new();
        for r in rows {
            if let Some(w) = self.worker_of(r.label.as_deref()) {
                ours.entry(w).or_default().push(r);
            }
        }
        let bad_until = now + limits.bad_machine_ttl;
        let mut dooms: Vec<(i64, String)> = Vec::new();
        let mut bad: Vec<Option<i64>> = Vec::new();
        let mut ids: Vec<i64> = self.workers.keys().copied().collect();
        ids.sort_unstable();
        for worker in ids {
            let label = self.label(worker);
            let Some(t) = self.workers.get_mut(&worker) else {
                continue;
            };
            if t.phase == Phase::Adopting {
                let best = ours.get(&worker).and_then(|rs| {
                    rs.iter()
                        .filter(|r| !self.doomed.contains_key(&r.id))
                        .min_by_key(|r| (rank(&seen(r)), r.id))
                });
                match best {
                    Some(r) => {
                        t.instance = Some(Placed::of(r));
                        t.phase = match seen(r) {
                            Seen::Running => Phase::Running,
                            Seen::Loading => Phase::Booting {
                                since: now,
                                armed: true,
                            },
                            Seen::Down(why) => {
                                out.events.push(ProviderEvent::Exited {
                                    worker_id: worker,
                                    reason: format!(
                                        "Vast instance {} was down after the restart: {why}",
                                        r.id
                                    ),
                                });
                                Phase::Down
                            }
                        };
                    }
                    None => {
                        out.events.push(ProviderEvent::Exited {
                            worker_id: worker,
                            reason: "no Vast instance found for it after the restart".into(),
                        });
                        t.phase = Phase::Down;
                    }
                }
                continue;
            }
            let Some(p) = t.instance else { continue };
            let Some(row) = by_id.get(&p.id) else {
                t.misses += 1;
                if t.misses >= GONE_AFTER_MISSES {
                    if matches!(t.phase, Phase::Booting { .. } | Phase::Running) {
                        out.events.push(ProviderEvent::Exited {
                            worker_id: worker,
                            reason: format!("Vast instance {} is gone from the account", p.id),
                        });
                    }
                    t.instance = None;
                    if t.phase != Phase::Stopped {
                        t.phase = Phase::Down;
                    }
                }
                continue;
            };
            t.misses = 0;
            if row.label.as_deref() != Some(label.as_str()) {
                out.relabel.push((p.id, label));
            }
            let what = seen(row);
            match (t.phase, what) {
                (Phase::Booting { .. }, Seen::Running) => {
                    t.phase = Phase::Running;
                    out.events
                        .push(ProviderEvent::Started { worker_id: worker });
                }
                (Phase::Booting { since, .. }, Seen::Loading)
                    if now.duration_since(since) >= limits.load_deadline =>
                {
                    let reason = format!(
                        "Vast instance {} did not finish loading within {}s{}; destroyed",
                        p.id,
                        limits.load_deadline.as_secs(),
                        on_machine(p.machine)
                    );
                    dooms.push((p.id, "did not finish loading in time".into()));
                    bad.push(p.machine);
                    out.events.push(ProviderEvent::Exited {
                        worker_id: worker,
                        reason,
                    });
                    t.instance = None;
                    t.phase = Phase::Down;
                }
                (
                    Phase::Booting {
                        since,
                        armed: false,
                    },
                    Seen::Loading,
                ) => {
                    t.phase = Phase::Booting { since, armed: true };
                }
                (
                    Phase::Booting {
                        since,
                        armed: false,
                    },
                    Seen::Down(_),
                ) if now.duration_since(since) < limits.load_deadline => {}
                (Phase::Booting { .. }, Seen::Down(why)) => {
                    dooms.push((p.id, "failed while loading".into()));
                    bad.push(p.machine);
                    out.events.push(ProviderEvent::Exited {
                        worker_id: worker,
                        reason: format!(
                            "Vast instance {} failed while loading{}: {why}; destroyed",
                            p.id,
                            on_machine(p.machine)
                        ),
                    });
                    t.instance = None;
                    t.phase = Phase::Down;
                }
                (Phase::Running, Seen::Down(why)) => {
                    let reason = if t.interruptible {
                        format!(
                            "interruptible Vast instance {} was stopped by Vast \
                             (outbid or preempted): {why}",
                            p.id
                        )
                    } else {
                        format!("Vast instance {} stopped on its own: {why}", p.id)
                    };
                    out.events.push(ProviderEvent::Exited {
                        worker_id: worker,
                        reason,
                    });
                    t.phase = Phase::Down;
                }
                _ => {}
            }
        }
        for (id, why) in dooms {
            self.doom(id, &why);
        }
        for m in bad {
            self.mark_bad(m, bad_until);
        }
        if self.sweeping {
            for (worker, rows) in &ours {
                for r in rows {
                    if self.doomed.contains_key(&r.id) {
                        continue;
                    }
                    let why = match self.workers.get(worker) {
                        None => "no worker of this control plane has it",
                        Some(t) => match t.instance {
                            Some(p) if p.id == r.id => continue,
                            Some(_) => "a second instance of one worker",
                            None if matches!(t.phase, Phase::Creating | Phase::Adopting) => {
                                continue
                            }
                            None => "its worker has no instance",
                        },
                    };
                    self.doomed.insert(r.id, why.to_owned());
                }
            }
        }
        out
    }
}

/// Running instances first, then loading ones.
fn rank(s: &Seen) -> u8 {
    match s {
        Seen::Running => 0,
        Seen::Loading => 1,
        Seen::Down(_) => 2,
    }
}

fn on_machine(m: Option<i64>) -> String {
    m.map(|m| format!(" on machine {m}")).unwrap_or_default()
}

#[cfg(test)]
mod tests;
