//! `ferry-serve`: the one accept loop behind every Ferry listener (the worker's main, side and
//! admin listeners, plain or TLS, and the control plane's), hardened against slow and idle
//! clients.
//!
//! `axum::serve` has no header-read timeout and no connection limit: a client that trickles its
//! headers holds its socket forever, and enough of them exhaust the open-file limit, after which
//! nothing is served. Here every connection has a slot and a watchdog:
//!
//! - **Header timeout**: a request's headers must be complete [`Limits::header_timeout`] after
//!   connect (the TLS handshake and HTTP/1-vs-2 detection included), or after the first byte of a
//!   later request on a kept-alive connection.
//! - **Idle timeout**: a connection with no request in flight is closed after
//!   [`Limits::idle_timeout`] of silence.
//! - **Connection limit**: at [`Limits::max_connections`] a new connection evicts the oldest one
//!   that is not serving a request (idle, or still reading headers), so a flood of trickling
//!   connections cannot starve real clients; if every slot is serving, the newcomer gets a short
//!   `503` with `Retry-After: 1` and is closed (a TLS listener just closes). `accept()` failing
//!   for lack of descriptors evicts one connection and backs off briefly instead of spinning.
//! - **Graceful shutdown**: on `shutdown` the listener closes, idle connections close, and
//!   requests and streams in flight finish; [`serve`] returns when the last connection has. The
//!   caller bounds this with its own grace period; dropping the future closes every connection.
//!
//! Why not hyper's own `header_read_timeout`: in hyper 1.x it re-arms as soon as an HTTP/1
//! connection goes idle (`State::idle` sets `notify_read`, and the next `poll_read_head` starts
//! the timer), so it would also cap keep-alive at the header timeout; and it covers neither the
//! protocol detection of hyper-util's `auto` builder (which waits for bytes without limit), nor
//! the TLS handshake, nor HTTP/2. The watchdog covers all of these with one clock, so hyper's is
//! switched off. HTTP/2 keep-alive pings stay off too: their acknowledgements would count as a
//! new request starting on an idle connection.
//!
//! A connection is busy from the moment hyper hands a request to the app until that response's
//! body ends or is dropped (a guard on the body, as for the worker's own accounting); only
//! connections with nothing in flight are evicted or timed out. Body timeouts are not this
//! crate's business (the worker's relay and the callers bound them).
//!
//! Layout: `limits.rs` ([`Limits`], defaults from `RLIMIT_NOFILE`), `conn.rs` (per-connection
//! state, the registry, the body guard), [`telemetry`] (metric names and log-and-count helpers),
//! and here the accept loop and the connection task.

mod conn;
mod limits;
pub mod telemetry;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use limits::{
    open_file_limit, raise_open_file_limit, share_of_open_files, Limits, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
};

use conn::{Admission, Conn, Registry, Tracked, Watched};
use telemetry::Phase;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the proxy ones): they describe one connection and
/// stay behind when a message is relayed. The one list for the worker's relay to the model
/// server and the control plane's hand-off between replicas.
pub fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Pause after `accept()` fails for a reason other than the peer (most often: out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Refused connections answered at once, at most (an eighth of the connection limit, so a low
/// descriptor limit is not spent on refusals); beyond it, one non-blocking write and close.
const MAX_REFUSING: usize = 32;
/// How long a refused connection may take to receive its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// What a refused client has sent is read and discarded up to this much before closing (closing
/// with unread bytes would reset the connection and could destroy the 503 in flight).
const REFUSAL_DRAIN: usize = 64 * 1024;

/// The answer to a connection refused because every slot is serving a request.
fn refusal() -> String {
    let body = r#"{"error":"too many connections; retry shortly","code":"too_many_connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// How a listener turns an accepted TCP stream into the stream HTTP is spoken over: the
/// identity for plain HTTP ([`Plain`]), a TLS handshake for HTTPS.
pub trait Acceptor: Clone + Send + Sync + 'static {
    /// The stream HTTP runs on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Sets up the stream (the TLS handshake). Bounded by the header timeout.
    fn accept(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;

    /// Whether a refused connection can be answered with a plain-text HTTP 503. False for TLS,
    /// where a handshake per refused connection would cost what refusing saves.
    fn plaintext(&self) -> bool;
}

/// Plain HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Acceptor for Plain {
    type Io = TcpStream;

    fn accept(&self, tcp: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send {
        std::future::ready(Ok(tcp))
    }

    fn plaintext(&self) -> bool {
        true
    }
}

/// Serves `app` over plain HTTP/1.1 and h2c on `listener` until `shutdown`, then lets open
/// requests finish (see the crate docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, Plain, app, limits, shutdown).await
}

/// [`serve`] with an [`Acceptor`] (TLS).
pub async fn serve_with<A: Acceptor>(
    listener: TcpListener,
    acceptor: A,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tracing::debug!(
        listener = limits.name,
        max_connections = limits.max_connections,
        header_timeout_ms = limits.header_timeout.as_millis(),
        idle_timeout_ms = limits.idle_timeout.as_millis(),
        "accept loop started"
    );
    let kill = CancellationToken::new();
    let server = Arc::new(Server {
        builder: builder(),
        registry: Registry::new(kill.clone()),
        refusing: Arc::new(Semaphore::new(
            (limits.max_connections / 8).clamp(1, MAX_REFUSING),
        )),
        stop: CancellationToken::new(),
        kill,
        limits,
        acceptor,
        app,
    });
    let tasks = TaskTracker::new();
    // Dropping this future (a caller's grace period ran out) closes every connection.
    let _kill_on_drop = server.kill.clone().drop_guard();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                if server.admit(tcp, peer, &tasks) {
                    // At the limit, let the connections already accepted run before taking the
                    // next one: a real client's headers, already in its socket, are then read
                    // (and its slot no longer evictable) before a burst of newer connections
                    // could push it out.
                    tokio::task::yield_now().await;
                }
            }
            Err(e) if is_peer_error(&e) => {}
            Err(e) => {
                let fd_limit = is_fd_limit(&e);
                telemetry::accept_failed(server.limits.name, &e, fd_limit);
                if fd_limit {
                    if let Some(victim) = server.registry.evict_oldest_idle() {
                        telemetry::evicted(server.limits.name, victim.id, victim.peer, "fd_limit");
                    }
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    tracing::debug!(
        listener = server.limits.name,
        "accept loop stopped; draining connections"
    );
    server.stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// hyper's connection settings (see the crate docs for the timers left off).
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// A peer that gave up before `accept()` returned: nothing wrong with the listener.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// EMFILE (this process) or ENFILE (the whole system) is out of descriptors.
fn is_fd_limit(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

struct Server<A> {
    builder: auto::Builder<TokioExecutor>,
    registry: Registry,
    refusing: Arc<Semaphore>,
    /// Graceful shutdown: no new requests, let the open ones finish.
    stop: CancellationToken,
    /// Close every connection now.
    kill: CancellationToken,
    limits: Limits,
    acceptor: A,
    app: Router,
}

/// Frees a connection's slot however its task ends.
struct Slot<'a> {
    registry: &'a Registry,
    id: u64,
    listener: &'static str,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.registry.remove(self.id);
        telemetry::closed(self.listener);
    }
}

impl<A: Acceptor> Server<A> {
    /// Gives the new connection a slot and its task; true when that took the last free slot
    /// or more (an eviction or a refusal).
    fn admit(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr, tasks: &TaskTracker) -> bool {
        let name = self.limits.name;
        // No Nagle: a stream's first small chunk must not wait for the ACK of the headers.
        let _ = tcp.set_nodelay(true);
        let (conn, at_limit) = match self.registry.admit(peer, self.limits.max_connections) {
            Admission::Open(conn) => (conn, false),
            Admission::Evicted(conn, victim) => {
                telemetry::evicted(name, victim.id, victim.peer, "limit");
                (conn, true)
            }
            Admission::Full => {
                telemetry::refused(name, peer, self.limits.max_connections);
                self.refuse(tcp, tasks);
                return true;
            }
        };
        telemetry::accepted(name, conn.id, peer);
        tasks.spawn(Arc::clone(self).connection(tcp, conn));
        at_limit
    }

    /// Answers 503 and closes, lingering briefly so the answer arrives; beyond
    /// [`MAX_REFUSING`] at once, one non-blocking write and close.
    fn refuse(&self, tcp: TcpStream, tasks: &TaskTracker) {
        if !self.acceptor.plaintext() {
            return;
        }
        match Arc::clone(&self.refusing).try_acquire_owned() {
            Ok(permit) => {
                tasks.spawn(async move {
                    let _permit = permit;
                    let _ = tokio::time::timeout(REFUSAL_LINGER, answer_refusal(tcp)).await;
                });
            }
            Err(_) => {
                let _ = tcp.try_write(refusal().as_bytes());
            }
        }
    }

    /// One connection, from handshake to close.
    async fn connection(self: Arc<Self>, tcp: TcpStream, conn: Arc<Conn>) {
        let limits = &self.limits;
        let _slot = Slot {
            registry: &self.registry,
            id: conn.id,
            listener: limits.name,
        };
        // `conn.evict` is a child of `self.kill`: one token to watch for both, polled on every
        // wake-up of the connection.
        let io = tokio::select! {
            biased;
            () = conn.evict.cancelled() => return,
            () = self.stop.cancelled() => return,
            () = sleep_until(conn.first_deadline(limits)) => {
                telemetry::timed_out(limits.name, conn.id, conn.peer, Phase::Handshake);
                return;
            }
            io = self.acceptor.accept(tcp) => match io {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(listener = limits.name, peer = %conn.peer, error = %e, "handshake failed");
                    return;
                }
            },
        };
        let io = TokioIo::new(Watched::new(io, Arc::clone(&conn)));
        let service = TowerToHyperService::new(Tracked::new(self.app.clone(), Arc::clone(&conn)));
        let http = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(http);
        let mut draining = false;
        loop {
            let wake = conn.next_check(Instant::now(), limits);
            tokio::select! {
                biased;
                () = conn.evict.cancelled() => return,
                done = http.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(listener = limits.name, peer = %conn.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !draining => {
                    draining = true;
                    // Nothing in flight: close now. Otherwise finish what runs, then close
                    // (HTTP/1: no keep-alive; HTTP/2: GOAWAY).
                    if conn.try_close() {
                        return;
                    }
                    http.as_mut().graceful_shutdown();
                }
                () = sleep_until(wake) => {
                    if let Some(phase) = conn.expired(Instant::now(), limits) {
                        if conn.try_close() {
                            telemetry::timed_out(limits.name, conn.id, conn.peer, phase);
                            return;
                        }
                    }
                }
            }
        }
    }
}

async fn answer_refusal(mut tcp: TcpStream) -> io::Result<()> {
    tcp.write_all(refusal().as_bytes()).await?;
    tcp.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN {
        match tcp.read(&mut buf).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_well_formed_response() {
        let text = refusal();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("\r\nretry-after: 1"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(body["code"], "too_many_connections");
    }
}
