//! Forwarding to the model server: a pooled keep-alive HTTP/1.1 client with explicit connect,
//! first-byte and idle timeouts, and a body relay that passes chunks through as they arrive.
//!
//! The relay ([`RelayBody`]) owns the request's [`RequestGuard`] and FIFO permit, so the outcome
//! is recorded when the body ends, fails, or is dropped because the client went away; dropping it
//! also drops the upstream body, which closes that connection and stops the model server's work.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_serve::is_hop_by_hop;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::WorkerError;
use crate::load::{Outcome, RequestGuard};
use crate::transform::SseReshaper;

/// How long an idle pooled connection to the model server is kept (aiohttp's keep-alive, which
/// PyWorker uses, is 15 s).
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(15);

/// The model server client.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// A pooled client for `base` (`http://host:port`).
    pub fn new(base: &str, connect: Duration, first_byte: Duration, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        // The timer is what makes idle connections expire: without one hyper-util only drops
        // an expired connection when a later checkout trips over it, so the connections of a
        // saturation run (each with its buffers and task) stayed for good.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            first_byte_timeout: first_byte,
            idle_timeout: idle,
        }
    }

    /// The model server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Absolute URL for a model path or an absolute URL given as is.
    pub fn url_for(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}/{path}", self.base)
        }
    }

    /// The parsed URI for a model path (routes precompute theirs once).
    pub fn uri_for(&self, path: &str) -> Result<Uri, WorkerError> {
        self.url_for(path)
            .parse()
            .map_err(|e| WorkerError::Internal(format!("bad model server URI for {path}: {e}")))
    }

    /// POSTs a JSON body and waits for the response headers (first-byte timeout).
    pub async fn post_json(
        &self,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, WorkerError> {
        self.post_json_uri(self.uri_for(path)?, body).await
    }

    /// POSTs a JSON body to a prepared URI.
    ///
    /// One retry, on a fresh connection, when a pooled keep-alive connection turns out to be
    /// closed before any response byte came back: llama-server (cpp-httplib) closes the
    /// connection right after every streamed response while advertising `Keep-Alive`, and a
    /// request that takes that connection in the same instant would otherwise fail with a 502
    /// although the server never saw it.
    pub async fn post_json_uri(
        &self,
        uri: Uri,
        body: Bytes,
    ) -> Result<Response<Incoming>, WorkerError> {
        let request = |uri: Uri, body: Bytes| {
            Request::post(uri)
                .header(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )
                .body(Full::new(body))
                .map_err(|e| WorkerError::Internal(format!("building upstream request: {e}")))
        };
        match self.send_raw(request(uri.clone(), body.clone())?).await? {
            Ok(res) => Ok(res),
            Err(e) if closed_before_response(&e) => {
                tracing::debug!(error = %e, "pooled model server connection was closed; retrying once on a new one");
                self.send_raw(request(uri, body)?).await?.map_err(classify)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// GETs a path (health checks), waiting for the headers.
    pub async fn get(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Response<Incoming>, WorkerError> {
        let req = Request::get(self.url_for(path))
            .body(Full::new(Bytes::new()))
            .map_err(|e| WorkerError::Internal(format!("building upstream request: {e}")))?;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(WorkerError::UpstreamTimeout("no response headers in time")),
            Ok(r) => r.map_err(classify),
        }
    }

    /// Sends under the first-byte timeout; the inner result is the client's own.
    async fn send_raw(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Result<Response<Incoming>, hyper_util::client::legacy::Error>, WorkerError> {
        tokio::time::timeout(self.first_byte_timeout, self.client.request(req))
            .await
            .map_err(|_| {
                WorkerError::UpstreamTimeout(
                    "the model server sent no response headers within the first-byte timeout",
                )
            })
    }

    /// Idle timeout between body chunks.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// The connection closed before the response began (hyper's "connection closed before message
/// completed"): a keep-alive connection the server had just closed.
fn closed_before_response(e: &hyper_util::client::legacy::Error) -> bool {
    use std::error::Error as _;
    let mut src = e.source();
    while let Some(s) = src {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        src = s.source();
    }
    false
}

fn classify(e: hyper_util::client::legacy::Error) -> WorkerError {
    use std::error::Error as _;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_connect() {
        WorkerError::UpstreamConnect(msg)
    } else {
        WorkerError::UpstreamTransport(msg)
    }
}

/// Response headers worth passing to the client: everything end-to-end (hop-by-hop ones stay
/// behind: PyWorker copies `Connection: close` through, which makes every client reconnect).
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !is_hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The model's response headers made fit for the client in place: the hop-by-hop ones removed,
/// without building a second map (a model server rarely sends any, so this is usually one scan
/// of the names).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    while let Some(name) = headers.keys().find(|n| is_hop_by_hop(n)).cloned() {
        headers.remove(&name);
    }
}

/// Whether a response is an SSE stream (errors after the headers become a final SSE event).
pub fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Hook called with each data chunk the relay passes on, and once at the end.
pub trait RelayObserver: Send + 'static {
    /// A chunk went to the client.
    fn on_chunk(&mut self, _chunk: &Bytes) {}
    /// The body ended with this outcome.
    fn on_end(&mut self, _outcome: Outcome) {}
}

impl RelayObserver for () {}

/// The relayed model response body.
pub struct RelayBody {
    inner: Incoming,
    guard: Option<RequestGuard>,
    _permit: Option<OwnedSemaphorePermit>,
    status: StatusCode,
    sse: bool,
    idle: Duration,
    /// Fires `idle` after the last frame, give or take: a frame only records its time, and the
    /// timer is moved forward when it goes off early (re-arming a tokio timer on every SSE event
    /// cost more than relaying the event).
    timer: Pin<Box<Sleep>>,
    last_frame: Instant,
    /// A last frame to send before the end (an SSE error event, a reshaped stream's tail).
    pending: Option<Bytes>,
    finished: bool,
    observer: Box<dyn RelayObserver>,
    /// Fires when the request's session ends: the relay stops and the client's body is cut.
    cancel: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Reshapes each SSE event (a route's `[route.response]`); `None` relays bytes untouched.
    reshape: Option<SseReshaper>,
    /// [`RelayBody::read_all`]: the end of the body leaves the outcome to the caller.
    defer_end: bool,
    /// Why a non-SSE relay failed, for [`RelayBody::read_all`].
    failure: Option<WorkerError>,
}

impl RelayBody {
    /// Wraps an upstream body.
    pub fn new(
        inner: Incoming,
        guard: RequestGuard,
        permit: Option<OwnedSemaphorePermit>,
        status: StatusCode,
        sse: bool,
        idle: Duration,
        observer: Box<dyn RelayObserver>,
    ) -> Self {
        Self {
            inner,
            guard: Some(guard),
            _permit: permit,
            status,
            sse,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            last_frame: Instant::now(),
            pending: None,
            finished: false,
            observer,
            cancel: None,
            reshape: None,
            defer_end: false,
            failure: None,
        }
    }

    /// Reshapes each event of the SSE stream as it passes.
    pub fn reshape_events(mut self, reshaper: SseReshaper) -> Self {
        self.reshape = Some(reshaper);
        self
    }

    /// Reads the whole body (a route that reshapes whole answers), refusing more than `limit`
    /// bytes (502). A failure records the request as failed (or cancelled, when its session
    /// closed); a complete body leaves the outcome open until [`RelayBody::finish`], once the
    /// caller knows what the client gets. Dropped before that, the request counts as cancelled.
    pub async fn read_all(&mut self, limit: usize) -> Result<Bytes, WorkerError> {
        use http_body_util::BodyExt as _;
        self.defer_end = true;
        let expected = self.inner.size_hint().exact().unwrap_or(0);
        let mut buf = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0).min(limit));
        while let Some(frame) = self.frame().await {
            match frame {
                Ok(frame) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if buf.len() + data.len() > limit {
                        self.end(Outcome::Error);
                        return Err(WorkerError::UpstreamTooLarge(limit));
                    }
                    buf.extend_from_slice(&data);
                }
                Err(e) => {
                    return Err(self
                        .failure
                        .take()
                        .unwrap_or(WorkerError::UpstreamTransport(e.0)))
                }
            }
        }
        Ok(buf.freeze())
    }

    /// Records the outcome of a body read with [`RelayBody::read_all`].
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    /// Stops the relay when `token` fires (the request's session ended).
    pub fn cancel_on(mut self, token: Option<CancellationToken>) -> Self {
        self.cancel = token.map(|t| Box::pin(t.cancelled_owned()));
        self
    }

    /// A body that ended normally: success, unless the model answered 5xx.
    fn completed_outcome(&self) -> Outcome {
        if self.status.is_server_error() {
            Outcome::Error
        } else {
            Outcome::Success
        }
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(mut g) = self.guard.take() {
            g.finish(outcome);
            self.observer.on_end(outcome);
        }
        self.finished = true;
    }

    /// The model's body is complete.
    fn complete(&mut self) {
        if self.defer_end {
            self.finished = true;
        } else {
            let outcome = self.completed_outcome();
            self.end(outcome);
        }
    }

    /// After the headers are out, an upstream failure cannot change the status: SSE clients get a
    /// final `event: error`, other clients see the body cut off (an error, not a short success).
    fn fail(&mut self, err: WorkerError) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        tracing::warn!(code = err.code(), error = %err, "model response failed mid-body");
        self.end(Outcome::Error);
        if self.sse {
            let event =
                serde_json::json!({"error": {"code": err.code(), "message": err.to_string()}});
            let frame = Bytes::from(format!("event: error\ndata: {event}\n\n"));
            Poll::Ready(Some(Ok(Frame::data(frame))))
        } else {
            let message = err.to_string();
            self.failure = Some(err);
            Poll::Ready(Some(Err(RelayError(message))))
        }
    }
}

impl RelayBody {
    /// Waits out the idle timeout, counted from the last frame: a timer that goes off early
    /// (frames came meanwhile) is moved to `last frame + idle` and waited on again.
    fn poll_idle(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_frame + self.idle;
            if deadline <= Instant::now() {
                return self.fail(WorkerError::UpstreamTimeout(
                    "the model server went silent for longer than the idle timeout",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        // The client went away before the end (or the server dropped the response, or a body
        // read whole was never given its outcome).
        if self.guard.is_some() {
            self.end(Outcome::Cancelled);
        }
    }
}

/// Error surfaced to hyper when a non-SSE relay breaks (it resets the client connection).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RelayError(String);

impl Body for RelayBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(b) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(c) = this.cancel.as_mut() {
            if c.as_mut().poll(cx).is_ready() {
                this.end(Outcome::Cancelled);
                this.failure = Some(WorkerError::InvalidSession);
                return Poll::Ready(Some(Err(RelayError("session closed".into()))));
            }
        }
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.observer.on_chunk(data);
                    }
                    this.last_frame = Instant::now();
                    // With a known length hyper stops polling after the last byte and drops
                    // the body, so record the outcome as soon as the upstream body says it is
                    // done.
                    let ended = this.inner.is_end_stream();
                    let frame = match this.reshape.as_mut() {
                        None => frame,
                        Some(r) => match reshape_frame(r, frame, ended) {
                            Ok(f) => f,
                            Err(e) => return this.fail(e),
                        },
                    };
                    if ended {
                        this.complete();
                    }
                    // A reshaper holding an incomplete event has nothing to send yet.
                    if frame.data_ref().is_some_and(|d| d.is_empty()) {
                        if ended {
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => this.fail(WorkerError::UpstreamTransport(format!(
                    "reading the model response: {e}"
                ))),
                Poll::Ready(None) => {
                    this.complete();
                    match this.reshape.as_mut().map(SseReshaper::finish) {
                        Some(tail) if !tail.is_empty() => Poll::Ready(Some(Ok(Frame::data(tail)))),
                        _ => Poll::Ready(None),
                    }
                }
                Poll::Pending => this.poll_idle(cx),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// One upstream frame through the reshaper; at the end of the stream its tail comes along.
fn reshape_frame(
    r: &mut SseReshaper,
    frame: Frame<Bytes>,
    ended: bool,
) -> Result<Frame<Bytes>, WorkerError> {
    let Some(data) = frame.data_ref() else {
        return Ok(frame);
    };
    let out = r
        .feed(data)
        .map_err(|e| WorkerError::UpstreamTooLarge(e.0))?;
    if !ended {
        return Ok(Frame::data(out));
    }
    let tail = r.finish();
    if tail.is_empty() {
        return Ok(Frame::data(out));
    }
    let mut all = BytesMut::from(&out[..]);
    all.extend_from_slice(&tail);
    Ok(Frame::data(all.freeze()))
}
