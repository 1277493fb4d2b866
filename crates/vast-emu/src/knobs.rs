//! Failure knobs: slow and failing boots, rate limiting, outages, stolen offers.
//!
//! [`Knobs`] is a cheap handle (an `Arc`); tests hold it from [`crate::Emulator::knobs`] or drive
//! the same setters over `POST /_emu/...`. Every knob is read at the moment it matters (a boot
//! reads the boot delay when it starts, a request reads the rate limit when it arrives), so a
//! change applies to what happens next, never to what is already under way.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Default `Retry-After` of a 429.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How a failing boot fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootFailure {
    /// The on-start command never runs and the instance stays `loading` for good (a host
    /// that never pulls the image); only stop or destroy end it.
    Hang,
    /// The on-start command never runs and the instance goes to `exited` with an error in
    /// `status_msg` (a container that failed to start).
    Exit,
}

/// How an outage shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutageMode {
    /// Every API request answers 503 with an HTML page, as a gateway in front of a down
    /// backend does.
    #[serde(rename = "503")]
    Unavailable,
    /// Every API request has its connection reset (RST) without an answer.
    Reset,
}

/// What a request meets at the door (see [`Knobs::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Pass,
    Outage(OutageMode),
    RateLimited(Duration),
}

/// The knobs' current settings, as `GET /_emu/knobs` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KnobsSnapshot {
    /// Delay from a (re)start until the on-start command runs, in milliseconds.
    pub boot_delay_ms: u64,
    /// Boots still to fail.
    pub failing_boots: u32,
    /// How they fail.
    pub boot_failure: BootFailure,
    /// API requests still to answer 429.
    pub rate_limit_next: u32,
    /// Requests per second allowed (the rest answer 429), if limited.
    pub rate_limit_per_second: Option<u32>,
    /// `Retry-After` of a 429, in seconds.
    pub retry_after_s: f64,
    /// Milliseconds of outage left, if one is on.
    pub outage_left_ms: Option<u64>,
    /// How the outage shows.
    pub outage_mode: OutageMode,
    /// Offers whose next create fails as taken.
    pub stolen_offers: Vec<u64>,
    /// Creates (on any offer) still to fail as taken.
    pub steal_next_creates: u32,
}

#[derive(Debug)]
struct State {
    boot_delay: Duration,
    failing_boots: u32,
    boot_failure: BootFailure,
    rate_next: u32,
    per_second: Option<NonZeroU32>,
    window: (Instant, u32),
    retry_after: Duration,
    outage_until: Option<Instant>,
    outage_mode: OutageMode,
    stolen: Vec<u64>,
    steal_next: u32,
}

/// The emulator's failure knobs. Clones share one set.
#[derive(Debug, Clone)]
pub struct Knobs {
    inner: Arc<Mutex<State>>,
    boot_delay_default: Duration,
}

impl Knobs {
    pub(crate) fn new(boot_delay: Duration) -> Knobs {
        Knobs {
            inner: Arc::new(Mutex::new(State::fresh(boot_delay))),
            boot_delay_default: boot_delay,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain settings behind; they stay usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the delay from a (re)start until the on-start command runs (the instance shows
    /// `loading` meanwhile). Applies to boots that start after the call.
    pub fn set_boot_delay(&self, delay: Duration) {
        self.lock().boot_delay = delay;
    }

    /// The next `count` boots fail as `mode` says (0 turns failing boots off).
    pub fn fail_boots(&self, count: u32, mode: BootFailure) {
        let mut s = self.lock();
        s.failing_boots = count;
        s.boot_failure = mode;
    }

    /// The next `count` API requests answer 429 with `Retry-After` (0 turns this off).
    pub fn rate_limit_next(&self, count: u32) {
        self.lock().rate_next = count;
    }

    /// Allows `limit` API requests per second (fixed one-second windows); the rest answer
    /// 429. `None` lifts the limit.
    pub fn rate_limit_per_second(&self, limit: Option<NonZeroU32>) {
        let mut s = self.lock();
        s.per_second = limit;
        s.window = (Instant::now(), 0);
    }

    /// Sets the `Retry-After` of a 429 (whole seconds on the wire, rounded up; default 1 s).
    pub fn set_retry_after(&self, after: Duration) {
        self.lock().retry_after = after;
    }

    /// Starts an outage of `duration` (zero ends one): every API request fails as `mode`
    /// says. The `/_emu/` admin routes keep answering.
    pub fn outage(&self, duration: Duration, mode: OutageMode) {
        let mut s = self.lock();
        s.outage_until = (!duration.is_zero()).then(|| Instant::now() + duration);
        s.outage_mode = mode;
    }

    /// The next create on `offer_id` fails as taken (410 `no_such_ask`), as if someone else
    /// rented it between the search and the create. The offer stays in searches.
    pub fn steal_offer(&self, offer_id: u64) {
        let mut s = self.lock();
        if !s.stolen.contains(&offer_id) {
            s.stolen.push(offer_id);
        }
    }

    /// The next `count` creates, on whatever offer, fail as taken (0 turns this off).
    pub fn steal_next_creates(&self, count: u32) {
        self.lock().steal_next = count;
    }

    /// Every knob back to its start-up value (the configured boot delay, no failures).
    pub fn reset(&self) {
        *self.lock() = State::fresh(self.boot_delay_default);
    }

    /// The current settings.
    pub fn snapshot(&self) -> KnobsSnapshot {
        let s = self.lock();
        let now = Instant::now();
        KnobsSnapshot {
            boot_delay_ms: millis(s.boot_delay),
            failing_boots: s.failing_boots,
            boot_failure: s.boot_failure,
            rate_limit_next: s.rate_next,
            rate_limit_per_second: s.per_second.map(NonZeroU32::get),
            retry_after_s: s.retry_after.as_secs_f64(),
            outage_left_ms: s.outage_until.filter(|u| *u > now).map(|u| millis(u - now)),
            outage_mode: s.outage_mode,
            stolen_offers: s.stolen.clone(),
            steal_next_creates: s.steal_next,
        }
    }

    /// The boot delay now.
    pub(crate) fn boot_delay(&self) -> Duration {
        self.lock().boot_delay
    }

    /// Whether this boot fails (using up one failing boot), and how.
    pub(crate) fn take_boot_failure(&self) -> Option<BootFailure> {
        let mut s = self.lock();
        if s.failing_boots == 0 {
            return None;
        }
        s.failing_boots -= 1;
        Some(s.boot_failure)
    }

    /// Whether a create on `offer_id` is to fail as taken (using up the steal).
    pub(crate) fn take_steal(&self, offer_id: u64) -> bool {
        let mut s = self.lock();
        if let Some(i) = s.stolen.iter().position(|o| *o == offer_id) {
            s.stolen.remove(i);
            return true;
        }
        if s.steal_next > 0 {
            s.steal_next -= 1;
            return true;
        }
        false
    }

    /// What an API request meets: an outage first (the service is down), then the rate
    /// limit (counted only for requests that reach it).
    pub(crate) fn admit(&self) -> Gate {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some(until) = s.outage_until {
            if until > now {
                return Gate::Outage(s.outage_mode);
            }
            s.outage_until = None;
        }
        if s.rate_next > 0 {
            s.rate_next -= 1;
            return Gate::RateLimited(s.retry_after);
        }
        if let Some(limit) = s.per_second {
            if now.duration_since(s.window.0) >= Duration::from_secs(1) {
                s.window = (now, 0);
            }
            if s.window.1 >= limit.get() {
                return Gate::RateLimited(s.retry_after);
            }
            s.window.1 += 1;
        }
        Gate::Pass
    }
}

impl State {
    fn fresh(boot_delay: Duration) -> State {
        State {
            boot_delay,
            failing_boots: 0,
            boot_failure: BootFailure::Hang,
            rate_next: 0,
            per_second: None,
            window: (Instant::now(), 0),
            retry_after: DEFAULT_RETRY_AFTER,
            outage_until: None,
            outage_mode: OutageMode::Unavailable,
            stolen: Vec::new(),
            steal_next: 0,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gate_order_and_counts() {
        let k = Knobs::new(Duration::from_secs(1));
        assert_eq!(k.admit(), Gate::Pass);
        k.rate_limit_next(2);
        k.outage(Duration::from_secs(5), OutageMode::Unavailable);
        // The outage hides the rate limit and does not use it up.
        assert_eq!(k.admit(), Gate::Outage(OutageMode::Unavailable));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(k.admit(), Gate::RateLimited(DEFAULT_RETRY_AFTER));
        assert_eq!(k.admit(), Gate::RateLimited(DEFAULT_RETRY_AFTER));
        assert_eq!(k.admit(), Gate::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn per_second_windows() {
        let k = Knobs::new(Duration::ZERO);
        k.rate_limit_per_second(NonZeroU32::new(2));
        assert_eq!(k.admit(), Gate::Pass);
        assert_eq!(k.admit(), Gate::Pass);
        assert!(matches!(k.admit(), Gate::RateLimited(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(k.admit(), Gate::Pass);
        k.rate_limit_per_second(None);
        for _ in 0..10 {
            assert_eq!(k.admit(), Gate::Pass);
        }
    }

    #[test]
    fn steals_and_boot_failures_are_used_up() {
        let k = Knobs::new(Duration::ZERO);
        k.steal_offer(7);
        assert!(!k.take_steal(8));
        assert!(k.take_steal(7));
        assert!(!k.take_steal(7));
        k.steal_next_creates(1);
        assert!(k.take_steal(8));
        assert!(!k.take_steal(8));
        k.fail_boots(1, BootFailure::Exit);
        assert_eq!(k.take_boot_failure(), Some(BootFailure::Exit));
        assert_eq!(k.take_boot_failure(), None);
        k.fail_boots(3, BootFailure::Hang);
        k.reset();
        assert_eq!(k.take_boot_failure(), None);
    }
}
