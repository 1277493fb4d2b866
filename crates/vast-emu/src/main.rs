//! `ferry-vast-emu`: the Vast REST API emulator as a process, for tests in other languages.
//!
//! Prints its URL (`http://127.0.0.1:PORT`) as the first line on stdout once it listens, then
//! serves until SIGINT or SIGTERM, when it stops every instance's processes and exits 0.
//! Exit codes: 0 ok, 1 runtime failure, 64 bad arguments or configuration.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferry_vast_emu::{
    default_offers, load_offers, EmuConfig, Emulator, DEFAULT_BOOT_DELAY, DEFAULT_STOP_GRACE,
};
use tokio::signal::unix::{signal, SignalKind};

/// An emulator of Vast.ai's REST API (offers and instances) that runs each instance's
/// on-start command as a local process. See the `ferry-vast-emu` crate docs for the routes,
/// the `/_emu/` knobs and the ledger.
#[derive(Debug, Parser)]
#[command(name = "ferry-vast-emu", version)]
struct Args {
    /// Where to listen (a loopback address; port 0 picks a free one).
    #[arg(long, env = "FERRY_VAST_EMU_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// The API key the emulated account accepts. Vast's clients read the same variable.
    #[arg(long, env = "VAST_API_KEY", hide_env_values = true)]
    api_key: String,

    /// Offer catalogue: a JSON list of offers, or a saved search answer (`{"offers": [...]}`).
    /// Default: the built-in catalogue of eight offers.
    #[arg(long, env = "FERRY_VAST_EMU_OFFERS", value_name = "FILE")]
    offers: Option<PathBuf>,

    /// Delay from an instance's (re)start until its on-start command runs.
    #[arg(long, env = "FERRY_VAST_EMU_BOOT_DELAY_MS", value_name = "MS",
          default_value_t = millis(DEFAULT_BOOT_DELAY))]
    boot_delay_ms: u64,

    /// Time a stopped instance's process group gets between SIGTERM and SIGKILL.
    #[arg(long, env = "FERRY_VAST_EMU_STOP_GRACE_MS", value_name = "MS",
          default_value_t = millis(DEFAULT_STOP_GRACE))]
    stop_grace_ms: u64,

    /// Where instance directories (working directory, `onstart.log`) go. Default: a fresh
    /// directory under the system's temporary directory.
    #[arg(long, env = "FERRY_VAST_EMU_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Log filter (tracing's env-filter syntax), logs on stderr.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    log: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let offers = match &args.offers {
        Some(path) => match load_offers(path) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("ferry-vast-emu: --offers: {e}");
                return ExitCode::from(64);
            }
        },
        None => default_offers(),
    };
    let cfg = EmuConfig {
        listen: args.listen,
        api_key: args.api_key,
        offers,
        boot_delay: Duration::from_millis(args.boot_delay_ms),
        stop_grace: Duration::from_millis(args.stop_grace_ms),
        state_dir: args.state_dir,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-vast-emu: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(cfg))
}

async fn run(cfg: EmuConfig) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ferry-vast-emu: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let emu = match Emulator::start(cfg).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("ferry-vast-emu: {e}");
            return ExitCode::from(64);
        }
        Err(e) => {
            eprintln!("ferry-vast-emu: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", emu.url())
        .and_then(|()| out.flush())
        .is_err()
    {
        // Nobody reads the URL: keep serving anyway (the state dir and logs say where).
        tracing::warn!("could not write the URL to stdout");
    }
    drop(out);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let ledger = emu.shutdown().await;
    tracing::info!(
        created = ledger.created,
        destroyed = ledger.destroyed,
        alive = ledger.alive(),
        "vast emulator stopped"
    );
    ExitCode::SUCCESS
}
