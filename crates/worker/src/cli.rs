//! The worker's command-line entry, shared by `ferry worker` and the lean `ferry-worker` binary.
//!
//! Both parse the same flags (see [`WorkerArgs`]), log the same way and exit with the same codes:
//! 0 after a clean shutdown, 64 ([`crate::EXIT_CONFIG`]) for bad configuration, 1 for a runtime failure.

use clap::ArgMatches;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Worker, WorkerArgs};

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
    return_freed_memory();
    let (args, presets) =
        WorkerArgs::from_matches(matches).map_err(|e| CliError::Config(e.to_string()))?;
    let mut settings = args
        .validate(&presets)
        .map_err(|e| CliError::Config(e.to_string()))?;
    // Before any limit is derived from it: as many descriptors as the hard limit allows.
    let open_files = ferry_serve::raise_open_file_limit();
    tracing::debug!(open_files, "open-file limit");
    let runtime = runtime(settings.threads)
        .map_err(|e| CliError::Runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let signals = TaskTracker::new();
        signals.spawn(async move {
            shutdown_signal().await;
            signal.cancel();
        });
        signals.close();
        if settings.join_token.is_some() {
            let http = crate::control_client()
                .map_err(|e| CliError::Runtime(format!("starting the worker: {e}")))?;
            match crate::join::join(&mut settings, &http, &stop).await {
                Ok(true) => {}
                Ok(false) => return Ok(()), // stopped before it joined
                Err(e) => return Err(CliError::Config(e.to_string())),
            }
        }
        let worker = Worker::new(settings)
            .map_err(|e| CliError::Runtime(format!("starting the worker: {e}")))?;
        let Some(listeners) = worker.bind(&stop).await else {
            return Ok(()); // stopped before the port came free
        };
        worker
            .run_with(listeners, stop.cancelled_owned())
            .await
            .map_err(|e| CliError::Runtime(format!("serving: {e}")))
    })
}

/// Set once the worker has re-executed itself with [`MALLOC_TUNABLES`].
const TUNED_MARK: &str = "FERRY_MALLOC_TUNED";
/// glibc's allocator, left to itself, raises its mmap threshold after a large buffer is freed,
/// so later large request bodies come from the heap, which it keeps: after one burst of large
/// bodies the worker held its peak memory for good. A fixed threshold (which also turns the
/// adjustment off) gives every allocation of 128 KiB or more its own mapping, returned to the
/// system when freed. Measured with 64 concurrent 10 MB bodies: 144 MiB resident after the
/// burst without it, 22 MiB with it. Small allocations (the request path's) are unaffected.
const MALLOC_TUNABLES: &str = "glibc.malloc.mmap_threshold=131072";

/// Re-executes the worker (same pid, arguments and environment) with [`MALLOC_TUNABLES`] added
/// to `GLIBC_TUNABLES`, which glibc reads only at start. Skipped when the user set an mmap
/// threshold already, when not on glibc, and when it already happened; if the exec fails the
/// worker simply runs as it is.
fn return_freed_memory() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os(TUNED_MARK).is_some()
    {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("mmap_threshold") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let tunables = if current.is_empty() {
        MALLOC_TUNABLES.to_owned()
    } else {
        format!("{current}:{MALLOC_TUNABLES}")
    };
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .env(TUNED_MARK, "1")
        .exec();
    tracing::debug!(error = %err, "could not re-execute with malloc tunables; running as is");
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
