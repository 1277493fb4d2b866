//! Shared state: the config, live counters, the knobs `/sim/control` changes, and the model log.
//!
//! Everything is an atomic behind one `Arc`, so a request never takes a lock; the only mutex
//! serializes writes to the log file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::SimConfig;

/// Counters of model requests (generation routes only; `/health`, `/v1/models`, `/info` and
/// `/sim/*` are not counted).
///
/// Once nothing is in flight, `requests == completed + cancelled + errors`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    /// Model requests received, whatever became of them.
    pub requests: u64,
    /// Answered in full with a 2xx.
    pub completed: u64,
    /// The client went away before the end (response dropped by the server mid-way).
    pub cancelled: u64,
    /// Answered with an error status (injected, loading, bad body) or cut off on purpose
    /// (`disconnect_after`).
    pub errors: u64,
    /// Being served right now.
    pub in_flight: u64,
    /// Tokens actually produced (ComfyUI steps count as tokens).
    pub tokens_generated: u64,
}

/// The knobs that can change while the server runs, as `POST /sim/control` reports them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SimKnobs {
    /// `/health` answers 200 only when this and `loaded` are true.
    pub healthy: bool,
    /// Loading has finished.
    pub loaded: bool,
    /// Fraction of model requests answered 500.
    pub error_rate: f64,
    /// Stall before the first byte of every model request, 0 for none.
    pub stall_ms: u64,
    /// Delay per generated token.
    pub token_delay_ms: u64,
    /// Prefill time before the first token.
    pub ttft_ms: u64,
}

/// State shared by every request of one sim server. Cheap to clone.
#[derive(Clone)]
pub struct SimState {
    inner: Arc<Inner>,
}

struct Inner {
    config: SimConfig,
    healthy: AtomicBool,
    loaded: AtomicBool,
    /// `f64::to_bits` of the error rate.
    error_rate: AtomicU64,
    stall_ns: AtomicU64,
    token_delay_ns: AtomicU64,
    ttft_ns: AtomicU64,
    /// Arrival index of the next model request: ids and the error sequence.
    next_seq: AtomicU64,
    stats: Counters,
    /// Serializes log lines so two writers never interleave within a line.
    log_lock: Mutex<()>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    tokens: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SimState {
    /// A fresh state. The model counts as loaded at once when `load_time` is zero; otherwise
    /// [`crate::run`] (or [`crate::SimServer`]) flips it when `load_time` has passed.
    pub fn new(config: SimConfig) -> Self {
        let inner = Inner {
            healthy: AtomicBool::new(true),
            loaded: AtomicBool::new(config.load_time.is_zero()),
            error_rate: AtomicU64::new(config.error_rate.to_bits()),
            stall_ns: AtomicU64::new(config.stall.map_or(0, nanos)),
            token_delay_ns: AtomicU64::new(nanos(config.token_delay)),
            ttft_ns: AtomicU64::new(nanos(config.ttft)),
            next_seq: AtomicU64::new(0),
            stats: Counters::default(),
            log_lock: Mutex::new(()),
            config,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The configuration the server started with (live knobs may differ: see [`Self::knobs`]).
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        let c = &self.inner.stats;
        SimStats {
            requests: c.requests.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            tokens_generated: c.tokens.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of the live knobs.
    pub fn knobs(&self) -> SimKnobs {
        let ms = |ns: &AtomicU64| ns.load(Ordering::Relaxed) / 1_000_000;
        SimKnobs {
            healthy: self.is_healthy(),
            loaded: self.is_loaded(),
            error_rate: self.error_rate(),
            stall_ms: ms(&self.inner.stall_ns),
            token_delay_ms: ms(&self.inner.token_delay_ns),
            ttft_ms: ms(&self.inner.ttft_ns),
        }
    }

    /// Makes `/health` answer 503 (false) or 200 (true, once loaded). Model routes keep
    /// answering either way: a failing health check and a working model are separate failures.
    pub fn set_healthy(&self, healthy: bool) {
        self.inner.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether `/health` is allowed to answer 200.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Marks the model loaded or not (a reload: everything answers 503 until set back). Does
    /// not write the log; use [`Self::append_log`] for that.
    pub fn set_loaded(&self, loaded: bool) {
        self.inner.loaded.store(loaded, Ordering::Relaxed);
    }

    /// Whether loading has finished.
    pub fn is_loaded(&self) -> bool {
        self.inner.loaded.load(Ordering::Relaxed)
    }

    /// Changes the fraction of model requests answered 500; values outside `0..=1` (or NaN)
    /// are clamped into it.
    pub fn set_error_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.inner
            .error_rate
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    fn error_rate(&self) -> f64 {
        f64::from_bits(self.inner.error_rate.load(Ordering::Relaxed))
    }

    /// Changes the stall before every model request's first byte (`None` or zero: no stall).
    pub fn set_stall(&self, stall: Option<Duration>) {
        self.inner
            .stall_ns
            .store(stall.map_or(0, nanos), Ordering::Relaxed);
    }

    pub(crate) fn stall(&self) -> Duration {
        Duration::from_nanos(self.inner.stall_ns.load(Ordering::Relaxed))
    }

    /// Changes the delay per generated token.
    pub fn set_token_delay(&self, delay: Duration) {
        self.inner
            .token_delay_ns
            .store(nanos(delay), Ordering::Relaxed);
    }

    pub(crate) fn token_delay(&self) -> Duration {
        Duration::from_nanos(self.inner.token_delay_ns.load(Ordering::Relaxed))
    }

    /// Changes the prefill time before the first token.
    pub fn set_ttft(&self, ttft: Duration) {
        self.inner.ttft_ns.store(nanos(ttft), Ordering::Relaxed);
    }

    pub(crate) fn ttft(&self) -> Duration {
        Duration::from_nanos(self.inner.ttft_ns.load(Ordering::Relaxed))
    }

    /// Appends one line to the model log and flushes it, so a tailing worker sees it at once.
    /// Without a `log_file` this does nothing.
    ///
    /// The file is opened per line (append mode) rather than held open: a start script may
    /// rotate or truncate the log, and the sim should keep writing to whatever file is at the
    /// path, as a real server's redirected stdout would after a restart. Log lines are rare
    /// (start-up and tests), so the blocking write is a few microseconds on a runtime thread.
    pub fn append_log(&self, line: &str) -> io::Result<()> {
        let Some(path) = &self.inner.config.log_file else {
            return Ok(());
        };
        // A poisoned lock only means another writer panicked mid-line; the file is still fine.
        let _serialized = self
            .inner
            .log_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        file.write_all(&buf)?;
        file.flush()
    }

    /// Appends one model request to the request log (`--request-log`): `path body`, the
    /// body's line breaks turned into spaces so each request is one line. Without a request
    /// log this does nothing.
    pub fn record_request(&self, path: &str, body: &[u8]) -> io::Result<()> {
        let Some(log) = &self.inner.config.request_log else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(path.len() + body.len() + 2);
        buf.extend_from_slice(path.as_bytes());
        buf.push(b' ');
        buf.extend(body.iter().map(|&b| match b {
            b'\n' | b'\r' => b' ',
            b => b,
        }));
        buf.push(b'\n');
        let _serialized = self
            .inner
            .log_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = OpenOptions::new().create(true).append(true).open(log)?;
        file.write_all(&buf)
    }

    /// Counts a new model request and returns the guard that settles its outcome, with the
    /// request's arrival index.
    pub(crate) fn begin_request(&self) -> RequestGuard {
        let c = &self.inner.stats;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            state: self.clone(),
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
            outcome: Outcome::Pending,
        }
    }

    /// Whether request `seq` is one of the injected 500s: a pure function of seed, sequence
    /// number and rate, so two servers with the same seed fail the same requests.
    pub(crate) fn should_fail(&self, seq: u64) -> bool {
        let rate = self.error_rate();
        if rate <= 0.0 {
            return false;
        }
        unit_interval(splitmix64(self.inner.config.seed ^ splitmix64(seq))) < rate
    }

    fn add_tokens(&self, n: u64) {
        self.inner.stats.tokens.fetch_add(n, Ordering::Relaxed);
    }
}

/// SplitMix64's finalizer: a cheap, well-mixed hash, enough for a failure schedule.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps 64 random bits to `[0, 1)` using the top 53 (an f64's mantissa).
fn unit_interval(x: u64) -> f64 {
    // 53 bits fit an f64 exactly, so both casts are lossless.
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Completed,
    Error,
}

/// Settles one request's counters when dropped. It travels with the response (inside a
/// streaming body), so a client that goes away mid-stream drops it unsettled: `cancelled`.
pub(crate) struct RequestGuard {
    state: SimState,
    seq: u64,
    outcome: Outcome,
}

impl RequestGuard {
    /// Arrival index of this request.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Counts `n` more generated tokens.
    pub(crate) fn tokens(&self, n: u64) {
        self.state.add_tokens(n);
    }

    /// The request ended well.
    pub(crate) fn complete(&mut self) {
        self.outcome = Outcome::Completed;
    }

    /// The request ended with an error of the sim's making.
    pub(crate) fn fail(&mut self) {
        self.outcome = Outcome::Error;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.state.inner.stats;
        let counter = match self.outcome {
            Outcome::Pending => &c.cancelled,
            Outcome::Completed => &c.completed,
            Outcome::Error => &c.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_settles_exactly_one_counter() {
        let state = SimState::new(SimConfig::default());
        let mut ok = state.begin_request();
        let mut bad = state.begin_request();
        let gone = state.begin_request();
        assert_eq!(state.stats().in_flight, 3);
        ok.complete();
        bad.fail();
        drop((ok, bad, gone));
        let s = state.stats();
        assert_eq!(
            (s.requests, s.completed, s.errors, s.cancelled),
            (3, 1, 1, 1)
        );
        assert_eq!(s.in_flight, 0);
    }

    #[test]
    fn error_schedule_follows_rate_and_seed() {
        let cfg = |seed, error_rate| SimConfig {
            seed,
            error_rate,
            ..SimConfig::default()
        };
        let schedule = |s: &SimState| (0..1000).map(|i| s.should_fail(i)).collect::<Vec<_>>();
        let a = schedule(&SimState::new(cfg(1, 0.3)));
        assert_eq!(a, schedule(&SimState::new(cfg(1, 0.3))));
        assert_ne!(a, schedule(&SimState::new(cfg(2, 0.3))));
        let failures = a.iter().filter(|f| **f).count();
        assert!(
            (200..400).contains(&failures),
            "{failures} failures at rate 0.3"
        );
        assert!(schedule(&SimState::new(cfg(1, 1.0))).iter().all(|f| *f));
        assert!(!schedule(&SimState::new(cfg(1, 0.0))).iter().any(|f| *f));
    }

    #[test]
    fn knobs_round_trip() {
        let state = SimState::new(SimConfig::default());
        state.set_error_rate(7.0);
        state.set_stall(Some(Duration::from_millis(250)));
        state.set_token_delay(Duration::from_millis(3));
        state.set_ttft(Duration::from_millis(9));
        state.set_healthy(false);
        let k = state.knobs();
        assert_eq!(k.error_rate, 1.0);
        assert_eq!((k.stall_ms, k.token_delay_ms, k.ttft_ms), (250, 3, 9));
        assert!(!k.healthy && k.loaded);
    }
}
