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
