//! [`Stats`]: per-endpoint request statistics the autoscaler predicts load from: the workload
//! routed since the last tick, folded into an arrival-rate average, and the time of the last
//! request; and the [`History`] the scaling policies read.

use std::collections::HashMap;

use crate::autoscale::History;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct EpStats {
    routed: f64,
    rate: f64,
    last_request: Option<f64>,
    /// Requests routed since start (never reset: the console's charts take differences).
    requests: u64,
}

/// Statistics of every endpoint (in memory only; they rebuild within seconds after a restart).
#[derive(Debug, Default)]
pub struct Stats {
    by_endpoint: HashMap<i64, EpStats>,
    history: HashMap<i64, History>,
}

impl Stats {
    /// A `/route/` call for the endpoint at monotonic second `mono` (polls and retries too).
    pub fn request(&mut self, endpoint_id: i64, mono: f64) {
        self.by_endpoint
            .entry(endpoint_id)
            .or_default()
            .last_request = Some(mono);
    }

    /// New workload routed to the endpoint (counted once per request).
    pub fn routed(&mut self, endpoint_id: i64, cost: f64) {
        let st = self.by_endpoint.entry(endpoint_id).or_default();
        st.routed += cost;
        st.requests += 1;
    }

    /// Requests routed to the endpoint since start and its current rate (workload units/s).
    pub fn totals(&self, endpoint_id: i64) -> (u64, f64) {
        self.by_endpoint
            .get(&endpoint_id)
            .map_or((0, 0.0), |s| (s.requests, s.rate))
    }

    /// Folds the workload routed in the last `dt` seconds into the endpoint's rate and
    /// returns it, in workload units per second. It rises within ~2 s and decays over ~20 s,
    /// so a burst scales up fast and a lull does not flap.
    pub fn tick(&mut self, endpoint_id: i64, dt: f64) -> f64 {
        let st = self.by_endpoint.entry(endpoint_id).or_default();
        let inst = st.routed / dt;
        st.routed = 0.0;
        let alpha = if inst > st.rate {
            (dt / 2.0).min(1.0)
        } else {
            (dt / 20.0).min(1.0)
        };
        st.rate += alpha * (inst - st.rate);
        self.history.entry(endpoint_id).or_default().tick(dt, inst);
        st.rate
    }

    /// The endpoint's history for the scaling policies (ticked by [`Stats::tick`]).
    pub fn history(&mut self, endpoint_id: i64) -> &mut History {
        self.history.entry(endpoint_id).or_default()
    }

    /// Seconds since the endpoint's last request (infinite when none yet).
    pub fn since_last_request(&self, endpoint_id: i64, mono: f64) -> f64 {
        self.by_endpoint
            .get(&endpoint_id)
            .and_then(|s| s.last_request)
            .map_or(f64::INFINITY, |t| mono - t)
    }

    /// Forgets a deleted endpoint.
    pub fn forget(&mut self, endpoint_id: i64) {
        self.by_endpoint.remove(&endpoint_id);
        self.history.remove(&endpoint_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_rises_fast_and_decays_slowly() {
        let mut s = Stats::default();
        assert!(s.since_last_request(1, 5.0).is_infinite());
        s.request(1, 2.0);
        s.routed(1, 100.0);
        assert_eq!(s.totals(1).0, 1);
        // 100 units in 1 s: half-way up in one tick.
        assert_eq!(s.tick(1, 1.0), 50.0);
        // Nothing routed since: decays by a twentieth per second.
        assert_eq!(s.tick(1, 1.0), 50.0 - 50.0 / 20.0);
        assert_eq!(s.since_last_request(1, 5.0), 3.0);
        // Other endpoints are separate; a forgotten one starts over.
        assert_eq!(s.tick(2, 1.0), 0.0);
        s.forget(1);
        assert_eq!(s.tick(1, 1.0), 0.0);
    }
}
