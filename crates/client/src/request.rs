//! One request: route → call → retry, with status tracking.
//!
//! The loop is Vast's client's `_do_request`:
//! 1. `POST /route/` with the cost and `request_idx` (0 the first time). While the answer has no
//!    `url`, poll again with the same cost and `request_idx`: first after 1 s, then after
//!    `uniform(0.1, min(2^attempt + U(0,1), max_poll_interval))`.
//! 2. `POST {url}{route}` with `{"auth_data": <the whole route answer>, "session_id", "payload"}`.
//! 3. A connection failure, a read failure, or HTTP 408/429/5xx goes back to step 1 keeping
//!    `request_idx`, after `min(2^n + U(0,1), max_poll_interval)`. Other statuses are final.
//!
//! Ferry bounds what Vast leaves open: retries are capped ([`RequestOptions::max_retries`], Vast
//! loops forever on connection errors), the whole request has a deadline by default, and a
//! `/route/` call answered 408/429/5xx or not answered at all is retried like a worker failure
//! (Vast gives up at once); other `/route/` errors are final ([`Error::RouteRejected`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::RouteRequest;
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{Backoff, Endpoint};
use crate::error::{excerpt, retryable_status, Error};
use crate::stream::{ByteStream, EventStream};

/// `replay_timeout` as Vast's client sends it.
const REPLAY_TIMEOUT: f64 = 60.0;

/// Where a request is in its life, with Vast's names ([`RequestStatus::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// Not started.
    New,
    /// Asking `/route/` for a worker.
    Queued,
    /// No worker ready yet; polling `/route/`.
    Polling,
    /// Sent to a worker.
    InProgress,
    /// The last try failed; waiting to try again.
    Retrying,
    /// A worker answered 2xx (for a stream: its headers arrived).
    Complete,
    /// The caller dropped the request before it finished.
    Cancelled,
    /// The request failed.
    Errored,
}

impl RequestStatus {
    /// Vast's string for the status (`"In Progress"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::New => "New",
            RequestStatus::Queued => "Queued",
            RequestStatus::Polling => "Polling",
            RequestStatus::InProgress => "In Progress",
            RequestStatus::Retrying => "Retrying",
            RequestStatus::Complete => "Complete",
            RequestStatus::Cancelled => "Cancelled",
            RequestStatus::Errored => "Errored",
        }
    }

    /// True for `Complete`, `Cancelled` and `Errored`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RequestStatus::Complete | RequestStatus::Cancelled | RequestStatus::Errored
        )
    }
}

/// A snapshot of a request's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Current status.
    pub status: RequestStatus,
    /// The control plane's id of the request (0 until assigned).
    pub request_idx: u64,
    /// Tries that failed and were retried so far.
    pub retries: u32,
    /// The worker of the latest try.
    pub worker_url: Option<String>,
}

/// Observes a request: pass a clone in [`RequestOptions::tracker`], then [`Tracker::subscribe`]
/// (a `watch` channel) or read [`Tracker::progress`].
#[derive(Debug, Clone)]
pub struct Tracker {
    tx: Arc<watch::Sender<Progress>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A tracker in status `New`.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Progress {
            status: RequestStatus::New,
            request_idx: 0,
            retries: 0,
            worker_url: None,
        });
        Tracker { tx: Arc::new(tx) }
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn progress(&self) -> Progress {
        self.tx.borrow().clone()
    }

    /// The current status.
    pub fn status(&self) -> RequestStatus {
        self.tx.borrow().status
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        self.tx.send_modify(f);
    }
}

/// Per-request settings. Defaults are Vast's, except the overall deadline and the retry cap.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    /// Workload estimate sent to `/route/` (Vast's default: 100).
    pub cost: f64,
    /// Deadline of the whole request, polling and retries included (headers only, for a
    /// stream). Default 600 s; `None` waits forever as Vast's client does.
    pub timeout: Option<Duration>,
    /// Timeout of one worker call (for a stream: until its headers, then the longest silence
    /// between two chunks). Vast: 600 s.
    pub worker_timeout: Duration,
    /// Retry on connection failures and 408/429/5xx (Vast: true).
    pub retry: bool,
    /// Most retries of one request (polls while no worker is ready do not count).
    pub max_retries: u32,
    /// Status observer.
    pub tracker: Option<Tracker>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            cost: 100.0,
            timeout: Some(Duration::from_secs(600)),
            worker_timeout: Duration::from_secs(600),
            retry: true,
            max_retries: 5,
            tracker: None,
        }
    }
}

/// What every answer carries besides its body.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// HTTP status from the worker (2xx).
    pub status: u16,
    /// `Content-Type` of the answer, if any.
    pub content_type: Option<String>,
    /// The worker that answered.
    pub worker_url: String,
    /// The control plane's id of the request.
    pub request_idx: u64,
    /// The `auth_data` sent (the whole route answer; a placeholder for a direct worker).
    pub auth_data: Value,
    /// Retries before this answer.
    pub retries: u32,
    /// From the first route call to the answer's headers (whole body, when buffered).
    pub latency: Duration,
}

impl CallInfo {
    /// True when the content type is SSE or NDJSON/JSONL.
    pub fn is_stream(&self) -> bool {
        self.content_type.as_deref().is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("text/event-stream")
                || ct.starts_with("application/x-ndjson")
                || ct.starts_with("application/jsonl")
                || ct.starts_with("application/x-jsonlines")
        })
    }
}

/// A buffered 2xx answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status, worker, request id, timings.
    pub info: CallInfo,
    /// The body as received.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            what: "worker response",
            message: e.to_string(),
        })
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A 2xx answer whose body is still arriving.
#[derive(Debug)]
pub struct StreamingResponse {
    /// Status, worker, request id, time to headers.
    pub info: CallInfo,
    body: ByteStream,
}

impl StreamingResponse {
    /// The body as raw chunks.
    pub fn bytes(self) -> ByteStream {
        self.body
    }

    /// The body as SSE / NDJSON JSON events.
    pub fn events(self) -> EventStream {
        self.body.events()
    }
}

/// Who the request goes to.
pub(crate) enum Target<'a> {
    /// Through `/route/` (or straight to the endpoint's direct worker).
    Endpoint,
    /// A session's worker: fixed URL and auth, never re-routed.
    Session {
        id: &'a str,
        url: &'a str,
        auth_data: &'a Value,
    },
}

pub(crate) enum Outcome {
    Full(Response),
    Streaming(StreamingResponse),
}

/// Vast's retry wait: `min(2^min(n, 20) + U(0, 1), max_interval)`.
pub(crate) fn retry_delay(n: u32, backoff: &Backoff) -> Duration {
    let raw = 2f64.powi(n.min(20) as i32) + rand::thread_rng().gen_range(0.0..1.0);
    Duration::from_secs_f64(raw.min(backoff.max_interval.as_secs_f64()))
}

/// Vast's poll wait after `attempt` polls: `uniform(0.1, min(2^attempt + U(0,1), max))`.
pub(crate) fn poll_delay(attempt: u32, backoff: &Backoff) -> Duration {
    let mut rng = rand::thread_rng();
    let hi = (2f64.powi(attempt.min(20) as i32) + rng.gen_range(0.0..1.0))
        .min(backoff.max_interval.as_secs_f64());
    let lo = 0.1f64.min(hi);
    let secs = if hi > lo { rng.gen_range(lo..hi) } else { hi };
    Duration::from_secs_f64(secs)
}

/// Sets `Cancelled` if the request future is dropped before finishing.
struct CancelGuard<'a> {
    tracker: Option<&'a Tracker>,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(t) = self.tracker {
                t.update(|p| p.status = RequestStatus::Cancelled);
            }
        }
    }
}

/// A route answer with a worker.
struct Grant {
    url: String,
    auth_data: Value,
}

/// Why a `/route/` call failed, before classification.
enum RouteFailure {
    Transient(Error),
    Final(Error),
}

struct Run<'a> {
    ep: &'a Endpoint,
    opts: &'a RequestOptions,
    start: Instant,
    deadline: Option<Instant>,
    request_idx: u64,
    retries: u32,
}

impl Run<'_> {
    fn set(&self, status: RequestStatus) {
        if let Some(t) = &self.opts.tracker {
            let idx = self.request_idx;
            let retries = self.retries;
            t.update(|p| {
                p.status = status;
                p.request_idx = idx;
                p.retries = retries;
            });
        }
    }

    fn timeout(&self) -> Error {
        Error::Timeout {
            elapsed: self.start.elapsed(),
        }
    }

    async fn within<F: std::future::Future>(&self, fut: F) -> Result<F::Output, Error> {
        match self.deadline {
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .map_err(|_| self.timeout()),
            None => Ok(fut.await),
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), Error> {
        let until = Instant::now() + d;
        if self.deadline.is_some_and(|dl| until >= dl) {
            if let Some(dl) = self.deadline {
                tokio::time::sleep_until(dl).await;
            }
            return Err(self.timeout());
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    fn can_retry(&self) -> bool {
        self.opts.retry && self.retries < self.opts.max_retries
    }

    /// Counts a failed try and waits before the next one, or gives `err` back when out of tries.
    async fn retry_or(&mut self, err: Error) -> Result<(), Error> {
        if !self.can_retry() {
            return Err(err);
        }
        self.retries += 1;
        tracing::debug!(
            code = err.code(),
            retries = self.retries,
            request_idx = self.request_idx,
            "retrying"
        );
        self.set(RequestStatus::Retrying);
        self.sleep(retry_delay(self.retries, &self.ep.client.inner.backoff))
            .await
    }

    /// One `/route/` call.
    async fn route_once(&self) -> Result<(u64, Option<Grant>), RouteFailure> {
        let inner = &self.ep.client.inner;
        let url = format!("{}/route/", inner.route_url);
        let body = RouteRequest {
            endpoint: self.ep.name.clone(),
            api_key: Some(self.ep.key.expose().to_owned()),
            cost: self.opts.cost,
            request_idx: self.request_idx,
            replay_timeout: Some(REPLAY_TIMEOUT),
        };
        let sent = inner
            .http
            .post(&url)
            .bearer_auth(self.ep.key.expose())
            .json(&body)
            .timeout(inner.route_timeout)
            .send();
        let res = match self.within(sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(source)) => {
                return Err(RouteFailure::Transient(Error::Transport { url, source }))
            }
            Err(timeout) => return Err(RouteFailure::Final(timeout)),
        };
        let status = res.status().as_u16();
        let bytes = match self.within(res.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(source)) => {
                return Err(RouteFailure::Transient(Error::Transport { url, source }))
            }
            Err(timeout) => return Err(RouteFailure::Final(timeout)),
        };
        if !(200..300).contains(&status) {
            let err = Error::RouteRejected {
                status,
                body: excerpt(&bytes),
            };
            return Err(if retryable_status(status) {
                RouteFailure::Transient(err)
            } else {
                RouteFailure::Final(err)
            });
        }
        let decode = |message: String| {
            RouteFailure::Final(Error::Decode {
                what: "route response",
                message,
            })
        };
        let obj: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))?;
        let idx = obj.get("request_idx").and_then(as_index).unwrap_or(0);
        let url = match obj.get("url") {
            None => return Ok((idx, None)),
            Some(Value::String(u)) => u.trim_end_matches('/').to_owned(),
            Some(other) => return Err(decode(format!("\"url\" is not a string: {other}"))),
        };
        // The object goes to the worker whole, as Vast's client forwards it.
        Ok((
            idx,
            Some(Grant {
                url,
                auth_data: Value::Object(obj),
            }),
        ))
    }

    /// `/route/` until a worker is ready, polling with Vast's intervals.
    async fn route_until_ready(&mut self) -> Result<Grant, RouteFailure> {
        self.set(RequestStatus::Queued);
        let backoff = self.ep.client.inner.backoff;
        let mut interval = backoff.first_poll;
        let mut attempt = 0u32;
        loop {
            let (idx, grant) = self.route_once().await?;
            // Like Vast (`route.request_idx or request_idx`): an answer without an index keeps ours.
            if idx != 0 {
                self.request_idx = idx;
            }
            if let Some(g) = grant {
                return Ok(g);
            }
            self.set(RequestStatus::Polling);
            self.sleep(interval).await.map_err(RouteFailure::Final)?;
            attempt += 1;
            interval = poll_delay(attempt, &backoff);
        }
    }

    /// The whole loop. `stream`: return once the headers of a 2xx answer arrive.
    async fn run(
        &mut self,
        target: &Target<'_>,
        route: &str,
        payload: &Value,
        stream: bool,
    ) -> Result<Outcome, Error> {
        let http = &self.ep.client.inner.http;
        loop {
            let (url, auth_data, session_id) = match (target, &self.ep.direct) {
                (Target::Session { id, url, auth_data }, _) => {
                    ((*url).to_owned(), (*auth_data).clone(), Some(*id))
                }
                (Target::Endpoint, Some(direct)) => (
                    direct.clone(),
                    Endpoint::placeholder_auth_data(direct, self.opts.cost),
                    None,
                ),
                (Target::Endpoint, None) => match self.route_until_ready().await {
                    Ok(g) => (g.url, g.auth_data, None),
                    Err(RouteFailure::Final(e)) => return Err(e),
                    Err(RouteFailure::Transient(e)) => {
                        self.retry_or(e).await?;
                        continue;
                    }
                },
            };
            if let Some(t) = &self.opts.tracker {
                let u = url.clone();
                t.update(|p| p.worker_url = Some(u));
            }
            self.set(RequestStatus::InProgress);
            let body = serde_json::to_vec(&WorkerBody {
                auth_data: &auth_data,
                session_id,
                payload,
            })
            .map_err(|e| Error::Decode {
                what: "request payload",
                message: e.to_string(),
            })?;
            let full_url = format!("{url}{route}");
            let mut req = http
                .post(&full_url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            if !self.ep.key.expose().is_empty() {
                req = req.bearer_auth(self.ep.key.expose());
            }
            if !stream {
                req = req.timeout(self.opts.worker_timeout);
            }
            let sent = self
                .within(tokio::time::timeout(self.opts.worker_timeout, req.send()))
                .await?;
            let res = match sent {
                Ok(Ok(r)) => r,
                Ok(Err(source)) => {
                    if let Target::Session { id, .. } = target {
                        if source.is_connect() {
                            return Err(Error::SessionWorkerGone {
                                session_id: (*id).to_owned(),
                                source,
                            });
                        }
                    }
                    self.retry_or(Error::Transport {
                        url: full_url,
                        source,
                    })
                    .await?;
                    continue;
                }
                Err(_elapsed) => {
                    self.retry_or(Error::Timeout {
                        elapsed: self.start.elapsed(),
                    })
                    .await?;
                    continue;
                }
            };
            let status = res.status().as_u16();
            if (200..300).contains(&status) {
                let info = CallInfo {
                    status,
                    content_type: res
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    worker_url: url,
                    request_idx: self.request_idx,
                    auth_data,
                    retries: self.retries,
                    latency: Duration::ZERO,
                };
                if stream {
                    let info = CallInfo {
                        latency: self.start.elapsed(),
                        ..info
                    };
                    return Ok(Outcome::Streaming(StreamingResponse {
                        info,
                        body: ByteStream::new(full_url, res, self.opts.worker_timeout),
                    }));
                }
                match self.within(res.bytes()).await? {
                    Ok(body) => {
                        let info = CallInfo {
                            latency: self.start.elapsed(),
                            ..info
                        };
                        return Ok(Outcome::Full(Response { info, body }));
                    }
                    Err(source) => {
                        self.retry_or(Error::Transport {
                            url: full_url,
                            source,
                        })
                        .await?;
                        continue;
                    }
                }
            }
            let body = self.within(res.bytes()).await?.unwrap_or_default();
            if let Target::Session { id, .. } = target {
                if status == 410 {
                    return Err(Error::SessionClosed {
                        session_id: (*id).to_owned(),
                    });
                }
            }
            let err = Error::WorkerError {
                status,
                body: excerpt(&body),
            };
            if !retryable_status(status) {
                return Err(err);
            }
            self.retry_or(err).await?;
        }
    }
}

#[derive(Serialize)]
struct WorkerBody<'a> {
    auth_data: &'a Value,
    session_id: Option<&'a str>,
    payload: &'a Value,
}

/// A non-negative integer, an integral float counting (as it does for Python).
fn as_index(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_992.0)
            .map(|f| f as u64)
    })
}

/// Runs a request to the end, keeping the tracker in step.
pub(crate) async fn execute(
    ep: &Endpoint,
    target: Target<'_>,
    route: &str,
    payload: &Value,
    opts: &RequestOptions,
    stream: bool,
) -> Result<Outcome, Error> {
    let start = Instant::now();
    let mut run = Run {
        ep,
        opts,
        start,
        deadline: opts.timeout.map(|t| start + t),
        request_idx: 0,
        retries: 0,
    };
    let mut guard = CancelGuard {
        tracker: opts.tracker.as_ref(),
        armed: true,
    };
    let result = run.run(&target, route, payload, stream).await;
    guard.armed = false;
    run.set(match &result {
        Ok(_) => RequestStatus::Complete,
        Err(_) => RequestStatus::Errored,
    });
    if let Err(e) = &result {
        tracing::debug!(code = e.code(), request_idx = run.request_idx, error = %e, "request failed");
    }
    result
}

pub(crate) fn to_payload<P: Serialize + ?Sized>(payload: &P) -> Result<Value, Error> {
    serde_json::to_value(payload).map_err(|e| Error::Decode {
        what: "request payload",
        message: e.to_string(),
    })
}

/// One request that reads the whole answer (shared by endpoints and sessions).
pub(crate) async fn execute_full<P: Serialize + ?Sized>(
    endpoint: &Endpoint,
    target: Target<'_>,
    route: &str,
    payload: &P,
    opts: &RequestOptions,
) -> Result<Response, Error> {
    let payload = to_payload(payload)?;
    match execute(endpoint, target, route, &payload, opts, false).await? {
        Outcome::Full(r) => Ok(r),
        Outcome::Streaming(_) => Err(Error::Config("internal: unexpected stream".into())),
    }
}

/// One request that returns once the answer's headers arrive (shared by endpoints and sessions).
pub(crate) async fn execute_stream<P: Serialize + ?Sized>(
    endpoint: &Endpoint,
    target: Target<'_>,
    route: &str,
    payload: &P,
    opts: &RequestOptions,
) -> Result<StreamingResponse, Error> {
    let payload = to_payload(payload)?;
    match execute(endpoint, target, route, &payload, opts, true).await? {
        Outcome::Streaming(r) => Ok(r),
        Outcome::Full(_) => Err(Error::Config("internal: unexpected full body".into())),
    }
}

impl Endpoint {
    /// Sends `payload` to the endpoint's worker route `route` (e.g. `"/v1/completions"`) and
    /// reads the whole answer. Non-2xx answers are errors ([`Error::WorkerError`]).
    pub async fn request<P: Serialize + ?Sized>(
        &self,
        route: &str,
        payload: &P,
        opts: &RequestOptions,
    ) -> Result<Response, Error> {
        execute_full(self, Target::Endpoint, route, payload, opts).await
    }

    /// Like [`Endpoint::request`], returning as soon as the answer's headers arrive; read the
    /// body with [`StreamingResponse::events`] or [`StreamingResponse::bytes`]. The payload must
    /// ask the model to stream (`"stream": true` for OpenAI-style servers).
    pub async fn request_stream<P: Serialize + ?Sized>(
        &self,
        route: &str,
        payload: &P,
        opts: &RequestOptions,
    ) -> Result<StreamingResponse, Error> {
        execute_stream(self, Target::Endpoint, route, payload, opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_vast_bounds() {
        let b = Backoff {
            first_poll: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
        };
        for _ in 0..200 {
            let r1 = retry_delay(1, &b).as_secs_f64();
            assert!((2.0..3.0).contains(&r1), "{r1}");
            assert_eq!(retry_delay(10, &b), Duration::from_secs(5));
            let p1 = poll_delay(1, &b).as_secs_f64();
            assert!((0.1..3.0).contains(&p1), "{p1}");
            let p9 = poll_delay(9, &b).as_secs_f64();
            assert!((0.1..=5.0).contains(&p9), "{p9}");
        }
        let tiny = Backoff {
            first_poll: Duration::from_millis(1),
            max_interval: Duration::from_millis(20),
        };
        assert!(poll_delay(3, &tiny) <= Duration::from_millis(20));
    }

    #[test]
    fn status_strings_are_vasts() {
        assert_eq!(RequestStatus::InProgress.as_str(), "In Progress");
        assert!(RequestStatus::Errored.is_final());
        assert!(!RequestStatus::Polling.is_final());
    }
}
