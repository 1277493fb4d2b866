//! The fleet's unit tests: each transition of the table in the module docs.

use super::*;

const LIMITS: Limits = Limits {
    load_deadline: Duration::from_secs(60),
    bad_machine_ttl: Duration::from_secs(600),
};

fn row(id: i64, label: &str, actual: &str, intended: &str) -> Instance {
    Instance {
        id,
        machine_id: Some(id * 10),
        actual_status: Some(actual.into()),
        intended_status: Some(intended.into()),
        status_msg: None,
        label: Some(label.into()),
    }
}

fn events(r: &Reconciled) -> Vec<String> {
    r.events
        .iter()
        .map(|e| match e {
            ProviderEvent::Started { worker_id } => format!("started {worker_id}"),
            ProviderEvent::Exited { worker_id, reason } => {
                format!("exited {worker_id}: {reason}")
            }
        })
        .collect()
}

#[test]
fn statuses_read_as_running_loading_or_down() {
    let r = |a: &str, i: &str| seen(&row(1, "x", a, i));
    assert_eq!(r("running", "running"), Seen::Running);
    assert_eq!(r("loading", "running"), Seen::Loading);
    assert_eq!(r("created", "running"), Seen::Loading);
    assert_eq!(r("", "running"), Seen::Loading);
    assert!(matches!(r("exited", "running"), Seen::Down(w) if w.contains("exited")));
    assert!(matches!(r("running", "stopped"), Seen::Down(w) if w.contains("stopping")));
    assert!(matches!(r("offline", "running"), Seen::Down(_)));
    let mut x = row(1, "x", "exited", "stopped");
    x.status_msg = Some("outbid ".into());
    assert_eq!(seen(&x), Seen::Down("status exited (outbid)".into()));
}

#[test]
fn a_launch_boots_runs_and_dies_with_events() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p1");
    let l = f.begin(7, true).unwrap();
    assert_eq!(f.begin(7, true), None, "one launch per worker");
    assert!(f.placed(
        7,
        l,
        Placed {
            id: 70,
            machine: Some(700)
        },
        t0
    ));
    let lbl = f.label(7);
    assert_eq!(lbl, "ferry-p1-7");
    let r = f.reconcile(&[row(70, &lbl, "loading", "running")], t0, LIMITS);
    assert!(r.events.is_empty());
    let r = f.reconcile(&[row(70, &lbl, "running", "running")], t0, LIMITS);
    assert_eq!(events(&r), ["started 7"]);
    let r = f.reconcile(&[row(70, &lbl, "running", "running")], t0, LIMITS);
    assert!(r.events.is_empty(), "started once");
    let r = f.reconcile(&[row(70, &lbl, "exited", "stopped")], t0, LIMITS);
    assert_eq!(events(&r).len(), 1);
    assert!(
        events(&r)[0].contains("outbid or preempted"),
        "{:?}",
        events(&r)
    );
    // The control plane destroys it.
    assert_eq!(f.remove(7, "destroyed").map(|p| p.id), Some(70));
    assert_eq!(f.doomed().len(), 1);
    f.destroyed(70);
    assert!(f.doomed().is_empty() && f.is_empty());
}

#[test]
fn a_slow_or_failed_boot_is_destroyed_and_its_machine_avoided() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let l = f.begin(1, false).unwrap();
    f.placed(
        1,
        l,
        Placed {
            id: 10,
            machine: Some(100),
        },
        t0,
    );
    let loading = [row(10, "ferry-p-1", "loading", "running")];
    assert!(f
        .reconcile(&loading, t0 + Duration::from_secs(59), LIMITS)
        .events
        .is_empty());
    let r = f.reconcile(&loading, t0 + Duration::from_secs(60), LIMITS);
    assert!(events(&r)[0].contains("did not finish loading within 60s on machine 100"));
    assert_eq!(f.doomed()[0].0, 10);
    assert_eq!(f.bad_machines(t0), HashSet::from([100]));
    assert!(f.bad_machines(t0 + Duration::from_secs(661)).is_empty());
    // The worker keeps no instance; its row is already doomed, so the sweep adds nothing.
    assert_eq!(f.instance(1), None);

    let l = f.begin(2, false).unwrap();
    f.placed(
        2,
        l,
        Placed {
            id: 20,
            machine: Some(200),
        },
        t0,
    );
    let r = f.reconcile(&[row(20, "ferry-p-2", "exited", "running")], t0, LIMITS);
    assert!(
        events(&r)[0].contains("failed while loading on machine 200"),
        "{r:?}"
    );
    assert!(f.doomed().iter().any(|(id, _)| *id == 20));
    assert!(f.bad_machines(t0).contains(&200));
}

#[test]
fn a_resume_waits_for_vast_to_pick_it_up() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let l = f.begin(1, false).unwrap();
    f.placed(
        1,
        l,
        Placed {
            id: 10,
            machine: None,
        },
        t0,
    );
    f.reconcile(&[row(10, "ferry-p-1", "running", "running")], t0, LIMITS);
    f.stopped(1);
    let exited = [row(10, "ferry-p-1", "exited", "stopped")];
    assert!(
        f.reconcile(&exited, t0, LIMITS).events.is_empty(),
        "stopped on purpose"
    );
    assert_eq!(f.resume_target(1), ResumeTarget::Restart(10));
    f.resumed(1, t0);
    // Still showing the stopped state it leaves: not a failure.
    let leaving = [row(10, "ferry-p-1", "exited", "running")];
    assert!(f.reconcile(&leaving, t0, LIMITS).events.is_empty());
    f.reconcile(&[row(10, "ferry-p-1", "loading", "running")], t0, LIMITS);
    // Seen loading: now a down status is a failure.
    let r = f.reconcile(&leaving, t0, LIMITS);
    assert!(events(&r)[0].contains("failed while loading"));
    assert_eq!(f.resume_target(1), ResumeTarget::Fresh);
    assert_eq!(f.resume_target(99), ResumeTarget::Fresh);
}

#[test]
fn a_vanished_instance_counts_after_several_misses() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let l = f.begin(1, false).unwrap();
    f.placed(
        1,
        l,
        Placed {
            id: 10,
            machine: None,
        },
        t0,
    );
    for _ in 1..GONE_AFTER_MISSES {
        assert!(f.reconcile(&[], t0, LIMITS).events.is_empty());
    }
    let r = f.reconcile(&[], t0, LIMITS);
    assert!(events(&r)[0].contains("gone from the account"));
    assert_eq!(f.resume_target(1), ResumeTarget::Fresh);
}

#[test]
fn a_stop_during_a_launch_waits_for_the_instance() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    assert!(!f.stop_when_placed(1), "no launch");
    let l = f.begin(1, false).unwrap();
    assert!(f.stop_when_placed(1));
    assert!(f.placed(
        1,
        l,
        Placed {
            id: 10,
            machine: None
        },
        t0
    ));
    assert!(f.take_stop_wanted(1));
    assert!(!f.take_stop_wanted(1));
    f.stopped(1);
    assert_eq!(f.resume_target(1), ResumeTarget::Restart(10));
}

#[test]
fn a_destroy_during_a_launch_dooms_what_it_creates() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let l = f.begin(1, false).unwrap();
    assert!(f.current(1, l));
    assert_eq!(f.remove(1, "destroyed"), None);
    assert!(!f.current(1, l));
    assert!(!f.placed(
        1,
        l,
        Placed {
            id: 10,
            machine: None
        },
        t0
    ));
    assert_eq!(f.doomed()[0].0, 10);
}

#[test]
fn the_sweep_dooms_strays_and_duplicates_but_not_launches_in_flight() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let rows = [
        row(1, "ferry-p-1", "running", "running"),
        row(2, "ferry-p-1", "loading", "running"),
        row(3, "ferry-p-2", "running", "running"),
        row(4, "ferry-p-3", "running", "running"),
        row(5, "ferry-other-3", "running", "running"),
        row(6, "my own box", "running", "running"),
    ];
    assert_eq!(f.adopt(&rows, &[1, 3, 9], &[], t0).adopted, vec![1, 3]);
    let mut doomed: Vec<i64> = f.doomed().iter().map(|d| d.0).collect();
    doomed.sort_unstable();
    assert_eq!(doomed, vec![2, 3], "the duplicate of 1, and 2 no longer up");
    assert_eq!(f.instance(1), Some(1));
    assert_eq!(f.instance(3), Some(4));
    for id in [2, 3] {
        f.destroyed(id);
    }
    // A launch in flight: its row is left alone until the create answers.
    let l = f.begin(5, false).unwrap();
    let mut rows = vec![
        row(1, "ferry-p-1", "running", "running"),
        row(4, "ferry-p-3", "running", "running"),
        row(7, "ferry-p-5", "loading", "running"),
        row(8, "ferry-p-6", "loading", "running"),
    ];
    f.reconcile(&rows, t0, LIMITS);
    assert_eq!(f.doomed().iter().map(|d| d.0).collect::<Vec<_>>(), vec![8]);
    assert_eq!(
        f.find(&rows, 5),
        Some(Placed {
            id: 7,
            machine: Some(70)
        })
    );
    // Its create was retried after a lost answer: the first one is a duplicate.
    f.placed(
        5,
        l,
        Placed {
            id: 9,
            machine: None,
        },
        t0,
    );
    rows.push(row(9, "ferry-p-5", "loading", "running"));
    f.reconcile(&rows, t0, LIMITS);
    let doomed: Vec<i64> = f.doomed().iter().map(|d| d.0).collect();
    assert_eq!(doomed, vec![7, 8]);
}

#[test]
fn adoption_keeps_down_instances_stopped_and_claims_blind_ones_later() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let rows = [
        row(1, "ferry-p-1", "exited", "stopped"),
        row(2, "ferry-p-2", "loading", "running"),
    ];
    assert_eq!(f.adopt(&rows, &[1, 2], &[], t0).adopted, vec![2]);
    assert_eq!(f.resume_target(1), ResumeTarget::Restart(1));
    assert!(f.doomed().is_empty());

    // Cold workers keep their instances: a stopped one as it is, one found up (the last run
    // died mid-stop) to be stopped again; neither counts as taken back up.
    let mut c = Fleet::new("p");
    let rows = [
        row(1, "ferry-p-1", "stopped", "stopped"),
        row(2, "ferry-p-2", "running", "running"),
        row(3, "ferry-p-3", "stopped", "stopped"),
    ];
    let got = c.adopt(&rows, &[], &[1, 2], t0);
    assert_eq!((got.adopted, got.to_stop), (vec![], vec![2]));
    assert_eq!(c.resume_target(1), ResumeTarget::Restart(1));
    assert_eq!(
        c.doomed().iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![3],
        "a stopped instance of no known worker is a stray"
    );

    let mut g = Fleet::new("p");
    assert_eq!(g.adopt_blind(&[1, 2]), vec![1, 2]);
    let r = g.reconcile(&[row(5, "ferry-p-1", "running", "running")], t0, LIMITS);
    assert_eq!(
        events(&r),
        ["exited 2: no Vast instance found for it after the restart"]
    );
    assert_eq!(g.instance(1), Some(5));
    assert!(g.doomed().is_empty());
}

#[test]
fn concurrent_launches_spread_over_offers() {
    let mut f = Fleet::new("p");
    let offer = |id| super::super::api::Offer {
        id,
        machine_id: None,
        dph_total: Some(id as f64),
        min_bid: None,
        gpu_name: None,
    };
    let mut a = vec![offer(1), offer(2), offer(3)];
    assert_eq!(f.claim_first(&mut a), Some(1));
    let mut b = vec![offer(1), offer(2), offer(3)];
    assert_eq!(f.claim_first(&mut b), Some(2));
    assert_eq!(b.iter().map(|o| o.id).collect::<Vec<_>>(), vec![2, 3, 1]);
    f.release(1);
    let mut c = vec![offer(1), offer(2)];
    assert_eq!(f.claim_first(&mut c), Some(1));
    assert_eq!(f.claim_first(&mut []), None);
}

#[test]
fn a_wrong_label_is_set_again() {
    let t0 = Instant::now();
    let mut f = Fleet::new("p");
    let l = f.begin(1, false).unwrap();
    f.placed(
        1,
        l,
        Placed {
            id: 10,
            machine: None,
        },
        t0,
    );
    let mut r = row(10, "", "loading", "running");
    r.label = None;
    let out = f.reconcile(&[r], t0, LIMITS);
    assert_eq!(out.relabel, vec![(10, "ferry-p-1".to_owned())]);
}
