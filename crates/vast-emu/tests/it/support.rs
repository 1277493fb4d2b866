//! Shared helpers: an emulator with fast timers, a keyed client, eventually-asserts, process
//! checks.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_vast_emu::{EmuConfig, Emulator};
use serde_json::Value;

pub const KEY: &str = "emu-test-key";

/// Boot delay of test emulators (short, but long enough to see `loading`).
pub const BOOT: Duration = Duration::from_millis(50);

/// An emulator with the built-in catalogue, a short boot delay and a short stop grace.
pub async fn start() -> Emulator {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut EmuConfig)) -> Emulator {
    let mut cfg = EmuConfig::new(KEY);
    cfg.boot_delay = BOOT;
    cfg.stop_grace = Duration::from_millis(500);
    tweak(&mut cfg);
    Emulator::start(cfg).await.unwrap()
}

/// Shuts down, asserts nothing is left running and the (emulator-made) state dir is gone.
pub async fn finish(emu: Emulator) {
    let dir = emu.state_dir().to_owned();
    let pids: Vec<u32> = emu.ledger().processes.iter().map(|p| p.pid).collect();
    let ledger = emu.shutdown().await;
    assert!(ledger.processes.is_empty(), "{ledger:?}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the emulator");
    }
    assert!(
        procs_in(&dir).is_empty(),
        "processes left in {}",
        dir.display()
    );
    assert!(
        !dir.exists(),
        "{} is left after a clean shutdown",
        dir.display()
    );
}

/// A client that ignores proxy env vars (the emulator is on loopback).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One keyed API call; `(status, JSON body or Null)`.
pub async fn call(emu: &Emulator, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_with(&client(), emu, method, path, body, Some(KEY)).await
}

pub async fn call_with(
    c: &reqwest::Client,
    emu: &Emulator,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = c.request(method, format!("{}{path}", emu.url()));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Search with a query body; the offers' ids in order.
pub async fn search_ids(emu: &Emulator, query: Value) -> Vec<u64> {
    let (status, body) = call(emu, "POST", "/api/v0/bundles/", Some(query)).await;
    assert_eq!(status, 200, "{body}");
    body["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect()
}

/// Creates an instance on `offer`; its id.
pub async fn create(emu: &Emulator, offer: u64, body: Value) -> u64 {
    let (status, resp) = call(emu, "PUT", &format!("/api/v0/asks/{offer}/"), Some(body)).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["success"], true);
    resp["new_contract"].as_u64().unwrap()
}

/// `GET /api/v0/instances/{id}/`'s row (`Null` when gone).
pub async fn show(emu: &Emulator, id: u64) -> Value {
    let (status, body) = call(
        emu,
        "GET",
        &format!("/api/v0/instances/{id}/?owner=me"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["instances"].clone()
}

pub async fn set_state(emu: &Emulator, id: u64, state: &str) {
    let (status, body) = call(
        emu,
        "PUT",
        &format!("/api/v0/instances/{id}/"),
        Some(serde_json::json!({ "state": state })),
    )
    .await;
    assert_eq!(
        (status, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
}

pub async fn destroy(emu: &Emulator, id: u64) {
    let (status, body) = call(
        emu,
        "DELETE",
        &format!("/api/v0/instances/{id}/"),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(
        (status, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
}

/// Waits until the instance shows `actual_status == status`; its row.
pub async fn wait_status(emu: &Emulator, id: u64, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = show(emu, id).await;
        if row["actual_status"] == status {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for instance {id} to be {status}: {row}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Retries `check` until it holds, for up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Live processes whose working directory is inside `dir`.
pub fn procs_in(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd.starts_with(dir) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

/// A file in instance `id`'s directory.
pub fn instance_file(emu: &Emulator, id: u64, name: &str) -> std::path::PathBuf {
    emu.state_dir()
        .join("instances")
        .join(id.to_string())
        .join(name)
}
