//! What one listener allows: how many connections, how long for a request's headers, how long
//! idle between requests; and the defaults, derived from the process's open-file limit.

use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Time a client gets to send a request's headers: from connect (TLS handshake included) for
/// the first request, from its first byte for later ones. A real client sends its headers in
/// one packet within milliseconds; 10 s still covers a slow mobile link, and is what a trickling
/// connection can hold a slot for before it is closed even when no one needs the slot.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a kept-alive connection may sit idle between requests: 75 s, the keep-alive timeout of
/// PyWorker's aiohttp server (and nginx's default), so clients that pool connections to the
/// worker see the same server behaviour as before.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Smallest derived connection limit, so a tiny open-file limit still serves a few clients.
const MIN_DERIVED: usize = 4;
/// Largest derived connection limit: past this many idle connections their buffers (tens of KiB
/// each) matter more than file descriptors; set the limit explicitly to go higher.
const MAX_DERIVED: usize = 8192;

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The listener's name in logs and in the `listener` metric label (keep it a fixed word).
    pub name: &'static str,
    /// Most connections held open at once. At the limit a new connection evicts the oldest one
    /// that is not serving a request; when every one is, the new one gets a 503 and is closed.
    pub max_connections: usize,
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

impl Limits {
    /// Limits for a main listener: a quarter of the open-file limit (see [`share_of_open_files`])
    /// and the default timeouts.
    pub fn new(name: &'static str) -> Limits {
        Limits {
            name,
            max_connections: share_of_open_files(4),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// Limits for a listener beside a main one (the worker's `/session/end` and admin
    /// listeners): a sixteenth of the open-file limit, so main + two of these stay under half.
    pub fn auxiliary(name: &'static str) -> Limits {
        Limits {
            max_connections: share_of_open_files(16),
            ..Limits::new(name)
        }
    }

    /// Sets the connection limit (at least 1).
    pub fn max_connections(mut self, max: usize) -> Limits {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the header timeout.
    pub fn header_timeout(mut self, timeout: Duration) -> Limits {
        self.header_timeout = timeout;
        self
    }

    /// Sets the idle keep-alive timeout.
    pub fn idle_timeout(mut self, timeout: Duration) -> Limits {
        self.idle_timeout = timeout;
        self
    }
}

/// The process's open-file soft limit (`RLIMIT_NOFILE`); `u64::MAX` when unlimited.
pub fn open_file_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `1/divisor` of the open-file limit as a connection limit, within 4..=8192.
///
/// Half of the descriptors are for client connections in all: the other half stays for upstream
/// sockets (one per proxied request at worst), files, and the runtime's own descriptors. The
/// worker splits its half as 1/4 for the main listener and 1/16 each for the side and admin
/// listeners; the control plane's one listener takes 1/4, since its gateway and provider hold
/// descriptors of their own.
pub fn share_of_open_files(divisor: u64) -> usize {
    let share = open_file_limit() / divisor.max(1);
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_DERIVED, MAX_DERIVED)
}

/// Raises the open-file soft limit to the hard limit, as far as the kernel allows; returns the
/// soft limit in force afterwards. Call once at start, before deriving [`Limits`].
pub fn raise_open_file_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum) {
        if current < maximum {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::debug!(from = current, to = maximum, "raised the open-file limit")
                }
                Err(e) => {
                    tracing::debug!(error = %e, current, maximum, "cannot raise the open-file limit")
                }
            }
        }
    }
    open_file_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limits_stay_in_bounds() {
        let n = share_of_open_files(4);
        assert!((MIN_DERIVED..=MAX_DERIVED).contains(&n));
        assert!(share_of_open_files(16) <= n);
        assert_eq!(share_of_open_files(u64::MAX), MIN_DERIVED);
        assert_eq!(Limits::new("t").max_connections(0).max_connections, 1);
    }

    #[test]
    fn raising_never_lowers() {
        let before = open_file_limit();
        assert!(raise_open_file_limit() >= before);
    }
}
