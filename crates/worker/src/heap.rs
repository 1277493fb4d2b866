//! Giving the heap back after a burst.
//!
//! After a saturation run glibc keeps the memory the burst freed as free heap below live
//! allocations (holes it cannot return by shrinking the break), so the worker's resident memory
//! stayed at 1.6x its level at ready long after the load was gone (bench/memory.py). Once the
//! worker has served requests and then been idle for a while, [`release`] asks glibc to return
//! every whole free page (`malloc_trim(0)`); [`HeapTrim`] decides when. A couple of calls per
//! quiet period, never on the request path.

use std::time::{Duration, Instant};

/// When to trim: after activity, each time the idle time (nothing in flight) passes one of
/// the marks, once per mark until the next request. Two marks by default (see
/// [`crate::report`]): soon after the burst, and again once idle connections to the model
/// server have expired and freed their buffers.
#[derive(Debug)]
pub struct HeapTrim {
    marks: Vec<Duration>,
    /// Requests received as last seen.
    seen: u64,
    /// Since when nothing has been in flight.
    idle_since: Option<Instant>,
    /// How many marks of this idle period have been trimmed at.
    done: usize,
    /// Requests came since the idle period began (nothing to give back otherwise).
    active: bool,
}

impl HeapTrim {
    /// Trims at each of `marks` (ascending) of idleness that follows activity.
    pub fn new(marks: &[Duration]) -> HeapTrim {
        HeapTrim {
            marks: marks.to_vec(),
            seen: 0,
            idle_since: None,
            done: 0,
            active: false,
        }
    }

    /// One look at the worker (requests received so far, requests in flight) at `now`: true
    /// when the heap should be trimmed now.
    pub fn observe(&mut self, received: u64, working: usize, now: Instant) -> bool {
        if received != self.seen || working > 0 {
            self.seen = received;
            self.active = true;
            self.idle_since = None;
            self.done = 0;
            if working > 0 {
                return false;
            }
        }
        let since = *self.idle_since.get_or_insert(now);
        let idle = now.saturating_duration_since(since);
        let due = self.marks.iter().take_while(|m| idle >= **m).count();
        if self.active && due > self.done {
            self.done = due;
            return true;
        }
        false
    }
}

/// Returns the free heap's whole pages to the OS; true when memory was released. Does nothing
/// (false) where the C library is not glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    #[expect(
        unsafe_code,
        reason = "glibc's malloc_trim takes a size and touches no memory of ours; it is \
                  thread-safe (it takes the arenas' locks) and called once per quiet period"
    )]
    // SAFETY: `malloc_trim(size_t)` has exactly this signature in glibc (malloc.h), takes no
    // pointers, and may be called from any thread at any time.
    let released = unsafe { malloc_trim(0) };
    released != 0
}

/// Returns the free heap's whole pages to the OS; true when memory was released. Does nothing
/// (false) where the C library is not glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_at_each_mark_of_a_quiet_period_after_activity() {
        let (a, b) = (Duration::from_secs(5), Duration::from_secs(20));
        let mut t = HeapTrim::new(&[a, b]);
        let t0 = Instant::now();
        // Idle from the start, nothing served: nothing to give back.
        assert!(!t.observe(0, 0, t0));
        assert!(!t.observe(0, 0, t0 + b * 2));
        // A burst: no trim while requests are in flight, nor before the first mark.
        let t1 = t0 + b * 3;
        assert!(!t.observe(40, 8, t1));
        assert!(!t.observe(40, 0, t1 + Duration::from_secs(1)));
        assert!(!t.observe(40, 0, t1 + Duration::from_secs(3)));
        assert!(t.observe(40, 0, t1 + Duration::from_secs(6)));
        assert!(!t.observe(40, 0, t1 + Duration::from_secs(10)));
        assert!(t.observe(40, 0, t1 + Duration::from_secs(21)));
        assert!(!t.observe(40, 0, t1 + Duration::from_secs(100)));
        // The next request starts a new period.
        let t2 = t1 + Duration::from_secs(200);
        assert!(!t.observe(41, 0, t2));
        assert!(t.observe(41, 0, t2 + a));
        // A long gap between looks trims once, not once per mark passed.
        assert!(!t.observe(42, 0, t2 + b * 2));
        assert!(t.observe(42, 0, t2 + b * 4));
        assert!(!t.observe(42, 0, t2 + b * 5));
    }

    #[test]
    fn release_can_be_called_any_time() {
        // Whatever it frees, it must not disturb live memory.
        let keep: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop((0..256).map(|_| vec![0u8; 16 * 1024]).collect::<Vec<_>>());
        let _ = release();
        assert!(keep
            .iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|b| *b == i as u8)));
    }
}
