//! The sim's knobs, as `ferry sim-model` flags.
//!
//! One declaration per setting: the clap field *is* the config, and [`SimConfig::default`]
//! agrees with the clap defaults (a unit test holds them together). Durations are whole
//! milliseconds on the command line (`--*-ms`) and [`Duration`] in code.

use std::path::PathBuf;
use std::time::Duration;

/// Readiness line written to the model log when loading finishes: vLLM's uvicorn line, which
/// PyWorker's vLLM worker (and Ferry's `vllm` preset) waits for.
pub const DEFAULT_LOADED_LINE: &str = "Application startup complete.";

/// Tokens generated when a request names no limit of its own.
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// Configuration of one simulated model server.
///
/// Every field has a flag (and an env var) for `ferry sim-model`; tests build it with
/// `SimConfig { ttft: ..., ..SimConfig::default() }`. The defaults answer instantly and never
/// fail, which is what benchmarks use as the "direct" baseline.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct SimConfig {
    /// Delay per generated token, for streams and non-streams alike: a reply of `n` tokens
    /// takes `ttft + n * token_delay`. Changeable at run time via `POST /sim/control`.
    #[arg(long = "token-delay-ms", env = "FERRY_SIM_TOKEN_DELAY_MS", value_name = "MS",
          value_parser = parse_millis, default_value = "0")]
    pub token_delay: Duration,

    /// Prefill time before token generation starts (a stream's headers go out at once; its
    /// first token arrives after `ttft + token_delay`).
    #[arg(long = "ttft-ms", env = "FERRY_SIM_TTFT_MS", value_name = "MS",
          value_parser = parse_millis, default_value = "0")]
    pub ttft: Duration,

    /// Time from start until the model counts as loaded: `/health` and every model route
    /// answer 503 before that, and the loaded line is written to the log after it.
    #[arg(long = "load-time-ms", env = "FERRY_SIM_LOAD_TIME_MS", value_name = "MS",
          value_parser = parse_millis, default_value = "0")]
    pub load_time: Duration,

    /// Fraction (0..=1) of model requests answered 500 with a JSON error. Which requests fail
    /// is a deterministic function of `--seed` and the request's arrival index.
    #[arg(long = "error-rate", env = "FERRY_SIM_ERROR_RATE", value_name = "RATE",
          value_parser = parse_rate, default_value = "0")]
    pub error_rate: f64,

    /// Every model request sleeps this long before anything (headers included) is sent.
    #[arg(long = "stall-ms", env = "FERRY_SIM_STALL_MS", value_name = "MS",
          value_parser = parse_millis)]
    pub stall: Option<Duration>,

    /// Streams drop the connection abruptly (no chunked terminator) after this many tokens.
    #[arg(
        long = "disconnect-after",
        env = "FERRY_SIM_DISCONNECT_AFTER",
        value_name = "TOKENS"
    )]
    pub disconnect_after: Option<u32>,

    /// Model log file the worker tails (created or appended to). Vast's own variable name, so
    /// a start script that sets `MODEL_LOG` for the worker points the sim at the same file.
    #[arg(long = "log-file", env = "MODEL_LOG", value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Request log: one line per model request (every `POST` outside `/sim/`), written on
    /// arrival before anything else happens to it: the path, a space, and the body with line
    /// breaks turned into spaces. Tests read it to see which requests a model saw, and how
    /// often (a request executed twice). Off when unset.
    #[arg(
        long = "request-log",
        env = "FERRY_SIM_REQUEST_LOG",
        value_name = "PATH"
    )]
    pub request_log: Option<PathBuf>,

    /// Line written to the log once loading is done.
    #[arg(long = "loaded-line", env = "FERRY_SIM_LOADED_LINE", value_name = "LINE",
          default_value = DEFAULT_LOADED_LINE)]
    pub loaded_line: String,

    /// Tokens generated when a request gives no limit (`max_tokens`, `max_new_tokens`, ...).
    #[arg(long = "max-tokens-default", env = "FERRY_SIM_MAX_TOKENS_DEFAULT", value_name = "N",
          default_value_t = DEFAULT_MAX_TOKENS)]
    pub max_tokens_default: u32,

    /// Seed of the error-injection sequence.
    #[arg(long = "seed", env = "FERRY_SIM_SEED", default_value_t = 0)]
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token_delay: Duration::ZERO,
            ttft: Duration::ZERO,
            load_time: Duration::ZERO,
            error_rate: 0.0,
            stall: None,
            disconnect_after: None,
            log_file: None,
            request_log: None,
            loaded_line: DEFAULT_LOADED_LINE.to_owned(),
            max_tokens_default: DEFAULT_MAX_TOKENS,
            seed: 0,
        }
    }
}

/// Why a flag value was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a whole number of milliseconds.
    #[error("expected whole milliseconds, got {0:?}")]
    Millis(String),
    /// Not a number in `0..=1`.
    #[error("expected a fraction between 0 and 1, got {0:?}")]
    Rate(String),
}

/// Parses a `--*-ms` flag.
pub fn parse_millis(s: &str) -> Result<Duration, ConfigError> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| ConfigError::Millis(s.to_owned()))
}

/// Parses `--error-rate`.
pub fn parse_rate(s: &str) -> Result<f64, ConfigError> {
    match s.trim().parse::<f64>() {
        Ok(rate) if valid_rate(rate) => Ok(rate),
        _ => Err(ConfigError::Rate(s.to_owned())),
    }
}

/// `0..=1`, which also rules out NaN.
pub(crate) fn valid_rate(rate: f64) -> bool {
    (0.0..=1.0).contains(&rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimConfig,
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        let cli = Cli::try_parse_from(["sim"]).unwrap();
        assert_eq!(cli.sim, SimConfig::default());
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let cli = Cli::try_parse_from([
            "sim",
            "--token-delay-ms",
            "5",
            "--ttft-ms",
            "20",
            "--load-time-ms",
            "1500",
            "--error-rate",
            "0.25",
            "--stall-ms",
            "100",
            "--disconnect-after",
            "3",
            "--log-file",
            "/tmp/model.log",
            "--request-log",
            "/tmp/requests.log",
            "--loaded-line",
            "model loaded",
            "--max-tokens-default",
            "32",
            "--seed",
            "7",
        ])
        .unwrap();
        let want = SimConfig {
            token_delay: Duration::from_millis(5),
            ttft: Duration::from_millis(20),
            load_time: Duration::from_millis(1500),
            error_rate: 0.25,
            stall: Some(Duration::from_millis(100)),
            disconnect_after: Some(3),
            log_file: Some(PathBuf::from("/tmp/model.log")),
            request_log: Some(PathBuf::from("/tmp/requests.log")),
            loaded_line: "model loaded".into(),
            max_tokens_default: 32,
            seed: 7,
        };
        assert_eq!(cli.sim, want);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["sim", "--error-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--error-rate", "NaN"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--ttft-ms", "-1"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--ttft-ms", "1.5"]).is_err());
    }
}
