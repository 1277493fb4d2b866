//! Configuration: one clap declaration per setting, Vast's env names where Vast has one.
//!
//! Precedence is flag > env > TOML file (`--config`) > default. The TOML file deserializes into
//! the same [`WorkerArgs`] struct (plus the preset tables it may carry), so there is one path from
//! text to settings. [`WorkerArgs::validate`] turns the raw strings into typed [`Settings`]; a bad
//! value becomes a [`ConfigError`] naming the setting, which the CLI prints on one line and exits
//! with code 64.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::backends::{Preset, PresetFile};

/// Exit code for bad configuration (EX_USAGE in sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Raw settings as given on the command line, in the environment or in the TOML file.
#[derive(Args, Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerArgs {
    /// TOML file with any of these settings (same names, snake_case) and optional preset tables.
    #[arg(long, env = "FERRY_WORKER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Port the worker listens on (Vast maps it to `VAST_TCP_PORT_<port>`).
    #[arg(long, env = "WORKER_PORT", default_value = "3000")]
    pub worker_port: Option<u16>,

    /// Address to bind. Vast instances need 0.0.0.0; tests use 127.0.0.1.
    #[arg(long, env = "FERRY_LISTEN_HOST", default_value = "0.0.0.0")]
    pub listen_host: Option<String>,

    /// Control plane base URL(s), comma separated, tried in order.
    #[arg(long, env = "REPORT_ADDR", default_value = "https://run.vast.ai")]
    pub report_addr: Option<String>,

    /// Instance id reported as `id` / `worker_id`.
    #[arg(long, env = "CONTAINER_ID", default_value = "0")]
    pub container_id: Option<String>,

    /// Public IP of the instance, used in the reported url.
    #[arg(long, env = "PUBLIC_IPADDR")]
    pub public_ipaddr: Option<String>,

    /// Public port mapped to WORKER_PORT; defaults to env `VAST_TCP_PORT_<WORKER_PORT>`, then WORKER_PORT.
    #[arg(long)]
    pub public_port: Option<u16>,

    /// "true" serves TLS and reports an https url.
    #[arg(long, env = "USE_SSL", default_value = "false")]
    pub use_ssl: Option<String>,

    /// Model server log file to watch for readiness lines.
    #[arg(long, env = "MODEL_LOG")]
    pub model_log: Option<PathBuf>,

    /// Per-worker secret sent as `mtoken` in every report.
    #[arg(long, env = "MASTER_TOKEN", default_value = "")]
    pub master_token: Option<String>,

    /// Ferry: the worker id to report, over CONTAINER_ID (on Vast, CONTAINER_ID is always the
    /// instance id; a Ferry control plane renting Vast instances passes its own id here).
    #[arg(long, env = "FERRY_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Ferry: a join token of an external workergroup. The worker registers with the control
    /// plane at REPORT_ADDR (`POST /join/`) and gets its id and master token from it, so
    /// CONTAINER_ID and MASTER_TOKEN are not needed.
    #[arg(long, env = "FERRY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// Truthy (Python strtobool) disables signature checks.
    #[arg(long, env = "UNSECURED", default_value = "false")]
    pub unsecured: Option<String>,

    /// Model health path (relative to the model server URL) or absolute URL.
    #[arg(long, env = "MODEL_HEALTH_ENDPOINT")]
    pub model_health_endpoint: Option<String>,

    /// Base URL of the model server.
    #[arg(
        long,
        env = "MODEL_SERVER_URL",
        default_value = "http://127.0.0.1:18000"
    )]
    pub model_server_url: Option<String>,

    /// Backend preset, with the names Vast's templates use (vllm, sglang, llama, openai, tgi, comfyui, hello, passthrough).
    #[arg(
        long = "preset",
        alias = "backend",
        env = "BACKEND",
        default_value = "passthrough"
    )]
    pub backend: Option<String>,

    /// Handle requests one at a time in strict arrival order (overrides the preset).
    #[arg(long, env = "FERRY_FIFO")]
    pub fifo: Option<bool>,

    /// Reject (429) when the estimated wait exceeds this many seconds (overrides the preset).
    #[arg(long, env = "FERRY_MAX_QUEUE_TIME")]
    pub max_queue_time: Option<f64>,

    /// Require Ferry's signed token (expiry + single use) on every request, not just verify it when present.
    #[arg(long, env = "FERRY_REQUIRE_TOKEN", default_value = "false")]
    pub require_ferry_token: Option<bool>,

    /// Refuse grants whose `url` is not this worker's public url (implied by --require-ferry-token).
    #[arg(long, env = "FERRY_CHECK_URL", default_value = "false")]
    pub check_url: Option<bool>,

    /// Connect timeout to the model server, milliseconds.
    #[arg(long, env = "FERRY_CONNECT_TIMEOUT_MS", default_value = "5000")]
    pub connect_timeout_ms: Option<u64>,

    /// Time allowed for the model server's response headers, seconds.
    #[arg(long, env = "FERRY_FIRST_BYTE_TIMEOUT_S", default_value = "600")]
    pub first_byte_timeout_s: Option<u64>,

    /// Longest silence allowed between two body chunks of a model response, seconds.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_S", default_value = "300")]
    pub idle_timeout_s: Option<u64>,

    /// Largest accepted request body, bytes.
    #[arg(long, env = "FERRY_MAX_BODY_BYTES", default_value = "104857600")]
    pub max_body_bytes: Option<usize>,

    /// Request-body bytes buffered at once across all requests; past it a request is refused
    /// with 503 and Retry-After, so a burst of large bodies cannot grow memory without bound.
    /// At least FERRY_MAX_BODY_BYTES.
    #[arg(long, env = "FERRY_BODY_BUDGET_BYTES", default_value = "134217728")]
    pub body_budget_bytes: Option<usize>,

    /// Time allowed to receive a whole request body, seconds (408 after it).
    #[arg(long, env = "FERRY_BODY_TIMEOUT_S", default_value = "60")]
    pub body_timeout_s: Option<u64>,

    /// Interval of the report loop's checks, milliseconds (Vast: 1000).
    #[arg(long, env = "FERRY_REPORT_TICK_MS", default_value = "1000")]
    pub report_tick_ms: Option<u64>,

    /// Heartbeat: a status report goes out at least this often, seconds (Vast: 10).
    #[arg(long, env = "FERRY_HEARTBEAT_S", default_value = "10")]
    pub heartbeat_s: Option<u64>,

    /// Delay between retries of one report to one address, milliseconds (Vast: 2000).
    #[arg(long, env = "FERRY_REPORT_RETRY_MS", default_value = "2000")]
    pub report_retry_ms: Option<u64>,

    /// Largest number of finished-request records kept while the control plane is unreachable.
    #[arg(long, env = "FERRY_REPORT_BUFFER", default_value = "100000")]
    pub report_buffer: Option<usize>,

    /// Worker version reported to the control plane.
    #[arg(long, env = "FERRY_REPORT_VERSION", default_value = "1.1.0")]
    pub report_version: Option<String>,

    /// Treat the model as loaded at start with this max_perf (skips readiness; for trying things out).
    #[arg(long, env = "FERRY_ASSUME_LOADED_PERF")]
    pub assume_loaded_perf: Option<f64>,

    /// How readiness is detected: "logs" (MODEL_LOG lines) or "health" (poll the health endpoint).
    /// Default: logs when MODEL_LOG is set, else health.
    #[arg(long, env = "READINESS", value_enum, ignore_case = true)]
    pub readiness: Option<crate::readiness::Mode>,

    /// Benchmark result cache (PyWorker's `.has_benchmark`); a restarted worker skips the benchmark.
    #[arg(long, env = "FERRY_BENCHMARK_CACHE", default_value = ".has_benchmark")]
    pub benchmark_cache: Option<PathBuf>,

    /// Rerun the benchmark when its cached result is older than this many seconds (default: never).
    #[arg(long, env = "FERRY_BENCHMARK_MAX_AGE_S")]
    pub benchmark_max_age_s: Option<u64>,

    /// Benchmark rounds (overrides the preset).
    #[arg(long, env = "FERRY_BENCHMARK_RUNS")]
    pub benchmark_runs: Option<u32>,

    /// Concurrent requests per benchmark round (overrides the preset).
    #[arg(long, env = "FERRY_BENCHMARK_CONCURRENCY")]
    pub benchmark_concurrency: Option<u32>,

    /// Benchmark payload as JSON (overrides the preset's).
    #[arg(long, env = "FERRY_BENCHMARK_PAYLOAD")]
    pub benchmark_payload: Option<String>,

    /// How long the benchmark keeps retrying a model server that refuses connections, seconds.
    #[arg(long, env = "FERRY_BENCHMARK_RETRY_S", default_value = "600")]
    pub benchmark_retry_s: Option<u64>,

    /// Model health probe interval after readiness, milliseconds (PyWorker: 10000).
    #[arg(long, env = "FERRY_HEALTH_INTERVAL_MS", default_value = "10000")]
    pub health_interval_ms: Option<u64>,

    /// How often the model log is polled, milliseconds (PyWorker: 100).
    #[arg(long, env = "FERRY_LOG_POLL_MS", default_value = "100")]
    pub log_poll_ms: Option<u64>,

    /// Most sessions open at once; 0 = unlimited (PyWorker's WorkerConfig default: 10).
    #[arg(long, env = "FERRY_MAX_SESSIONS", default_value = "10")]
    pub max_sessions: Option<usize>,

    /// Origins (`http[s]://host:port`, comma-separated) a session's `on_close_route` may name
    /// as a full URL. By default it may only be a path on the model server: anyone holding
    /// a grant could otherwise make the worker POST to any address.
    #[arg(long, env = "FERRY_SESSION_CALLBACK_ORIGINS", default_value = "")]
    pub session_callback_origins: Option<String>,

    /// Plain-HTTP side listener for `/session/end` (default WORKER_PORT+1; 0 picks any port).
    #[arg(long, env = "WORKER_HTTP_PORT")]
    pub worker_http_port: Option<u16>,

    /// Serve no side listener.
    #[arg(long, env = "FERRY_NO_SIDE_LISTENER")]
    pub no_side_listener: Option<bool>,

    /// Admin listener (`/health`, `/ready`, `/metrics`), e.g. 127.0.0.1:9090. Off when unset.
    #[arg(long, env = "FERRY_ADMIN_ADDR")]
    pub admin_addr: Option<String>,

    /// Threads serving requests: 1 runs everything on one thread (no cross-thread wake-ups),
    /// N > 1 a work-stealing pool of N, 0 one per core.
    #[arg(long, env = "FERRY_WORKER_THREADS", default_value = "1")]
    pub threads: Option<usize>,

    /// File created by `POST /pyworker/update` for the instance's supervisor.
    #[arg(
        long,
        env = "FERRY_FORCE_UPDATE_FILE",
        default_value = "/.force_update"
    )]
    pub force_update_file: Option<PathBuf>,

    /// TLS certificate (PEM) used when USE_SSL is "true".
    #[arg(long, env = "FERRY_TLS_CERT", default_value = "/etc/instance.crt")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) used when USE_SSL is "true".
    #[arg(long, env = "FERRY_TLS_KEY", default_value = "/etc/instance.key")]
    pub tls_key: Option<PathBuf>,

    /// Interval of the expired-session sweep, milliseconds (PyWorker: 5000).
    #[arg(long, env = "FERRY_SESSION_GC_MS", default_value = "5000")]
    pub session_gc_ms: Option<u64>,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE_S", default_value = "30")]
    pub shutdown_grace_s: Option<u64>,

    /// Most client connections the main listener holds open; at the limit the oldest one not
    /// serving a request is closed for a new one. Default: a quarter of the open-file limit, at
    /// most 8192 (the side and admin listeners take a sixteenth each).
    #[arg(long, env = "FERRY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Seconds a client gets to send a request's headers (from connect, or from a kept-alive
    /// connection's first new byte), on every listener.
    #[arg(long, env = "FERRY_HEADER_TIMEOUT_S", default_value = "10")]
    pub header_timeout_s: Option<u64>,

    /// Seconds a kept-alive client connection may stay idle between requests, on every listener
    /// (not the model server's idle timeout, FERRY_IDLE_TIMEOUT_S).
    #[arg(long, env = "FERRY_CLIENT_IDLE_TIMEOUT_S", default_value = "75")]
    pub client_idle_timeout_s: Option<u64>,
}

/// A configuration problem, printed as one line naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The setting's name as a user writes it (env name where there is one).
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        // One line whatever the reason quotes: a route path from the TOML file may hold a line
        // break.
        let reason = reason.into().replace('\n', "\\n").replace('\r', "\\r");
        Self { setting, reason }
    }
}

/// A secret whose `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Validated, typed settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub report_addrs: Vec<String>,
    pub container_id: i64,
    /// The url reported to the control plane and signed in routes.
    pub public_url: String,
    pub use_ssl: bool,
    pub model_log: Option<PathBuf>,
    pub master_token: Secret,
    /// Ferry: join an external workergroup with this token (see [`crate::join`]).
    pub join_token: Option<Secret>,
    pub unsecured: bool,
    pub model_server_url: String,
    pub model_health_endpoint: Option<String>,
    pub preset: Preset,
    pub require_ferry_token: bool,
    /// Refuse grants issued for another worker's url.
    pub check_url: bool,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_body_bytes: usize,
    pub body_budget_bytes: usize,
    pub body_timeout: Duration,
    pub report_tick: Duration,
    pub heartbeat: Duration,
    pub report_retry: Duration,
    pub report_buffer: usize,
    pub report_version: String,
    pub assume_loaded_perf: Option<f64>,
    pub readiness: crate::readiness::Mode,
    pub benchmark: crate::benchmark::BenchmarkSpec,
    pub benchmark_cache: crate::benchmark::BenchmarkCache,
    pub benchmark_retry: Duration,
    pub health_interval: Duration,
    pub log_poll: Duration,
    pub max_sessions: usize,
    /// Origins a session's `on_close_route` may name in full (`scheme://host:port`).
    pub session_callback_origins: Vec<String>,
    /// Runtime threads (see [`WorkerArgs::threads`]); 0 means one per core.
    pub threads: usize,
    /// Side listener address (`/session/end` over plain HTTP), if any.
    pub side_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub force_update_file: PathBuf,
    /// Certificate and key when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub shutdown_grace: Duration,
    pub session_gc: Duration,
    /// Main listener's connection limit; `None` derives it from the open-file limit at start.
    pub max_connections: Option<std::num::NonZeroUsize>,
    /// Client header timeout, every listener.
    pub header_timeout: Duration,
    /// Client keep-alive idle timeout, every listener.
    pub client_idle_timeout: Duration,
}

/// Python's `strtobool`, as PyWorker reads UNSECURED.
pub fn strtobool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "t" | "true" | "on" | "1" => Some(true),
        "n" | "no" | "f" | "false" | "off" | "0" | "" => Some(false),
        _ => None,
    }
}

fn req<T: Clone>(v: &Option<T>, setting: &'static str) -> Result<T, ConfigError> {
    v.clone()
        .ok_or_else(|| ConfigError::new(setting, "is required"))
}

fn nonzero_ms(v: Option<u64>, setting: &'static str) -> Result<Duration, ConfigError> {
    match v {
        Some(0) | None => Err(ConfigError::new(setting, "must be a positive number")),
        Some(n) => Ok(Duration::from_millis(n)),
    }
}

fn check_http_url(url: &str, setting: &'static str) -> Result<String, ConfigError> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(|| {
            ConfigError::new(
                setting,
                format!("{url:?} is not an http:// or https:// URL"),
            )
        })?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(ConfigError::new(setting, format!("{url:?} has no host")));
    }
    Ok(trimmed.to_string())
}

impl WorkerArgs {
    /// Parses the given command line (after the subcommand) into args, merging a TOML file.
    pub fn from_matches(matches: &ArgMatches) -> Result<(WorkerArgs, PresetFile), ConfigError> {
        let args = WorkerArgs::from_arg_matches(matches)
            .map_err(|e| ConfigError::new("arguments", e.to_string()))?;
        args.merge_file(matches)
    }

    /// Parses a full argv (tests, embedding) such as `["worker", "--worker-port", "0"]`.
    pub fn parse_from<I, T>(argv: I) -> Result<(WorkerArgs, PresetFile), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = WorkerArgs::augment_args(clap::Command::new("worker"));
        let matches = cmd
            .try_get_matches_from(argv)
            .map_err(|e| ConfigError::new("arguments", e.to_string().trim().to_string()))?;
        Self::from_matches(&matches)
    }

    fn merge_file(self, matches: &ArgMatches) -> Result<(WorkerArgs, PresetFile), ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok((self, PresetFile::default()));
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::new("FERRY_WORKER_CONFIG", format!("{}: {e}", path.display()))
        })?;
        self.merge_toml(matches, path, &text)
    }

    /// Merges the text of the TOML file at `path` under the flags and env vars in `matches`
    /// (what `--config` does once the file is read; public for the fuzz targets).
    #[doc(hidden)]
    pub fn merge_toml(
        self,
        matches: &ArgMatches,
        path: PathBuf,
        text: &str,
    ) -> Result<(WorkerArgs, PresetFile), ConfigError> {
        let mut file: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::new(
                "FERRY_WORKER_CONFIG",
                format!("{}: {}", path.display(), one_line(&e.to_string())),
            )
        })?;
        let preset_file = PresetFile::take_from(&mut file).map_err(|e| {
            ConfigError::new("FERRY_WORKER_CONFIG", format!("{}: {e}", path.display()))
        })?;
        // Settings given by flag or env win over the file; the file wins over defaults.
        let mut merged = toml::Table::try_from(&self)
            .map_err(|e| ConfigError::new("FERRY_WORKER_CONFIG", e.to_string()))?;
        for (key, value) in file {
            let known = matches.ids().any(|id| id.as_str() == key);
            let from_user = known
                && matches!(
                    matches.value_source(&key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                );
            if !from_user {
                merged.insert(key, value);
            }
        }
        let mut args: WorkerArgs = merged.try_into().map_err(|e: toml::de::Error| {
            ConfigError::new(
                "FERRY_WORKER_CONFIG",
                format!("{}: {}", path.display(), one_line(&e.to_string())),
            )
        })?;
        args.config = Some(path);
        Ok((args, preset_file))
    }

    /// Validates into typed settings.
    pub fn validate(&self, preset_file: &PresetFile) -> Result<Settings, ConfigError> {
        let port = req(&self.worker_port, "WORKER_PORT")?;
        let host: IpAddr = req(&self.listen_host, "FERRY_LISTEN_HOST")?
            .parse()
            .map_err(|_| ConfigError::new("FERRY_LISTEN_HOST", "is not an IP address"))?;
        let report_addrs = req(&self.report_addr, "REPORT_ADDR")?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| check_http_url(s, "REPORT_ADDR"))
            .collect::<Result<Vec<_>, _>>()?;
        if report_addrs.is_empty() {
            return Err(ConfigError::new("REPORT_ADDR", "names no address"));
        }
        let container_id = match self.worker_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id
                .parse::<i64>()
                .map_err(|_| ConfigError::new("FERRY_WORKER_ID", "must be an integer"))?,
            _ => req(&self.container_id, "CONTAINER_ID")?
                .trim()
                .parse::<i64>()
                .map_err(|_| ConfigError::new("CONTAINER_ID", "must be an integer"))?,
        };
        let join_token = match self.join_token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Some(Secret::new(t.to_owned())),
            _ => None,
        };
        let use_ssl = match req(&self.use_ssl, "USE_SSL")?.trim() {
            "true" => true,
            "false" | "" => false,
            other => {
                return Err(ConfigError::new(
                    "USE_SSL",
                    format!("{other:?} is neither \"true\" nor \"false\""),
                ))
            }
        };
        let unsecured = strtobool(&req(&self.unsecured, "UNSECURED")?).ok_or_else(|| {
            ConfigError::new("UNSECURED", "is not a boolean (true/false/1/0/yes/no)")
        })?;
        let public_port = match self.public_port {
            Some(p) => p,
            None => match std::env::var(format!("VAST_TCP_PORT_{port}")) {
                Ok(v) => v.trim().parse().map_err(|_| {
                    ConfigError::new("VAST_TCP_PORT_<WORKER_PORT>", "is not a port number")
                })?,
                Err(_) => port,
            },
        };
        let public_ip = self
            .public_ipaddr
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let public_url = format!(
            "http{}://{}:{}",
            if use_ssl { "s" } else { "" },
            public_ip.trim(),
            public_port
        );
        let model_server_url = check_http_url(
            &req(&self.model_server_url, "MODEL_SERVER_URL")?,
            "MODEL_SERVER_URL",
        )?;
        if model_server_url.starts_with("https://") {
            return Err(ConfigError::new(
                "MODEL_SERVER_URL",
                "must be http:// (the model server runs beside the worker)",
            ));
        }
        let backend = req(&self.backend, "BACKEND")?;
        let mut preset =
            Preset::resolve(&backend, preset_file).map_err(|e| ConfigError::new("BACKEND", e))?;
        if let Some(fifo) = self.fifo {
            for r in preset.routes.iter_mut().chain(preset.passthrough.as_mut()) {
                r.parallel = !fifo;
            }
        }
        if let Some(mqt) = self.max_queue_time {
            if !(mqt.is_finite() && mqt >= 0.0) {
                return Err(ConfigError::new(
                    "FERRY_MAX_QUEUE_TIME",
                    "must be a non-negative number of seconds",
                ));
            }
            for r in preset.routes.iter_mut().chain(preset.passthrough.as_mut()) {
                r.max_queue_time = Some(mqt);
            }
        }
        let model_health_endpoint = self
            .model_health_endpoint
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| preset.health_endpoint.clone());
        if let Some(perf) = self.assume_loaded_perf {
            if !(perf.is_finite() && perf > 0.0) {
                return Err(ConfigError::new(
                    "FERRY_ASSUME_LOADED_PERF",
                    "must be a positive number",
                ));
            }
        }
        let readiness = self.readiness.unwrap_or(if self.model_log.is_some() {
            crate::readiness::Mode::Logs
        } else {
            crate::readiness::Mode::Health
        });
        if self.assume_loaded_perf.is_none() {
            match readiness {
                crate::readiness::Mode::Logs if self.model_log.is_none() => {
                    return Err(ConfigError::new(
                        "MODEL_LOG",
                        "is required for log readiness",
                    ))
                }
                crate::readiness::Mode::Health if model_health_endpoint.is_none() => {
                    return Err(ConfigError::new(
                        "MODEL_HEALTH_ENDPOINT",
                        "is required when MODEL_LOG is not set (or pass --assume-loaded-perf)",
                    ))
                }
                _ => {}
            }
        }
        let benchmark = benchmark_spec(&preset, self)?;
        let report_buffer = req(&self.report_buffer, "FERRY_REPORT_BUFFER")?;
        let max_body_bytes = req(&self.max_body_bytes, "FERRY_MAX_BODY_BYTES")?;
        let body_budget_bytes = req(&self.body_budget_bytes, "FERRY_BODY_BUDGET_BYTES")?;
        if body_budget_bytes < max_body_bytes {
            return Err(ConfigError::new(
                "FERRY_BODY_BUDGET_BYTES",
                "must be at least FERRY_MAX_BODY_BYTES",
            ));
        }
        if report_buffer == 0 {
            return Err(ConfigError::new("FERRY_REPORT_BUFFER", "must be positive"));
        }
        Ok(Settings {
            listen: SocketAddr::new(host, port),
            report_addrs,
            container_id,
            public_url,
            use_ssl,
            model_log: self.model_log.clone(),
            master_token: Secret::new(self.master_token.clone().unwrap_or_default()),
            join_token,
            unsecured,
            model_server_url,
            model_health_endpoint,
            preset,
            require_ferry_token: req(&self.require_ferry_token, "FERRY_REQUIRE_TOKEN")?,
            check_url: req(&self.check_url, "FERRY_CHECK_URL")?
                || req(&self.require_ferry_token, "FERRY_REQUIRE_TOKEN")?,
            connect_timeout: nonzero_ms(self.connect_timeout_ms, "FERRY_CONNECT_TIMEOUT_MS")?,
            first_byte_timeout: nonzero_ms(
                self.first_byte_timeout_s.map(|s| s.saturating_mul(1000)),
                "FERRY_FIRST_BYTE_TIMEOUT_S",
            )?,
            idle_timeout: nonzero_ms(
                self.idle_timeout_s.map(|s| s.saturating_mul(1000)),
                "FERRY_IDLE_TIMEOUT_S",
            )?,
            max_body_bytes,
            body_budget_bytes,
            body_timeout: nonzero_ms(
                self.body_timeout_s.map(|s| s.saturating_mul(1000)),
                "FERRY_BODY_TIMEOUT_S",
            )?,
            report_tick: nonzero_ms(self.report_tick_ms, "FERRY_REPORT_TICK_MS")?,
            heartbeat: nonzero_ms(
                self.heartbeat_s.map(|s| s.saturating_mul(1000)),
                "FERRY_HEARTBEAT_S",
            )?,
            report_retry: nonzero_ms(self.report_retry_ms, "FERRY_REPORT_RETRY_MS")?,
            report_buffer,
            report_version: req(&self.report_version, "FERRY_REPORT_VERSION")?,
            assume_loaded_perf: self.assume_loaded_perf,
            readiness,
            benchmark,
            benchmark_cache: crate::benchmark::BenchmarkCache {
                path: req(&self.benchmark_cache, "FERRY_BENCHMARK_CACHE")?,
                max_age: self.benchmark_max_age_s.map(Duration::from_secs),
            },
            benchmark_retry: Duration::from_secs(req(
                &self.benchmark_retry_s,
                "FERRY_BENCHMARK_RETRY_S",
            )?),
            health_interval: nonzero_ms(self.health_interval_ms, "FERRY_HEALTH_INTERVAL_MS")?,
            log_poll: nonzero_ms(self.log_poll_ms, "FERRY_LOG_POLL_MS")?,
            max_sessions: req(&self.max_sessions, "FERRY_MAX_SESSIONS")?,
            session_callback_origins: self
                .session_callback_origins
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    crate::sessions::origin_of(s)
                        .filter(|o| o == s.trim_end_matches('/'))
                        .ok_or_else(|| {
                            ConfigError::new(
                                "FERRY_SESSION_CALLBACK_ORIGINS",
                                format!("{s:?} is not an origin like http://host:port"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            side_listen: if self.no_side_listener.unwrap_or(false) {
                None
            } else {
                let side = match self.worker_http_port {
                    Some(p) => p,
                    None if port == 0 => 0,
                    None => port.checked_add(1).ok_or_else(|| {
                        ConfigError::new("WORKER_HTTP_PORT", "WORKER_PORT+1 is not a port")
                    })?,
                };
                Some(SocketAddr::new(host, side))
            },
            admin_listen: match self.admin_addr.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    ConfigError::new("FERRY_ADMIN_ADDR", format!("{a:?} is not host:port"))
                })?),
            },
            force_update_file: req(&self.force_update_file, "FERRY_FORCE_UPDATE_FILE")?,
            tls: if use_ssl {
                Some((
                    req(&self.tls_cert, "FERRY_TLS_CERT")?,
                    req(&self.tls_key, "FERRY_TLS_KEY")?,
                ))
            } else {
                None
            },
            shutdown_grace: Duration::from_secs(req(
                &self.shutdown_grace_s,
                "FERRY_SHUTDOWN_GRACE_S",
            )?),
            session_gc: nonzero_ms(self.session_gc_ms, "FERRY_SESSION_GC_MS")?,
            threads: req(&self.threads, "FERRY_WORKER_THREADS")?,
            max_connections: match self.max_connections {
                None => None,
                Some(n) => Some(std::num::NonZeroUsize::new(n).ok_or_else(|| {
                    ConfigError::new("FERRY_MAX_CONNECTIONS", "must be a positive number")
                })?),
            },
            header_timeout: nonzero_ms(
                self.header_timeout_s.map(|s| s.saturating_mul(1000)),
                "FERRY_HEADER_TIMEOUT_S",
            )?,
            client_idle_timeout: nonzero_ms(
                self.client_idle_timeout_s.map(|s| s.saturating_mul(1000)),
                "FERRY_CLIENT_IDLE_TIMEOUT_S",
            )?,
        })
    }
}

fn benchmark_spec(
    preset: &Preset,
    args: &WorkerArgs,
) -> Result<crate::benchmark::BenchmarkSpec, ConfigError> {
    let def = &preset.benchmark;
    let route = preset.route_for(&def.route).ok_or_else(|| {
        ConfigError::new(
            "BACKEND",
            format!("benchmark route {} is not served", def.route),
        )
    })?;
    let payloads = match &args.benchmark_payload {
        Some(text) => vec![serde_json::from_str(text).map_err(|e| {
            ConfigError::new("FERRY_BENCHMARK_PAYLOAD", format!("is not JSON: {e}"))
        })?],
        None => def.payloads.clone(),
    };
    let concurrency = args.benchmark_concurrency.unwrap_or(def.concurrency);
    let runs = args.benchmark_runs.unwrap_or(def.runs);
    if concurrency == 0 || runs == 0 {
        return Err(ConfigError::new(
            "FERRY_BENCHMARK_RUNS",
            "runs and concurrency must be positive",
        ));
    }
    Ok(crate::benchmark::BenchmarkSpec {
        model_path: if route.model_path.is_empty() {
            def.route.clone()
        } else {
            route.model_path.clone()
        },
        payloads,
        workload: route.workload.clone(),
        runs,
        concurrency: if route.parallel { concurrency } else { 1 },
        warmup: def.warmup,
        fill_model: preset.fill_model,
    })
}

/// The clap command for `ferry worker`, for the CLI to mount as a subcommand.
pub fn command() -> clap::Command {
    WorkerArgs::command()
}

impl clap::CommandFactory for WorkerArgs {
    fn command() -> clap::Command {
        WorkerArgs::augment_args(clap::Command::new("worker"))
    }
    fn command_for_update() -> clap::Command {
        WorkerArgs::augment_args_for_update(clap::Command::new("worker"))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Settings, ConfigError> {
        let mut full = vec!["worker", "--model-log", "/tmp/ferry-test-model.log"];
        full.extend_from_slice(argv);
        let (args, file) = WorkerArgs::parse_from(full)?;
        args.validate(&file)
    }

    #[test]
    fn defaults_validate() {
        let s = parse(&["--public-port", "3000"]).unwrap();
        assert_eq!(s.listen.port(), 3000);
        assert_eq!(s.report_addrs, vec!["https://run.vast.ai".to_string()]);
        assert_eq!(s.public_url, "http://127.0.0.1:3000");
        assert!(!s.unsecured);
    }

    #[test]
    fn url_uses_ssl_ip_and_public_port() {
        let s = parse(&[
            "--use-ssl",
            "true",
            "--public-ipaddr",
            "1.2.3.4",
            "--public-port",
            "41000",
        ])
        .unwrap();
        assert_eq!(s.public_url, "https://1.2.3.4:41000");
    }

    #[test]
    fn report_addr_list_is_split_and_trimmed() {
        let s = parse(&[
            "--report-addr",
            "http://a:1/, http://b:2",
            "--public-port",
            "1",
        ])
        .unwrap();
        assert_eq!(s.report_addrs, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = parse(&["--container-id", "abc"]).unwrap_err();
        assert_eq!(e.setting, "CONTAINER_ID");
        let e = parse(&["--unsecured", "maybe"]).unwrap_err();
        assert_eq!(e.setting, "UNSECURED");
        let e = parse(&["--report-addr", "ftp://x"]).unwrap_err();
        assert_eq!(e.setting, "REPORT_ADDR");
        let e = parse(&["--use-ssl", "yes please"]).unwrap_err();
        assert_eq!(e.setting, "USE_SSL");
        let e = parse(&["--preset", "nope"]).unwrap_err();
        assert_eq!(e.setting, "BACKEND");
        let e = parse(&["--connect-timeout-ms", "0"]).unwrap_err();
        assert_eq!(e.setting, "FERRY_CONNECT_TIMEOUT_MS");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn readiness_needs_evidence() {
        let (args, file) = WorkerArgs::parse_from(["worker"]).unwrap();
        let e = args.validate(&file).unwrap_err();
        assert_eq!(e.setting, "MODEL_HEALTH_ENDPOINT");
        let (args, file) = WorkerArgs::parse_from(["worker", "--readiness", "logs"]).unwrap();
        assert_eq!(args.validate(&file).unwrap_err().setting, "MODEL_LOG");
        let (args, file) =
            WorkerArgs::parse_from(["worker", "--model-health-endpoint", "/health"]).unwrap();
        let s = args.validate(&file).unwrap();
        assert_eq!(s.readiness, crate::readiness::Mode::Health);
        // Typed: PyWorker's spellings are accepted, anything else is refused by name.
        let (args, _) = WorkerArgs::parse_from(["worker", "--readiness", "HealthCheck"]).unwrap();
        assert_eq!(args.readiness, Some(crate::readiness::Mode::Health));
        let (args, _) = WorkerArgs::parse_from(["worker", "--readiness", "log"]).unwrap();
        assert_eq!(args.readiness, Some(crate::readiness::Mode::Logs));
        let e = WorkerArgs::parse_from(["worker", "--readiness", "vibes"]).unwrap_err();
        assert!(e.to_string().contains("--readiness"), "{e}");
    }

    #[test]
    fn the_documented_custom_worker_example_is_valid() {
        let doc = include_str!("../../../docs/custom-workers.md");
        let start = doc.find("```toml\n").unwrap() + "```toml\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let dir = std::env::temp_dir().join(format!("ferry-doc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("my-worker.toml");
        std::fs::write(&path, &doc[start..end]).unwrap();
        let (args, file) =
            WorkerArgs::parse_from(["worker", "--config", path.to_str().unwrap()]).unwrap();
        let s = args.validate(&file).unwrap();
        assert_eq!(s.preset.name, "custom");
        assert_eq!(s.preset.routes.len(), 2);
        assert_eq!(s.max_sessions, 4);
        assert_eq!(s.model_health_endpoint.as_deref(), Some("/health"));
        assert_eq!(
            s.benchmark.concurrency, 1,
            "FIFO routes benchmark one at a time"
        );
        let speak = s.preset.route_for("/speak").unwrap();
        assert_eq!(speak.model_path, "/v1/audio/speech");
        assert!(!speak.parallel);
    }

    #[test]
    fn every_documented_worker_file_is_valid() {
        let doc = include_str!("../../../docs/custom-workers.md");
        let dir = std::env::temp_dir().join(format!("ferry-docs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blocks: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .map(|b| &b[..b.find("```").unwrap()])
            .collect();
        assert!(blocks.len() >= 4, "{}", blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let path = dir.join(format!("doc-{i}.toml"));
            std::fs::write(&path, block).unwrap();
            let (args, file) =
                WorkerArgs::parse_from(["worker", "--config", path.to_str().unwrap()]).unwrap();
            let s = args
                .validate(&file)
                .unwrap_or_else(|e| panic!("block {i}: {e}"));
            if block.contains("[route.response]") {
                assert!(
                    s.preset.routes.iter().any(|r| r.response.is_some()),
                    "block {i}"
                );
            }
        }
    }

    #[test]
    fn errors_are_one_line() {
        let e = ConfigError::new("BACKEND", "route /a\nb\r: bad");
        assert_eq!(e.to_string(), "BACKEND: route /a\\nb\\r: bad");
    }

    #[test]
    fn strtobool_matches_python() {
        for t in ["y", "YES", "t", "True", "on", "1"] {
            assert_eq!(strtobool(t), Some(true), "{t}");
        }
        for f in ["n", "no", "f", "false", "OFF", "0"] {
            assert_eq!(strtobool(f), Some(false), "{f}");
        }
        assert_eq!(strtobool("2"), None);
    }

    #[test]
    fn toml_file_fills_defaults_but_flags_win() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.toml");
        std::fs::write(
            &path,
            "worker_port = 4444\ncontainer_id = \"77\"\nreport_addr = \"http://cp:1\"\n",
        )
        .unwrap();
        let s = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--report-addr",
            "http://flag:2",
            "--public-port",
            "1",
        ])
        .unwrap();
        assert_eq!(s.listen.port(), 4444);
        assert_eq!(s.container_id, 77);
        assert_eq!(s.report_addrs, vec!["http://flag:2"]);

        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.reason.contains("no_such_setting"), "{e}");
    }

    #[test]
    fn client_connection_settings() {
        let s = parse(&["--public-port", "1"]).unwrap();
        assert_eq!(s.max_connections, None);
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.client_idle_timeout, Duration::from_secs(75));
        let s = parse(&[
            "--public-port",
            "1",
            "--max-connections",
            "16",
            "--header-timeout-s",
            "3",
            "--client-idle-timeout-s",
            "9",
        ])
        .unwrap();
        assert_eq!(s.max_connections.map(|n| n.get()), Some(16));
        assert_eq!(s.header_timeout, Duration::from_secs(3));
        assert_eq!(s.client_idle_timeout, Duration::from_secs(9));
        let e = parse(&["--public-port", "1", "--max-connections", "0"]).unwrap_err();
        assert_eq!(e.setting, "FERRY_MAX_CONNECTIONS");
        let e = parse(&["--public-port", "1", "--header-timeout-s", "0"]).unwrap_err();
        assert_eq!(e.setting, "FERRY_HEADER_TIMEOUT_S");
    }
}
