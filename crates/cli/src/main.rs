//! `ferry`: the command-line front over Ferry's libraries.
//!
//! Subcommands: `worker` (the PyWorker replacement), `control` (and `control join-token`),
//! `join`, `call`, `bench`, `demo`, `sim-model` and `simulate`.
//! Exit codes: 0 ok, 1 runtime failure, 64 bad configuration or arguments.

use std::process::ExitCode;

mod bench;
mod call;
mod demo;
mod fleet;
mod simulate;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

/// Ferry: a fast, sturdy serverless inference stack compatible with Vast.ai Serverless.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the worker in front of a model server (drop-in for Vast's PyWorker).
    Worker(Box<ferry_worker::WorkerArgs>),
    /// Replay a request trace through the control plane's router and autoscaler on a
    /// simulated clock: cost, queue times and cold starts per scaling policy.
    Simulate(Box<simulate::SimulateArgs>),
    #[command(flatten)]
    OnRuntime(OnRuntime),
}

/// The commands that share one multi-threaded runtime (the worker builds its own).
#[derive(Subcommand, Debug)]
enum OnRuntime {
    /// Run the simulated model server (OpenAI, TGI, llama.cpp, ComfyUI dialects).
    SimModel(SimModelArgs),
    /// Run the self-hosted control plane (router, queue, autoscaler, endpoint API), or manage
    /// a running one (`ferry control join-token ...`).
    #[command(args_conflicts_with_subcommands = true)]
    Control(Box<ControlCmd>),
    /// Register a worker with an external workergroup's join token and print its environment
    /// (`eval "$(ferry join ...)"` before starting an unmodified PyWorker).
    Join(fleet::JoinArgs),
    /// Send one request to an endpoint and print the answer (streams as they arrive).
    Call(Box<call::CallArgs>),
    /// Load-test an endpoint or a single worker.
    Bench(Box<bench::BenchArgs>),
    /// The whole system on this machine: control plane, autoscaled local workers, a burst of requests.
    Demo(Box<demo::DemoArgs>),
}

#[derive(clap::Args, Debug)]
struct ControlCmd {
    #[command(subcommand)]
    action: Option<fleet::ControlAction>,
    #[command(flatten)]
    args: ferry_control::ControlArgs,
}

#[derive(clap::Args, Debug)]
struct SimModelArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: String,
    #[command(flatten)]
    config: ferry_sim::SimConfig,
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            // clap uses 2 for usage errors; Ferry's convention for bad arguments is 64.
            return ExitCode::from(if code == 2 { 64 } else { code as u8 });
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {}", e.to_string().trim());
            return ExitCode::from(64);
        }
    };
    // The demo's terminal output is the show; its components only log warnings unless asked.
    let default_level = match cli.command {
        Command::OnRuntime(OnRuntime::Demo(_)) => "warn",
        // The registry logs every worker state change: thousands in a simulated hour.
        Command::Simulate(_) => "warn",
        _ => "info",
    };
    ferry_worker::cli::init_tracing(matches!(cli.log_format, LogFormat::Json), default_level);
    let result = match cli.command {
        // The worker builds its own runtime from its settings (one thread by default).
        Command::Worker(_) => run_worker(&matches),
        Command::Simulate(args) => match args.validate() {
            Ok(()) => simulate::run(*args).map_err(Failure::Runtime),
            Err(msg) => Err(Failure::Config(msg)),
        },
        Command::OnRuntime(command) => run_on_runtime(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("ferry: {msg}");
            ExitCode::from(ferry_worker::EXIT_CONFIG as u8)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_worker(matches: &clap::ArgMatches) -> Result<(), Failure> {
    let matches = matches
        .subcommand_matches("worker")
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("worker arguments missing")))?;
    ferry_worker::cli::run(matches).map_err(|e| match e {
        ferry_worker::cli::CliError::Config(msg) => Failure::Config(msg),
        ferry_worker::cli::CliError::Runtime(msg) => Failure::Runtime(anyhow::anyhow!(msg)),
    })
}

fn run_on_runtime(command: OnRuntime) -> Result<(), Failure> {
    // `ferry control` picks its thread count (FERRY_CONTROL_THREADS); the rest use one per core.
    let threads = match &command {
        OnRuntime::Control(cmd) if cmd.action.is_none() => cmd.args.threads,
        _ => 0,
    };
    let runtime = ferry_worker::cli::runtime(threads).context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match command {
            OnRuntime::SimModel(args) => run_sim(args).await,
            OnRuntime::Control(cmd) => {
                if let Some(action) = cmd.action {
                    return fleet::run_control(action).await.map_err(Failure::Runtime);
                }
                ferry_control::run_cli(cmd.args, ferry_worker::cli::shutdown_signal())
                    .await
                    .map_err(|e| match e {
                        ferry_control::RunError::Config(c) => Failure::Config(c.to_string()),
                        other => Failure::Runtime(anyhow::anyhow!(other)),
                    })
            }
            OnRuntime::Join(args) => fleet::run_join(args).await.map_err(Failure::Runtime),
            OnRuntime::Call(args) => call::run(*args).await.map_err(Failure::Runtime),
            OnRuntime::Bench(args) => bench::run(*args).await.map_err(Failure::Runtime),
            OnRuntime::Demo(args) => demo::run(*args).await.map_err(Failure::Runtime),
        }
    })
}

enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

async fn run_sim(args: SimModelArgs) -> Result<(), Failure> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Failure::Config(format!("--listen {}: {e}", args.listen)))?;
    tracing::info!(listen = %args.listen, "ferry sim-model serving");
    let state = ferry_sim::SimState::new(args.config);
    ferry_sim::run(listener, state, ferry_worker::cli::shutdown_signal())
        .await
        .context("sim-model")?;
    Ok(())
}
