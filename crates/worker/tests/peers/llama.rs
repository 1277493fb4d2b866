//! One real `llama-server` process on a free 127.0.0.1 port, logging to a file, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::env::peers;

/// Which GGUF to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Random weights, EOS never wins: every request runs to its token limit, >10k tok/s.
    Tiny,
    /// SmolLM2-135M-Instruct: real text, ~180 tok/s on an idle core pair.
    SmolLm2,
}

/// The alias llama-server serves the model under (`/v1/models` lists it).
pub const MODEL_ALIAS: &str = "testmodel";

/// A running llama-server.
pub struct LlamaServer {
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// A fresh path in the temp dir for this test binary.
pub fn temp_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("ferry-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::SeqCst)))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl LlamaServer {
    /// Starts llama-server with `slots` parallel slots of `ctx_per_slot` tokens each, writing its
    /// log to `log`, and waits until `/health` answers 200.
    pub async fn start(model: Model, slots: u32, ctx_per_slot: u32, log: &Path) -> LlamaServer {
        let mut last = String::new();
        // A port picked free can be taken before llama-server binds it: try a few.
        for _ in 0..3 {
            let mut server = Self::spawn(model, slots, ctx_per_slot, log, free_port());
            match server.wait_healthy(Duration::from_secs(60)).await {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("llama-server did not come up: {last}");
    }

    /// Like [`LlamaServer::start`] on a given port (for a worker configured before the server
    /// runs).
    pub async fn start_on(
        model: Model,
        slots: u32,
        ctx_per_slot: u32,
        log: &Path,
        port: u16,
    ) -> LlamaServer {
        let mut server = Self::spawn(model, slots, ctx_per_slot, log, port);
        if let Err(e) = server.wait_healthy(Duration::from_secs(60)).await {
            panic!("llama-server did not come up: {e}");
        }
        server
    }

    fn spawn(model: Model, slots: u32, ctx_per_slot: u32, log: &Path, port: u16) -> LlamaServer {
        let p = peers();
        let gguf = match model {
            Model::Tiny => &p.tiny,
            Model::SmolLm2 => &p.smollm2,
        };
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(&p.llama_server)
            .arg("-m")
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &(slots * ctx_per_slot).to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-t", "1", "--metrics", "--slots", "-a", MODEL_ALIAS])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", p.llama_server.display()));
        LlamaServer {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
            http: reqwest::Client::new(),
        }
    }

    /// Polls `/health` until 200 and the log says `model loaded`; an exited process is an error
    /// carrying its log.
    async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "llama-server exited ({status}):\n{}",
                        self.log_text()
                    ));
                }
            }
            // Our own log's line too: a 200 alone could come from another process that took
            // the port we picked.
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send().await {
                if r.status() == 200 && self.log_text().contains("model loaded") {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "no /health 200 within {limit:?}:\n{}",
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A GET returning JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// One Prometheus sample from `/metrics` (`llamacpp:tokens_predicted_total`, ...).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Whether any slot is generating (`/slots`).
    pub async fn busy_slots(&self) -> usize {
        let slots = self.get_json("/slots").await;
        slots
            .as_array()
            .unwrap_or_else(|| panic!("/slots is not a list: {slots}"))
            .iter()
            .filter(|s| s["is_processing"].as_bool() == Some(true))
            .count()
    }

    /// SIGKILL, as a crashed or OOM-killed model server dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
