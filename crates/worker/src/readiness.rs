//! Readiness and model health.
//!
//! Evidence that the model is up comes from the model log (a "loaded" line) or, in health mode,
//! from the first 200 of the health endpoint. Then: benchmark (or its cache), wait for the health
//! endpoint if one is configured, wait for the public key unless UNSECURED, and report ready at
//! once. There are no fixed sleeps (PyWorker sleeps 10 s when no health endpoint is set).
//!
//! After that a monitor probes the model every `health_interval`: the health endpoint, or a TCP
//! connect to the model server when there is none. A failure sets `error_msg`; the model coming
//! back clears it. Error lines in the log set `error_msg` too, and a later "loaded" line reruns the
//! readiness sequence and clears it, so a restarted model server brings the worker back.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyStore;
use crate::benchmark::{self, BenchmarkCache, BenchmarkSpec};
use crate::forward::Upstream;
use crate::load::Tracker;

/// First wait before a failed readiness sequence is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two readiness attempts.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How the worker learns the model is loaded (`READINESS`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Watch the model log for a loaded line (PyWorker's way).
    #[value(alias = "log")]
    #[serde(alias = "log")]
    Logs,
    /// Poll the health endpoint; no log needed.
    #[value(alias = "healthcheck")]
    #[serde(alias = "healthcheck")]
    Health,
}

/// Log lines that mean something, matched as substrings (as PyWorker matches them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogLines {
    pub loaded: Vec<String>,
    pub error: Vec<String>,
    pub info: Vec<String>,
}

/// Everything the readiness task needs.
#[derive(Debug, Clone)]
pub struct ReadinessSpec {
    pub mode: Mode,
    pub log_file: Option<PathBuf>,
    pub lines: LogLines,
    pub health: Option<String>,
    pub benchmark: BenchmarkSpec,
    pub cache: BenchmarkCache,
    pub unsecured: bool,
    /// Probe interval after readiness (PyWorker: 10 s).
    pub health_interval: Duration,
    /// How long the benchmark waits for an unreachable model server.
    pub benchmark_retry: Duration,
    /// How long to wait for the first healthy answer after the benchmark (PyWorker: 300 s).
    pub health_wait: Duration,
    /// How long to wait for the public key (PyWorker: 60 s).
    pub key_wait: Duration,
    /// How often the log file is polled.
    pub log_poll: Duration,
}

/// What a log line meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    Loaded(String),
    Error(String),
    Info(String),
}

impl LogLines {
    /// Classifies one line; errors win over loaded, loaded over info.
    pub fn classify(&self, line: &str) -> Option<LogEvent> {
        if let Some(m) = self.error.iter().find(|m| line.contains(m.as_str())) {
            return Some(LogEvent::Error(m.clone()));
        }
        if self.loaded.iter().any(|m| line.contains(m.as_str())) {
            return Some(LogEvent::Loaded(line.to_string()));
        }
        if self.info.iter().any(|m| line.contains(m.as_str())) {
            return Some(LogEvent::Info(line.to_string()));
        }
        None
    }
}

/// Runs readiness and then health monitoring until `cancel`.
pub async fn run(
    spec: ReadinessSpec,
    upstream: Upstream,
    tracker: Tracker,
    keys: Arc<KeyStore>,
    cancel: CancellationToken,
) {
    let ctx = Ctx {
        spec,
        upstream,
        tracker,
        keys,
    };
    match (ctx.spec.mode, ctx.spec.log_file.clone()) {
        (Mode::Logs, Some(path)) => {
            let (tx, mut rx) = mpsc::channel(64);
            let lines = ctx.spec.lines.clone();
            let poll = ctx.spec.log_poll;
            let tail_cancel = cancel.clone();
            let tail =
                tokio::spawn(async move { tail_log(path, lines, poll, tx, tail_cancel).await });
            let mut monitor: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => break,
                    ev = rx.recv() => match ev { Some(ev) => ev, None => break },
                };
                match ev {
                    LogEvent::Loaded(line) => {
                        tracing::info!(line = %line, "model log: loaded");
                        if ctx.become_ready(&cancel).await && monitor.is_none() {
                            let c = ctx.clone();
                            let cc = cancel.clone();
                            monitor = Some(tokio::spawn(async move { c.monitor(cc).await }));
                        }
                    }
                    LogEvent::Error(msg) => {
                        tracing::error!(matched = %msg, "model log: error line");
                        ctx.tracker.model_errored(msg);
                    }
                    LogEvent::Info(line) => tracing::info!(line = %line, "model log"),
                }
            }
            tail.abort();
            if let Some(m) = monitor {
                m.abort();
            }
        }
        _ => {
            // Health mode: the first healthy answer is the evidence.
            let Some(health) = ctx.spec.health.clone() else {
                tracing::error!("readiness needs MODEL_LOG or a health endpoint; neither is set");
                ctx.tracker
                    .model_errored("worker misconfigured: no MODEL_LOG and no health endpoint");
                return;
            };
            loop {
                if ctx.probe_health(&health).await.is_ok() {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(ctx.spec.log_poll.max(Duration::from_millis(100))) => {}
                }
            }
            if ctx.become_ready(&cancel).await {
                ctx.monitor(cancel).await;
            }
        }
    }
}

#[derive(Clone)]
struct Ctx {
    spec: ReadinessSpec,
    upstream: Upstream,
    tracker: Tracker,
    keys: Arc<KeyStore>,
}

impl Ctx {
    /// The readiness sequence, retried with back-off until it succeeds: each failure is
    /// reported as `error_msg` (the control plane sees why the worker is not ready), and the
    /// worker never gives up on a model server that may still come right (one still loading
    /// its weights may answer garbage for a while). Returns true when the worker was marked
    /// ready, false when cancelled.
    async fn become_ready(&self, cancel: &CancellationToken) -> bool {
        let mut delay = RETRY_FIRST;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return false,
                r = self.sequence() => r,
            };
            match result {
                Ok(perf) => {
                    tracing::info!(max_perf = perf, "model ready");
                    self.tracker.model_loaded(perf);
                    self.tracker.clear_any_error();
                    return true;
                }
                Err(msg) => {
                    tracing::error!(error = %msg, retry_in = ?delay, "readiness failed");
                    self.tracker.model_errored(msg);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }

    async fn sequence(&self) -> Result<f64, String> {
        let perf = benchmark::run(
            &self.upstream,
            &self.spec.benchmark,
            &self.spec.cache,
            self.spec.benchmark_retry,
        )
        .await
        .map_err(|e| format!("Benchmark failed with error: {e}"))?;
        if let Some(health) = &self.spec.health {
            let deadline = tokio::time::Instant::now() + self.spec.health_wait;
            while let Err(e) = self.probe_health(health).await {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "Timed out waiting for healthcheck after benchmark ({e})"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !self.spec.unsecured {
            let deadline = tokio::time::Instant::now() + self.spec.key_wait;
            while !self.keys.has_key() {
                if tokio::time::Instant::now() >= deadline {
                    return Err("Timed out waiting for the public key".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(perf)
    }

    async fn probe_health(&self, path: &str) -> Result<(), String> {
        let res = self
            .upstream
            .get(path, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        if status.as_u16() == 200 {
            Ok(())
        } else {
            Err(format!(
                "Healthcheck failed with status: {}",
                status.as_u16()
            ))
        }
    }

    async fn probe(&self) -> Result<(), String> {
        match &self.spec.health {
            Some(h) => self.probe_health(h).await,
            None => {
                // No health endpoint: the model server must at least accept connections.
                let hostport = self
                    .upstream
                    .base()
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(&hostport),
                )
                .await
                .map_err(|_| format!("model server {hostport} did not accept a connection"))?
                .map(|_| ())
                .map_err(|e| format!("model server {hostport} is down: {e}"))
            }
        }
    }

    /// After readiness: report failures promptly, and recovery.
    async fn monitor(&self, cancel: CancellationToken) {
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.spec.health_interval) => {}
            }
            match self.probe().await {
                Ok(()) => {
                    if let Some(msg) = failing.take() {
                        tracing::info!("model healthy again");
                        self.tracker.clear_error(&msg);
                    }
                }
                Err(msg) => {
                    if failing.as_deref() != Some(msg.as_str()) {
                        tracing::error!(error = %msg, "model health check failed");
                        if let Some(old) = failing.take() {
                            self.tracker.clear_error(&old);
                        }
                        self.tracker.model_errored(msg.clone());
                        failing = Some(msg);
                    }
                }
            }
        }
    }
}

/// Tails `path` from its start: waits for it to appear, follows appends, and starts over when
/// the file is replaced (new inode) or truncated.
async fn tail_log(
    path: PathBuf,
    lines: LogLines,
    poll: Duration,
    tx: mpsc::Sender<LogEvent>,
    cancel: CancellationToken,
) {
    let mut reader = LogReader::new(path);
    loop {
        for line in reader.read_new_lines() {
            if let Some(ev) = lines.classify(&line) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Incremental reader of a log file that may appear late, rotate, or be truncated.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    inode: Option<u64>,
    offset: u64,
    partial: Vec<u8>,
}

impl LogReader {
    /// A reader positioned at the start of `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            inode: None,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The path followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Complete lines appended since the last call (a trailing partial line waits).
    pub fn read_new_lines(&mut self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Vec::new();
        };
        let ino = meta.ino();
        if self.inode != Some(ino) || meta.len() < self.offset {
            // New file (rotation) or truncated in place: start over from its beginning.
            self.inode = Some(ino);
            self.offset = 0;
            self.partial.clear();
        }
        if meta.len() == self.offset {
            return Vec::new();
        }
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        // Bound one read so a huge log cannot stall the task; the rest comes next poll.
        let n = match (&mut f).take(4 << 20).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(_) => return Vec::new(),
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            out.push(text.trim_end_matches(['\n', '\r']).to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-rd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("model.log")
    }

    #[test]
    fn reader_follows_late_file_appends_partial_lines_and_rotation() {
        let path = tmp("rot");
        let mut r = LogReader::new(path.clone());
        assert!(r.read_new_lines().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "one\ntw").unwrap();
        f.flush().unwrap();
        assert_eq!(r.read_new_lines(), vec!["one"]);
        writeln!(f, "o").unwrap();
        f.flush().unwrap();
        assert_eq!(r.read_new_lines(), vec!["two"]);
        // Rotation: the old file moves away and a new one takes its name.
        std::fs::rename(&path, path.with_extension("old")).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        assert_eq!(r.read_new_lines(), vec!["fresh"]);
        // Truncation in place.
        std::fs::write(&path, "").unwrap();
        assert!(r.read_new_lines().is_empty());
        std::fs::write(&path, "again\n").unwrap();
        assert_eq!(r.read_new_lines(), vec!["again"]);
    }

    #[test]
    fn classify_prefers_errors() {
        let l = LogLines {
            loaded: vec!["ready".into()],
            error: vec!["Traceback".into()],
            info: vec!["Downloading".into()],
        };
        assert_eq!(
            l.classify("x ready y"),
            Some(LogEvent::Loaded("x ready y".into()))
        );
        assert_eq!(
            l.classify("Traceback ready"),
            Some(LogEvent::Error("Traceback".into()))
        );
        assert_eq!(
            l.classify("Downloading 5%"),
            Some(LogEvent::Info("Downloading 5%".into()))
        );
        assert_eq!(l.classify("nothing"), None);
    }
}
