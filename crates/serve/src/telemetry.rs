//! Connection metrics, names defined once; each helper both logs and counts, so the two cannot
//! drift. Every metric carries a `listener` label (the [`Limits::name`](crate::Limits::name)).

use std::net::SocketAddr;

use metrics::{counter, gauge};

/// Connections accepted and given a slot.
pub const ACCEPTED: &str = "ferry_connections_accepted_total";
/// Connections answered 503 and closed because every slot was serving a request.
pub const REFUSED: &str = "ferry_connections_refused_total";
/// Connections closed to make room for a new one (oldest not serving a request first).
pub const EVICTED: &str = "ferry_connections_evicted_total";
/// Connections closed by a timeout; `phase` is `handshake`, `header` or `idle`.
pub const TIMED_OUT: &str = "ferry_connections_timed_out_total";
/// Failed `accept()` calls other than a peer's reset; `kind` is `fd_limit` or `other`.
pub const ACCEPT_ERRORS: &str = "ferry_accept_errors_total";
/// Connections open now.
pub const OPEN: &str = "ferry_connections_open";

/// Where a connection was when a timeout closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the TLS handshake finished.
    Handshake,
    /// Reading a request's headers.
    Header,
    /// Idle between requests.
    Idle,
}

impl Phase {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Header => "header",
            Phase::Idle => "idle",
        }
    }
}

pub(crate) fn accepted(listener: &'static str, id: u64, peer: SocketAddr) {
    tracing::trace!(listener, id, %peer, "connection accepted");
    counter!(ACCEPTED, "listener" => listener).increment(1);
    gauge!(OPEN, "listener" => listener).increment(1.0);
}

pub(crate) fn closed(listener: &'static str) {
    gauge!(OPEN, "listener" => listener).decrement(1.0);
}

pub(crate) fn refused(listener: &'static str, peer: SocketAddr, max: usize) {
    tracing::debug!(listener, %peer, max_connections = max, "connection refused: every slot is serving a request");
    counter!(REFUSED, "listener" => listener).increment(1);
}

pub(crate) fn evicted(listener: &'static str, id: u64, peer: SocketAddr, why: &'static str) {
    tracing::debug!(listener, id, %peer, why, "idle connection evicted");
    counter!(EVICTED, "listener" => listener).increment(1);
}

pub(crate) fn timed_out(listener: &'static str, id: u64, peer: SocketAddr, phase: Phase) {
    tracing::debug!(listener, id, %peer, phase = phase.as_str(), "connection timed out");
    counter!(TIMED_OUT, "listener" => listener, "phase" => phase.as_str()).increment(1);
}

pub(crate) fn accept_failed(listener: &'static str, error: &std::io::Error, fd_limit: bool) {
    let kind = if fd_limit { "fd_limit" } else { "other" };
    tracing::warn!(listener, error = %error, kind, "accept failed; backing off");
    counter!(ACCEPT_ERRORS, "listener" => listener, "kind" => kind).increment(1);
}
