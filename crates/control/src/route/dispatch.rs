//! Dispatch: the global queue served in order against the registry.
//!
//! Oldest first across all endpoints; once a request of an endpoint finds no worker, later
//! requests of that endpoint wait too (no overtaking), while other endpoints go on. Each
//! request costs a look at the front of its endpoint's routing index ([`Registry::choose`]),
//! not a scan of its workers.
//!
//! [`Registry::choose`]: crate::registry::Registry::choose

use crate::control::State;
use crate::store::Store;

impl State {
    /// Assigns every queued request that can run now. `exclude` names, for one request, the
    /// worker URLs that already failed it.
    pub(crate) fn dispatch(
        &mut self,
        store: &dyn Store,
        mono: f64,
        stale: f64,
        exclude: Option<(u64, &[String])>,
    ) {
        let mut blocked: Vec<i64> = Vec::new();
        let waiting: Vec<(u64, i64, f64)> = self
            .queue
            .queued()
            .map(|(idx, r)| (idx, r.endpoint_id(), r.cost()))
            .collect();
        for (idx, ep_id, cost) in waiting {
            if blocked.contains(&ep_id) {
                continue;
            }
            let Some(ep) = self.catalog.endpoint(ep_id) else {
                // Its endpoint is gone (deletion drops its requests; this is a safety net).
                if let Some(w) = self.queue.discard(idx, store) {
                    self.registry.release(w, idx);
                }
                continue;
            };
            let skip: &[String] = match exclude {
                Some((i, ex)) if i == idx => ex,
                _ => &[],
            };
            let max_queue_time = ep.params.max_queue_time;
            match self
                .registry
                .choose(ep_id, skip, max_queue_time, (mono, stale), &mut self.rng)
            {
                Some(wid) => {
                    if let Some(reqnum) = self.registry.assign(wid, idx, cost, mono) {
                        self.queue.assign(idx, wid, reqnum, store);
                    }
                }
                None => blocked.push(ep_id),
            }
        }
    }
}
