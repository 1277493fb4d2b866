//! Request lifetimes and the global queue.
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
//! - `Assigned`: routed to a worker; its cost is that worker's pending load until the worker
//!   acknowledges it in a report. A poll of a delivered request is a client retry (the worker
//!   failed it): the old assignment is released and the request re-enters at the *front* of
//!   the queue, so it is never counted twice and never loses its place.
//!
//! Queued requests are persisted; a request nobody polls for `queue_ttl` is dropped.
//!
//! The counter is persisted as a ceiling reserved [`IDX_BLOCK`] at a time: after a restart
//! numbering resumes at the old ceiling, above anything handed out.

use std::collections::{HashMap, VecDeque};

/// Indexes reserved per persisted ceiling.
pub const IDX_BLOCK: u64 = 1000;

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
    /// Endpoint.
    pub endpoint_id: i64,
    /// Workload.
    pub cost: f64,
    /// State.
    pub state: ReqState,
    /// Monotonic seconds of the last client call about it.
    pub touched: f64,
    /// Whether a queued record is in the database.
    pub persisted: bool,
}

/// The request table and the global FIFO.
#[derive(Debug, Default)]
pub struct Queue {
    /// By `request_idx`.
    pub requests: HashMap<u64, Req>,
    /// Queued indexes, oldest first.
    pub order: VecDeque<u64>,
    next: u64,
    ceiling: u64,
}

impl Queue {
    /// A table whose next index is `ceiling` (the persisted ceiling; 0 → start at 1).
    pub fn new(ceiling: u64) -> Queue {
        let next = ceiling.max(1);
        Queue {
            next,
            ceiling: next,
            ..Queue::default()
        }
    }

    /// Allocates the next index; returns it and, when a new block was reserved, the ceiling
    /// to persist.
    pub fn alloc(&mut self) -> (u64, Option<u64>) {
        let idx = self.next;
        self.next += 1;
        (idx, self.reserve())
    }

    fn reserve(&mut self) -> Option<u64> {
        if self.next >= self.ceiling {
            self.ceiling = self.next.saturating_add(IDX_BLOCK);
            Some(self.ceiling)
        } else {
            None
        }
    }

    /// The next index that would be handed out.
    pub fn peek_next(&self) -> u64 {
        self.next
    }

    /// Queued requests and their workload for one endpoint.
    pub fn queued_for(&self, endpoint_id: i64) -> (usize, f64) {
        let mut n = 0;
        let mut load = 0.0;
        for idx in &self.order {
            if let Some(r) = self.requests.get(idx) {
                if r.endpoint_id == endpoint_id {
                    n += 1;
                    load += r.cost;
                }
            }
        }
        (n, load)
    }

    /// Removes an index from the FIFO.
    pub fn unqueue(&mut self, idx: u64) {
        self.order.retain(|i| *i != idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_reserves_blocks() {
        let mut q = Queue::new(0);
        let (a, c) = q.alloc();
        assert_eq!((a, c), (1, Some(2 + IDX_BLOCK)));
        let (b, c) = q.alloc();
        assert_eq!((b, c), (2, None));
        for _ in 0..IDX_BLOCK {
            q.alloc();
        }
        // A restart resumes at the persisted ceiling, above everything handed out.
        let ceiling = 2 + 2 * IDX_BLOCK;
        assert!(q.peek_next() <= ceiling);
        let mut q2 = Queue::new(ceiling);
        assert!(q2.alloc().0 >= q.peek_next());
    }
}
