//! `ferry control`: a self-hosted control plane that plays Vast.ai's serverless engine and
//! endpoint API, so Vast's official Python client and unmodified PyWorkers (or
//! `ferry worker`s) run entirely on your own machines.
//!
//! # What it does
//!
//! - Signs: a persistent RSA key (`GET /pubkey/`) signs every route grant the Vast way
//!   (`signature` over `{"url": ...}`) plus Ferry's expiring token (`ferry_exp` with
//!   `ferry_mac`, or `ferry_sig` for workers that do not check v2).
//! - Routes: `/route/` picks the ready worker with the lowest estimated queue time, counting
//!   load routed since its last report; when none can take the request it is held in a global
//!   FIFO and served first when capacity appears (see [`route`] and [`queue`]).
//! - Tracks workers from their reports and provider events, with Vast's states
//!   ([`registry`]).
//! - Scales: a pure [`autoscale::decide`] on Vast's documented parameters, run every tick.
//! - Launches: through a [`provider::Provider`] per kind, chosen by each workergroup's
//!   `provider`: [`provider::local`] runs a model server and `ferry worker` per instance on
//!   this host, [`provider::external`] lets workers join with a token, [`provider::vast`]
//!   rents Vast instances.
//! - Persists endpoints, workergroups, keys, the `request_idx` counter, queued requests and
//!   worker records through the [`store::Store`] trait: a SQLite file, or PostgreSQL with
//!   `--store postgres://...` ([`store::postgres`]).
//! - Serves the console API (`/api/v0/endptjobs/`, `/api/v0/workergroups/`,
//!   `/api/v0/autojobs/`) and an OpenAI-compatible gateway (`/{endpoint}/v1/...`).
//! - Serves a web console at `/ui/` ([`ui`]), signed in with the account key.
//!
//! # Quick start
//!
//! ```text
//! ferry control                      # 127.0.0.1:8080, state in ~/.cache/ferry
//! KEY=$(cat ~/.cache/ferry/api_key)  # or set FERRY_API_KEY / --api-key
//! curl -s -H "Authorization: Bearer $KEY" localhost:8080/api/v0/endptjobs/ \
//!      -d '{"endpoint_name": "demo", "cold_workers": 1, "max_workers": 4}'
//! # -> {"success": true, "result": 1}
//! curl -s -H "Authorization: Bearer $KEY" localhost:8080/api/v0/workergroups/ \
//!      -d '{"endpoint_id": 1, "backend": "openai"}'        # default model: Ferry's sim
//! # -> {"success": true, "id": 2}
//! EP=$(curl -s -H "Authorization: Bearer $KEY" localhost:8080/api/v0/endptjobs/1/ | jq -r .result.api_key)
//! curl -s localhost:8080/demo/v1/completions -H "Authorization: Bearer $EP" \
//!      -d '{"model": "m", "prompt": "hello", "max_tokens": 8}'
//! ```
//!
//! Vast's Python client works unchanged:
//! `Serverless(api_key=KEY, autoscaler_url="http://127.0.0.1:8080", webserver_url="http://127.0.0.1:8080")`.
//!
//! # Layout
//!
//! - [`config`]: [`ControlArgs`] (flags/env) → [`Settings`].
//! - [`api`]: one module per HTTP surface (`worker`, `route`, `endpoints`, `gateway`) and
//!   `patch` (console bodies → typed patches): the only place JSON is read or built.
//! - [`control`]: [`Control`], the orchestrator over the components (`auth`, `console`,
//!   `reports`).
//! - Components, each owning its invariants: [`queue`] (requests, global FIFO, index
//!   counter), [`registry`] (workers, pending load, signature cache), [`catalog`] (endpoints
//!   and workergroups; records and patches in [`endpoint`]), [`stats`] (per-endpoint rate).
//! - [`route`]: `/route/`, dispatch of the queue, and the pure chooser.
//! - [`autoscale`]: `decide` (pure), `view` (what it sees), `apply` (a tick) and its loop.
//!   [`provider`]: the trait, `local`, `external`, `vast`.
//! - [`store`]: the persistence trait; SQLite on its own thread, or PostgreSQL written behind
//!   by a task on its own thread. [`telemetry`]: metrics.
//!   [`error`]: errors.
//!
//! # Shutdown order
//!
//! Cancel the autoscaler, stop every local instance (SIGTERM, then SIGKILL after the grace)
//! while still serving, so their last reports ("Worker shutting down", finished requests)
//! arrive and they exit at once, and record them as stopped; then stop accepting connections
//! (in-flight calls get a bounded drain) and flush the database. Vast instances keep running
//! and are taken back at the next start ([`provider::vast`]).

pub mod api;
pub mod autoscale;
pub mod catalog;
pub mod config;
pub mod control;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod joins;
pub mod provider;
pub mod queue;
pub mod registry;
pub mod replica;
pub mod route;
pub mod secrets;
pub mod simulate;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use api::outcome::Surface;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ControlArgs, Settings};
pub use control::{Control, GroupScale, JoinRequest, Joined, RouteOutcome};
pub use error::{ConfigError, ControlError, RunError};
pub use provider::{LaunchSpec, Provider, ProviderError, ProviderEvent, Providers};

/// How long in-flight HTTP calls may take to finish after shutdown begins.
pub(crate) const DRAIN: Duration = Duration::from_secs(10);

/// The control plane's router.
pub fn build_app(control: Control) -> Router {
    use api::{endpoints as ep, fleet as fl, gateway as gw, route as rt, worker as wk};
    let small = DefaultBodyLimit::max(api::MAX_BODY);
    let console = Router::new()
        .route(
            "/api/v0/endptjobs/",
            get(ep::list_endpoints).post(ep::create_endpoint),
        )
        .route(
            "/api/v0/endptjobs",
            get(ep::list_endpoints).post(ep::create_endpoint),
        )
        .route(
            "/api/v0/endptjobs/{id}/",
            get(ep::get_endpoint)
                .put(ep::update_endpoint)
                .delete(ep::delete_endpoint),
        )
        .route(
            "/api/v0/endptjobs/{id}",
            get(ep::get_endpoint)
                .put(ep::update_endpoint)
                .delete(ep::delete_endpoint),
        );
    let mut console = console;
    for base in ["/api/v0/workergroups", "/api/v0/autojobs"] {
        console = console
            .route(
                &format!("{base}/"),
                get(ep::list_groups).post(ep::create_group),
            )
            .route(base, get(ep::list_groups).post(ep::create_group))
            .route(
                &format!("{base}/{{id}}/"),
                get(ep::get_group)
                    .put(ep::update_group)
                    .delete(ep::delete_group),
            )
            .route(
                &format!("{base}/{{id}}"),
                get(ep::get_group)
                    .put(ep::update_group)
                    .delete(ep::delete_group),
            );
        for tail in ["join_tokens/", "join_tokens"] {
            console = console.route(
                &format!("{base}/{{id}}/{tail}"),
                get(fl::list_join_tokens).post(fl::create_join_token),
            );
        }
        for tail in ["scale/", "scale"] {
            console = console.route(&format!("{base}/{{id}}/{tail}"), get(fl::group_scale));
        }
    }
    for path in ["/api/v0/join_tokens/{id}/", "/api/v0/join_tokens/{id}"] {
        console = console.route(path, axum::routing::delete(fl::revoke_join_token));
    }
    let console = console
        .route("/get_endpoint_workers/", post(rt::endpoint_workers))
        .route("/get_workergroup_workers/", post(rt::group_workers))
        .route("/get_autogroup_workers/", post(rt::group_workers))
        .route("/get_endpoint_logs/", post(rt::endpoint_logs))
        .route("/get_autogroup_logs/", post(rt::group_logs))
        .route("/update_workers/", post(rt::update_workers))
        .layer(small)
        .layer(axum::middleware::from_fn_with_state(
            Surface::Console,
            api::outcome::outcome,
        ));
    let run = Router::new()
        .route("/route/", post(rt::route))
        .layer(small)
        .layer(axum::middleware::from_fn_with_state(
            Surface::Run,
            api::outcome::outcome,
        ));
    let workers = Router::new()
        .route("/pubkey/", get(wk::pubkey))
        .route("/pubkey", get(wk::pubkey))
        .route("/worker_status/", post(wk::worker_status))
        .route("/delete_requests/", post(wk::delete_requests))
        .route("/join/", post(wk::join))
        .layer(small)
        .layer(axum::middleware::from_fn_with_state(
            Surface::Worker,
            api::outcome::outcome,
        ));
    let ops = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            Surface::Ops,
            api::outcome::outcome,
        ));
    // The gateway reads its own bodies, after the key (see `api::gateway`).
    let gateway = Router::new()
        .route("/{endpoint}/v1/chat/completions", post(gw::chat))
        .route("/{endpoint}/v1/completions", post(gw::completions))
        .route("/{endpoint}/v1/models", get(gw::models))
        .layer(axum::middleware::from_fn_with_state(
            Surface::Gateway,
            api::outcome::outcome,
        ));
    console
        .merge(run)
        .merge(workers)
        .merge(ops)
        .merge(gateway)
        .merge(ui::router(control.clone()))
        .fallback(api::outcome::no_route)
        .with_state(control)
}

async fn health(State(c): State<Control>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "queued": c.queue_len(),
        "workers": c.worker_states().len(),
    }))
}

pub(crate) async fn metrics() -> impl IntoResponse {
    match telemetry::handle() {
        Some(h) => (StatusCode::OK, h.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".to_owned(),
        ),
    }
}

/// Serves `control` on `listener` until `shutdown` resolves, running the autoscaler beside
/// it; then shuts down in order (see the crate docs).
pub async fn run(
    listener: TcpListener,
    control: Control,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = telemetry::handle();
    let addr = listener.local_addr()?;
    control.tasks().spawn(autoscale::run(control.clone()));
    let stop = CancellationToken::new();
    let graceful = stop.clone();
    let app = build_app(control.clone());
    // Header and idle timeouts and the connection limit (ferry_serve); no Nagle, so relayed
    // stream chunks go out at once.
    let limits = control.settings().connections.clone();
    let mut server = tokio::spawn(ferry_serve::serve(
        listener,
        app,
        limits,
        graceful.cancelled_owned(),
    ));
    tracing::info!(
        listen = %addr,
        url = %control.settings().public_url,
        max_connections = control.settings().connections.max_connections,
        "ferry control serving"
    );
    let result = tokio::select! {
        _ = shutdown => {
            // Workers first, while they can still deliver their last reports (see
            // `Control::stop_workers`); then close the listener.
            tracing::info!("shutting down: stopping workers");
            control.stop_workers().await;
            tracing::info!("shutting down: no new connections");
            stop.cancel();
            match tokio::time::timeout(DRAIN, &mut server).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(std::io::Error::other(e)),
                Err(_) => {
                    tracing::warn!("drain deadline passed; closing open connections");
                    server.abort();
                    Ok(())
                }
            }
        }
        r = &mut server => r.map_err(std::io::Error::other).and_then(|r| r),
    };
    control.shutdown().await;
    tracing::info!("ferry control stopped");
    result
}

/// Runs `ferry control` until `shutdown`.
pub async fn run_cli(
    args: ControlArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // Before the connection limit is derived from it: as many descriptors as allowed.
    let open_files = ferry_serve::raise_open_file_limit();
    tracing::debug!(open_files, "open-file limit");
    let listener = TcpListener::bind(args.listen.as_str())
        .await
        .map_err(|e| ConfigError::new("--listen", format!("binding {}: {e}", args.listen)))?;
    let bound = listener.local_addr()?;
    let settings = args.validate(bound)?;
    secrets::private_dir(&settings.state_dir)
        .map_err(|e| ConfigError::new("--state-dir", e.to_string()))?;
    let exe = match &settings.provider.ferry_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| {
            ConfigError::new("--ferry-exe", format!("cannot find this executable: {e}"))
        })?,
    };
    if settings.replica.is_some() {
        // Providers are built by the replica that takes the lease, when it takes it.
        return replica::run(listener, settings, |s| providers(s, &exe), shutdown).await;
    }
    let control = Control::new(settings.clone(), providers(&settings, &exe)?).await?;
    announce_key(&control, &settings);
    run(listener, control, shutdown).await?;
    Ok(())
}

/// The providers of `settings`: the local provider always (it needs nothing configured), the
/// Vast provider when an API key is given; the default `--provider` must be among them.
fn providers(settings: &Settings, exe: &std::path::Path) -> Result<Providers, RunError> {
    let p = &settings.provider;
    let local = provider::local::LocalProvider::new(provider::local::LocalConfig {
        ferry_exe: exe.to_path_buf(),
        state_dir: settings.state_dir.clone(),
        model_cmd: p.model_cmd.clone(),
        backend: p.backend.clone(),
        stop_grace: p.stop_grace,
        worker_env: [(
            "FERRY_SHUTDOWN_GRACE_S".to_owned(),
            p.stop_grace.as_secs().max(1).to_string(),
        )]
        .into_iter()
        .collect(),
    });
    let mut list: Vec<Arc<dyn Provider>> = vec![Arc::new(local)];
    if settings.vast.api_key.is_some() {
        list.push(Arc::new(vast_provider(settings)?));
    }
    let providers = Providers::new(list);
    if let Err(e) = providers.get(p.kind) {
        return Err(ConfigError::new("--provider", e.to_string()).into());
    }
    Ok(providers)
}

/// The Vast provider of `settings` (its key required).
fn vast_provider(settings: &Settings) -> Result<provider::vast::VastProvider, ConfigError> {
    let v = &settings.vast;
    let Some(key) = v.api_key.clone() else {
        return Err(ConfigError::new(
            "VAST_API_KEY",
            "the vast provider needs an API key: --vast-api-key-file or VAST_API_KEY",
        ));
    };
    let plane = match &v.plane {
        Some(p) => p.clone(),
        None => provider::vast::plane_in(&settings.state_dir)
            .map_err(|e| ConfigError::new("--vast-plane", e.to_string()))?,
    };
    provider::vast::VastProvider::new(provider::vast::VastConfig {
        api_url: v.api_url.clone(),
        api_key: key,
        plane,
        poll_interval: v.poll_interval,
        load_deadline: v.load_deadline,
        create_attempts: v.create_attempts,
        retry: v.retry.clone(),
        bad_machine_ttl: v.bad_machine_ttl,
        backend: settings.provider.backend.clone(),
    })
    .map_err(|e| ConfigError::new("--provider", e.to_string()))
}

pub(crate) fn announce_key(control: &Control, settings: &Settings) {
    let path = settings.state_dir.join("api_key");
    match secrets::write_private(&path, control.account_key()) {
        Ok(()) => eprintln!(
            "ferry control: account API key in {} (use it as Bearer for /api/v0/...)",
            path.display()
        ),
        // Never printed instead: a terminal or a log collector is no place for it.
        Err(e) => {
            tracing::warn!(error = %e, "could not write the API key file");
            eprintln!(
                "ferry control: could not write the account API key to {} ({e}); \
                 set your own with --api-key / FERRY_API_KEY",
                path.display()
            );
        }
    }
    eprintln!("ferry control: listening at {}", settings.public_url);
    eprintln!(
        "ferry control: web console at {}/ui/ (sign in with the account API key)",
        settings.public_url.trim_end_matches('/')
    );
}
