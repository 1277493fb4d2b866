//! [`Capacity`]: a worker's throughput learned online from its reports.
//!
//! The start-up benchmark (`max_perf`) is measured once and never corrected; a worker whose
//! model server runs slower (or faster) under real traffic than under the benchmark's
//! payloads keeps being scaled for the benchmark. Each report says how much
//! workload the worker finished since the previous one (`cur_perf`, a sum) and how much it
//! holds (`cur_load`). An interval counts as a measurement only when the worker was under
//! load throughout: at the interval's start it held at least five seconds of work at its
//! benchmark rate (and no less than the interval's worth), enough to fill every slot of a
//! batching server, and it still held work at its end. Then finished work over the interval is what
//! it really serves. The estimate is an exponential average of those measurements, used once
//! [`MIN_SAMPLES`] were seen, and kept within [`BOUND`]× of the benchmark either way.
//!
//! Request size is not modelled separately: the measurement is the workload rate over
//! whatever mix the worker was serving.
//!
//! The autoscaler uses the estimate; routing does not. Work counts in `cur_perf` when a
//! request ends, so with requests much longer than a report interval each measurement is
//! nothing or a whole request, and identical workers' estimates differ by several times;
//! ordering workers by them lengthened the queue (docs/simulate.md, "Online capacity model").

/// Measurements before the learned value replaces the benchmark.
pub const MIN_SAMPLES: u32 = 3;
/// The learned value stays within `[benchmark / BOUND, benchmark × BOUND]`.
pub const BOUND: f64 = 10.0;
/// Weight of a new measurement.
const ALPHA: f64 = 0.3;
/// Work held, in seconds at the benchmark rate, that means the worker is saturated: enough
/// to fill every slot of a batching server for a while, whatever its concurrency.
const SATURATED_S: f64 = 5.0;
/// Intervals longer than this (seconds) say little about throughput and are skipped.
const MAX_INTERVAL_S: f64 = 30.0;

/// Learned throughput of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Capacity {
    estimate: f64,
    samples: u32,
    /// `cur_load` of the previous report.
    prev_load: f64,
}

impl Capacity {
    /// A report: `interval` seconds since the previous one, `served` workload finished in
    /// it, `load` held now, `benchmark` the worker's `max_perf`.
    pub fn observe(&mut self, interval: f64, served: f64, load: f64, benchmark: f64) {
        let under_load = benchmark > 0.0
            && interval > 0.0
            && interval <= MAX_INTERVAL_S
            && self.prev_load >= benchmark * interval.max(SATURATED_S)
            && load > 0.0;
        self.prev_load = load;
        if !under_load || !served.is_finite() || served < 0.0 {
            return;
        }
        let rate = served / interval;
        self.estimate = if self.samples == 0 {
            rate
        } else {
            self.estimate + ALPHA * (rate - self.estimate)
        };
        self.samples = self.samples.saturating_add(1);
    }

    /// What the worker serves: the learned value once known, else the benchmark.
    pub fn perf(&self, benchmark: f64) -> f64 {
        if self.samples < MIN_SAMPLES || benchmark <= 0.0 {
            return benchmark;
        }
        self.estimate.clamp(benchmark / BOUND, benchmark * BOUND)
    }

    /// Forgets what was learned (the worker restarted: a new model server).
    pub fn reset(&mut self) {
        *self = Capacity::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_only_under_load() {
        let mut c = Capacity::default();
        // Light load (under five benchmark-seconds held): nothing learned.
        for _ in 0..10 {
            c.observe(1.0, 50.0, 1900.0, 400.0);
        }
        assert_eq!(c.perf(400.0), 400.0);
        // Saturated at 200 units/s against a benchmark of 400: learned after three reports
        // that follow a saturated one.
        c.observe(1.0, 50.0, 5200.0, 400.0);
        assert_eq!(c.perf(400.0), 400.0);
        c.observe(1.0, 200.0, 5000.0, 400.0);
        c.observe(1.0, 200.0, 4800.0, 400.0);
        assert_eq!(c.perf(400.0), 400.0);
        c.observe(1.0, 200.0, 4600.0, 400.0);
        assert_eq!(c.perf(400.0), 200.0);
        // A drained worker (nothing left at the end) is not a measurement.
        c.observe(1.0, 900.0, 0.0, 400.0);
        assert_eq!(c.perf(400.0), 200.0);
        // Bounded; and forgotten on reset.
        for _ in 0..50 {
            c.observe(1.0, 0.0, 1e6, 400.0);
        }
        assert_eq!(c.perf(400.0), 40.0);
        c.reset();
        assert_eq!(c.perf(400.0), 400.0);
        // Long or empty intervals are skipped.
        c.observe(60.0, 1e6, 1e6, 400.0);
        c.observe(0.0, 1e6, 1e6, 400.0);
        assert_eq!(c.perf(400.0), 400.0);
    }
}
