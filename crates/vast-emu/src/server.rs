//! The running emulator: shared state, the accept loop, and the test handle [`Emulator`].
//!
//! Connections are served by hyper directly (not `axum::serve`) so a reset-mode outage can
//! really reset them: an API request arriving during one gets its connection closed with
//! `SO_LINGER` 0 (an RST), without an answer, whether the connection is new or already open.
//! For that, each connection keeps a duplicate of its socket and a token the request's
//! middleware can fire. Connections are not reset at accept time, so the `/_emu/` admin
//! routes keep answering during the outage.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::HttpBody;
use axum::response::Response;
use axum::{BoxError, Router};
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::boot;
use crate::cloud::{BootOrder, Cloud};
use crate::config::EmuConfig;
use crate::error::ApiError;
use crate::knobs::Knobs;
use crate::ledger::Ledger;
use crate::offers::OfferError;

const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every handler and run shares.
struct Shared {
    cloud: Mutex<Cloud>,
    knobs: Knobs,
    api_key: String,
    stop_grace: Duration,
    state_dir: PathBuf,
    /// The state dir was made by the emulator (no `state_dir` configured).
    own_state_dir: bool,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// A cheap handle on the shared state (axum's `State`).
#[derive(Clone)]
pub(crate) struct Emu(Arc<Shared>);

impl Emu {
    /// The offers and instances. Never held across an `.await`.
    pub fn cloud(&self) -> MutexGuard<'_, Cloud> {
        // Every method of `Cloud` leaves it consistent before anything that could panic.
        self.0.cloud.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn knobs(&self) -> &Knobs {
        &self.0.knobs
    }

    pub fn api_key(&self) -> &str {
        &self.0.api_key
    }

    pub fn stop_grace(&self) -> Duration {
        self.0.stop_grace
    }

    /// A token for a new run: cancelled by a stop, a destroy, or the emulator's shutdown.
    pub fn run_token(&self) -> CancellationToken {
        self.0.cancel.child_token()
    }

    /// Starts a run (owned by the emulator's task tracker, so shutdown waits for it).
    pub fn boot(&self, order: BootOrder) {
        self.0.tracker.spawn(boot::run(self.clone(), order));
    }

    /// Stops `id` (see [`Emulator::preempt`] for the outbid variant).
    pub fn preempt(&self, id: u64) -> Result<(), ApiError> {
        self.cloud().preempt(id)
    }
}

/// Fired by a request (reset-mode outage) to reset its own connection.
#[derive(Clone)]
pub(crate) struct ConnKill(pub CancellationToken);

/// The app with this connection's [`ConnKill`] put into every request.
#[derive(Clone)]
struct WithConn {
    app: Router,
    kill: CancellationToken,
}

impl<B> Service<axum::http::Request<B>> for WithConn
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(ConnKill(self.kill.clone()));
        self.app.call(req)
    }
}

/// A running emulator. [`Emulator::shutdown`] stops it and every process it started;
/// dropping it without a shutdown SIGKILLs those process groups on the spot (and keeps the
/// state directory, with the instances' logs, for a test that failed to look at).
pub struct Emulator {
    emu: Emu,
    addr: SocketAddr,
    shut_down: bool,
}

impl Emulator {
    /// Binds `cfg.listen` (which must be a loopback address) and starts serving.
    pub async fn start(cfg: EmuConfig) -> io::Result<Emulator> {
        if !cfg.listen.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("listen address {} is not a loopback address", cfg.listen),
            ));
        }
        let mut ids: Vec<u64> = cfg.offers.iter().map(|o| o.id()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                OfferError::DuplicateId(w[0]).to_string(),
            ));
        }
        let own_state_dir = cfg.state_dir.is_none();
        let state_dir = match cfg.state_dir {
            Some(d) => d,
            None => fresh_state_dir()?,
        };
        std::fs::create_dir_all(state_dir.join("instances"))?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let emu = Emu(Arc::new(Shared {
            cloud: Mutex::new(Cloud::new(cfg.offers, &state_dir)),
            knobs: Knobs::new(cfg.boot_delay),
            api_key: cfg.api_key,
            stop_grace: cfg.stop_grace,
            state_dir,
            own_state_dir,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }));
        let app = crate::api::build_app(emu.clone());
        emu.0.tracker.spawn(accept_loop(emu.clone(), listener, app));
        tracing::info!(%addr, state_dir = %emu.0.state_dir.display(), "vast emulator listening");
        Ok(Emulator {
            emu,
            addr,
            shut_down: false,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash: the `server_url` for Vast's
    /// clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where instance directories and logs go.
    pub fn state_dir(&self) -> &Path {
        &self.emu.0.state_dir
    }

    /// The on-start log of instance `id` (`<state dir>/instances/<id>/onstart.log`).
    pub fn instance_log(&self, id: u64) -> PathBuf {
        self.emu
            .0
            .state_dir
            .join("instances")
            .join(id.to_string())
            .join("onstart.log")
    }

    /// The failure knobs.
    pub fn knobs(&self) -> &Knobs {
        self.emu.knobs()
    }

    /// What it has done so far.
    pub fn ledger(&self) -> Ledger {
        self.emu.cloud().ledger()
    }

    /// Outbids instance `id`: its process group is stopped (SIGTERM, SIGKILL after the stop
    /// grace) and it shows `actual_status: "stopped"` while its `intended_status` stays
    /// `running`, with [`crate::OUTBID_MSG`] as `status_msg`. On Vast only interruptible
    /// (bid) instances are outbid; the emulator lets a test outbid any instance.
    pub fn preempt(&self, id: u64) -> Result<(), ApiError> {
        self.emu.preempt(id)
    }

    /// Stops serving, stops every instance's processes (SIGTERM, SIGKILL after the stop
    /// grace) and waits for them; returns the final ledger. A state directory the emulator
    /// made itself (no [`EmuConfig::state_dir`]) is removed, once nothing runs in it any more;
    /// a configured one is left as it is.
    ///
    /// [`EmuConfig::state_dir`]: crate::EmuConfig::state_dir
    pub async fn shutdown(mut self) -> Ledger {
        self.shut_down = true;
        self.emu.0.cancel.cancel();
        self.emu.0.tracker.close();
        self.emu.0.tracker.wait().await;
        let ledger = self.ledger();
        if self.emu.0.own_state_dir && ledger.processes.is_empty() {
            if let Err(e) = tokio::fs::remove_dir_all(&self.emu.0.state_dir).await {
                tracing::warn!(error = %e, "cannot remove the state dir");
            }
        }
        ledger
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        self.emu.0.cancel.cancel();
        for pid in self.emu.cloud().live_pids() {
            boot::kill_group_now(pid);
        }
    }
}

/// `<tmp>/ferry-vast-emu-<pid>-<n>`, new.
fn fresh_state_dir() -> io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("ferry-vast-emu-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn accept_loop(emu: Emu, listener: TcpListener, app: Router) {
    let cancel = emu.0.cancel.clone();
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (stream, dup) = match keep_duplicate(stream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot duplicate an accepted socket; dropping it");
                continue;
            }
        };
        let kill = CancellationToken::new();
        let service = TowerToHyperService::new(WithConn {
            app: app.clone(),
            kill: kill.clone(),
        });
        let cancel = cancel.clone();
        emu.0.tracker.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = cancel.cancelled() => {}
                () = kill.cancelled() => {
                    // Dropping the connection closes the socket; with linger 0 that is an RST.
                    let _ = rustix::net::sockopt::set_socket_linger(&dup, Some(Duration::ZERO));
                }
            }
        });
    }
}

/// The stream, and a duplicate of its socket to set options on after hyper owns the stream.
fn keep_duplicate(stream: TcpStream) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let dup = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, dup))
}
