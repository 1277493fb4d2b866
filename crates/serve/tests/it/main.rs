//! The accept loop against slow, idle and numerous clients, over real sockets on 127.0.0.1:0.
//! Timeouts are tested on tokio's paused clock (the time a connection lived is exact); floods
//! and refusals on the real clock with timeouts far longer than the test, so only the connection
//! limit can be what closes a connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use ferry_serve::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(app: Router, limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let done = tokio::spawn(ferry_serve::serve(listener, app, limits, async move {
        signal.cancelled().await
    }));
    Running { addr, stop, done }
}

fn ok_app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// A slowloris connection: a request line and no end of headers.
async fn trickler(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    s
}

/// Whether the server closed `s`: end of stream or reset.
async fn read_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    matches!(s.read(&mut buf).await, Ok(0) | Err(_))
}

/// Sends one complete request on `s` and reads its whole answer (`ok`).
async fn one_request(s: &mut TcpStream) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
}

/// Trickles a header line every second until the server closes `s`; returns when it did.
async fn trickle_until_closed(s: &mut TcpStream, limit: Duration) -> Instant {
    let give_up = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    while Instant::now() < give_up {
        tokio::select! {
            r = s.read(&mut buf) => {
                assert!(matches!(r, Ok(0) | Err(_)), "the server answered unfinished headers: {r:?}");
                return Instant::now();
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                    return Instant::now();
                }
            }
        }
    }
    panic!("the connection was still open after {limit:?}");
}

fn timeouts(header: u64, idle: u64) -> Limits {
    Limits::new("test")
        .header_timeout(Duration::from_secs(header))
        .idle_timeout(Duration::from_secs(idle))
}

// (a) A client trickling its headers is closed once the header timeout has passed.
#[tokio::test(start_paused = true)]
async fn trickled_headers_are_cut_off_at_the_header_timeout() {
    let server = start(ok_app(), timeouts(10, 300)).await;
    let t0 = Instant::now();
    let mut s = trickler(server.addr).await;
    let closed = trickle_until_closed(&mut s, Duration::from_secs(200)).await;
    let lived = closed - t0;
    assert!(
        lived >= Duration::from_secs(10) && lived < Duration::from_secs(12),
        "{lived:?}"
    );
}

// (a) A connection that never sends a byte (it would sit in HTTP/1-vs-2 detection) is closed too.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_header_timeout() {
    let server = start(ok_app(), timeouts(10, 300)).await;
    let t0 = Instant::now();
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(200), read_closed(&mut s))
        .await
        .expect("the silent connection was never closed");
    assert!(closed);
    let lived = t0.elapsed();
    assert!(
        lived >= Duration::from_secs(10) && lived < Duration::from_secs(11),
        "{lived:?}"
    );
}

// (b) An idle kept-alive connection lives the idle timeout (not the shorter header timeout).
#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let server = start(ok_app(), timeouts(10, 30)).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    one_request(&mut s).await;
    let idle_from = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(300), read_closed(&mut s))
        .await
        .expect("the idle connection was never closed");
    assert!(closed);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_secs(30) && idle < Duration::from_secs(31),
        "{idle:?}"
    );
}

// (b) A kept-alive connection serves several requests, and a second request trickled on it is
// cut off at the header timeout counted from its first byte.
#[tokio::test(start_paused = true)]
async fn a_trickled_second_request_is_cut_off_at_the_header_timeout() {
    let server = start(ok_app(), timeouts(10, 60)).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    one_request(&mut s).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    one_request(&mut s).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let closed = trickle_until_closed(&mut s, Duration::from_secs(200)).await;
    let lived = closed - started;
    assert!(
        lived >= Duration::from_secs(10) && lived < Duration::from_secs(12),
        "{lived:?}"
    );
}

// (c) At the connection limit, new connections evict the oldest connections that are not
// serving, so a flood of trickling connections cannot keep a real client out.
#[tokio::test]
async fn a_slowloris_flood_cannot_starve_real_clients() {
    let limits = timeouts(600, 600).max_connections(16);
    let server = start(ok_app(), limits).await;
    let mut flood = Vec::new();
    for _ in 0..24 {
        flood.push(trickler(server.addr).await);
    }
    // More keep arriving while real clients call.
    let stop_flood = CancellationToken::new();
    let more = tokio::spawn({
        let stop = stop_flood.clone();
        let addr = server.addr;
        async move {
            let mut held = Vec::new();
            while !stop.is_cancelled() && held.len() < 200 {
                held.push(trickler(addr).await);
                tokio::task::yield_now().await;
            }
            held
        }
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = http
            .get(format!("http://{}/", server.addr))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a real client was starved");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    stop_flood.cancel();
    let _held = more.await.unwrap();
    // The oldest eight went first, to make room for the next eight.
    for s in flood.iter_mut().take(8) {
        let closed = tokio::time::timeout(Duration::from_secs(10), read_closed(s)).await;
        assert_eq!(closed.ok(), Some(true), "an old trickler was never evicted");
    }
}

/// An app whose `/hold` requests wait for the gate; each announces it started.
fn holding_app(started: mpsc::Sender<()>, gate: watch::Receiver<bool>) -> Router {
    Router::new().route(
        "/hold",
        get(move || {
            let started = started.clone();
            let mut gate = gate.clone();
            async move {
                started.send(()).await.unwrap();
                let _ = gate.wait_for(|open| *open).await;
                "done"
            }
        }),
    )
}

// (d) When every slot is serving a request, a new connection gets a clear 503 and is closed,
// and the requests in flight are untouched.
#[tokio::test]
async fn when_every_slot_is_serving_new_connections_get_503() {
    let (started_tx, mut started) = mpsc::channel(8);
    let (open, gate) = watch::channel(false);
    let server = start(
        holding_app(started_tx, gate),
        timeouts(600, 600).max_connections(4),
    )
    .await;
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        busy.push(s);
    }
    for _ in 0..4 {
        started.recv().await.unwrap();
    }
    let mut late = TcpStream::connect(server.addr).await.unwrap();
    late.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), late.read_to_string(&mut answer))
        .await
        .expect("the connection over the limit got no answer")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with(r#""code":"too_many_connections"}"#),
        "{answer}"
    );
    open.send(true).unwrap();
    for s in &mut busy {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"done") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "a request in flight was cut");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    }
}

// (e) Graceful shutdown: the listener closes, idle connections close, and a stream in flight
// still runs to its end before `serve` returns.
#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<&'static str, std::io::Error>>(4);
    let chunks = Arc::new(std::sync::Mutex::new(Some(chunks_rx)));
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let rx = chunks.lock().unwrap().take().unwrap();
                async move {
                    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|c| (c, rx))
                    }))
                }
            }),
        )
        .route("/", get(|| async { "ok" }));
    let server = start(app, Limits::new("test")).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    one_request(&mut idle).await;
    let http = reqwest::Client::new();
    chunks_tx.send(Ok("one ")).await.unwrap();
    let mut stream = http
        .get(format!("http://{}/stream", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.chunk().await.unwrap().unwrap(), "one ");

    server.stop.cancel();
    // The idle connection is closed at once (well before any timeout) ...
    let closed = tokio::time::timeout(Duration::from_secs(5), read_closed(&mut idle)).await;
    assert_eq!(closed.ok(), Some(true), "the idle connection was kept open");
    // ... and nothing new is accepted ...
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting after shutdown");
    // ... while the stream goes on to its end.
    assert!(!server.done.is_finished());
    chunks_tx.send(Ok("two")).await.unwrap();
    drop(chunks_tx);
    assert_eq!(stream.chunk().await.unwrap().unwrap(), "two");
    assert!(stream.chunk().await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("serve did not return after the last stream")
        .unwrap()
        .unwrap();
}

// Dropping the serve future (a caller's grace period ran out) closes the connections it held.
#[tokio::test]
async fn dropping_serve_closes_its_connections() {
    let (started_tx, mut started) = mpsc::channel(1);
    let (_open, gate) = watch::channel(false);
    let server = start(holding_app(started_tx, gate), timeouts(600, 600)).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    started.recv().await.unwrap();
    server.stop.cancel();
    server.done.abort();
    let closed = tokio::time::timeout(Duration::from_secs(5), read_closed(&mut s)).await;
    assert_eq!(
        closed.ok(),
        Some(true),
        "the connection outlived its server"
    );
}
