//! A provider that runs each instance (sim model server + real `ferry_worker::Worker`) on its
//! own single-threaded runtime in its own thread, so a test can stop it gracefully or kill it
//! abruptly (dropping the runtime closes its sockets mid-flight, like a crashed machine).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_control::provider::EventSink;
use ferry_control::{LaunchSpec, Provider, ProviderError, ProviderEvent};
use ferry_sim::{SimConfig, SimServer};
use ferry_worker::{Listeners, Worker, WorkerArgs};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

struct Inst {
    graceful: CancellationToken,
    die: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct InProc {
    events: Mutex<Option<EventSink>>,
    instances: Mutex<HashMap<i64, Inst>>,
    /// Ports kept across stop/resume, like the local provider.
    ports: Mutex<HashMap<i64, u16>>,
    pub keep_on_shutdown: bool,
    pub sim: SimConfig,
    pub launches: Mutex<Vec<i64>>,
    root: std::path::PathBuf,
}

impl InProc {
    pub fn new(sim: SimConfig, keep_on_shutdown: bool) -> Arc<InProc> {
        let root = std::env::temp_dir().join(format!(
            "ferry-control-it-{}-{}",
            std::process::id(),
            crate::harness::next_id()
        ));
        Arc::new(InProc {
            events: Mutex::new(None),
            instances: Mutex::new(HashMap::new()),
            ports: Mutex::new(HashMap::new()),
            keep_on_shutdown,
            sim,
            launches: Mutex::new(Vec::new()),
            root,
        })
    }

    pub fn running(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.instances.lock().unwrap().keys().copied().collect();
        v.sort();
        v
    }

    /// Abrupt death: no final report, sockets closed.
    pub fn kill(&self, id: i64) {
        if let Some(mut inst) = self.instances.lock().unwrap().remove(&id) {
            inst.die.cancel();
            if let Some(t) = inst.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn start(&self, spec: LaunchSpec) -> Result<(), ProviderError> {
        let id = spec.worker_id;
        self.launches.lock().unwrap().push(id);
        let dir = self.root.join(id.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| ProviderError(e.to_string()))?;
        let port = {
            let mut ports = self.ports.lock().unwrap();
            *ports.entry(id).or_insert_with(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            })
        };
        let graceful = CancellationToken::new();
        let die = CancellationToken::new();
        let (g, d) = (graceful.clone(), die.clone());
        let mut sim_cfg = self.sim.clone();
        let log = dir.join("model.log");
        let _ = std::fs::remove_file(&log);
        sim_cfg.log_file = Some(log.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sim = match SimServer::start(sim_cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let argv: Vec<String> = [
                    "worker",
                    "--worker-port",
                    &port.to_string(),
                    "--listen-host",
                    "127.0.0.1",
                    "--report-addr",
                    &spec.control_url,
                    "--model-server-url",
                    &sim.url(),
                    "--container-id",
                    &id.to_string(),
                    "--master-token",
                    &spec.mtoken,
                    "--public-ipaddr",
                    "127.0.0.1",
                    "--public-port",
                    &port.to_string(),
                    "--report-tick-ms",
                    "50",
                    "--report-retry-ms",
                    "50",
                    "--heartbeat-s",
                    "1",
                    "--benchmark-cache",
                    &dir.join(".has_benchmark").display().to_string(),
                    "--model-log",
                    &log.display().to_string(),
                    "--preset",
                    "openai",
                    "--worker-http-port",
                    "0",
                    "--shutdown-grace-s",
                    "2",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let (args, presets) = WorkerArgs::parse_from(argv).unwrap();
                let settings = args.validate(&presets).unwrap();
                let listeners = match Listeners::bind(&settings).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let worker = Worker::new(settings).unwrap();
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = worker.run_with(listeners, async move { g.cancelled().await }) => {}
                    _ = d.cancelled() => {}
                }
                drop(sim);
            });
            // Dropping the runtime here aborts every task the worker spawned.
            rt.shutdown_background();
        });
        ready_rx
            .recv()
            .map_err(|e| ProviderError(e.to_string()))?
            .map_err(ProviderError)?;
        self.instances.lock().unwrap().insert(
            id,
            Inst {
                graceful,
                die,
                thread: Some(thread),
            },
        );
        if let Some(s) = self.events.lock().unwrap().clone() {
            let _ = s.try_send(ProviderEvent::Started { worker_id: id });
        }
        Ok(())
    }

    async fn stop_one(&self, id: i64) {
        let inst = self.instances.lock().unwrap().remove(&id);
        if let Some(mut inst) = inst {
            inst.graceful.cancel();
            if let Some(t) = inst.thread.take() {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
    }
}

impl Provider for InProc {
    fn name(&self) -> &'static str {
        "inproc"
    }
    fn subscribe(&self, events: EventSink) {
        *self.events.lock().unwrap() = Some(events);
    }
    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { self.start(spec) }.boxed()
    }
    fn stop(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move {
            self.stop_one(worker_id).await;
            Ok(())
        }
        .boxed()
    }
    fn resume(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move { self.start(spec) }.boxed()
    }
    fn destroy(&self, worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        async move {
            self.stop_one(worker_id).await;
            self.ports.lock().unwrap().remove(&worker_id);
            Ok(())
        }
        .boxed()
    }
    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>> {
        async move {
            if self.keep_on_shutdown {
                return Vec::new();
            }
            let ids = self.running();
            for id in &ids {
                self.stop_one(*id).await;
            }
            ids
        }
        .boxed()
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        for (_, inst) in self.instances.lock().unwrap().drain() {
            inst.die.cancel();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
