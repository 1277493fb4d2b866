//! The routing index: each endpoint's routable workers ordered by estimated queue time, so a
//! route looks at the front of a tree instead of at every worker.
//!
//! A worker is in the index while it is routable by its record alone (`idle`, benchmarked,
//! with a URL, reported at least once), in the bucket of its queue time in whole nanoseconds
//! ([`queue_ticks`]); an endpoint's buckets are ordered. The [`Registry`](super::Registry)
//! re-keys a worker after every change to its record, so the buckets are never out of date;
//! staleness, the one condition that changes with the clock alone, is checked as a route meets
//! a worker, and a stale worker leaves the index then (its next report puts it back).
//!
//! Choosing takes the first bucket that holds a fresh, not excluded worker, and draws among
//! its workers uniformly at random (rejecting excluded ones, dropping stale ones): exact ties
//! are broken at random as the scan did. A route costs `O(log b)` for `b` distinct queue
//! times, plus the stale workers it drops (each once per silence) and the excluded ones it
//! meets; never a pass over the endpoint's workers (except, as a fallback, over one bucket
//! whose members the exclusion list keeps hitting).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use rand::Rng;

use super::worker::{WorkerRec, WorkerState};
use crate::route::queue_ticks;

/// Where an indexed worker sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    endpoint: i64,
    ticks: i64,
    /// Position in its bucket.
    pos: usize,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct RouteIndex {
    /// Per endpoint, its indexed workers by queue ticks.
    order: HashMap<i64, BTreeMap<i64, Vec<i64>>>,
    /// Per indexed worker, its place.
    slots: HashMap<i64, Slot>,
}

/// The queue ticks a worker is indexed at, or `None` when its record alone rules it out.
fn key(w: &WorkerRec) -> Option<i64> {
    let indexed = w.state == WorkerState::Idle
        && w.max_perf > 0.0
        && !w.url.is_empty()
        && w.last_report.is_some();
    // The benchmark, not the learned throughput: see `WorkerRec::perf`.
    indexed.then(|| queue_ticks(w.load() / w.max_perf))
}

/// Consecutive draws that may hit excluded workers before a bucket is searched in full.
const DRAWS: usize = 8;

impl RouteIndex {
    /// An index of `workers`.
    pub(super) fn build<'a>(workers: impl Iterator<Item = &'a WorkerRec>) -> RouteIndex {
        let mut ix = RouteIndex::default();
        for w in workers {
            ix.sync(w);
        }
        ix
    }

    /// Re-keys `w` after a change to its record.
    pub(super) fn sync(&mut self, w: &WorkerRec) {
        let want = key(w);
        if let (Some(old), Some(t)) = (self.slots.get(&w.id), want) {
            if old.ticks == t {
                return;
            }
        }
        self.forget(w.id);
        if let Some(ticks) = want {
            let bucket = self
                .order
                .entry(w.endpoint_id)
                .or_default()
                .entry(ticks)
                .or_default();
            bucket.push(w.id);
            let slot = Slot {
                endpoint: w.endpoint_id,
                ticks,
                pos: bucket.len() - 1,
            };
            self.slots.insert(w.id, slot);
        }
    }

    /// Takes a worker out (removed from the registry, or newly stale).
    pub(super) fn forget(&mut self, id: i64) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        let Some(buckets) = self.order.get_mut(&slot.endpoint) else {
            return;
        };
        if let Some(bucket) = buckets.get_mut(&slot.ticks) {
            bucket.swap_remove(slot.pos);
            if let Some(moved) = bucket.get(slot.pos) {
                if let Some(m) = self.slots.get_mut(moved) {
                    m.pos = slot.pos;
                }
            }
            if bucket.is_empty() {
                buckets.remove(&slot.ticks);
            }
        }
        if buckets.is_empty() {
            self.order.remove(&slot.endpoint);
        }
    }

    /// The worker a request of `endpoint_id` goes to (see [`crate::route::choose`]), leaving
    /// out workers whose URL is in `skip` and dropping stale ones from the index.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn choose(
        &mut self,
        workers: &BTreeMap<i64, WorkerRec>,
        endpoint_id: i64,
        skip: &[String],
        max_queue_time: f64,
        mono: f64,
        stale_after: f64,
        rng: &mut impl Rng,
    ) -> Option<i64> {
        let mut after = Bound::Unbounded;
        loop {
            let (ticks, n) = self
                .order
                .get(&endpoint_id)?
                .range((after, Bound::Unbounded))
                .next()
                .map(|(t, b)| (*t, b.len()))?;
            if let Some(id) =
                self.draw(workers, endpoint_id, ticks, n, skip, mono, stale_after, rng)
            {
                return (ticks <= queue_ticks(max_queue_time) || ticks <= 0).then_some(id);
            }
            after = Bound::Excluded(ticks);
        }
    }

    /// A uniformly random fresh, not excluded worker of one bucket of `n`, if any.
    #[allow(clippy::too_many_arguments)]
    fn draw(
        &mut self,
        workers: &BTreeMap<i64, WorkerRec>,
        endpoint_id: i64,
        ticks: i64,
        mut n: usize,
        skip: &[String],
        mono: f64,
        stale_after: f64,
        rng: &mut impl Rng,
    ) -> Option<i64> {
        let member = |ix: &RouteIndex, i: usize| {
            ix.order
                .get(&endpoint_id)
                .and_then(|b| b.get(&ticks))
                .and_then(|b| b.get(i).copied())
        };
        let usable = |id: i64| {
            workers
                .get(&id)
                .filter(|w| w.routable(mono, stale_after))
                .map(|w| !skip.contains(&w.url))
        };
        let mut misses = 0;
        while n > 0 && misses < DRAWS {
            let id = member(self, rng.gen_range(0..n))?;
            match usable(id) {
                Some(true) => return Some(id),
                Some(false) => misses += 1,
                None => {
                    self.forget(id);
                    n -= 1;
                }
            }
        }
        // The exclusions keep hitting: look at the whole bucket.
        let ids: Vec<i64> = (0..n).filter_map(|i| member(self, i)).collect();
        let mut ok = Vec::new();
        for id in ids {
            match usable(id) {
                Some(true) => ok.push(id),
                Some(false) => {}
                None => self.forget(id),
            }
        }
        match ok.len() {
            0 => None,
            k => Some(ok[rng.gen_range(0..k)]),
        }
    }

    /// The indexed workers of an endpoint by queue ticks, each bucket sorted (tests).
    #[cfg(test)]
    pub(super) fn ordered(&self, endpoint_id: i64) -> Vec<(i64, Vec<i64>)> {
        self.order
            .get(&endpoint_id)
            .into_iter()
            .flatten()
            .map(|(t, b)| {
                let mut b = b.clone();
                b.sort_unstable();
                (*t, b)
            })
            .collect()
    }

    /// Whether the index agrees with the records (tests): every indexed worker is there once,
    /// under its endpoint, at its current queue ticks and recorded position; every worker
    /// routable by its record is indexed unless `may_be_missing` (it went stale).
    #[cfg(test)]
    pub(super) fn check(
        &self,
        workers: &BTreeMap<i64, WorkerRec>,
        may_be_missing: impl Fn(&WorkerRec) -> bool,
    ) -> Result<(), String> {
        let mut count = 0;
        for (ep, buckets) in &self.order {
            for (t, bucket) in buckets {
                if bucket.is_empty() {
                    return Err(format!("empty bucket {t} kept for endpoint {ep}"));
                }
                for (pos, id) in bucket.iter().enumerate() {
                    count += 1;
                    let want = Slot {
                        endpoint: *ep,
                        ticks: *t,
                        pos,
                    };
                    if self.slots.get(id) != Some(&want) {
                        return Err(format!(
                            "{id} at {want:?}, recorded {:?}",
                            self.slots.get(id)
                        ));
                    }
                    let w = workers
                        .get(id)
                        .ok_or(format!("{id} indexed, not registered"))?;
                    if w.endpoint_id != *ep || key(w) != Some(*t) {
                        return Err(format!("{id} under {ep}/{t}, should be {:?}", key(w)));
                    }
                }
            }
        }
        if count != self.slots.len() {
            return Err(format!("{count} in buckets, {} recorded", self.slots.len()));
        }
        for w in workers.values() {
            if key(w).is_some() && !self.slots.contains_key(&w.id) && !may_be_missing(w) {
                return Err(format!("{} routable but not indexed", w.id));
            }
        }
        Ok(())
    }
}
