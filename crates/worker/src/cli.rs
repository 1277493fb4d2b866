//! The worker's command-line entry, shared by `ferry worker` and the lean `ferry-worker` binary.
//!
//! Both parse the same flags (see [`WorkerArgs`]), log the same way and exit with the same codes:
//! 0 after a clean shutdown, 64 ([`crate::EXIT_CONFIG`]) for bad configuration, 1 for a runtime failure.

use std::future::Future;

use clap::ArgMatches;

use crate::{Listeners, Worker, WorkerArgs};

/// Why the worker command ended early.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags, env vars or TOML: printed as one line, exit code 64.
    #[error("{0}")]
    Config(String),
    /// The worker could not bind, start or serve: exit code 1.
    #[error("{0}")]
    Runtime(String),
}

/// Runs the worker from parsed `worker` arguments until `shutdown` resolves.
pub async fn run(
    matches: &ArgMatches,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let (args, presets) =
        WorkerArgs::from_matches(matches).map_err(|e| CliError::Config(e.to_string()))?;
    let settings = args
        .validate(&presets)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let listeners = Listeners::bind(&settings)
        .await
        .map_err(|e| CliError::Runtime(format!("binding {}: {e}", settings.listen)))?;
    let worker = Worker::new(settings)
        .map_err(|e| CliError::Runtime(format!("starting the worker: {e}")))?;
    worker
        .run_with(listeners, shutdown)
        .await
        .map_err(|e| CliError::Runtime(format!("serving: {e}")))
}

/// Resolves on the first SIGINT or SIGTERM (Vast stops instances with SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Installs the log subscriber: `FERRY_LOG` (or `RUST_LOG`) filters, `default_level` otherwise;
/// text or one JSON object per line, to stderr.
pub fn init_tracing(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
