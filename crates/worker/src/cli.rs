//! The worker's command-line entry, shared by `ferry worker` and the lean `ferry-worker` binary.
//!
//! Both parse the same flags (see [`WorkerArgs`]), log the same way and exit with the same codes:
//! 0 after a clean shutdown, 64 ([`crate::EXIT_CONFIG`]) for bad configuration, 1 for a runtime failure.

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

/// Runs the worker from parsed `worker` arguments until SIGINT or SIGTERM, on a runtime of
/// [`Settings::threads`](crate::Settings::threads) threads.
pub fn run(matches: &ArgMatches) -> Result<(), CliError> {
    let (args, presets) =
        WorkerArgs::from_matches(matches).map_err(|e| CliError::Config(e.to_string()))?;
    let settings = args
        .validate(&presets)
        .map_err(|e| CliError::Config(e.to_string()))?;
    // Before any limit is derived from it: as many descriptors as the hard limit allows.
    let open_files = ferry_serve::raise_open_file_limit();
    tracing::debug!(open_files, "open-file limit");
    let runtime = runtime(settings.threads)
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&settings)
            .await
            .map_err(|e| CliError::Runtime(format!("binding {}: {e}", settings.listen)))?;
        let worker = Worker::new(settings)
            .map_err(|e| CliError::Runtime(format!("starting the worker: {e}")))?;
        worker
            .run_with(listeners, shutdown_signal())
            .await
            .map_err(|e| CliError::Runtime(format!("serving: {e}")))
    })
}

/// The worker's runtime: one thread by default, since the worker waits on sockets far more than
/// it computes and a single thread saves the cross-thread wake-ups of a work-stealing pool
/// (lower CPU per request, latency and memory in `bench/`); N > 1 threads for CPU-heavy hooks or
/// TLS-heavy traffic; 0 for one per core.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
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
