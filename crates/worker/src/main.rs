//! `ferry-worker`: the worker alone, for instance images.
//!
//! Same flags, env vars, logs and exit codes as `ferry worker`, in a binary that carries only
//! the worker (no control plane, SQLite, load tester or simulator): a smaller download at cold
//! start and fewer resident pages beside the model server.

use std::process::ExitCode;

use clap::{Arg, Args as _, Command};
use ferry_worker::cli::{self, CliError};

fn main() -> ExitCode {
    let command = ferry_worker::WorkerArgs::augment_args(
        Command::new("ferry-worker")
            .version(env!("CARGO_PKG_VERSION"))
            .about("Ferry's worker: a drop-in replacement for Vast.ai's PyWorker"),
    )
    .arg(
        Arg::new("log_format")
            .long("log-format")
            .env("FERRY_LOG_FORMAT")
            .value_parser(["text", "json"])
            .default_value("text")
            .help("Log format"),
    );
    let matches = match command.try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            // clap uses 2 for usage errors; Ferry's convention for bad arguments is 64.
            return ExitCode::from(if code == 2 { 64 } else { code as u8 });
        }
    };
    let json = matches.get_one::<String>("log_format").map(String::as_str) == Some("json");
    cli::init_tracing(json, "info");
    match cli::run(&matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Config(msg)) => {
            eprintln!("ferry-worker: {msg}");
            ExitCode::from(ferry_worker::EXIT_CONFIG as u8)
        }
        Err(CliError::Runtime(msg)) => {
            eprintln!("ferry-worker: {msg}");
            ExitCode::from(1)
        }
    }
}
