//! `ferry control` settings: one clap field per setting (flag + env), validated once into
//! [`Settings`]. Each default is stated once, in its field's declaration: [`Settings::for_url`]
//! (tests, embedding) is the same declarations parsed with no flags.
//!
//! Defaults make `ferry control` work with zero setup: it binds `127.0.0.1:8080` (the address
//! the vastai SDK's `local` instance uses), keeps its state in `~/.cache/ferry/`, and launches
//! workers on this host in front of the built-in simulated model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::provider::vast::api::RetryPolicy;
use crate::provider::vast::valid_plane;
use crate::secrets::Secret;
use crate::store::PgTarget;

/// Arguments of `ferry control`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// Address to listen on (loopback by default; expose deliberately).
    #[arg(long, env = "FERRY_CONTROL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Base URL workers and clients use to reach this control plane (REPORT_ADDR of launched
    /// workers). Default: `http://<listen address>`.
    #[arg(long, env = "FERRY_CONTROL_URL")]
    pub public_url: Option<String>,

    /// Directory for the database and the local provider's instance directories.
    /// Default: `~/.cache/ferry`.
    #[arg(long, env = "FERRY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// SQLite database file. Default: `<state-dir>/control.db`.
    #[arg(long, env = "FERRY_DB")]
    pub db: Option<PathBuf>,

    /// Keep the state in PostgreSQL instead of the SQLite file:
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or `postgresql://`). Prefer the
    /// environment variable: a flag shows in `ps`. See docs/control.md, "PostgreSQL".
    #[arg(long, env = "FERRY_STORE", hide_env_values = true)]
    pub store: Option<String>,

    /// Account API key for the endpoint/workergroup API. Default: generated on first start and
    /// stored in the database. Either way it is written to `<state-dir>/api_key` (mode 0600).
    #[arg(long, env = "FERRY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Where the workers of a workergroup that names no `provider` come from.
    #[arg(long, env = "FERRY_PROVIDER", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,

    /// The `ferry` executable the local provider runs as `ferry worker` and `ferry sim-model`.
    /// Default: this executable.
    #[arg(long, env = "FERRY_EXE")]
    pub ferry_exe: Option<PathBuf>,

    /// Default model server command for workergroups that carry none. `{model_port}`,
    /// `{model_log}`, `{ferry}` and `{dir}` are substituted; run with `sh -c`.
    /// Default: `{ferry} sim-model --listen 127.0.0.1:{model_port} --log-file {model_log}`.
    #[arg(long, env = "FERRY_MODEL_CMD")]
    pub model_cmd: Option<String>,

    /// Default worker preset (BACKEND) for workergroups that carry none.
    #[arg(long, env = "FERRY_BACKEND", default_value = "openai")]
    pub backend: String,

    /// Autoscaler tick, milliseconds.
    #[arg(long, env = "FERRY_AUTOSCALE_INTERVAL_MS", default_value = "1000")]
    pub autoscale_interval_ms: u64,

    /// A ready worker with no report for this long stops receiving requests; after twice this
    /// long it counts as errored.
    #[arg(long, env = "FERRY_STALE_AFTER_S", default_value = "30")]
    pub stale_after_s: u64,

    /// Idle seconds before a surplus ready worker is stopped, when the endpoint sets no
    /// positive `inactivity_timeout`.
    #[arg(long, env = "FERRY_IDLE_STOP_AFTER_S", default_value = "60")]
    pub idle_stop_after_s: u64,

    /// Lifetime of the Ferry token (`ferry_exp`) in route answers, seconds.
    #[arg(long, env = "FERRY_TOKEN_TTL_S", default_value = "600")]
    pub token_ttl_s: u64,

    /// A queued request nobody polled for this long is dropped, seconds.
    #[arg(long, env = "FERRY_QUEUE_TTL_S", default_value = "120")]
    pub queue_ttl_s: u64,

    /// A web console session (`/ui/`) ends this long after sign-in, seconds.
    #[arg(long, env = "FERRY_UI_SESSION_TTL_S", default_value = "28800")]
    pub ui_session_ttl_s: u64,

    /// Routed load a worker has not yet acknowledged in a report is forgotten after this
    /// long, seconds (the client never called the worker).
    #[arg(long, env = "FERRY_PENDING_TTL_S", default_value = "60")]
    pub pending_ttl_s: u64,

    /// How long the OpenAI gateway waits for a worker before answering 503, seconds.
    #[arg(long, env = "FERRY_GATEWAY_WAIT_S", default_value = "300")]
    pub gateway_wait_s: u64,

    /// Grace between SIGTERM and SIGKILL when stopping a local instance, seconds (also the
    /// workers' own shutdown grace).
    #[arg(long, env = "FERRY_STOP_GRACE_S", default_value = "10")]
    pub stop_grace_s: u64,

    /// Largest request body the OpenAI gateway accepts, bytes.
    #[arg(long, env = "FERRY_GATEWAY_MAX_BODY_BYTES", default_value = "16777216")]
    pub gateway_max_body_bytes: usize,

    /// Workers the gateway tries for one request (the first plus re-routes after a connect
    /// failure, a timeout before the response head, or a 5xx head).
    #[arg(long, env = "FERRY_GATEWAY_ATTEMPTS", default_value = "3")]
    pub gateway_attempts: usize,

    /// How long the gateway waits for a worker's response head, seconds (streams then run as
    /// long as they run).
    #[arg(
        long,
        env = "FERRY_GATEWAY_FIRST_BYTE_TIMEOUT_S",
        default_value = "600"
    )]
    pub gateway_first_byte_timeout_s: u64,

    /// RSA key size for a newly generated signing key.
    #[arg(long, env = "FERRY_KEY_BITS", default_value = "2048",
          value_parser = clap::value_parser!(u16).range(2048..=4096))]
    pub key_bits: u16,

    /// Most client connections held open; at the limit the oldest one not serving a request is
    /// closed for a new one. Default: a quarter of the open-file limit, at most 8192.
    #[arg(long, env = "FERRY_CONTROL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Runtime threads: 0 = one per core, 1 = a single-threaded runtime (no cross-thread
    /// wake-ups per request; see docs/control.md). Read by the binary that builds the runtime.
    #[arg(long, env = "FERRY_CONTROL_THREADS", default_value = "0")]
    pub threads: usize,

    /// Seconds a client gets to send a request's headers (from connect, or from a kept-alive
    /// connection's first new byte).
    #[arg(long, env = "FERRY_CONTROL_HEADER_TIMEOUT_S", default_value = "10")]
    pub header_timeout_s: u64,

    /// Seconds a kept-alive client connection may stay idle between requests.
    #[arg(
        long,
        env = "FERRY_CONTROL_CLIENT_IDLE_TIMEOUT_S",
        default_value = "75"
    )]
    pub client_idle_timeout_s: u64,

    /// Run as one of several replicas sharing the `--store` PostgreSQL database: the base
    /// URLs of every replica, comma-separated (this one's `--public-url` among them). One
    /// replica at a time holds the lease and owns every endpoint; the others hand requests to
    /// it. Launched workers get the whole list as `REPORT_ADDR`. See docs/ha.md.
    #[arg(long, env = "FERRY_REPLICAS")]
    pub replicas: Option<String>,

    /// With `--replicas`: a lease not renewed for this long (as seen by another replica that
    /// can read the database) is taken over, seconds. The owner renews every third of it.
    #[arg(long, env = "FERRY_LEASE_TTL_S", default_value = "5")]
    pub lease_ttl_s: u64,

    /// With `--replicas`: how long a replica holds a request while no owner is known (a
    /// failover under way) before answering 503, seconds. Keep it under the clients' own
    /// timeout (Vast's client gives `/route/` 10 s and does not retry it) and above the lease
    /// time.
    #[arg(long, env = "FERRY_HANDOFF_WAIT_S", default_value = "8")]
    pub handoff_wait_s: u64,

    /// The Vast provider's settings.
    #[command(flatten)]
    pub vast: VastArgs,
}

/// Settings of a replica (`--replicas`).
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// Every replica's base URL, this one's included.
    pub urls: Vec<String>,
    /// Lease lifetime without renewal.
    pub lease_ttl: Duration,
    /// How long a request waits for an owner.
    pub handoff_wait: Duration,
}

/// Settings of the Vast provider ([`crate::provider::vast`]). It exists when an API key is
/// given: `--vast-api-key-file` (a file holding the key, which wins when both are set) or
/// `VAST_API_KEY`.
#[derive(clap::Args, Debug, Clone)]
pub struct VastArgs {
    /// Vast API base URL.
    #[arg(long, env = "VAST_URL", default_value = "https://console.vast.ai")]
    pub vast_api_url: String,

    /// File holding the Vast API key (keep it mode 0600). Wins over `VAST_API_KEY`.
    #[arg(long, env = "VAST_API_KEY_FILE")]
    pub vast_api_key_file: Option<PathBuf>,

    /// Vast API key. Prefer the environment variable or the key file: a flag shows in `ps`.
    #[arg(long, env = "VAST_API_KEY", hide_env_values = true)]
    pub vast_api_key: Option<String>,

    /// This control plane's name in its instances' labels (`ferry-<name>-<worker id>`, lower
    /// case letters and digits), so two control planes on one Vast account never touch each
    /// other's instances. Default: generated once and kept in `<state-dir>/vast_plane`.
    #[arg(long, env = "FERRY_VAST_PLANE")]
    pub vast_plane: Option<String>,

    /// How often the instance list is read (one call for all instances), milliseconds.
    #[arg(long, env = "FERRY_VAST_POLL_INTERVAL_MS", default_value = "5000")]
    pub vast_poll_interval_ms: u64,

    /// An instance not running this long after its create or resume (image pull, start) is
    /// destroyed, its machine avoided, and the worker replaced, seconds.
    #[arg(long, env = "FERRY_VAST_LOAD_DEADLINE_S", default_value = "900")]
    pub vast_load_deadline_s: u64,

    /// Creates one launch tries (an offer taken meanwhile, a lost answer) before it fails.
    #[arg(long, env = "FERRY_VAST_CREATE_ATTEMPTS", default_value = "5",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub vast_create_attempts: u32,

    /// How long one API operation keeps retrying through rate limits and outages, seconds.
    #[arg(long, env = "FERRY_VAST_API_DEADLINE_S", default_value = "120")]
    pub vast_api_deadline_s: u64,

    /// First retry back-off, milliseconds (doubling, jittered, up to the maximum).
    #[arg(long, env = "FERRY_VAST_BACKOFF_MS", default_value = "500")]
    pub vast_backoff_ms: u64,

    /// Largest retry back-off, milliseconds.
    #[arg(long, env = "FERRY_VAST_BACKOFF_MAX_MS", default_value = "15000")]
    pub vast_backoff_max_ms: u64,

    /// One API request's timeout, seconds.
    #[arg(long, env = "FERRY_VAST_REQUEST_TIMEOUT_S", default_value = "30")]
    pub vast_request_timeout_s: u64,

    /// How long a machine whose instance failed to load is avoided, seconds.
    #[arg(long, env = "FERRY_VAST_BAD_MACHINE_TTL_S", default_value = "3600")]
    pub vast_bad_machine_ttl_s: u64,
}

/// Where a workergroup's workers come from (`provider` of a workergroup; see docs/fleet.md).
#[derive(
    clap::ValueEnum,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    Default,
)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Processes on this host ([`crate::provider::local`]).
    #[default]
    Local,
    /// Workers started elsewhere that join with a token ([`crate::provider::external`]).
    External,
    /// Instances rented on Vast through its REST API ([`crate::provider::vast`]).
    Vast,
}

impl ProviderKind {
    /// Every kind.
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Local,
        ProviderKind::External,
        ProviderKind::Vast,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::External => "external",
            ProviderKind::Vast => "vast",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The Vast provider's validated settings.
#[derive(Debug, Clone)]
pub struct VastSettings {
    /// API base URL.
    pub api_url: String,
    /// The key; `None`: no Vast provider.
    pub api_key: Option<Secret>,
    /// Label namespace; `None`: `<state-dir>/vast_plane`.
    pub plane: Option<String>,
    /// Instance list period.
    pub poll_interval: Duration,
    /// Create/resume → running deadline.
    pub load_deadline: Duration,
    /// Creates per launch.
    pub create_attempts: u32,
    /// API retries and timeouts.
    pub retry: RetryPolicy,
    /// How long a failed machine is avoided.
    pub bad_machine_ttl: Duration,
}

/// The provider's settings.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Which provider.
    pub kind: ProviderKind,
    /// The `ferry` executable the local provider runs; `None`: this executable.
    pub ferry_exe: Option<PathBuf>,
    /// Default model server command.
    pub model_cmd: Option<String>,
    /// Default worker preset.
    pub backend: String,
    /// SIGTERM → SIGKILL grace, and the workers' own shutdown grace.
    pub stop_grace: Duration,
}

/// The OpenAI gateway's limits.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// How long a request waits for a worker before 503.
    pub wait: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Workers tried per request.
    pub attempts: usize,
    /// Wait for a worker's response head.
    pub first_byte_timeout: Duration,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL workers report to.
    pub public_url: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// SQLite database path; `None` keeps everything in memory (tests). Unused when
    /// `postgres` is set.
    pub db: Option<PathBuf>,
    /// The PostgreSQL database (`--store`); `None`: SQLite.
    pub postgres: Option<PgTarget>,
    /// Account key override.
    pub api_key: Option<String>,
    /// Autoscaler tick.
    pub autoscale_interval: Duration,
    /// Report staleness limit.
    pub stale_after: Duration,
    /// Idle time before a surplus worker stops.
    pub idle_stop_after: Duration,
    /// `ferry_exp` lifetime.
    pub token_ttl: Duration,
    /// Unpolled queued request lifetime.
    pub queue_ttl: Duration,
    /// Web console session lifetime.
    pub ui_session_ttl: Duration,
    /// Unacknowledged routed load lifetime.
    pub pending_ttl: Duration,
    /// The OpenAI gateway's limits.
    pub gateway: GatewaySettings,
    /// Where and how workers run.
    pub provider: ProviderSettings,
    /// RSA key size for new keys.
    pub key_bits: usize,
    /// A PEM signing key to use when the database has none yet (tests share one key to skip
    /// RSA generation).
    pub signing_key_pem: Option<String>,
    /// The listener's limits: connections, header and idle timeouts.
    pub connections: ferry_serve::Limits,
    /// The Vast provider.
    pub vast: VastSettings,
    /// Replica settings (`--replicas`); `None`: a single control plane.
    pub replica: Option<ReplicaSettings>,
}

impl Settings {
    /// `REPORT_ADDR` of launched and joined workers: every replica's URL, comma-separated, or
    /// this control plane's.
    pub fn report_addr(&self) -> String {
        match &self.replica {
            Some(r) => r.urls.join(","),
            None => self.public_url.clone(),
        }
    }

    /// Settings for tests and embedding: every declared default (and any `FERRY_*` variable
    /// set, as for `ferry control`), an in-memory database, and a state folder under the
    /// temporary directory.
    #[expect(
        clippy::expect_used,
        reason = "the declared defaults validate: `declared_defaults_validate` checks it"
    )]
    pub fn for_url(public_url: impl Into<String>) -> Settings {
        let state_dir = std::env::temp_dir().join("ferry-control");
        let args = ControlArgs::parse_with(&["--state-dir", &state_dir.to_string_lossy()])
            .expect("the declared defaults parse");
        let mut s = args
            .validate(([127, 0, 0, 1], 0).into())
            .expect("the declared defaults validate");
        s.public_url = public_url.into();
        s.db = None;
        s.postgres = None;
        s.replica = None;
        s
    }
}

impl ControlArgs {
    /// Parses `ferry control`'s flags from `argv` (without the command name).
    pub fn parse_with(argv: &[&str]) -> Result<ControlArgs, clap::Error> {
        use clap::{Args as _, FromArgMatches as _};
        let matches = ControlArgs::augment_args(clap::Command::new("control"))
            .try_get_matches_from(std::iter::once("control").chain(argv.iter().copied()))?;
        ControlArgs::from_arg_matches(&matches)
    }

    /// Validates into [`Settings`], given the address actually bound.
    pub fn validate(&self, bound: SocketAddr) -> Result<Settings, ConfigError> {
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => default_state_dir()?,
        };
        // An empty FERRY_STORE (a compose file's `${FERRY_STORE:-}`) means none.
        let postgres = match self.store.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                if self.db.is_some() {
                    return Err(ConfigError::new(
                        "--store",
                        "give either --store (PostgreSQL) or --db (SQLite), not both",
                    ));
                }
                Some(PgTarget::parse(url).map_err(|e| ConfigError::new("--store", e))?)
            }
            None => None,
        };
        let db = match postgres {
            Some(_) => None,
            None => Some(
                self.db
                    .clone()
                    .unwrap_or_else(|| state_dir.join("control.db")),
            ),
        };
        let public_url = match &self.public_url {
            Some(u) => {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "--public-url",
                        "must start with http:// or https://",
                    ));
                }
                u.trim_end_matches('/').to_owned()
            }
            None => format!("http://{bound}"),
        };
        if let Some(k) = &self.api_key {
            if k.trim().is_empty() {
                return Err(ConfigError::new("FERRY_API_KEY", "must not be empty"));
            }
        }
        let ms = |v: u64, name: &'static str| {
            if v == 0 {
                Err(ConfigError::new(name, "must be positive"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let replica = self.replica(postgres.is_some(), &public_url)?;
        let vast = self.vast.validate()?;
        if replica.is_some() && vast.api_key.is_some() && vast.plane.is_none() {
            // The plane names the instances' labels; a successor must recognize its
            // predecessor's instances, and a name generated per state folder would differ.
            return Err(ConfigError::new(
                "--vast-plane",
                "replicas share their Vast instances: give every replica the same --vast-plane",
            ));
        }
        Ok(Settings {
            public_url,
            state_dir,
            db,
            postgres,
            api_key: self.api_key.clone(),
            autoscale_interval: ms(self.autoscale_interval_ms, "--autoscale-interval-ms")?,
            stale_after: ms(self.stale_after_s.saturating_mul(1000), "--stale-after-s")?,
            idle_stop_after: Duration::from_secs(self.idle_stop_after_s),
            token_ttl: ms(self.token_ttl_s.saturating_mul(1000), "--token-ttl-s")?,
            queue_ttl: ms(self.queue_ttl_s.saturating_mul(1000), "--queue-ttl-s")?,
            ui_session_ttl: ms(
                self.ui_session_ttl_s.saturating_mul(1000),
                "--ui-session-ttl-s",
            )?,
            pending_ttl: ms(self.pending_ttl_s.saturating_mul(1000), "--pending-ttl-s")?,
            gateway: GatewaySettings {
                wait: ms(self.gateway_wait_s.saturating_mul(1000), "--gateway-wait-s")?,
                max_body_bytes: positive(self.gateway_max_body_bytes, "--gateway-max-body-bytes")?,
                attempts: positive(self.gateway_attempts, "--gateway-attempts")?,
                first_byte_timeout: ms(
                    self.gateway_first_byte_timeout_s.saturating_mul(1000),
                    "--gateway-first-byte-timeout-s",
                )?,
            },
            provider: ProviderSettings {
                kind: self.provider,
                ferry_exe: self.ferry_exe.clone(),
                model_cmd: self.model_cmd.clone(),
                backend: self.backend.clone(),
                stop_grace: ms(self.stop_grace_s.saturating_mul(1000), "--stop-grace-s")?,
            },
            key_bits: usize::from(self.key_bits),
            signing_key_pem: None,
            connections: {
                let mut limits = ferry_serve::Limits::new("control")
                    .header_timeout(ms(
                        self.header_timeout_s.saturating_mul(1000),
                        "--header-timeout-s",
                    )?)
                    .idle_timeout(ms(
                        self.client_idle_timeout_s.saturating_mul(1000),
                        "--client-idle-timeout-s",
                    )?);
                match self.max_connections {
                    Some(0) => {
                        return Err(ConfigError::new("--max-connections", "must be positive"))
                    }
                    Some(n) => limits = limits.max_connections(n),
                    None => {}
                }
                limits
            },
            vast,
            replica,
        })
    }

    /// `--replicas` checked: PostgreSQL required, every URL http(s), this replica among them.
    fn replica(&self, postgres: bool, me: &str) -> Result<Option<ReplicaSettings>, ConfigError> {
        let Some(list) = self.replicas.as_deref().filter(|l| !l.trim().is_empty()) else {
            return Ok(None);
        };
        if !postgres {
            return Err(ConfigError::new(
                "--replicas",
                "replicas share a PostgreSQL database: give --store postgres://...",
            ));
        }
        let mut urls = Vec::new();
        for u in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::new(
                    "--replicas",
                    format!("{u}: must start with http:// or https://"),
                ));
            }
            urls.push(u.trim_end_matches('/').to_owned());
        }
        if !urls.iter().any(|u| u == me) {
            return Err(ConfigError::new(
                "--replicas",
                format!("this replica's --public-url {me} is not in the list"),
            ));
        }
        let secs = |v: u64, name: &'static str| {
            if v == 0 {
                Err(ConfigError::new(name, "must be positive"))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        Ok(Some(ReplicaSettings {
            urls,
            lease_ttl: secs(self.lease_ttl_s, "--lease-ttl-s")?,
            handoff_wait: secs(self.handoff_wait_s, "--handoff-wait-s")?,
        }))
    }
}

impl VastArgs {
    fn validate(&self) -> Result<VastSettings, ConfigError> {
        let url = self.vast_api_url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new(
                "--vast-api-url",
                "must start with http:// or https://",
            ));
        }
        // The file wins: it is the deliberate choice, the variable may be inherited.
        let api_key = match (&self.vast_api_key_file, &self.vast_api_key) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "--vast-api-key-file",
                        format!("reading {}: {e}", path.display()),
                    )
                })?;
                let key = Secret::new(&text);
                if key.is_empty() {
                    return Err(ConfigError::new(
                        "--vast-api-key-file",
                        format!("{} is empty", path.display()),
                    ));
                }
                Some(key)
            }
            (None, Some(k)) if !k.trim().is_empty() => Some(Secret::new(k)),
            (None, _) => None,
        };
        if let Some(p) = &self.vast_plane {
            if !valid_plane(p) {
                return Err(ConfigError::new(
                    "--vast-plane",
                    "must be 1 to 32 lower-case letters and digits",
                ));
            }
        }
        let ms = |v: u64, name: &'static str| {
            if v == 0 {
                Err(ConfigError::new(name, "must be positive"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let s = |v: u64, name: &'static str| ms(v.saturating_mul(1000), name);
        let backoff = ms(self.vast_backoff_ms, "--vast-backoff-ms")?;
        let backoff_max = ms(self.vast_backoff_max_ms, "--vast-backoff-max-ms")?;
        if backoff_max < backoff {
            return Err(ConfigError::new(
                "--vast-backoff-max-ms",
                "must be at least --vast-backoff-ms",
            ));
        }
        Ok(VastSettings {
            api_url: url.to_owned(),
            api_key,
            plane: self.vast_plane.clone(),
            poll_interval: ms(self.vast_poll_interval_ms, "--vast-poll-interval-ms")?,
            load_deadline: s(self.vast_load_deadline_s, "--vast-load-deadline-s")?,
            create_attempts: self.vast_create_attempts,
            retry: RetryPolicy {
                deadline: s(self.vast_api_deadline_s, "--vast-api-deadline-s")?,
                initial: backoff,
                max: backoff_max,
                request_timeout: s(self.vast_request_timeout_s, "--vast-request-timeout-s")?,
            },
            bad_machine_ttl: s(self.vast_bad_machine_ttl_s, "--vast-bad-machine-ttl-s")?,
        })
    }
}

fn positive(v: usize, name: &'static str) -> Result<usize, ConfigError> {
    if v == 0 {
        Err(ConfigError::new(name, "must be positive"))
    } else {
        Ok(v)
    }
}

fn default_state_dir() -> Result<PathBuf, ConfigError> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("ferry"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("ferry")),
        None => Err(ConfigError::new(
            "--state-dir",
            "HOME is not set; pass --state-dir",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    fn validate(argv: &[&str]) -> Result<Settings, ConfigError> {
        let mut full = vec!["control", "--state-dir", "/tmp/ferry-control-test"];
        full.extend_from_slice(argv);
        let matches = ControlArgs::augment_args(clap::Command::new("control"))
            .try_get_matches_from(full)
            .unwrap();
        let args = ControlArgs::from_arg_matches(&matches).unwrap();
        args.validate("127.0.0.1:8080".parse().unwrap())
    }

    #[test]
    fn declared_defaults_validate() {
        let s = Settings::for_url("http://127.0.0.1:1");
        assert_eq!(s.public_url, "http://127.0.0.1:1");
        assert_eq!(s.gateway.attempts, 3);
        assert_eq!(s.provider.kind, ProviderKind::Local);
        assert_eq!(s.provider.stop_grace, Duration::from_secs(10));
        assert!(s.db.is_none());
    }

    #[test]
    fn enum_and_ranged_settings_are_refused_by_name() {
        for argv in [
            &["--provider", "cloud"][..],
            &["--key-bits", "1024"],
            &["--gateway-attempts", "0"],
        ] {
            let full: Vec<&str> = ["--state-dir", "/tmp/x"]
                .iter()
                .chain(argv)
                .copied()
                .collect();
            let refused = match ControlArgs::parse_with(&full) {
                Err(e) => e.to_string().contains(argv[0]),
                Ok(a) => a
                    .validate("127.0.0.1:1".parse().unwrap())
                    .is_err_and(|e| e.setting == argv[0]),
            };
            assert!(refused, "{argv:?}");
        }
    }

    #[test]
    fn vast_settings() {
        let s = validate(&[]).unwrap();
        assert!(s.vast.api_key.is_none() || std::env::var_os("VAST_API_KEY").is_some());
        assert_eq!(s.vast.api_url, "https://console.vast.ai");
        assert_eq!(s.vast.poll_interval, Duration::from_secs(5));
        assert_eq!(s.vast.create_attempts, 5);
        let dir = std::env::temp_dir().join(format!("ferry-vast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let f = file.to_string_lossy().into_owned();
        let s = validate(&["--vast-api-key", "from-flag", "--vast-api-key-file", &f]).unwrap();
        assert_eq!(
            s.vast.api_key.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert_eq!(format!("{:?}", s.vast.api_key), "Some(***)");
        std::fs::write(&file, "\n").unwrap();
        let e = validate(&["--vast-api-key-file", &f]).unwrap_err();
        assert_eq!(e.setting, "--vast-api-key-file");
        let e = validate(&["--vast-api-key-file", "/nonexistent/ferry-key"]).unwrap_err();
        assert_eq!(e.setting, "--vast-api-key-file");
        std::fs::remove_dir_all(&dir).unwrap();
        for (argv, name) in [
            (&["--vast-api-url", "console.vast.ai"][..], "--vast-api-url"),
            (&["--vast-plane", "Has-Caps"], "--vast-plane"),
            (&["--vast-poll-interval-ms", "0"], "--vast-poll-interval-ms"),
            (
                &["--vast-backoff-ms", "900", "--vast-backoff-max-ms", "100"],
                "--vast-backoff-max-ms",
            ),
        ] {
            assert_eq!(validate(argv).unwrap_err().setting, name, "{argv:?}");
        }
    }

    #[test]
    fn store_selects_postgres_by_url() {
        let s = validate(&[]).unwrap();
        assert!(s.postgres.is_none() || std::env::var_os("FERRY_STORE").is_some());
        let s = validate(&["--store", "postgres://ferry:pw@127.0.0.1:5432/state"]).unwrap();
        let pg = s.postgres.unwrap();
        assert_eq!(pg.shown(), "postgres://ferry@127.0.0.1:5432/state");
        assert!(s.db.is_none());
        assert!(!format!("{pg:?}").contains("pw"));
        let s = validate(&["--store", "postgresql://ferry@db/state"]).unwrap();
        assert!(s.postgres.is_some());
        let s = validate(&["--store", " "]).unwrap();
        assert!(s.postgres.is_none() && s.db.is_some());
        for argv in [
            &["--store", "sqlite:///tmp/x.db"][..],
            &["--store", "postgres://u:pw@h:port/db"],
            &["--store", "postgres://u@h/db", "--db", "/tmp/x.db"],
        ] {
            let e = validate(argv).unwrap_err();
            assert_eq!(e.setting, "--store", "{argv:?}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn replicas_need_postgres_and_list_this_replica() {
        let pg = "postgres://u@127.0.0.1:5432/db";
        let list = "http://127.0.0.1:8080/, http://10.0.0.2:8080";
        let s = validate(&["--store", pg, "--replicas", list, "--lease-ttl-s", "3"]).unwrap();
        let r = s.replica.clone().unwrap();
        assert_eq!(r.urls, ["http://127.0.0.1:8080", "http://10.0.0.2:8080"]);
        assert_eq!(r.lease_ttl, Duration::from_secs(3));
        assert_eq!(
            s.report_addr(),
            "http://127.0.0.1:8080,http://10.0.0.2:8080"
        );
        assert_eq!(
            validate(&[]).unwrap().report_addr(),
            "http://127.0.0.1:8080"
        );
        for argv in [
            &["--replicas", list][..],
            &["--store", pg, "--replicas", "http://10.0.0.2:8080"],
            &[
                "--store",
                pg,
                "--replicas",
                "10.0.0.2:8080,http://127.0.0.1:8080",
            ],
        ] {
            let e = validate(argv).unwrap_err();
            assert_eq!(e.setting, "--replicas", "{argv:?}");
        }
        let e = validate(&["--store", pg, "--replicas", list, "--lease-ttl-s", "0"]).unwrap_err();
        assert_eq!(e.setting, "--lease-ttl-s");
        let vast = ["--store", pg, "--replicas", list, "--vast-api-key", "k"];
        assert_eq!(validate(&vast).unwrap_err().setting, "--vast-plane");
        let named: Vec<&str> = vast
            .iter()
            .copied()
            .chain(["--vast-plane", "prod"])
            .collect();
        assert!(validate(&named).is_ok());
    }

    #[test]
    fn client_connection_settings() {
        let s = validate(&[]).unwrap();
        assert_eq!(s.connections.header_timeout, Duration::from_secs(10));
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(75));
        assert_eq!(
            s.connections.max_connections,
            ferry_serve::share_of_open_files(4)
        );
        let s = validate(&[
            "--max-connections",
            "16",
            "--header-timeout-s",
            "3",
            "--client-idle-timeout-s",
            "9",
        ])
        .unwrap();
        assert_eq!(s.connections.max_connections, 16);
        assert_eq!(s.connections.header_timeout, Duration::from_secs(3));
        assert_eq!(s.connections.idle_timeout, Duration::from_secs(9));
        let e = validate(&["--max-connections", "0"]).unwrap_err();
        assert_eq!(e.setting, "--max-connections");
        let e = validate(&["--header-timeout-s", "0"]).unwrap_err();
        assert_eq!(e.setting, "--header-timeout-s");
    }
}
