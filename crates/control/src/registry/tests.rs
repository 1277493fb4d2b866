//! The registry's unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

const ORIGIN: Origin = Origin {
    endpoint_id: 1,
    workergroup_id: 2,
    provider: ProviderKind::Local,
};

fn status(loadtime: f64, max_perf: f64, err: &str) -> WorkerStatus {
    WorkerStatus {
        id: 1,
        mtoken: "t".into(),
        loadtime,
        max_perf,
        error_msg: err.into(),
        url: "http://127.0.0.1:1".into(),
        working_request_idxs: vec![5],
        ..WorkerStatus::default()
    }
}

#[test]
fn report_drives_states_and_pending() {
    let mut w = WorkerRec::new(1, "t".into(), ORIGIN, 0.0, 0.0);
    w.pending.insert(5, (10.0, 0.0));
    w.pending.insert(6, (20.0, 0.0));
    assert!(w.apply_status(&status(0.0, 0.0, ""), 1.0, 1.0));
    assert_eq!(w.state, WorkerState::ModelLoading);
    assert_eq!(w.pending_load(), 20.0);
    assert!(w.apply_status(&status(2.0, 50.0, ""), 2.0, 2.0));
    assert_eq!(w.state, WorkerState::Idle);
    assert!(w.routable(2.5, 30.0));
    assert!(!w.routable(40.0, 30.0));
    assert!(w.apply_status(&status(2.0, 50.0, "boom"), 3.0, 3.0));
    assert_eq!(w.state, WorkerState::Error);
    w.set_state(WorkerState::Stopping, 4.0);
    assert!(!w.apply_status(&status(2.0, 50.0, ""), 5.0, 5.0));
    assert_eq!(w.state, WorkerState::Stopping);
}

#[test]
fn a_provider_reason_heads_a_dead_workers_own_message() {
    let s = crate::store::memory::MemoryStore::default();
    let mut r = Registry::restore(&s.loaded(), false);
    let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
    let mut st = status(2.0, 50.0, "Worker shutting down");
    st.id = id;
    st.mtoken = "tok".into();
    r.report(&st, 1.0, 1.0, &s).unwrap();
    assert_eq!(r.get(id).unwrap().state(), WorkerState::Error);
    r.exited(id, "outbid".into(), 2.0, &s);
    r.exited(id, "outbid".into(), 3.0, &s);
    let w = r.get(id).unwrap();
    assert_eq!(
        w.error_msg(),
        "outbid (the worker said: Worker shutting down)"
    );
    assert_eq!(w.state_since(), 1.0, "still the same error, held as long");
}

#[test]
fn reports_need_the_workers_own_token() {
    let s = crate::store::memory::MemoryStore::default();
    let mut r = Registry::restore(&s.loaded(), false);
    let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
    let mut st = status(2.0, 50.0, "");
    st.id = id;
    st.mtoken = "wrong".into();
    let wrong = r.report(&st, 1.0, 1.0, &s).unwrap_err().to_string();
    st.id = id + 1;
    st.mtoken = "tok".into();
    let unknown = r.report(&st, 1.0, 1.0, &s).unwrap_err().to_string();
    assert_eq!(wrong, unknown, "one answer for both");
    assert!(r.finished(id, "wrong", [1]).is_err());
    st.id = id;
    r.report(&st, 1.0, 1.0, &s).unwrap();
    assert_eq!(r.get(id).unwrap().state(), WorkerState::Idle);
    // Persisted, and a restart maps a ready worker to loading until it reports again.
    let back = Registry::restore(&s.loaded(), false);
    assert_eq!(back.get(id).unwrap().state(), WorkerState::Loading);
    // Ids are never reused across a restart.
    let mut back = back;
    assert!(back.create(ORIGIN, "t2".into(), 0.0, 0.0, &s) > id);
    // A replica taking over keeps it routable, its silence counted from the take-over.
    let taken = Registry::restore(&s.loaded(), true);
    let w = taken.get(id).unwrap();
    assert_eq!(w.state(), WorkerState::Idle);
    assert!(w.routable(1.0, 30.0));
    assert!(
        !w.routable(31.0, 30.0),
        "one that never reports again turns stale"
    );
}

#[test]
fn pending_load_lives_from_assignment_to_acknowledgement() {
    let s = crate::store::memory::MemoryStore::default();
    let mut r = Registry::restore(&s.loaded(), false);
    let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
    assert_eq!(r.assign(id, 5, 10.0, 1.0), Some(1));
    assert_eq!(r.assign(id, 6, 20.0, 1.0), Some(2));
    assert_eq!(r.assign(id, 7, 30.0, 1.0), Some(3));
    assert_eq!(r.get(id).unwrap().pending_load(), 60.0);
    // Acknowledged by a report (5), finished (6), released (7): all gone, once each.
    r.report(&status_for(id, &[5]), 2.0, 2.0, &s).unwrap();
    r.finished(id, "tok", [6, 6]).unwrap();
    r.release(id, 7);
    assert_eq!(r.get(id).unwrap().pending_load(), 0.0);
    // Unacknowledged load expires after the pending TTL.
    r.assign(id, 8, 1.0, 10.0);
    r.housekeep(15.0, 30.0, 10.0, &s);
    assert_eq!(r.pending_entries(), vec![(id, 8)]);
    r.housekeep(20.0, 30.0, 10.0, &s);
    assert!(r.pending_entries().is_empty());
    // A worker leaving service carries no load.
    r.assign(id, 9, 1.0, 20.0);
    r.stopping(id, 21.0);
    assert!(r.pending_entries().is_empty());
}

#[test]
fn silent_ready_workers_fail_and_signatures_follow_the_url() {
    let s = crate::store::memory::MemoryStore::default();
    let mut r = Registry::restore(&s.loaded(), false);
    let id = r.create(ORIGIN, "tok".into(), 0.0, 0.0, &s);
    r.report(&status_for(id, &[]), 0.0, 0.0, &s).unwrap();
    r.cache_signature(id, "http://127.0.0.1:1", "sig".into());
    assert_eq!(
        r.grant_target(id),
        Some(("http://127.0.0.1:1".into(), Some("sig".into())))
    );
    let mut moved = status_for(id, &[]);
    moved.url = "http://127.0.0.1:2".into();
    r.report(&moved, 1.0, 1.0, &s).unwrap();
    assert_eq!(
        r.grant_target(id),
        Some(("http://127.0.0.1:2".into(), None))
    );
    // Stale (not routable) after the limit, failed after twice the limit.
    assert!(!r.get(id).unwrap().routable(32.0, 30.0));
    r.housekeep(60.0, 30.0, 60.0, &s);
    assert_eq!(r.get(id).unwrap().state(), WorkerState::Idle);
    r.housekeep(61.5, 30.0, 60.0, &s);
    assert_eq!(r.get(id).unwrap().state(), WorkerState::Error);
    assert_eq!(
        Registry::restore(&s.loaded(), false)
            .get(id)
            .unwrap()
            .state(),
        WorkerState::Error
    );
}

fn status_for(id: i64, working: &[u64]) -> WorkerStatus {
    WorkerStatus {
        id,
        mtoken: "tok".into(),
        loadtime: 1.0,
        max_perf: 10.0,
        url: "http://127.0.0.1:1".into(),
        working_request_idxs: working.to_vec(),
        ..WorkerStatus::default()
    }
}

mod routing_index {
    //! The routing index against the definition: a scan of every worker ([`best_of`]).

    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::route::best_of;
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;
    use rand::SeedableRng;

    const STALE: f64 = 30.0;
    const ENDPOINTS: [i64; 2] = [1, 2];

    fn origin(ep: i64) -> Origin {
        Origin {
            endpoint_id: ep,
            workergroup_id: ep * 10,
            provider: ProviderKind::Local,
        }
    }

    fn ready(id: i64, cur_load: f64, max_perf: f64, url: u8, working: &[u64]) -> WorkerStatus {
        WorkerStatus {
            id,
            mtoken: format!("t{id}"),
            loadtime: 1.0,
            max_perf,
            cur_load,
            url: format!("http://10.0.0.{url}:1"),
            working_request_idxs: working.to_vec(),
            ..WorkerStatus::default()
        }
    }

    /// What the scan would pick from: the tie set, after the same exclusions.
    fn expected(r: &Registry, ep: i64, skip: &[String], mqt: f64, mono: f64) -> Vec<i64> {
        best_of(&r.candidates(ep, skip, mono, STALE), mqt)
    }

    fn check(r: &Registry, mono: f64) {
        r.index
            .check(&r.workers, |w| !w.routable(mono, STALE))
            .unwrap();
    }

    #[test]
    fn a_route_follows_the_lowest_queue_time_and_skips_stale_and_excluded() {
        let s = MemoryStore::default();
        let mut r = Registry::restore(&s.loaded(), false);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = r.create(origin(1), "ta".into(), 0.0, 0.0, &s);
        let b = r.create(origin(1), "tb".into(), 0.0, 0.0, &s);
        let mut st = ready(a, 50.0, 10.0, 1, &[]);
        st.mtoken = "ta".into();
        r.report(&st, 1.0, 1.0, &s).unwrap();
        let mut st = ready(b, 10.0, 10.0, 2, &[]);
        st.mtoken = "tb".into();
        r.report(&st, 1.0, 1.0, &s).unwrap();
        assert_eq!(r.choose(1, &[], 30.0, (2.0, STALE), &mut rng), Some(b));
        // Load routed to b moves it behind a.
        r.assign(b, 7, 45.0, 2.0);
        assert_eq!(r.choose(1, &[], 30.0, (2.0, STALE), &mut rng), Some(a));
        r.release(b, 7);
        let skip = ["http://10.0.0.2:1".to_owned()];
        assert_eq!(r.choose(1, &skip, 30.0, (2.0, STALE), &mut rng), Some(a));
        // Over max_queue_time: none (a is at 5 s).
        assert_eq!(r.choose(1, &skip, 4.0, (2.0, STALE), &mut rng), None);
        // b reports again, a goes stale and leaves the index.
        let mut st = ready(b, 80.0, 10.0, 2, &[]);
        st.mtoken = "tb".into();
        r.report(&st, 20.0, 20.0, &s).unwrap();
        assert_eq!(r.choose(1, &[], 30.0, (40.0, STALE), &mut rng), Some(b));
        assert_eq!(r.index.ordered(1), vec![(8_000_000_000, vec![b])]);
        check(&r, 40.0);
        assert_eq!(r.choose(2, &[], 30.0, (40.0, STALE), &mut rng), None);
    }

    #[test]
    fn a_route_orders_by_the_benchmark_not_by_a_learned_throughput() {
        let s = MemoryStore::default();
        let mut r = Registry::restore(&s.loaded(), false);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = r.create(origin(1), "ta".into(), 0.0, 0.0, &s);
        let b = r.create(origin(1), "tb".into(), 0.0, 0.0, &s);
        // a reports saturated (100 held, 10 benchmark-seconds) while it finishes 2 units a
        // second: it learns 2/s. b, identical, has not been measured: 10/s, its benchmark.
        for t in 1..=5 {
            let mut st = ready(a, 100.0, 10.0, 1, &[]);
            st.mtoken = "ta".into();
            st.cur_perf = 2.0;
            r.report(&st, f64::from(t), f64::from(t), &s).unwrap();
        }
        let mut st = ready(a, 10.0, 10.0, 1, &[]);
        st.mtoken = "ta".into();
        st.cur_perf = 2.0;
        r.report(&st, 6.0, 6.0, &s).unwrap();
        let mut st = ready(b, 20.0, 10.0, 2, &[]);
        st.mtoken = "tb".into();
        r.report(&st, 6.0, 6.0, &s).unwrap();
        // The autoscaler's view has the learned value...
        assert_eq!(r.get(a).unwrap().perf(), 2.0);
        assert_eq!(r.get(b).unwrap().perf(), 10.0);
        // ...the route does not: a holds less work (1 s at its benchmark against b's 2 s),
        // so a it is, where the learned values (5 s against 2 s) would pick b.
        for _ in 0..20 {
            assert_eq!(r.choose(1, &[], 30.0, (6.0, STALE), &mut rng), Some(a));
        }
        assert_eq!(expected(&r, 1, &[], 30.0, 6.0), vec![a]);
        check(&r, 6.0);
    }

    #[test]
    fn ties_spread_even_at_cost_zero() {
        let s = MemoryStore::default();
        let mut r = Registry::restore(&s.loaded(), false);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let ids: Vec<i64> = (0..3)
            .map(|i| {
                let id = r.create(origin(1), format!("t{i}"), 0.0, 0.0, &s);
                let mut st = ready(id, 0.0, 10.0, i as u8, &[]);
                st.mtoken = format!("t{i}");
                r.report(&st, 0.0, 0.0, &s).unwrap();
                id
            })
            .collect();
        let mut seen = std::collections::HashMap::new();
        for i in 0..300 {
            let w = r.choose(1, &[], 30.0, (1.0, STALE), &mut rng).unwrap();
            r.assign(w, i, 0.0, 1.0);
            *seen.entry(w).or_insert(0) += 1;
        }
        for id in ids {
            let n = seen.get(&id).copied().unwrap_or(0);
            assert!((50..=150).contains(&n), "{id} chosen {n} times of 300");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A new worker (it reports later).
        Create {
            ep: usize,
        },
        /// A report: load, throughput, URL, the pending indexes it acknowledges, an error.
        Report {
            w: usize,
            load: u8,
            perf: u8,
            url: u8,
            ack: u8,
            error: bool,
        },
        /// Route a request: choose, then assign it.
        Route {
            ep: usize,
            cost: u8,
            mqt: u8,
            skip: Option<u8>,
        },
        Release {
            w: usize,
            idx: u8,
        },
        Finished {
            w: usize,
            idx: u8,
        },
        Drain {
            w: usize,
        },
        Undrain {
            w: usize,
        },
        Stopping {
            w: usize,
        },
        Doom {
            w: usize,
        },
        Remove {
            w: usize,
        },
        Housekeep,
        /// Time passes (workers go stale).
        Wait {
            s: u8,
        },
        /// A restart (the index is rebuilt from the store).
        Restore {
            keep_idle: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => (0..2usize).prop_map(|ep| Op::Create { ep }),
            6 => (0..8usize, 0..4u8, 0..3u8, 0..3u8, 0..4u8, prop::bool::weighted(0.1)).prop_map(
                |(w, load, perf, url, ack, error)| Op::Report { w, load, perf, url, ack, error }
            ),
            8 => (0..2usize, 0..4u8, 0..4u8, prop::option::weighted(0.2, 0..3u8))
                .prop_map(|(ep, cost, mqt, skip)| Op::Route { ep, cost, mqt, skip }),
            2 => (0..8usize, 0..16u8).prop_map(|(w, idx)| Op::Release { w, idx }),
            2 => (0..8usize, 0..16u8).prop_map(|(w, idx)| Op::Finished { w, idx }),
            1 => (0..8usize).prop_map(|w| Op::Drain { w }),
            1 => (0..8usize).prop_map(|w| Op::Undrain { w }),
            1 => (0..8usize).prop_map(|w| Op::Stopping { w }),
            1 => (0..8usize).prop_map(|w| Op::Doom { w }),
            1 => (0..8usize).prop_map(|w| Op::Remove { w }),
            1 => Just(Op::Housekeep),
            2 => (0..40u8).prop_map(|s| Op::Wait { s }),
            1 => any::<bool>().prop_map(|keep_idle| Op::Restore { keep_idle }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Under any sequence of reports, routes, releases, state changes, staleness and
        /// restarts, the index holds each routable worker at its current queue time, and a
        /// route picks a worker the full scan would have picked from (or none when it would).
        #[test]
        fn the_index_agrees_with_a_full_scan(ops in proptest::collection::vec(op(), 1..120)) {
            let s = MemoryStore::default();
            let mut r = Registry::restore(&s.loaded(), false);
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            let mut ids: Vec<i64> = Vec::new();
            let mut mono = 0.0;
            let mut next_idx = 0u64;
            let pick = |ids: &[i64], w: usize| ids.get(w % ids.len().max(1)).copied();
            for op in ops {
                mono += 0.5;
                match op {
                    Op::Create { ep } => {
                        let id = r.create(origin(ENDPOINTS[ep]), String::new(), 0.0, mono, &s);
                        // The token is the id's, so reports can name it.
                        let mut w = r.workers.remove(&id).unwrap();
                        w.mtoken = format!("t{id}");
                        r.workers.insert(id, w);
                        ids.push(id);
                    }
                    Op::Report { w, load, perf, url, ack, error } => {
                        let Some(id) = pick(&ids, w) else { continue };
                        let acked: Vec<u64> = r.workers.get(&id)
                            .map(|w| w.pending.keys().copied().take(ack as usize).collect())
                            .unwrap_or_default();
                        let mut st = ready(id, f64::from(load) * 5.0, f64::from(perf) * 10.0, url, &acked);
                        if error {
                            st.error_msg = "boom".into();
                        }
                        let _ = r.report(&st, mono, mono, &s);
                    }
                    Op::Route { ep, cost, mqt, skip } => {
                        let ep = ENDPOINTS[ep];
                        let skip: Vec<String> = skip.map(|u| format!("http://10.0.0.{u}:1")).into_iter().collect();
                        let mqt = [0.0, 1.0, 5.0, f64::INFINITY][mqt as usize];
                        let want = expected(&r, ep, &skip, mqt, mono);
                        let got = r.choose(ep, &skip, mqt, (mono, STALE), &mut rng);
                        match got {
                            None => prop_assert!(want.is_empty(), "none, but the scan has {want:?}"),
                            Some(id) => prop_assert!(want.contains(&id), "{id} not in {want:?}"),
                        }
                        if let Some(id) = got {
                            next_idx += 1;
                            r.assign(id, next_idx, f64::from(cost) * 2.5, mono);
                        }
                    }
                    Op::Release { w, idx } => {
                        if let Some(id) = pick(&ids, w) { r.release(id, u64::from(idx)); }
                    }
                    Op::Finished { w, idx } => {
                        if let Some(id) = pick(&ids, w) {
                            let _ = r.finished(id, &format!("t{id}"), [u64::from(idx)]);
                        }
                    }
                    Op::Drain { w } => { if let Some(id) = pick(&ids, w) { r.draining(id, mono); } }
                    Op::Undrain { w } => { if let Some(id) = pick(&ids, w) { r.undrain(id, mono); } }
                    Op::Stopping { w } => { if let Some(id) = pick(&ids, w) { r.stopping(id, mono); } }
                    Op::Doom { w } => {
                        if let Some(id) = pick(&ids, w) { r.doom(|x| x.id == id, mono); }
                    }
                    Op::Remove { w } => {
                        if let Some(id) = pick(&ids, w) { r.remove(id, &s); }
                    }
                    Op::Housekeep => r.housekeep(mono, STALE, 10.0, &s),
                    Op::Wait { s } => mono += f64::from(s),
                    Op::Restore { keep_idle } => {
                        // The store keeps tokens as created; keep ours.
                        let tokens: Vec<(i64, String)> = r.workers.values().map(|w| (w.id, w.mtoken.clone())).collect();
                        r = Registry::restore(&s.loaded(), keep_idle);
                        for (id, t) in tokens {
                            if let Some(mut w) = r.workers.remove(&id) {
                                w.mtoken = t;
                                r.workers.insert(id, w);
                            }
                        }
                        mono = 0.0;
                    }
                }
                if let Err(e) = r.index.check(&r.workers, |w| !w.routable(mono, STALE)) {
                    prop_assert!(false, "{e}");
                }
                // And the front of the order is the scan's choice.
                for ep in ENDPOINTS {
                    let want = expected(&r, ep, &[], f64::INFINITY, mono);
                    let got = r.choose(ep, &[], f64::INFINITY, (mono, STALE), &mut rng);
                    prop_assert_eq!(got.is_some(), !want.is_empty());
                    if let Some(id) = got {
                        prop_assert!(want.contains(&id), "{} not in {:?}", id, want);
                    }
                }
            }
        }
    }
}
