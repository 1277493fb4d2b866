//! A worker's routed load not yet acknowledged, with its sum kept as entries come and go, so
//! that re-keying the worker in the routing index (every route to it) does not walk every
//! pending entry: a worker that takes thousands of routes between two reports would otherwise
//! cost thousands of additions per route.

use std::collections::HashMap;

/// `request_idx` → (cost, monotonic seconds routed), and the sum of the costs.
///
/// # Invariants
///
/// - `sum` is the sum of the entries' costs, up to floating-point rounding of the additions and
///   subtractions in between (exact for the integral costs workloads usually are); it is reset
///   to exactly 0 when the last entry leaves and recomputed by [`Pending::retain`].
#[derive(Debug, Clone, Default)]
pub(super) struct Pending {
    entries: HashMap<u64, (f64, f64)>,
    sum: f64,
}

impl Pending {
    /// Adds (or replaces) request `idx`.
    pub(super) fn insert(&mut self, idx: u64, entry: (f64, f64)) {
        if let Some((old, _)) = self.entries.insert(idx, entry) {
            self.sum -= old;
        }
        self.sum += entry.0;
    }

    /// Removes request `idx`, if pending.
    pub(super) fn remove(&mut self, idx: &u64) {
        if let Some((cost, _)) = self.entries.remove(idx) {
            self.sum = if self.entries.is_empty() {
                0.0
            } else {
                self.sum - cost
            };
        }
    }

    /// Forgets every entry.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.sum = 0.0;
    }

    /// Keeps the entries `keep` accepts, and recomputes the sum.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&u64, &(f64, f64)) -> bool) {
        self.entries.retain(|idx, entry| keep(idx, entry));
        self.sum = self.entries.values().map(|(c, _)| c).sum();
    }

    /// The sum of the pending costs.
    pub(super) fn sum(&self) -> f64 {
        self.sum
    }

    /// How many requests are pending.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pending `request_idx`s.
    #[cfg(test)]
    pub(super) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.entries.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_follows_inserts_replacements_removals_and_expiry() {
        let mut p = Pending::default();
        p.insert(1, (10.0, 0.0));
        p.insert(2, (0.5, 1.0));
        p.insert(3, (7.0, 2.0));
        assert_eq!(p.sum(), 17.5);
        p.insert(2, (4.0, 3.0)); // replaced, not added
        assert_eq!(p.sum(), 21.0);
        p.remove(&1);
        p.remove(&99); // not pending: nothing changes
        assert_eq!(p.sum(), 11.0);
        p.retain(|_, (_, at)| *at > 2.5);
        assert_eq!((p.len(), p.sum()), (1, 4.0));
        p.remove(&2);
        assert!(p.is_empty());
        assert_eq!(p.sum(), 0.0);
        p.insert(4, (0.1, 0.0));
        p.insert(5, (0.2, 0.0));
        p.remove(&4);
        p.remove(&5);
        assert_eq!(
            p.sum(),
            0.0,
            "exactly zero once empty, whatever the rounding"
        );
        p.insert(6, (3.0, 0.0));
        p.clear();
        assert_eq!((p.len(), p.sum()), (0, 0.0));
    }
}
