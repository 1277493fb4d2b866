//! The SDK's one error type.

use std::time::Duration;

/// Longest response body kept in an error (Vast's client keeps 512 characters).
pub(crate) const BODY_EXCERPT: usize = 512;

/// Everything a request through the SDK can fail with.
///
/// Match on the variant, or use [`Error::code`] for a short fixed string (logs, metrics, the
/// CLI's error line).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control plane refused the route call with a status that is not worth retrying
    /// (401 bad key, 400 unknown endpoint, ...), or a retryable one after the retries ran out.
    #[error("route rejected: HTTP {status}: {body}")]
    RouteRejected {
        /// HTTP status of `/route/`.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The worker answered with an error status that is not retried (or retries ran out).
    #[error("worker error: HTTP {status}: {body}")]
    WorkerError {
        /// HTTP status from the worker.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The overall deadline passed before a worker answered.
    #[error("timed out after {:.1}s", elapsed.as_secs_f64())]
    Timeout {
        /// Time spent on the request.
        elapsed: Duration,
    },
    /// A stream's worker sent nothing for longer than the request's `worker_timeout` (a
    /// partitioned or hung worker); the stream ends here.
    #[error("the stream from {url} stalled: nothing for {:.1}s", idle.as_secs_f64())]
    StreamStalled {
        /// The URL called.
        url: String,
        /// The silence allowed.
        idle: Duration,
    },
    /// Connecting, sending or reading failed (after retries, where retries apply).
    #[error("transport error talking to {url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// A body could not be decoded.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded (`"route response"`, `"worker response"`, ...).
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The session was closed on the worker (HTTP 410), or ended by this client.
    #[error("session {session_id} is closed")]
    SessionClosed {
        /// The session.
        session_id: String,
    },
    /// The worker holding the session cannot be reached; a session is never re-routed.
    #[error("session worker unavailable for session {session_id}: {source}")]
    SessionWorkerGone {
        /// The session.
        session_id: String,
        /// The connection error.
        #[source]
        source: reqwest::Error,
    },
    /// The account API has no endpoint with this name.
    #[error("endpoint {name:?} not found in the account")]
    EndpointNotFound {
        /// The name looked up.
        name: String,
    },
    /// The account API (`/api/v0/endptjobs/`) answered with an error status.
    #[error("account API error: HTTP {status}: {body}")]
    AccountApi {
        /// HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// Bad client configuration (an unparsable base URL, an unreadable certificate, ...).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// Short fixed identifier of the variant.
    pub fn code(&self) -> &'static str {
        match self {
            Error::RouteRejected { .. } => "route_rejected",
            Error::WorkerError { .. } => "worker_error",
            Error::Timeout { .. } => "timeout",
            Error::StreamStalled { .. } => "stream_stalled",
            Error::Transport { .. } => "transport",
            Error::Decode { .. } => "decode",
            Error::SessionClosed { .. } => "session_closed",
            Error::SessionWorkerGone { .. } => "session_worker_gone",
            Error::EndpointNotFound { .. } => "endpoint_not_found",
            Error::AccountApi { .. } => "account_api",
            Error::Config(_) => "config",
        }
    }

    /// The HTTP status behind the error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::RouteRejected { status, .. }
            | Error::WorkerError { status, .. }
            | Error::AccountApi { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The first [`BODY_EXCERPT`] characters of a body, lossily decoded.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.into_owned(),
    }
}

/// Vast's rule for statuses worth another try: 408, 429 and every 5xx.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_like_vast() {
        for s in [408, 429, 500, 502, 503, 599] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 404, 410, 422, 499, 600] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_char_safe() {
        let long = "é".repeat(600);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), BODY_EXCERPT);
        assert_eq!(excerpt(b"short"), "short");
    }
}
