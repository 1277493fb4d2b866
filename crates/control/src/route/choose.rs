//! The chooser: which worker a request goes to (pure).
//!
//! A worker's estimated queue time is `(reported cur_load + load routed to it since, not yet
//! seen in a report) / max_perf` — Vast's `cur_load / max_perf` with the gap between reports
//! closed, so a burst of routes between two reports spreads over workers instead of landing on
//! the one that looked emptiest a second ago. Routed load is keyed by `request_idx`; it leaves
//! the "pending" sum when the worker lists the index in `working_request_idxs` (it is then in
//! `cur_load`), when `/delete_requests/` says it finished, or after a timeout (the client never
//! called the worker).
//!
//! Eligible: ready (`idle`), benchmarked, reported within the stale limit, and with an
//! estimated queue time not above the endpoint's `max_queue_time` (an empty worker is always
//! eligible, so one request bigger than `max_queue_time` still runs somewhere). Among the
//! eligible, the lowest estimate wins; exact ties are broken at random.
//!
//! Queue times compare in whole nanoseconds ([`queue_ticks`]): two estimates that round to the
//! same nanosecond are a tie (sums of the same costs in another order differ in the last bits).
//!
//! [`choose`] is the definition, over a list of every worker. Routing itself does not scan the
//! fleet: the registry keeps each endpoint's routable workers ordered by these ticks and walks
//! from the front (`registry/index.rs`); its tests hold it to [`best_of`].

use rand::Rng;

/// A queue time in whole nanoseconds, the unit in which queue times compare. Saturates: an
/// infinite limit is `i64::MAX`.
pub fn queue_ticks(seconds: f64) -> i64 {
    (seconds * 1e9).round() as i64
}

/// What the router needs to know about one worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Worker id.
    pub id: i64,
    /// Ready, benchmarked, fresh.
    pub routable: bool,
    /// Benchmarked throughput, workload units per second.
    pub max_perf: f64,
    /// Reported plus pending load.
    pub load: f64,
}

impl Candidate {
    /// Estimated seconds a new request waits.
    pub fn queue_time(&self) -> f64 {
        if self.max_perf > 0.0 {
            self.load / self.max_perf
        } else {
            f64::INFINITY
        }
    }
}

/// Picks the worker for a request, or `None` when every worker is full or unusable.
pub fn choose(cands: &[Candidate], max_queue_time: f64, rng: &mut impl Rng) -> Option<i64> {
    let ties = best_of(cands, max_queue_time);
    match ties.len() {
        0 => None,
        1 => Some(ties[0]),
        n => Some(ties[rng.gen_range(0..n)]),
    }
}

/// Every eligible worker with the lowest queue time: the set [`choose`] draws from.
pub fn best_of(cands: &[Candidate], max_queue_time: f64) -> Vec<i64> {
    let limit = queue_ticks(max_queue_time);
    let eligible: Vec<(i64, i64)> = cands
        .iter()
        .filter(|c| c.routable && c.max_perf > 0.0)
        .map(|c| (c.id, queue_ticks(c.queue_time())))
        .filter(|(_, t)| *t <= limit || *t <= 0)
        .collect();
    let best = eligible.iter().map(|(_, t)| *t).min();
    eligible
        .iter()
        .filter(|(_, t)| Some(*t) == best)
        .map(|(id, _)| *id)
        .collect()
}

/// Endpoint queue time: total load over total throughput of the ready workers, plus queued
/// work; infinite when work waits and nothing is ready.
pub fn endpoint_queue_time(cands: &[Candidate], queued_load: f64) -> f64 {
    let perf: f64 = cands
        .iter()
        .filter(|c| c.routable)
        .map(|c| c.max_perf)
        .sum();
    let load: f64 = cands
        .iter()
        .filter(|c| c.routable)
        .map(|c| c.load)
        .sum::<f64>()
        + queued_load;
    if perf > 0.0 {
        load / perf
    } else if load > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use rand::SeedableRng;

    fn c(id: i64, routable: bool, max_perf: f64, load: f64) -> Candidate {
        Candidate {
            id,
            routable,
            max_perf,
            load,
        }
    }

    #[test]
    fn lowest_queue_time_wins() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cands = [
            c(1, true, 100.0, 500.0),
            c(2, true, 10.0, 20.0),
            c(3, true, 100.0, 100.0),
        ];
        // 5 s, 2 s, 1 s.
        assert_eq!(choose(&cands, 30.0, &mut rng), Some(3));
    }

    #[test]
    fn skips_unroutable_full_and_unbenchmarked() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cands = [
            c(1, false, 100.0, 0.0),
            c(2, true, 0.0, 0.0),
            c(3, true, 10.0, 400.0),
        ];
        assert_eq!(choose(&cands, 30.0, &mut rng), None);
        // An empty worker is eligible even with max_queue_time 0.
        let cands = [c(4, true, 10.0, 0.0), c(5, true, 10.0, 5.0)];
        assert_eq!(choose(&cands, 0.0, &mut rng), Some(4));
        assert_eq!(choose(&[], 30.0, &mut rng), None);
    }

    #[test]
    fn ties_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cands = [
            c(1, true, 10.0, 0.0),
            c(2, true, 10.0, 0.0),
            c(3, true, 10.0, 0.0),
        ];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(choose(&cands, 30.0, &mut rng).unwrap());
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn endpoint_queue_time_cases() {
        assert_eq!(endpoint_queue_time(&[], 0.0), 0.0);
        assert!(endpoint_queue_time(&[], 10.0).is_infinite());
        let cands = [c(1, true, 10.0, 50.0), c(2, false, 10.0, 1000.0)];
        assert_eq!(endpoint_queue_time(&cands, 50.0), 10.0);
    }
}
