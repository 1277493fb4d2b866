//! `ferry worker`: a drop-in replacement for Vast.ai's PyWorker.
//!
//! It runs beside a model server on a Vast Serverless instance (or under `ferry control`), takes
//! the same environment variables, accepts the same signed requests, and sends the same reports,
//! with a Rust request path: pooled keep-alive upstream connections, a cached signature check, a
//! streaming relay, and accounting that never blocks a request on the control plane.
//!
//! Layout:
//! - [`config`]: settings from flags, Vast's env vars and an optional TOML file.
//! - [`backends`]: presets (routes, workload formulas) per model server.
//! - [`server`]: `build_app` and the request path; [`forward`]: the model server client and relay.
//! - [`auth`]: public key fetch, signature check, Ferry's token; [`load`]: load accounting.
//! - [`report`]: `/worker_status/` and `/delete_requests/` loops; [`join`]: joining a Ferry
//!   control plane's external workergroup with a token.
//! - [`transform`]: a route's `[route.response]`: reshape the model's answer, map its errors.
//! - [`error`]: the error type and its single HTTP mapping.

pub mod auth;
pub mod backends;
pub mod benchmark;
pub mod cli;
pub mod config;
pub mod error;
pub mod forward;
pub mod heap;
pub mod hooks;
pub mod join;
pub mod load;
pub mod readiness;
pub mod report;
pub mod server;
pub mod sessions;
pub mod telemetry;
pub mod tls;
pub mod transform;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConfigError, Settings, WorkerArgs, EXIT_CONFIG};
pub use server::{build_app, build_side_app, AppState};

/// How long the last reports may take after the server stopped.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// Error message reported while the worker drains, so the control plane stops routing to it.
pub const SHUTTING_DOWN: &str = "Worker shutting down";

/// A worker ready to run: state plus its background tasks' owner.
pub struct Worker {
    state: AppState,
    http: reqwest::Client,
    grace: Duration,
}

/// Listeners bound for a worker, so callers (tests, `ferry control`'s local provider) can bind
/// port 0 and learn the ports before the worker runs.
pub struct Listeners {
    /// The main listener (HTTPS when USE_SSL is true).
    pub main: TcpListener,
    /// The plain-HTTP `/session/end` listener.
    pub side: Option<TcpListener>,
    /// The admin listener.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener the settings ask for.
    pub async fn bind(settings: &Settings) -> std::io::Result<Listeners> {
        let main = TcpListener::bind(settings.listen).await?;
        let side = match settings.side_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let admin = match settings.admin_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        Ok(Listeners { main, side, admin })
    }
}

impl Worker {
    /// Builds a worker from validated settings.
    pub fn new(settings: Settings) -> Result<Worker, error::WorkerError> {
        let http = control_client()?;
        let grace = settings.shutdown_grace;
        // Install the metrics recorder before the state registers its metric handles.
        let _ = telemetry::handle();
        let tracker = load::Tracker::new(settings.report_buffer);
        let keys = auth::KeyStore::with_master_token(settings.master_token.expose());
        let state = AppState::new(settings, tracker, keys);
        Ok(Worker { state, http, grace })
    }

    /// Binds the settings' listeners, retrying with back-off while that fails (the port is
    /// still held by an instance that is exiting, or by another process). Meanwhile every
    /// failure is reported to the control plane as `error_msg`, as PyWorker reports a failed
    /// launch, instead of the worker vanishing without a word. `None` once `stop` fires first.
    pub async fn bind(&self, stop: &CancellationToken) -> Option<Listeners> {
        let settings = self.state.settings();
        let mut delay = Duration::from_millis(500);
        let reporting = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut last_error = None;
        let bound = loop {
            match Listeners::bind(settings).await {
                Ok(l) => break Some(l),
                Err(e) => {
                    let msg = format!("failed to launch: binding {}: {e}", settings.listen);
                    tracing::error!(error = %msg, retry_in = ?delay, "cannot bind");
                    self.state.tracker().model_errored(msg.clone());
                    if last_error.replace(msg).is_none() {
                        let reporter = report::Reporter::new(
                            self.http.clone(),
                            settings,
                            self.state.tracker().clone(),
                        );
                        tasks.spawn(reporter.status_loop(reporting.child_token()));
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        };
        reporting.cancel();
        tasks.close();
        tasks.wait().await;
        if let Some(msg) = last_error {
            self.state.tracker().clear_error(&msg);
        }
        bound
    }

    /// Installs code-level request hooks (see [`hooks`]).
    pub fn with_hooks(mut self, hooks: Arc<dyn hooks::Hooks>) -> Self {
        self.state = self.state.with_hooks(hooks);
        self
    }

    /// Sets the shutdown grace period for in-flight requests.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The worker's shared state (tests read the tracker and key store through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves on the main listener only (no side or admin listener).
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listeners = Listeners {
            main: listener,
            side: None,
            admin: None,
        };
        self.run_with(listeners, shutdown).await
    }

    /// Serves until `shutdown` resolves, then shuts down in phases: report "shutting down" and
    /// refuse new requests (503), let in-flight requests and streams finish within the grace
    /// period, close sessions, stop the background loops, flush the last reports.
    pub async fn run_with(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let settings = state.settings().clone();
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls::load_config(cert, key).map_err(std::io::Error::other)?),
            None => None,
        };
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();

        if let Some(perf) = settings.assume_loaded_perf {
            state.tracker().model_loaded(perf);
        } else {
            let spec = readiness::ReadinessSpec {
                mode: settings.readiness,
                log_file: settings.model_log.clone(),
                lines: settings.preset.lines.clone(),
                health: settings.model_health_endpoint.clone(),
                benchmark: settings.benchmark.clone(),
                cache: settings.benchmark_cache.clone(),
                unsecured: settings.unsecured,
                health_interval: settings.health_interval,
                benchmark_retry: settings.benchmark_retry,
                health_wait: Duration::from_secs(300),
                key_wait: Duration::from_secs(60),
                log_poll: settings.log_poll,
            };
            tasks.spawn(readiness::run(
                spec,
                state.upstream().clone(),
                state.tracker().clone(),
                Arc::clone(state.keys()),
                cancel.child_token(),
            ));
        }
        tasks.spawn(telemetry::upkeep(cancel.child_token()));
        let reporter = report::Reporter::new(self.http.clone(), &settings, state.tracker().clone());
        tasks.spawn(reporter.clone().status_loop(cancel.child_token()));
        tasks.spawn(reporter.clone().finished_loop(cancel.child_token()));
        tasks.spawn(sessions::gc_loop(
            state.clone(),
            settings.session_gc,
            cancel.child_token(),
        ));
        if !settings.unsecured {
            tasks.spawn(auth::fetch_pubkey_loop(
                self.http.clone(),
                settings.report_addrs.clone(),
                Arc::clone(state.keys()),
                state.tracker().clone(),
                Duration::from_secs(1),
                Duration::from_secs(30),
                cancel.child_token(),
            ));
        }

        // Side and admin listeners live until the background loops stop.
        if let Some(side) = listeners.side {
            tracing::info!(listen = %side.local_addr()?, "session side listener");
            let app = build_side_app(state.clone());
            let limits = client_limits(ferry_serve::Limits::auxiliary("side"), &settings);
            let c = cancel.child_token();
            tasks.spawn(async move {
                let _ = ferry_serve::serve(side, app, limits, c.cancelled_owned()).await;
            });
        }
        if let Some(admin) = listeners.admin {
            tracing::info!(listen = %admin.local_addr()?, "admin listener");
            let app = server::build_admin_app(state.clone());
            let limits = client_limits(ferry_serve::Limits::auxiliary("admin"), &settings);
            let c = cancel.child_token();
            tasks.spawn(async move {
                let _ = ferry_serve::serve(admin, app, limits, c.cancelled_owned()).await;
            });
        }

        let local = listeners.main.local_addr()?;
        let mut limits = client_limits(ferry_serve::Limits::new("main"), &settings);
        if let Some(max) = settings.max_connections {
            limits = limits.max_connections(max.get());
        }
        tracing::info!(
            listen = %local,
            tls = tls.is_some(),
            max_connections = limits.max_connections,
            url = %settings.public_url,
            model = %settings.model_server_url,
            preset = settings.preset.name,
            unsecured = settings.unsecured,
            "ferry worker serving"
        );

        let stop = CancellationToken::new();
        let stop_signal = stop.clone();
        let drain_state = state.clone();
        let unblock = cancel.child_token();
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown => {
                    drain_state.start_draining();
                    drain_state.tracker().model_errored(SHUTTING_DOWN);
                    stop_signal.cancel();
                }
                _ = unblock.cancelled() => {}
            }
        });
        let graceful = stop.clone();
        let app = build_app(state.clone());
        let main = listeners.main;
        let mut server = tokio::spawn(async move {
            let signal = async move { graceful.cancelled().await };
            // Both set TCP_NODELAY: a stream's first small chunk must not wait for the ACK of
            // the headers (with the client's delayed ACK that added ~40 ms to time to first token).
            match tls {
                Some(cfg) => {
                    ferry_serve::serve_with(main, tls::Tls::new(cfg), app, limits, signal).await
                }
                None => ferry_serve::serve(main, app, limits, signal).await,
            }
        });

        // Biased: on shutdown the server's graceful stop may finish in the same poll; that must
        // still take the draining path below (final reports), not the accept-failure one.
        tokio::select! {
            biased;
            _ = stop.cancelled() => {}
            r = &mut server => {
                // The server stopped on its own: an accept-loop failure.
                cancel.cancel();
                tasks.close();
                tasks.wait().await;
                return r.map_err(std::io::Error::other)?;
            }
        }
        tracing::info!(in_flight = state.tracker().in_flight(), "draining");
        let result = match tokio::time::timeout(self.grace, &mut server).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!(
                    in_flight = state.tracker().in_flight(),
                    "grace period over; abandoning in-flight requests"
                );
                server.abort();
                Ok(())
            }
        };
        state.sessions().close_all(&state).await;
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        reporter.flush(FLUSH_DEADLINE).await;
        tracing::info!("ferry worker stopped");
        result
    }
}

/// The HTTP client for the control plane (reports, joining, the public key).
pub fn control_client() -> Result<reqwest::Client, error::WorkerError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(4)
        .user_agent(concat!("ferry-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| error::WorkerError::Internal(format!("building the report client: {e}")))
}

/// A listener's limits with the client timeouts from `settings`.
fn client_limits(limits: ferry_serve::Limits, settings: &Settings) -> ferry_serve::Limits {
    limits
        .header_timeout(settings.header_timeout)
        .idle_timeout(settings.client_idle_timeout)
}
