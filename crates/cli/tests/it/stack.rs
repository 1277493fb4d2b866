//! Starts `ferry sim-model` and an unsecured `ferry worker` as child processes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory unique to this test process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-cli-it-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sim + worker; the worker URL is `url`.
pub struct Stack {
    pub url: String,
    pub sim_url: String,
    _sim: Proc,
    _worker: Proc,
}

impl Stack {
    pub fn start(name: &str) -> Stack {
        let sim_port = free_port();
        let sim = Command::new(FERRY)
            .args(["sim-model", "--listen", &format!("127.0.0.1:{sim_port}")])
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sim = Proc(sim);
        let worker_port = free_port();
        let dir = scratch(name);
        let worker = Command::new(FERRY)
            .args([
                "worker",
                "--worker-port",
                &worker_port.to_string(),
                "--listen-host",
                "127.0.0.1",
                "--model-server-url",
                &format!("http://127.0.0.1:{sim_port}"),
                // Nothing listens there: reports fail, which the worker tolerates.
                "--report-addr",
                &format!("http://127.0.0.1:{}", free_port()),
                "--no-side-listener",
                "true",
                "--benchmark-cache",
                &dir.join("has_benchmark").display().to_string(),
            ])
            .env("UNSECURED", "true")
            .env("FERRY_ASSUME_LOADED_PERF", "100")
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stack = Stack {
            url: format!("http://127.0.0.1:{worker_port}"),
            sim_url: format!("http://127.0.0.1:{sim_port}"),
            _sim: sim,
            _worker: Proc(worker),
        };
        stack.wait_ready();
        stack
    }

    /// Waits until a request through the worker succeeds (a hang guard, not a timing check).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = ferry(&[
                "call",
                "x",
                "/v1/completions",
                r#"{"prompt": "a", "max_tokens": 1}"#,
                "--worker",
                &self.url,
                "--max-retries",
                "0",
                "--timeout",
                "2s",
            ]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker never became ready: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `ferry ARGS` to completion with a clean environment for the keys.
pub fn ferry(args: &[&str]) -> Output {
    ferry_env(args, &[])
}

/// Runs `ferry ARGS` with extra environment variables.
pub fn ferry_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(FERRY);
    cmd.args(args)
        .env_remove("FERRY_URL")
        .env_remove("VAST_AUTOSCALER_URL")
        .env_remove("FERRY_ENDPOINT_KEY")
        .env_remove("VAST_API_KEY")
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
