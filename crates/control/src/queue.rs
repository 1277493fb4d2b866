//! [`Queue`]: request lifetimes, the global FIFO and the `request_idx` counter.
//!
//! Every logical request has a `request_idx`, assigned on its first `/route/` call (index 0)
//! from a counter that survives restarts, and reused by the client for every poll and retry.
//! The table below maps it to its state:
//!
//! - `Queued`: no worker could take it; it sits in one global FIFO (arrival order across all
//!   endpoints). When capacity appears (a report, a finished request, a new worker, the next
//!   poll) the queue is dispatched in order: the oldest request of an endpoint is served
//!   first, and a later request of the same endpoint never overtakes a blocked earlier one.
//!   A dispatched request is `Assigned` but not yet `delivered`; its next poll returns the
//!   worker.
//! - `Assigned`: routed to a worker; its cost is that worker's pending load (see
//!   [`crate::registry`]) until the worker acknowledges it in a report. A poll of a delivered
//!   request is a client retry (the worker failed it): the old assignment is released and the
//!   request re-enters at the *front* of the queue, so it is never counted twice and never
//!   loses its place.
//!
//! Queued requests are persisted; a request nobody polls for `queue_ttl` is dropped.
//!
//! The counter is persisted as a ceiling reserved [`IDX_BLOCK`] at a time: after a restart
//! numbering resumes at the old ceiling, above anything handed out.
//!
//! # Invariants (kept here, checked by the tests below)
//!
//! - An index is in the FIFO exactly when its request is `Queued`, and at most once.
//! - Every index in the table is below the next index handed out, and the persisted ceiling is
//!   never below it.
//! - A `Queued` request has a persisted record only when `persisted` says so; an `Assigned`
//!   one never has.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::store::{Kind, Loaded, Store};

/// Indexes reserved per persisted ceiling.
pub const IDX_BLOCK: u64 = 1000;
/// Key of the persisted ceiling.
const KV_IDX_CEILING: &str = "request_idx_ceiling";

/// State of a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReqState {
    /// Waiting in the global queue.
    Queued,
    /// Routed.
    Assigned {
        /// The worker.
        worker: i64,
        /// The worker's request number for it.
        reqnum: u64,
        /// Whether the client has been told.
        delivered: bool,
    },
}

/// One logical request.
#[derive(Debug, Clone, PartialEq)]
pub struct Req {
    endpoint_id: i64,
    cost: f64,
    state: ReqState,
    /// Monotonic seconds of the last client call about it.
    touched: f64,
    /// Whether a queued record is in the store.
    persisted: bool,
}

impl Req {
    /// Endpoint.
    pub fn endpoint_id(&self) -> i64 {
        self.endpoint_id
    }
    /// Workload.
    pub fn cost(&self) -> f64 {
        self.cost
    }
    /// State.
    pub fn state(&self) -> ReqState {
        self.state
    }
}

/// A queued request as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QueuedRecord {
    /// Endpoint.
    pub endpoint_id: i64,
    /// Workload.
    pub cost: f64,
}

/// How `/route/` took the index a client named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A request of this endpoint we hold: a poll or a retry.
    Existing(u64),
    /// A new request, at the back of the queue (a fresh index, or one we issued earlier and
    /// nobody holds any more).
    New(u64),
}

/// The request table, the global FIFO and the index counter.
#[derive(Debug, Default)]
pub struct Queue {
    requests: HashMap<u64, Req>,
    order: VecDeque<u64>,
    next: u64,
    ceiling: u64,
}

/// Makes the queue restored from `loaded` number from at least `floor`: a replica's lease
/// term `t` numbers from `t << 32` (docs/ha.md), so no two terms share an index even when the
/// previous owner's last ceiling never reached the database.
pub fn raise_idx_floor(loaded: &mut Loaded, floor: u64) {
    let ceiling = loaded.kv_parsed::<u64>(KV_IDX_CEILING).unwrap_or(0);
    if floor > ceiling {
        loaded
            .kv
            .insert(KV_IDX_CEILING.to_owned(), floor.to_string());
    }
}

impl Queue {
    /// A table whose next index is `ceiling` (the persisted ceiling; 0 → start at 1). Nothing
    /// is reserved yet: the first [`Queue::alloc`] persists a block.
    pub fn new(ceiling: u64) -> Queue {
        let next = ceiling.max(1);
        Queue {
            next,
            ceiling: next,
            ..Queue::default()
        }
    }

    /// The queue as the store left it: numbering resumes at the persisted ceiling (a fresh
    /// block is reserved and persisted at once, so a crash right after start reuses nothing),
    /// and the persisted requests wait again in index order.
    pub fn restore(loaded: &Loaded, store: &dyn Store) -> Queue {
        let mut q = Queue::new(loaded.kv_parsed(KV_IDX_CEILING).unwrap_or(0));
        q.reserve_block(store);
        for (id, body) in loaded.of(Kind::Queued) {
            let Ok(r) = serde_json::from_str::<QueuedRecord>(body) else {
                continue;
            };
            let idx = id as u64;
            q.next = q.next.max(idx.saturating_add(1));
            q.requests.insert(
                idx,
                Req {
                    endpoint_id: r.endpoint_id,
                    cost: r.cost,
                    state: ReqState::Queued,
                    touched: 0.0,
                    persisted: true,
                },
            );
            q.order.push_back(idx);
        }
        q.reserve(store);
        q
    }

    /// Allocates the next index, persisting a new ceiling when the block runs out.
    pub fn alloc(&mut self, store: &dyn Store) -> u64 {
        let idx = self.next;
        self.next += 1;
        self.reserve(store);
        idx
    }

    fn reserve(&mut self, store: &dyn Store) {
        if self.next >= self.ceiling {
            self.reserve_block(store);
        }
    }

    fn reserve_block(&mut self, store: &dyn Store) {
        self.ceiling = self.next.saturating_add(IDX_BLOCK);
        store.set_kv(KV_IDX_CEILING, self.ceiling.to_string());
    }

    /// The next index that would be handed out.
    pub fn peek_next(&self) -> u64 {
        self.next
    }

    /// A request.
    pub fn get(&self, idx: u64) -> Option<&Req> {
        self.requests.get(&idx)
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Waiting requests, oldest first.
    pub fn queued(&self) -> impl Iterator<Item = (u64, &Req)> {
        self.order
            .iter()
            .filter_map(|i| self.requests.get(i).map(|r| (*i, r)))
    }

    /// Queued requests and their workload for one endpoint.
    pub fn queued_for(&self, endpoint_id: i64) -> (usize, f64) {
        self.queued()
            .filter(|(_, r)| r.endpoint_id == endpoint_id)
            .fold((0, 0.0), |(n, load), (_, r)| (n + 1, load + r.cost))
    }

    /// Takes the index a `/route/` call names. A request of this endpoint we hold is
    /// [`Admission::Existing`] (touched: a poll keeps it alive). A non-zero index we issued
    /// earlier (before a restart, or since finished) that nobody holds is taken back as the
    /// client's; anything else gets a new index, so a client can neither pick future indexes
    /// nor take over another's request. New requests join the back of the queue.
    pub fn admit(
        &mut self,
        endpoint_id: i64,
        requested: u64,
        cost: f64,
        mono: f64,
        store: &dyn Store,
    ) -> Admission {
        if requested != 0 {
            if let Some(r) = self.requests.get_mut(&requested) {
                if r.endpoint_id == endpoint_id {
                    r.touched = mono;
                    return Admission::Existing(requested);
                }
            }
        }
        let reusable =
            requested != 0 && requested < self.next && !self.requests.contains_key(&requested);
        let idx = if reusable {
            requested
        } else {
            self.alloc(store)
        };
        self.requests.insert(
            idx,
            Req {
                endpoint_id,
                cost,
                state: ReqState::Queued,
                touched: mono,
                persisted: false,
            },
        );
        self.order.push_back(idx);
        Admission::New(idx)
    }

    /// Puts an assigned request back at the *front* of the queue (a retry, or its worker went
    /// away). Returns the worker whose pending load must be released.
    pub fn requeue_front(&mut self, idx: u64) -> Option<i64> {
        let r = self.requests.get_mut(&idx)?;
        let ReqState::Assigned { worker, .. } = r.state else {
            return None;
        };
        r.state = ReqState::Queued;
        self.order.push_front(idx);
        Some(worker)
    }

    /// Hands a queued request to a worker: it leaves the FIFO (and the store).
    pub fn assign(&mut self, idx: u64, worker: i64, reqnum: u64, store: &dyn Store) -> bool {
        let Some(r) = self.requests.get_mut(&idx) else {
            return false;
        };
        if r.state != ReqState::Queued {
            return false;
        }
        r.state = ReqState::Assigned {
            worker,
            reqnum,
            delivered: false,
        };
        if std::mem::take(&mut r.persisted) {
            store.delete(Kind::Queued, idx as i64);
        }
        self.order.retain(|i| *i != idx);
        true
    }

    /// Marks an assigned request as told to its client; returns its worker and `reqnum`.
    pub fn deliver(&mut self, idx: u64) -> Option<(i64, u64)> {
        let r = self.requests.get_mut(&idx)?;
        let ReqState::Assigned { worker, reqnum, .. } = r.state else {
            return None;
        };
        r.state = ReqState::Assigned {
            worker,
            reqnum,
            delivered: true,
        };
        Some((worker, reqnum))
    }

    /// Persists a request that is still waiting after its `/route/` call (once).
    pub fn persist_waiting(&mut self, idx: u64, store: &dyn Store) {
        if let Some(r) = self.requests.get_mut(&idx) {
            if r.state == ReqState::Queued && !r.persisted {
                r.persisted = true;
                let rec = QueuedRecord {
                    endpoint_id: r.endpoint_id,
                    cost: r.cost,
                };
                store.put_json(Kind::Queued, idx as i64, &rec);
            }
        }
    }

    /// A worker says it finished `idx`: forgotten if it was assigned to that worker.
    pub fn finish(&mut self, idx: u64, worker: i64) -> bool {
        let mine = matches!(
            self.requests.get(&idx).map(|r| r.state),
            Some(ReqState::Assigned { worker: w, .. }) if w == worker
        );
        if mine {
            self.requests.remove(&idx);
        }
        mine
    }

    /// Forgets a request whose caller went away before it reached a worker. A delivered one is
    /// kept (its worker may be serving it). Returns the worker whose pending load must be
    /// released, if it had been assigned.
    pub fn abandon(&mut self, idx: u64, store: &dyn Store) -> Option<i64> {
        match self.requests.get(&idx)?.state {
            ReqState::Assigned {
                delivered: true, ..
            } => None,
            ReqState::Assigned { worker, .. } => {
                self.remove(idx, store);
                Some(worker)
            }
            ReqState::Queued => {
                self.remove(idx, store);
                None
            }
        }
    }

    fn remove(&mut self, idx: u64, store: &dyn Store) -> Option<Req> {
        let r = self.requests.remove(&idx)?;
        if r.persisted {
            store.delete(Kind::Queued, idx as i64);
        }
        if r.state == ReqState::Queued {
            self.order.retain(|i| *i != idx);
        }
        Some(r)
    }

    /// Drops a request outright (its endpoint is gone). Returns the worker to release.
    pub fn discard(&mut self, idx: u64, store: &dyn Store) -> Option<i64> {
        match self.remove(idx, store)?.state {
            ReqState::Assigned { worker, .. } => Some(worker),
            ReqState::Queued => None,
        }
    }

    /// Drops every request of an endpoint. Returns `(idx, worker)` for the assigned ones.
    pub fn remove_endpoint(&mut self, endpoint_id: i64, store: &dyn Store) -> Vec<(u64, i64)> {
        let doomed: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.endpoint_id == endpoint_id)
            .map(|(i, _)| *i)
            .collect();
        doomed
            .into_iter()
            .filter_map(|i| self.discard(i, store).map(|w| (i, w)))
            .collect()
    }

    /// Drops queued requests nobody polled for `queue_ttl` seconds and assigned ones without a
    /// word for `assigned_ttl`. Returns `(idx, worker)` for the assigned ones dropped.
    pub fn expire(
        &mut self,
        mono: f64,
        queue_ttl: f64,
        assigned_ttl: f64,
        store: &dyn Store,
    ) -> Vec<(u64, i64)> {
        let old: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                let ttl = match r.state {
                    ReqState::Queued => queue_ttl,
                    ReqState::Assigned { .. } => assigned_ttl,
                };
                mono - r.touched >= ttl
            })
            .map(|(i, _)| *i)
            .collect();
        old.into_iter()
            .filter_map(|i| self.discard(i, store).map(|w| (i, w)))
            .collect()
    }

    /// Panics when an invariant of the module docs does not hold (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut seen = std::collections::HashSet::new();
        for i in &self.order {
            assert!(seen.insert(*i), "{i} twice in the FIFO");
            assert_eq!(
                self.requests.get(i).map(|r| r.state),
                Some(ReqState::Queued),
                "{i} in the FIFO but not queued"
            );
        }
        for (i, r) in &self.requests {
            assert_eq!(
                r.state == ReqState::Queued,
                seen.contains(i),
                "{i}: queued iff in the FIFO"
            );
            assert!(*i < self.next, "{i} not below the next index");
            if r.state != ReqState::Queued {
                assert!(!r.persisted, "{i}: assigned but persisted");
            }
        }
        assert!(self.ceiling >= self.next, "ceiling below the next index");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;

    fn store() -> MemoryStore {
        MemoryStore::default()
    }

    #[test]
    fn counter_reserves_blocks() {
        let s = store();
        let mut q = Queue::new(0);
        assert_eq!(q.alloc(&s), 1);
        assert_eq!(
            s.loaded().kv_parsed::<u64>(KV_IDX_CEILING),
            Some(2 + IDX_BLOCK)
        );
        assert_eq!(q.alloc(&s), 2);
        for _ in 0..IDX_BLOCK {
            q.alloc(&s);
        }
        // A restart resumes at the persisted ceiling, above everything handed out.
        let mut q2 = Queue::restore(&s.loaded(), &s);
        assert!(q2.alloc(&s) >= q.peek_next());
    }

    /// A replica's term numbers from `term << 32` even when the previous owner's ceilings were
    /// lost with it (nothing of them reached the database), and a higher ceiling stands.
    #[test]
    fn a_lease_term_numbers_above_every_earlier_term() {
        let s = store();
        let mut loaded = s.loaded();
        raise_idx_floor(&mut loaded, 3 << 32);
        let mut q = Queue::restore(&loaded, &s);
        assert_eq!(q.alloc(&s), 3 << 32);
        let mut loaded = s.loaded();
        raise_idx_floor(&mut loaded, 1 << 32);
        assert!(Queue::restore(&loaded, &s).alloc(&s) > 3 << 32);
    }

    #[test]
    fn counter_never_reuses_an_index_across_restarts() {
        let s = store();
        let mut q = Queue::restore(&s.loaded(), &s);
        let mut handed = Vec::new();
        for round in 0..5u64 {
            for _ in 0..(IDX_BLOCK / 3 + round * 7) {
                handed.push(q.alloc(&s));
            }
            // A crash: everything in memory is lost, only what was written survives.
            q = Queue::restore(&s.loaded(), &s);
        }
        let max = handed.iter().copied().max().unwrap();
        assert!(q.alloc(&s) > max);
        let mut dedup = handed.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), handed.len());
    }

    #[test]
    fn requeue_keeps_its_place_at_the_front() {
        let s = store();
        let mut q = Queue::new(0);
        let Admission::New(a) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        let Admission::New(b) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        assert!(q.assign(a, 7, 1, &s));
        assert_eq!(q.deliver(a), Some((7, 1)));
        let Admission::New(c) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        // The client retries `a`: it goes before the later `b` and `c`.
        assert_eq!(q.admit(1, a, 1.0, 1.0, &s), Admission::Existing(a));
        assert_eq!(q.requeue_front(a), Some(7));
        let order: Vec<u64> = q.queued().map(|(i, _)| i).collect();
        assert_eq!(order, vec![a, b, c]);
        q.check();
    }

    #[test]
    fn indexes_are_the_clients_only_when_they_are_ours() {
        let s = store();
        let mut q = Queue::new(0);
        let Admission::New(a) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        // Another endpoint naming `a` gets a new index; a future index is not taken.
        assert_ne!(q.admit(2, a, 1.0, 0.0, &s), Admission::Existing(a));
        assert_eq!(
            q.admit(1, 1 << 40, 1.0, 0.0, &s),
            Admission::New(q.peek_next() - 1)
        );
        // A finished index of ours comes back to the client that names it.
        assert!(q.assign(a, 3, 1, &s));
        assert!(q.finish(a, 3));
        assert_eq!(q.admit(1, a, 1.0, 0.0, &s), Admission::New(a));
        q.check();
    }

    #[test]
    fn waiting_requests_are_persisted_once_and_dropped_when_served() {
        let s = store();
        let mut q = Queue::new(0);
        let Admission::New(a) = q.admit(1, 0, 2.5, 0.0, &s) else {
            panic!()
        };
        q.persist_waiting(a, &s);
        q.persist_waiting(a, &s);
        let restored = Queue::restore(&s.loaded(), &s);
        assert_eq!(restored.queued_for(1), (1, 2.5));
        assert!(q.assign(a, 9, 1, &s));
        assert_eq!(s.loaded().of(Kind::Queued).count(), 0);
        q.check();
    }

    #[test]
    fn expiry_and_abandon() {
        let s = store();
        let mut q = Queue::new(0);
        let Admission::New(a) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        let Admission::New(b) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        let Admission::New(c) = q.admit(1, 0, 1.0, 5.0, &s) else {
            panic!()
        };
        q.assign(b, 4, 1, &s);
        q.deliver(b);
        q.persist_waiting(a, &s);
        // `a` waited 10 s unpolled; `c` was polled 5 s ago; `b` is assigned (longer TTL).
        assert!(q.expire(10.0, 10.0, 100.0, &s).is_empty());
        assert!(q.get(a).is_none() && q.get(b).is_some() && q.get(c).is_some());
        assert_eq!(s.loaded().of(Kind::Queued).count(), 0);
        assert_eq!(q.expire(200.0, 10.0, 100.0, &s), vec![(b, 4)]);
        // A delivered request is not abandoned; a queued one is.
        let Admission::New(d) = q.admit(1, 0, 1.0, 0.0, &s) else {
            panic!()
        };
        q.assign(d, 4, 2, &s);
        q.deliver(d);
        assert_eq!(q.abandon(d, &s), None);
        assert!(q.get(d).is_some());
        q.check();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { ep: i64, pick: usize, fresh: bool },
        Assign { pick: usize, worker: i64 },
        Deliver { pick: usize },
        Requeue { pick: usize },
        Persist { pick: usize },
        Finish { pick: usize, worker: i64 },
        Abandon { pick: usize },
        Expire { now: u8 },
        DropEndpoint { ep: i64 },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1..3i64, any::<usize>(), any::<bool>()).prop_map(|(ep, pick, fresh)| Op::Admit {
                ep,
                pick,
                fresh
            }),
            (any::<usize>(), 1..4i64).prop_map(|(pick, worker)| Op::Assign { pick, worker }),
            any::<usize>().prop_map(|pick| Op::Deliver { pick }),
            any::<usize>().prop_map(|pick| Op::Requeue { pick }),
            any::<usize>().prop_map(|pick| Op::Persist { pick }),
            (any::<usize>(), 1..4i64).prop_map(|(pick, worker)| Op::Finish { pick, worker }),
            any::<usize>().prop_map(|pick| Op::Abandon { pick }),
            any::<u8>().prop_map(|now| Op::Expire { now }),
            (1..3i64).prop_map(|ep| Op::DropEndpoint { ep }),
            Just(Op::Restart),
        ]
    }

    proptest! {
        /// Any sequence of operations, restarts included, keeps the invariants; indexes are
        /// never handed out twice; and what a restart restores is exactly what was waiting
        /// and persisted.
        #[test]
        fn operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
            let s = store();
            let mut q = Queue::restore(&s.loaded(), &s);
            let mut issued: Vec<u64> = Vec::new();
            let mut now = 0.0;
            for op in ops {
                now += 1.0;
                let known: Vec<u64> = {
                    let mut k: Vec<u64> = q.requests.keys().copied().collect();
                    k.sort_unstable();
                    k
                };
                let pick = |p: usize| if known.is_empty() { 0 } else { known[p % known.len()] };
                match op {
                    Op::Admit { ep, pick: p, fresh } => {
                        // Known, finished, never issued and future indexes alike.
                        let before = q.peek_next();
                        let asked = if fresh { 0 } else { p as u64 % (before + 5) };
                        match q.admit(ep, asked, 1.0, now, &s) {
                            Admission::New(i) if i >= before => issued.push(i),
                            Admission::New(i) => prop_assert!(i == asked && asked < before),
                            Admission::Existing(i) => prop_assert_eq!(i, asked),
                        }
                    }
                    Op::Assign { pick: p, worker } => {
                        let i = pick(p);
                        let was_queued = q.get(i).map(|r| r.state) == Some(ReqState::Queued);
                        prop_assert_eq!(q.assign(i, worker, 1, &s), was_queued);
                    }
                    Op::Deliver { pick: p } => { q.deliver(pick(p)); }
                    Op::Requeue { pick: p } => { q.requeue_front(pick(p)); }
                    Op::Persist { pick: p } => q.persist_waiting(pick(p), &s),
                    Op::Finish { pick: p, worker } => { q.finish(pick(p), worker); }
                    Op::Abandon { pick: p } => { q.abandon(pick(p), &s); }
                    Op::Expire { now: n } => { q.expire(now, f64::from(n % 20), 50.0, &s); }
                    Op::DropEndpoint { ep } => { q.remove_endpoint(ep, &s); }
                    Op::Restart => {
                        let persisted: Vec<u64> = {
                            let mut v: Vec<u64> = q.requests.iter()
                                .filter(|(_, r)| r.persisted).map(|(i, _)| *i).collect();
                            v.sort_unstable();
                            v
                        };
                        q = Queue::restore(&s.loaded(), &s);
                        let back: Vec<u64> = {
                            let mut v: Vec<u64> = q.queued().map(|(i, _)| i).collect();
                            v.sort_unstable();
                            v
                        };
                        prop_assert_eq!(back, persisted);
                    }
                }
                q.check();
            }
            let mut dedup = issued.clone();
            dedup.sort_unstable();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), issued.len());
        }
    }
}
