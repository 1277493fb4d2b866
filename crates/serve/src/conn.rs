//! Per-connection state: requests in flight (a guard on each response body), when the
//! connection went idle, when a new request's first bytes arrived; and the registry of open
//! connections the accept loop evicts from.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry::Phase;
use crate::Limits;

/// Set in [`Conn::state`] once the connection is being closed (evicted or timed out).
const CLOSED: u32 = 1 << 31;
/// "Not set" for the millisecond timestamps.
const NEVER: u64 = u64::MAX;

/// One open connection.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    opened: Instant,
    /// Requests in flight, plus [`CLOSED`]. A connection with none is evictable.
    state: AtomicU32,
    /// Milliseconds after `opened` when the last request ended; [`NEVER`] before the first.
    idle_since: AtomicU64,
    /// Milliseconds after `opened` when bytes arrived on an idle connection (a new request's
    /// headers starting); [`NEVER`] otherwise.
    head_since: AtomicU64,
    /// Cancelled when the accept loop evicts this connection, and with the server's kill token
    /// (its parent), so a connection's task watches one token for both.
    pub(crate) evict: CancellationToken,
}

impl Conn {
    fn new(id: u64, peer: SocketAddr, kill: &CancellationToken) -> Conn {
        Conn {
            id,
            peer,
            opened: Instant::now(),
            state: AtomicU32::new(0),
            idle_since: AtomicU64::new(NEVER),
            head_since: AtomicU64::new(NEVER),
            evict: kill.child_token(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.opened).as_millis();
        u64::try_from(ms).unwrap_or(NEVER - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// A request starts: the connection is busy until the returned guard drops.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.state.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NEVER, Ordering::Release);
        RequestGuard(Arc::clone(self))
    }

    /// Marks the connection closed if no request is in flight; false if one is (or it already
    /// was closed). The compare-and-swap makes "evict only what is not serving" exact.
    pub(crate) fn try_close(&self) -> bool {
        self.state
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn idle(&self) -> bool {
        self.state.load(Ordering::Acquire) == 0
    }

    /// When the connection, if it stays as it is, must be closed, and why.
    fn deadline(&self, limits: &Limits) -> (Instant, Phase) {
        let idle = self.idle_since.load(Ordering::Acquire);
        if idle == NEVER {
            // The first request: its headers are due `header_timeout` after connect, however
            // slowly the first bytes came (a late first byte must not extend the deadline).
            return (self.opened + limits.header_timeout, Phase::Header);
        }
        match self.head_since.load(Ordering::Acquire) {
            NEVER => (self.at(idle) + limits.idle_timeout, Phase::Idle),
            head => (self.at(head) + limits.header_timeout, Phase::Header),
        }
    }

    /// The deadline of the first request (also bounds the TLS handshake).
    pub(crate) fn first_deadline(&self, limits: &Limits) -> Instant {
        self.opened + limits.header_timeout
    }

    /// When the watchdog should look again. While requests run nothing can expire, so it only
    /// checks back; while idle, new bytes can move the deadline earlier (idle → header), so it
    /// never sleeps longer than the header timeout.
    pub(crate) fn next_check(&self, now: Instant, limits: &Limits) -> Instant {
        let step = limits.header_timeout.min(limits.idle_timeout);
        if !self.idle() {
            return now + step;
        }
        self.deadline(limits).0.min(now + limits.header_timeout)
    }

    /// Why the connection must be closed now, if it must.
    pub(crate) fn expired(&self, now: Instant, limits: &Limits) -> Option<Phase> {
        if !self.idle() {
            return None;
        }
        let (deadline, phase) = self.deadline(limits);
        (now >= deadline).then_some(phase)
    }
}

/// A request in flight on a connection; dropped when the response body ends or is dropped
/// (completion, error and client disconnect alike).
pub(crate) struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let conn = &self.0;
        // Stamp first, then release: whoever sees no request in flight sees the new stamp.
        conn.idle_since
            .store(conn.ms(Instant::now()), Ordering::Release);
        conn.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections of one listener, oldest first.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// The server's kill token, parent of every connection's `evict`.
    kill: CancellationToken,
}

struct Inner {
    next_id: u64,
    conns: BTreeMap<u64, Arc<Conn>>,
}

/// What the registry decided for a new connection.
pub(crate) enum Admission {
    /// A slot was free.
    Open(Arc<Conn>),
    /// The oldest connection not serving a request (second) made room for the new one (first).
    Evicted(Arc<Conn>, Arc<Conn>),
    /// Every slot is serving a request.
    Full,
}

impl Registry {
    pub(crate) fn new(kill: CancellationToken) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                next_id: 0,
                conns: BTreeMap::new(),
            }),
            kill,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `peer` a slot, evicting the oldest connection not serving a request if needed.
    pub(crate) fn admit(&self, peer: SocketAddr, max: usize) -> Admission {
        let mut inner = self.lock();
        let mut victim = None;
        if inner.conns.len() >= max {
            match Self::take_oldest_idle(&mut inner) {
                Some(v) => victim = Some(v),
                None => return Admission::Full,
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let conn = Arc::new(Conn::new(id, peer, &self.kill));
        inner.conns.insert(id, Arc::clone(&conn));
        match victim {
            Some(v) => Admission::Evicted(conn, v),
            None => Admission::Open(conn),
        }
    }

    /// Evicts the oldest connection not serving a request (to free a descriptor).
    pub(crate) fn evict_oldest_idle(&self) -> Option<Arc<Conn>> {
        Self::take_oldest_idle(&mut self.lock())
    }

    fn take_oldest_idle(inner: &mut Inner) -> Option<Arc<Conn>> {
        let id = inner
            .conns
            .iter()
            .find(|(_, c)| c.try_close())
            .map(|(id, _)| *id)?;
        let conn = inner.conns.remove(&id)?;
        conn.evict.cancel();
        Some(conn)
    }

    /// Forgets a connection that ended (no-op if it was evicted).
    pub(crate) fn remove(&self, id: u64) {
        self.lock().conns.remove(&id);
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().conns.len()
    }
}

/// The connection's byte stream, noting when bytes arrive on an idle connection: that starts
/// the next request's header clock.
pub(crate) struct Watched<I> {
    io: I,
    conn: Arc<Conn>,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, conn: Arc<Conn>) -> Watched<I> {
        Watched { io, conn }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before
            && this.conn.idle()
            && this.conn.head_since.load(Ordering::Relaxed) == NEVER
        {
            let now = this.conn.ms(Instant::now());
            this.conn.head_since.store(now, Ordering::Release);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The app as one connection's service: each request holds a [`RequestGuard`] until its
/// response body is done, so the connection counts as busy exactly while it serves.
#[derive(Clone)]
pub(crate) struct Tracked {
    app: Router,
    conn: Arc<Conn>,
}

impl Tracked {
    pub(crate) fn new(app: Router, conn: Arc<Conn>) -> Tracked {
        Tracked { app, conn }
    }
}

type TrackedFuture =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send + 'static>>;

impl tower_service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> TrackedFuture {
        let guard = self.conn.begin();
        let response = tower_service::Service::call(&mut self.app, req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                guard: Some(guard),
            }))
        })
    }
}

/// A response body that releases its request's guard at its end or when dropped.
pub(crate) struct TrackedBody {
    body: Body,
    guard: Option<RequestGuard>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn eviction_takes_the_oldest_connection_not_serving() {
        let reg = Registry::new(CancellationToken::new());
        let a = match reg.admit(peer(), 2) {
            Admission::Open(c) => c,
            _ => panic!("first connection must open"),
        };
        let b = match reg.admit(peer(), 2) {
            Admission::Open(c) => c,
            _ => panic!("second connection must open"),
        };
        // `a` is busy, so `b` goes, although older connections go first.
        let busy = a.begin();
        match reg.admit(peer(), 2) {
            Admission::Evicted(_, victim) => assert_eq!(victim.id, b.id),
            _ => panic!("an idle connection must be evicted"),
        }
        assert!(b.evict.is_cancelled());
        assert_eq!(reg.len(), 2);
        // The newest is idle, `a` is busy: the newest goes next.
        assert!(matches!(reg.admit(peer(), 2), Admission::Evicted(..)));
        drop(busy);
        assert!(a.idle());
    }

    #[test]
    fn all_busy_means_full() {
        let reg = Registry::new(CancellationToken::new());
        let a = match reg.admit(peer(), 1) {
            Admission::Open(c) => c,
            _ => panic!("first connection must open"),
        };
        let _busy = a.begin();
        assert!(matches!(reg.admit(peer(), 1), Admission::Full));
        assert!(!a.evict.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_phase() {
        let limits = Limits::new("t")
            .header_timeout(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(60));
        let conn = Arc::new(Conn::new(0, peer(), &CancellationToken::new()));
        let t0 = Instant::now();
        assert_eq!(
            conn.deadline(&limits),
            (t0 + limits.header_timeout, Phase::Header)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(conn.begin());
        let (idle_deadline, phase) = conn.deadline(&limits);
        assert_eq!(phase, Phase::Idle);
        assert_eq!(idle_deadline, t0 + Duration::from_secs(61));
        tokio::time::advance(Duration::from_secs(5)).await;
        conn.head_since
            .store(conn.ms(Instant::now()), Ordering::Release);
        assert_eq!(
            conn.deadline(&limits),
            (t0 + Duration::from_secs(16), Phase::Header)
        );
        let guard = conn.begin();
        assert_eq!(conn.expired(t0 + Duration::from_secs(1000), &limits), None);
        assert!(!conn.try_close());
        drop(guard);
        assert!(conn.try_close());
    }
}
