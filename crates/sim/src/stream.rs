//! Token-by-token response bodies.
//!
//! A stream is pulled by hyper: each poll sleeps one `token_delay` and yields one frame, so
//! tokens really leave one at a time and a relay can be tested chunk by chunk. Nothing runs
//! ahead of the client: when it goes away, hyper drops the body, generation stops at once and
//! the [`RequestGuard`] inside counts the request `cancelled`.

use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::admit::{sleep, Admitted};
use crate::state::RequestGuard;

/// Errors a sim response body ends with. Any body error makes hyper close the connection
/// without the chunked terminator, which the client sees as a truncated body.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// `disconnect_after` cut the reply on purpose.
    #[error("sim: connection cut after {0} tokens (disconnect_after)")]
    Disconnected(u32),
}

/// How one dialect frames a stream.
pub(crate) trait Frames: Send + 'static {
    /// Sent once after the prefill, before the first token (OpenAI chat's role chunk).
    fn head(&mut self) -> Option<Bytes> {
        None
    }
    /// Token `i` of `n`.
    fn token(&mut self, i: u32, n: u32) -> Bytes;
    /// Sent after the last token: summaries, usage, `[DONE]`.
    fn tail(&mut self, n: u32) -> Option<Bytes>;
}

enum Phase {
    Prefill,
    Tokens,
    Tail,
    Done,
}

struct Generation<F> {
    frames: F,
    guard: RequestGuard,
    n: u32,
    next: u32,
    ttft: Duration,
    token_delay: Duration,
    cut_at: Option<u32>,
    phase: Phase,
}

impl<F: Frames> Generation<F> {
    async fn step(&mut self) -> Option<Result<Bytes, SimError>> {
        loop {
            match self.phase {
                Phase::Prefill => {
                    sleep(self.ttft).await;
                    self.phase = Phase::Tokens;
                    if let Some(head) = self.frames.head() {
                        return Some(Ok(head));
                    }
                }
                Phase::Tokens => {
                    if self.cut_at == Some(self.next) {
                        self.guard.fail();
                        self.phase = Phase::Done;
                        flush_then_fail().await;
                        return Some(Err(SimError::Disconnected(self.next)));
                    }
                    if self.next >= self.n {
                        self.phase = Phase::Tail;
                        continue;
                    }
                    sleep(self.token_delay).await;
                    let frame = self.frames.token(self.next, self.n);
                    self.next += 1;
                    self.guard.tokens(1);
                    return Some(Ok(frame));
                }
                Phase::Tail => {
                    self.phase = Phase::Done;
                    self.guard.complete();
                    if let Some(tail) = self.frames.tail(self.n) {
                        return Some(Ok(tail));
                    }
                }
                Phase::Done => return None,
            }
        }
    }
}

/// A `text/event-stream` response producing `n` tokens framed by `frames`.
pub(crate) fn sse_response<F: Frames>(frames: F, admitted: Admitted, n: u32) -> Response {
    let cut_at = admitted.cut_at(n);
    let generation = Generation {
        frames,
        guard: admitted.guard,
        n,
        next: 0,
        ttft: admitted.ttft,
        token_delay: admitted.token_delay,
        cut_at,
        phase: Phase::Prefill,
    };
    let stream = futures_util::stream::unfold(generation, |mut g| async move {
        let item = g.step().await?;
        Some((item, g))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A non-stream reply cut by `disconnect_after`: after the time `k` tokens take, headers go
/// out with a body that fails at once, so the connection closes mid-response.
pub(crate) async fn cut_response(mut admitted: Admitted, k: u32) -> Response {
    sleep(admitted.generation_time(k)).await;
    admitted.guard.tokens(u64::from(k));
    admitted.guard.fail();
    let body =
        futures_util::stream::once(async move { Err::<Bytes, _>(SimError::Disconnected(k)) });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Returns `Pending` once before a body error. hyper flushes what it has buffered only when
/// the body is pending, and drops its buffer when the body fails; without this, with zero
/// delays the headers and the tokens before the cut would never leave, and the client would see
/// a connection closed before any response instead of a truncated one.
async fn flush_then_fail() {
    tokio::task::yield_now().await;
}

/// One SSE event: `prefix` (`"data: "`, or TGI's `"data:"`), the JSON of `value`, a blank line.
pub(crate) fn sse_event<T: Serialize>(prefix: &str, value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(prefix.as_bytes());
    if let Err(e) = serde_json::to_writer(&mut buf, value) {
        // Only possible for maps with non-string keys, which no frame type has.
        tracing::error!(error = %e, "sim: could not serialize an SSE event");
        buf.truncate(prefix.len());
        buf.extend_from_slice(br#"{"error":"sim: serialization failed"}"#);
    }
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// The OpenAI stream terminator.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";
