//! The `local` provider: worker instances as processes on this host.
//!
//! An instance is a model server process plus a `ferry worker` process, each in its own
//! process group, with a state directory `<state-dir>/instances/<id>/` holding:
//!
//! - `ports.json`: its loopback ports (worker, worker side listener, model), kept across stop
//!   and resume so its URL does not change;
//! - `.has_benchmark`: the worker's benchmark cache (`FERRY_BENCHMARK_CACHE`), so a resumed
//!   ("cold") worker skips the benchmark and is ready in about a second;
//! - `model.log` (`MODEL_LOG`, rotated to `model.log.prev` on each start so the worker never
//!   reads a previous run's "loaded" line), `model.out`, `worker.out`.
//!
//! The worker gets Vast's environment: `WORKER_PORT`, `WORKER_HTTP_PORT`, `REPORT_ADDR` (the
//! control plane), `CONTAINER_ID`, `MASTER_TOKEN`, `PUBLIC_IPADDR=127.0.0.1`,
//! `FERRY_LISTEN_HOST=127.0.0.1`, `MODEL_SERVER_URL`, `MODEL_LOG`, `BACKEND`,
//! `FERRY_BENCHMARK_CACHE`, `VAST_TCP_PORT_<WORKER_PORT>`, plus the workergroup's `env`. A
//! workergroup's `worker_cmd` (run with `sh -c`, same substitutions plus `{worker_port}`)
//! replaces `ferry worker`, so an official PyWorker script can run instead. The model command (the
//! workergroup's `model_cmd`, else `--model-cmd`, else Ferry's simulated model) runs with
//! `sh -c`, after substituting `{model_port}`, `{model_log}`, `{ferry}` and `{dir}`
//! (shell-quoted), and also sees `MODEL_PORT` and `MODEL_LOG`.
//!
//! Stopping sends SIGTERM to both process groups, then SIGKILL after the grace period. Every
//! child is `kill_on_drop`, and [`Provider::shutdown`] stops all instances. If either process
//! exits on its own, the other is stopped and the control plane hears [`ProviderEvent::Exited`].
//!
//! The instances outlive a control plane that crashes (SIGKILL, OOM): it must not take the
//! fleet down with it. Each instance's processes are recorded in `pids.json` (pid and start
//! time, so a recycled pid is never mistaken for them) as soon as they are spawned, and on the
//! next start [`Provider::adopt`] takes back the ones the store still counts as up: they keep
//! serving and reporting, and stop, resume, delete and shutdown reach them again. Any other
//! instance process it finds (a record deleted or stopped meanwhile, half an instance) is
//! stopped. An adopted process is not this process's child, so its exit is noticed by polling
//! `/proc`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{EventSink, LaunchSpec, Provider, ProviderError, ProviderEvent, SIM_MODEL_CMD};

/// Local provider settings.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `ferry` executable.
    pub ferry_exe: PathBuf,
    /// Root of the instance directories.
    pub state_dir: PathBuf,
    /// Default model command.
    pub model_cmd: Option<String>,
    /// Default preset.
    pub backend: String,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    /// Extra environment for every worker (tests use it for fast report ticks).
    pub worker_env: BTreeMap<String, String>,
}

/// How often an adopted process is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// The file naming an instance's processes.
const PIDS_FILE: &str = "pids.json";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct Ports {
    worker: u16,
    http: u16,
    model: u16,
}

type StopAck = oneshot::Sender<()>;

/// Runs instances as local processes.
pub struct LocalProvider {
    cfg: LocalConfig,
    events: Mutex<Option<EventSink>>,
    running: Mutex<HashMap<i64, oneshot::Sender<StopAck>>>,
    tasks: TaskTracker,
    /// Cancelled by [`Provider::hand_over`]: every supervisor lets its instance go.
    released: CancellationToken,
}

impl LocalProvider {
    /// A provider with these settings.
    pub fn new(cfg: LocalConfig) -> LocalProvider {
        LocalProvider {
            cfg,
            events: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            released: CancellationToken::new(),
        }
    }

    fn dir(&self, id: i64) -> PathBuf {
        self.cfg.state_dir.join("instances").join(id.to_string())
    }

    fn sink(&self) -> Option<EventSink> {
        match self.events.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, oneshot::Sender<StopAck>>> {
        match self.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Ids of running instances.
    pub fn running_ids(&self) -> Vec<i64> {
        self.running().keys().copied().collect()
    }

    async fn start(&self, spec: LaunchSpec, resume: bool) -> Result<(), ProviderError> {
        let id = spec.worker_id;
        if self.running().contains_key(&id) {
            return Ok(());
        }
        let dir = self.dir(id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| ProviderError(format!("creating {}: {e}", dir.display())))?;
        let ports_file = dir.join("ports.json");
        let old: Option<Ports> = if resume {
            tokio::fs::read(&ports_file)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            None
        };
        let ports = match old {
            Some(p) if ports_free(&[p.worker, p.http, p.model]) => p,
            _ => pick_ports()?,
        };
        let ports_json = serde_json::to_vec(&ports).map_err(|e| ProviderError(e.to_string()))?;
        tokio::fs::write(&ports_file, ports_json)
            .await
            .map_err(|e| ProviderError(format!("writing {}: {e}", ports_file.display())))?;
        let model_log = dir.join("model.log");
        if model_log.exists() {
            let _ = tokio::fs::rename(&model_log, dir.join("model.log.prev")).await;
        }
        let template = spec
            .model_cmd
            .clone()
            .or_else(|| self.cfg.model_cmd.clone())
            .unwrap_or_else(|| SIM_MODEL_CMD.to_owned());
        let subst = |t: &str| {
            t.replace("{model_port}", &ports.model.to_string())
                .replace("{model_log}", &shell_quote(&model_log.to_string_lossy()))
                .replace(
                    "{ferry}",
                    &shell_quote(&self.cfg.ferry_exe.to_string_lossy()),
                )
                .replace("{dir}", &shell_quote(&dir.to_string_lossy()))
        };
        let cmd = subst(&template);
        let backend = spec
            .backend
            .clone()
            .unwrap_or_else(|| self.cfg.backend.clone());

        let mut model = Command::new("sh");
        model
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .current_dir(&dir)
            .envs(&spec.env)
            .env("MODEL_PORT", ports.model.to_string())
            .env("MODEL_LOG", &model_log)
            .stdin(Stdio::null())
            .stdout(log_file(&dir, "model.out")?)
            .stderr(log_file(&dir, "model.out")?)
            .process_group(0)
            .kill_on_drop(true);
        let mut worker = match &spec.worker_cmd {
            Some(wc) => {
                let wc = subst(wc).replace("{worker_port}", &ports.worker.to_string());
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("exec {wc}"));
                c
            }
            None => {
                let mut c = Command::new(&self.cfg.ferry_exe);
                c.arg("worker");
                c
            }
        };
        worker
            .current_dir(&dir)
            // Both sides are Ferry: a grant counts only for this worker's URL, once, until it
            // expires (Ferry's token). A workergroup's env may turn it off; a `worker_cmd`
            // (e.g. an official PyWorker) ignores it and keeps Vast's rules.
            .env("FERRY_REQUIRE_TOKEN", "true")
            .envs(&spec.env)
            .envs(&self.cfg.worker_env)
            .env("WORKER_PORT", ports.worker.to_string())
            .env("WORKER_HTTP_PORT", ports.http.to_string())
            .env(
                format!("VAST_TCP_PORT_{}", ports.worker),
                ports.worker.to_string(),
            )
            .env("MODEL_PORT", ports.model.to_string())
            .env("REPORT_ADDR", &spec.control_url)
            .env("CONTAINER_ID", id.to_string())
            .env("MASTER_TOKEN", &spec.mtoken)
            .env("PUBLIC_IPADDR", "127.0.0.1")
            .env("FERRY_LISTEN_HOST", "127.0.0.1")
            .env(
                "MODEL_SERVER_URL",
                format!("http://127.0.0.1:{}", ports.model),
            )
            .env("MODEL_LOG", &model_log)
            .env("BACKEND", &backend)
            .env("FERRY_BENCHMARK_CACHE", dir.join(".has_benchmark"))
            .env("FERRY_ENDPOINT", &spec.endpoint)
            .stdin(Stdio::null())
            .stdout(log_file(&dir, "worker.out")?)
            .stderr(log_file(&dir, "worker.out")?)
            .process_group(0)
            .kill_on_drop(true);
        // Each process is recorded the moment it exists, so a crash of this control plane at
        // any point leaves nothing it cannot find again.
        let model_child = model
            .spawn()
            .map_err(|e| ProviderError(format!("starting the model server: {e}")))?;
        let mut pids = Pids {
            model: model_child.id().and_then(ProcId::of),
            worker: None,
        };
        pids.write(&dir);
        let mut model_child = Proc::Child(model_child);
        let worker_child = match worker.spawn() {
            Ok(c) => c,
            Err(e) => {
                model_child.terminate(self.cfg.stop_grace).await;
                Pids::remove(&dir);
                return Err(ProviderError(format!(
                    "starting {} worker: {e}",
                    self.cfg.ferry_exe.display()
                )));
            }
        };
        pids.worker = worker_child.id().and_then(ProcId::of);
        pids.write(&dir);
        let worker_child = Proc::Child(worker_child);
        tracing::info!(worker = id, resume, worker_port = ports.worker, model_port = ports.model,
                       dir = %dir.display(), "local instance started");
        let (stop_tx, stop_rx) = oneshot::channel::<StopAck>();
        self.running().insert(id, stop_tx);
        let sink = self.sink();
        if let Some(s) = &sink {
            let _ = s.try_send(ProviderEvent::Started { worker_id: id });
        }
        self.tasks.spawn(supervise(
            dir.clone(),
            id,
            worker_child,
            model_child,
            stop_rx,
            self.cfg.stop_grace,
            sink,
            self.released.clone(),
        ));
        Ok(())
    }

    /// See [`Provider::adopt`].
    async fn adopt_instances(&self, worker_ids: Vec<i64>) -> Vec<i64> {
        let wanted: HashSet<i64> = worker_ids.into_iter().collect();
        let mut adopted = Vec::new();
        let mut strays = Vec::new();
        let root = self.cfg.state_dir.join("instances");
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(_) => return adopted,
        };
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let Some(pids) = Pids::read(&dir) else {
                continue;
            };
            let worker = pids.worker.filter(|p| p.alive());
            let model = pids.model.filter(|p| p.alive());
            match (worker, model) {
                (Some(w), Some(m)) if wanted.contains(&id) && !self.running().contains_key(&id) => {
                    tracing::info!(
                        worker = id,
                        worker_pid = w.pid,
                        model_pid = m.pid,
                        "took back a running instance"
                    );
                    let (stop_tx, stop_rx) = oneshot::channel::<StopAck>();
                    self.running().insert(id, stop_tx);
                    self.tasks.spawn(supervise(
                        dir,
                        id,
                        Proc::Adopted(w),
                        Proc::Adopted(m),
                        stop_rx,
                        self.cfg.stop_grace,
                        self.sink(),
                        self.released.clone(),
                    ));
                    adopted.push(id);
                }
                (None, None) => Pids::remove(&dir),
                (w, m) => {
                    tracing::warn!(
                        worker = id,
                        worker_alive = w.is_some(),
                        model_alive = m.is_some(),
                        "stopping a stray instance left by an earlier run"
                    );
                    strays.push((dir, [w, m]));
                }
            }
        }
        let grace = self.cfg.stop_grace;
        futures_util::future::join_all(strays.into_iter().map(|(dir, procs)| async move {
            for p in procs.into_iter().flatten() {
                Proc::Adopted(p).terminate(grace).await;
            }
            Pids::remove(&dir);
        }))
        .await;
        adopted
    }

    async fn stop_one(&self, id: i64) {
        let stop = self.running().remove(&id);
        if let Some(tx) = stop {
            let (ack_tx, ack_rx) = oneshot::channel();
            if tx.send(ack_tx).is_ok() {
                let _ = ack_rx.await;
            }
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one supervisor's whole context, passed once at spawn"
)]
async fn supervise(
    dir: PathBuf,
    id: i64,
    mut worker: Proc,
    mut model: Proc,
    stop: oneshot::Receiver<StopAck>,
    grace: Duration,
    sink: Option<EventSink>,
    released: CancellationToken,
) {
    let reason = tokio::select! {
        biased;
        _ = released.cancelled() => {
            // A replica handing over: the instance keeps running for the next owner, which
            // takes it back from `pids.json`.
            worker.let_go();
            model.let_go();
            tracing::info!(worker = id, "local instance left running for the next owner");
            return;
        }
        ack = stop => {
            // Worker first, so its last report says it is shutting down.
            worker.terminate(grace).await;
            model.terminate(grace).await;
            Pids::remove(&dir);
            tracing::info!(worker = id, "local instance stopped");
            if let Ok(ack) = ack {
                let _ = ack.send(());
            }
            return;
        }
        s = worker.wait() => format!("worker process exited ({s})"),
        s = model.wait() => format!("model server exited ({s})"),
    };
    worker.terminate(grace).await;
    model.terminate(grace).await;
    Pids::remove(&dir);
    let reason = match last_line(&dir.join("worker.out")).await {
        Some(l) => format!("{reason}: {l}"),
        None => reason,
    };
    tracing::warn!(worker = id, reason = %reason, "local instance died");
    if let Some(s) = sink {
        let _ = s.try_send(ProviderEvent::Exited {
            worker_id: id,
            reason,
        });
    }
}

/// The last non-empty line of a log (at most 300 characters of it), for error messages.
async fn last_line(path: &Path) -> Option<String> {
    let text = tokio::fs::read(path).await.ok()?;
    let tail = &text[text.len().saturating_sub(4096)..];
    let s = String::from_utf8_lossy(tail);
    let line = s.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(300).collect())
}

fn status_text(s: std::io::Result<std::process::ExitStatus>) -> String {
    match s {
        Ok(st) => st.to_string(),
        Err(e) => e.to_string(),
    }
}

/// One process of an instance: a child of this control plane, or one it took back after a
/// restart (then not its child: no exit status, exit seen by polling).
enum Proc {
    Child(Child),
    Adopted(ProcId),
}

impl Proc {
    /// Stops watching the process without stopping it: a child's kill-on-drop is disarmed.
    fn let_go(self) {
        if let Proc::Child(c) = self {
            // Forgetting the handle is the only way to disarm `kill_on_drop`; the process is
            // reaped by whoever adopts it (or by init once this process exits).
            std::mem::forget(c);
        }
    }

    /// Waits for the process to exit; says how.
    async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => status_text(c.wait().await),
            Proc::Adopted(p) => {
                while p.alive() {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "exit status unknown: started by an earlier run of the control plane".to_owned()
            }
        }
    }

    /// SIGTERM to the process group, SIGKILL after `grace`.
    async fn terminate(&mut self, grace: Duration) {
        let pgid = match self {
            Proc::Child(c) => {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                c.id()
                    .and_then(|p| i32::try_from(p).ok())
                    .and_then(rustix::process::Pid::from_raw)
            }
            Proc::Adopted(p) if !p.alive() => return,
            Proc::Adopted(p) => rustix::process::Pid::from_raw(p.pid),
        };
        if let Some(pid) = pgid {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(grace, self.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            ?grace,
            "process group did not exit within the grace after SIGTERM; sending SIGKILL"
        );
        if let Some(pid) = pgid {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        if let Proc::Child(c) = self {
            let _ = c.start_kill();
        }
        // SIGKILL cannot be refused; the bound only guards against a stuck kernel task.
        let _ = tokio::time::timeout(grace, self.wait()).await;
    }
}

/// A process identified by its pid and its start time (clock ticks after boot), so that a
/// later process that reuses the pid is never taken for it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct ProcId {
    pid: i32,
    start: u64,
}

impl ProcId {
    fn of(pid: u32) -> Option<ProcId> {
        let pid = i32::try_from(pid).ok()?;
        let (start, _) = proc_stat(pid)?;
        Some(ProcId { pid, start })
    }

    /// Whether this very process still runs (neither gone nor a zombie).
    fn alive(self) -> bool {
        matches!(proc_stat(self.pid), Some((start, state))
            if start == self.start && state != 'Z' && state != 'X')
    }
}

/// `(start time, state)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command name, is in parentheses and may itself hold spaces and ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?; // field 3
    let start = fields.nth(18)?.parse().ok()?; // field 22
    Some((start, state))
}

/// `pids.json`: an instance's processes, written as they are spawned.
#[derive(Debug, Serialize, Deserialize)]
struct Pids {
    model: Option<ProcId>,
    worker: Option<ProcId>,
}

impl Pids {
    fn read(dir: &Path) -> Option<Pids> {
        serde_json::from_slice(&std::fs::read(dir.join(PIDS_FILE)).ok()?).ok()
    }

    /// Written whole to a temporary file and renamed, so a crash never leaves half of it.
    fn write(&self, dir: &Path) {
        let tmp = dir.join(format!("{PIDS_FILE}.tmp"));
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, dir.join(PIDS_FILE)));
        if let Err(e) = written {
            tracing::error!(dir = %dir.display(), error = %e,
                            "could not record the instance's processes; a crash would orphan them");
        }
    }

    fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(PIDS_FILE));
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, ProviderError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map_err(|e| ProviderError(format!("opening {name}: {e}")))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn ports_free(ports: &[u16]) -> bool {
    ports
        .iter()
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

fn pick_ports() -> Result<Ports, ProviderError> {
    // Hold all three until chosen so they differ.
    let bind = || {
        std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr().map(|a| (l, a.port())))
            .map_err(|e| ProviderError(format!("picking a port: {e}")))
    };
    let (_a, worker) = bind()?;
    let (_b, http) = bind()?;
    let (_c, model) = bind()?;
    Ok(Ports {
        worker,
        http,
        model,
    })
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn subscribe(&self, events: EventSink) {
        match self.events.lock() {
            Ok(mut g) => *g = Some(events),
            Err(p) => *p.into_inner() = Some(events),
        }
    }

    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.start(spec, false).boxed()
    }

    fn stop(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move {
            self.stop_one(worker_id).await;
            Ok(())
        }
        .boxed()
    }

    fn resume(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.start(spec, true).boxed()
    }

    fn destroy(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move {
            self.stop_one(worker_id).await;
            let dir = self.dir(worker_id);
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ProviderError(format!("removing {}: {e}", dir.display()))),
            }
        }
        .boxed()
    }

    /// A stopped local instance is a directory, never a process: `cold` needs nothing.
    fn adopt(&self, up: Vec<i64>, _cold: Vec<i64>) -> BoxFuture<'_, Option<Vec<i64>>> {
        async move { Some(self.adopt_instances(up).await) }.boxed()
    }

    fn hand_over(&self) -> BoxFuture<'_, ()> {
        async move {
            self.released.cancel();
            self.tasks.close();
            self.tasks.wait().await;
            self.running().clear();
        }
        .boxed()
    }

    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>> {
        async move {
            let ids = self.running_ids();
            futures_util::future::join_all(ids.iter().map(|id| self.stop_one(*id))).await;
            self.tasks.close();
            self.tasks.wait().await;
            ids
        }
        .boxed()
    }
}
