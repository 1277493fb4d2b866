//! The smallest honest reverse proxy on the worker's stack, to measure the floor of any proxy
//! built on hyper (`bench/instructions.py --floor`, issue 16).
//!
//! A crate of its own (see its `Cargo.toml`) so that it builds with the worker's features and
//! release profile.
//!
//! ```text
//! floor_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--mode pooled|conn] [--threads N]
//! ```
//!
//! A tokio runtime built as the worker builds its own (`--threads 1`, the worker's default, is a
//! current-thread runtime; N > 1 a work-stealing pool of N; 0 one per core), a hyper 1.x
//! `http1` server with keep-alive, and one of two keep-alive upstreams:
//!
//! - `pooled` (default): hyper-util's legacy pooled [`Client`], built with the worker's settings
//!   (pool timer, 15 s idle expiry, 1,024 idle connections per host, `TCP_NODELAY`);
//! - `conn`: a bare [`hyper::client::conn::http1`] connection set, a list of idle
//!   [`SendRequest`]s; a connection goes back on the list when its response body has ended.
//!
//! Request and response bodies are streamed through as hyper's [`Incoming`]; headers are copied
//! minus the hop-by-hop ones. An upstream failure answers 502 with an empty body. There is no
//! timeout, admission, metric or log: this is the floor, not a server to deploy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The worker's idle expiry of pooled model-server connections.
const POOL_IDLE: Duration = Duration::from_secs(15);

/// Idle upstream connections of the `conn` mode.
type Idle = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

/// How requests reach the upstream.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "one value per process, cloned per request as the worker clones its client"
)]
enum Upstream {
    /// hyper-util's pooled client; requests carry an absolute URI.
    Pooled {
        client: Client<HttpConnector, Incoming>,
        authority: Authority,
    },
    /// Bare HTTP/1 connections, reused through a list of idle senders.
    Conn { addr: SocketAddr, idle: Idle },
}

/// The command line.
struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    pooled: bool,
    threads: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut listen = None;
    let mut upstream = None;
    let mut pooled = true;
    let mut threads = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse()?),
            "--upstream" => upstream = Some(value.parse()?),
            "--mode" => {
                pooled = match value.as_str() {
                    "pooled" => true,
                    "conn" => false,
                    other => return Err(format!("--mode: pooled or conn, not {other}").into()),
                }
            }
            "--threads" => threads = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        pooled,
        threads,
    })
}

fn main() {
    let code = match parse_args() {
        Ok(args) => match run(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("floor_proxy: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("floor_proxy: {e}");
            64
        }
    };
    std::process::exit(code);
}

fn run(args: Args) -> Result<(), BoxError> {
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(serve(args))
}

/// Accepts until SIGTERM, then returns (so that callgrind writes its counts).
async fn serve(args: Args) -> Result<(), BoxError> {
    let upstream = if args.pooled {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(1024)
            .build(connector);
        Upstream::Pooled {
            client,
            authority: args.upstream.to_string().parse()?,
        }
    } else {
        Upstream::Conn {
            addr: args.upstream,
            idle: Arc::default(),
        }
    };
    let listener = TcpListener::bind(args.listen).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => return Ok(()),
        };
        stream.set_nodelay(true)?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| proxy(upstream.clone(), req));
            // A connection's error (a client gone mid-request) ends that connection only.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One request: forwarded, its answer streamed back; 502 if the upstream fails.
async fn proxy(upstream: Upstream, req: Request<Incoming>) -> Result<Response<Relay>, Infallible> {
    let answer = match upstream {
        Upstream::Pooled { client, authority } => pooled(&client, authority, req).await,
        Upstream::Conn { addr, idle } => conn(addr, idle, req).await,
    };
    Ok(answer.unwrap_or_else(|_| {
        let mut res = Response::new(Relay {
            inner: None,
            home: None,
        });
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        res
    }))
}

async fn pooled(
    client: &Client<HttpConnector, Incoming>,
    authority: Authority,
    req: Request<Incoming>,
) -> Result<Response<Relay>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .or_else(|| Some(PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri)?;
    strip_hop_by_hop(&mut parts.headers);
    let res = client.request(Request::from_parts(parts, body)).await?;
    Ok(relay(res, None))
}

async fn conn(
    addr: SocketAddr,
    idle: Idle,
    req: Request<Incoming>,
) -> Result<Response<Relay>, BoxError> {
    let (mut parts, body) = req.into_parts();
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = Uri::from(pq);
    }
    strip_hop_by_hop(&mut parts.headers);
    let mut sender = checkout(addr, &idle).await?;
    let res = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(relay(res, Some((sender, idle))))
}

/// An idle connection from the list, or a new one. A sender goes back on the list when its
/// response body has ended, so it is ready at once or within the connection task's next turn.
async fn checkout(addr: SocketAddr, idle: &Idle) -> Result<SendRequest<Incoming>, BoxError> {
    loop {
        let next = idle.lock().map_err(|_| "idle list poisoned")?.pop();
        let Some(mut sender) = next else { break };
        if !sender.is_closed() && sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the upstream closes or the sender is dropped.
        let _ = connection.await;
    });
    Ok(sender)
}

fn relay(res: Response<Incoming>, home: Option<(SendRequest<Incoming>, Idle)>) -> Response<Relay> {
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let mut relay = Relay {
        inner: Some(body),
        home,
    };
    // An empty body may never be polled: its connection is free now.
    if relay.is_end_stream() {
        relay.go_home();
    }
    Response::from_parts(parts, relay)
}

/// Removes the headers of one hop (RFC 9110 §7.6.1): those named in `Connection` and the fixed
/// list. hyper frames the next hop itself (`Content-Length` from the body's size, or chunked).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(named) = headers.get(header::CONNECTION).cloned() {
        if let Ok(named) = named.to_str() {
            for name in named.split(',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The upstream's body streamed through; in `conn` mode it carries its connection home when
/// the body has ended (a body dropped before its end leaves the connection to close).
struct Relay {
    inner: Option<Incoming>,
    home: Option<(SendRequest<Incoming>, Idle)>,
}

impl Relay {
    fn go_home(&mut self) {
        if let Some((sender, idle)) = self.home.take() {
            if let Ok(mut list) = idle.lock() {
                list.push(sender);
            }
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.go_home(),
            Poll::Ready(Some(Ok(_))) if self.inner.as_ref().is_some_and(Body::is_end_stream) => {
                self.go_home()
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
