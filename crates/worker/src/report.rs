//! Reports to the control plane, as PyWorker sends them.
//!
//! Two loops, each owned by the worker's task tracker:
//! - status: every tick (1 s) send `/worker_status/` when something changed, or every heartbeat
//!   (10 s). Ferry also wakes it for the ready and error edges, so readiness is reported within a
//!   tick instead of up to 10 s later.
//! - finished requests: every tick, post the unsent records to `/delete_requests/` in batches.
//!
//! Each post tries the REPORT_ADDR list in order, a few attempts per address with a pause
//! between, and stops at the first address that accepts (2xx). Nothing is lost while the control
//! plane is down: status counters accumulate until a report is accepted, and finished records wait
//! in a bounded buffer (oldest dropped past the bound, with a warning).

use std::time::{Duration, Instant};

use ferry_protocol::{DeleteRequests, StatusAnswer, WorkerStatus};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::load::{StatusSnapshot, Tracker};

/// Attempts per address for one report (PyWorker: 3).
const ATTEMPTS_PER_ADDR: u32 = 3;
/// Largest batch of finished records in one `/delete_requests/` post (about 170 KB of JSON);
/// a busier second is sent as several posts back to back. Larger batches only made the
/// worker's peak memory and the control plane's parse time larger.
const MAX_BATCH: usize = 1_000;
/// Vast's own Redis report address, which PyWorker skips for `/delete_requests/`.
const SKIP_FOR_DELETE: &str = "https://cloud.vast.ai/api/v0";

/// Idle time after activity before the free heap is first returned to the OS
/// ([`crate::heap`]); it is returned again once idle connections to the model server have
/// expired ([`crate::forward::POOL_IDLE`]) and freed their buffers.
const HEAP_QUIET: Duration = Duration::from_secs(5);

/// The reporter: settings it needs, the tracker it reads, and an HTTP client.
#[derive(Clone)]
pub struct Reporter {
    http: reqwest::Client,
    addrs: Vec<String>,
    container_id: i64,
    mtoken: String,
    version: String,
    url: String,
    tick: Duration,
    heartbeat: Duration,
    retry: Duration,
    tracker: Tracker,
    disk: DiskUsage,
    /// Joined with a token (a Ferry control plane): reads directives from report answers.
    joined: bool,
    /// Has a master token, so it checks v2 tokens (`ferry_mac`).
    checks_mac: bool,
    /// A report answer said the control plane issues v2 tokens: from then on the reports say
    /// this worker checks them. Vast's control plane never says so, so it never sees the key.
    announce_mac: bool,
}

impl Reporter {
    /// Builds a reporter from settings.
    pub fn new(http: reqwest::Client, settings: &Settings, tracker: Tracker) -> Self {
        Self {
            http,
            addrs: settings.report_addrs.clone(),
            container_id: settings.container_id,
            mtoken: settings.master_token.expose().to_string(),
            version: settings.report_version.clone(),
            url: settings.public_url.clone(),
            tick: settings.report_tick,
            heartbeat: settings.heartbeat,
            retry: settings.report_retry,
            tracker,
            disk: DiskUsage::new(),
            joined: settings.join_token.is_some(),
            checks_mac: !settings.master_token.expose().is_empty(),
            announce_mac: false,
        }
    }

    /// The status loop; returns when `cancel` fires.
    pub async fn status_loop(mut self, cancel: CancellationToken) {
        let mut last_sent: Option<Instant> = None;
        let mut trim =
            crate::heap::HeapTrim::new(&[HEAP_QUIET, crate::forward::POOL_IDLE + HEAP_QUIET]);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.tick) => {}
            }
            let snap = self.tracker.status_snapshot();
            if trim.observe(snap.num_received, snap.num_working, Instant::now()) {
                let released = crate::heap::release();
                tracing::debug!(released, "idle after a burst: free heap returned to the OS");
            }
            let due = last_sent.is_none_or(|t| t.elapsed() >= self.heartbeat);
            if (snap.update_pending || due) && self.send_status(&snap, &cancel).await {
                last_sent = Some(Instant::now());
            }
        }
    }

    /// The finished-requests loop; returns when `cancel` fires.
    pub async fn finished_loop(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.tick) => {}
            }
            // Drain everything available this tick, batch by batch.
            while self.send_finished_batch(&cancel).await {}
        }
    }

    /// Last reports before exit: one status and every finished record, bounded by `deadline`.
    pub async fn flush(mut self, deadline: Duration) {
        let never = CancellationToken::new();
        let work = async {
            while self.send_finished_batch(&never).await {}
            let snap = self.tracker.status_snapshot();
            self.send_status(&snap, &never).await;
        };
        if tokio::time::timeout(deadline, work).await.is_err() {
            tracing::warn!(
                unsent = self.tracker.finished_pending(),
                "final report flush timed out"
            );
        }
    }

    fn status_body(&mut self, snap: &StatusSnapshot) -> WorkerStatus {
        let (disk_usage, additional) = self.disk.read();
        WorkerStatus {
            id: self.container_id,
            mtoken: self.mtoken.clone(),
            version: self.version.clone(),
            loadtime: snap.model.loadtime.unwrap_or(0.0),
            cur_load: snap.cur_load,
            rej_load: snap.counters.rejected,
            new_load: (snap.counters.received - snap.counters.cancelled).max(0.0),
            error_msg: snap.model.error_msg.clone().unwrap_or_default(),
            max_perf: snap.model.max_perf,
            cur_perf: snap.counters.served,
            cur_capacity: 0.0,
            max_capacity: 0.0,
            num_requests_working: snap.num_working as u64,
            num_requests_recieved: snap.num_received,
            additional_disk_usage: additional,
            disk_usage,
            working_request_idxs: snap.working_request_idxs.clone(),
            url: self.url.clone(),
            cold: snap.cold,
            ferry_mac: self.checks_mac && self.announce_mac,
        }
    }

    async fn send_status(&mut self, snap: &StatusSnapshot, cancel: &CancellationToken) -> bool {
        let body = self.status_body(snap);
        match self
            .post_failover("worker_status/", &body, false, cancel)
            .await
        {
            Posted::Accepted(answer) => {
                self.tracker.status_sent(snap);
                self.disk.commit();
                // Ferry's answer carries the cold directive and the v2-token offer; any other
                // body means neither.
                if let Ok(a) = serde_json::from_slice::<StatusAnswer>(&answer) {
                    if self.joined {
                        self.tracker.set_cold(a.cold);
                    }
                    self.announce_mac = a.ferry_mac;
                }
                true
            }
            Posted::Unknown if self.joined => {
                // The control plane removed this worker (scaled down while away): take no
                // requests; an orchestrator replaces the process (it reports not ready).
                if !snap.cold {
                    tracing::warn!(
                        worker = self.container_id,
                        "the control plane no longer knows this worker; taking no requests"
                    );
                }
                self.tracker.set_cold(true);
                false
            }
            Posted::Unknown | Posted::Failed => false,
        }
    }

    /// Sends one batch; true if one was sent and more may be waiting.
    async fn send_finished_batch(&self, cancel: &CancellationToken) -> bool {
        let Some((last, requests)) = self.tracker.finished_batch(MAX_BATCH) else {
            return false;
        };
        let full = requests.len() == MAX_BATCH;
        let body = DeleteRequests {
            worker_id: self.container_id,
            mtoken: self.mtoken.clone(),
            requests,
        };
        if let Posted::Accepted(_) = self
            .post_failover("delete_requests/", &body, true, cancel)
            .await
        {
            self.tracker.finished_sent(last);
            full
        } else {
            false
        }
    }

    async fn post_failover<T: Serialize>(
        &self,
        path: &str,
        body: &T,
        skip_redis: bool,
        cancel: &CancellationToken,
    ) -> Posted {
        // Serialize once: a batch retried while the control plane is down is not re-encoded.
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => bytes::Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a report");
                return Posted::Failed;
            }
        };
        for addr in &self.addrs {
            if skip_redis && addr.trim_end_matches('/') == SKIP_FOR_DELETE {
                continue;
            }
            let url = format!("{}/{path}", addr.trim_end_matches('/'));
            for attempt in 1..=ATTEMPTS_PER_ADDR {
                let req = self
                    .http
                    .post(&url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(bytes.clone());
                match req.send().await {
                    Ok(res) if res.status().is_success() => {
                        return Posted::Accepted(res.bytes().await.unwrap_or_default())
                    }
                    Ok(res)
                        if self.joined
                            && matches!(
                                res.status(),
                                http::StatusCode::UNAUTHORIZED | http::StatusCode::NOT_FOUND
                            ) =>
                    {
                        return Posted::Unknown
                    }
                    Ok(res) => {
                        tracing::debug!(url = %url, attempt, status = %res.status(), "report refused")
                    }
                    Err(e) => tracing::debug!(url = %url, attempt, error = %e, "report failed"),
                }
                if attempt < ATTEMPTS_PER_ADDR {
                    tokio::select! {
                        _ = cancel.cancelled() => return Posted::Failed,
                        _ = tokio::time::sleep(self.retry) => {}
                    }
                }
            }
            tracing::warn!(url = %url, "report not accepted after {ATTEMPTS_PER_ADDR} attempts");
        }
        Posted::Failed
    }
}

/// How a report post ended.
enum Posted {
    /// A 2xx, with its body.
    Accepted(bytes::Bytes),
    /// 401 (or 404) from a Ferry control plane to a joined worker: the worker is unknown there.
    Unknown,
    /// Not accepted by any address.
    Failed,
}

/// Disk usage of `/` in GiB, and its growth since the last accepted report (psutil's `used`).
#[derive(Debug, Clone)]
struct DiskUsage {
    last_committed: f64,
    current: f64,
}

impl DiskUsage {
    fn new() -> Self {
        let now = used_gib().unwrap_or(0.0);
        Self {
            last_committed: now,
            current: now,
        }
    }

    fn read(&mut self) -> (f64, f64) {
        if let Some(now) = used_gib() {
            self.current = now;
        }
        (self.current, self.current - self.last_committed)
    }

    fn commit(&mut self) {
        self.last_committed = self.current;
    }
}

fn used_gib() -> Option<f64> {
    let s = rustix::fs::statvfs("/").ok()?;
    let used = s.f_blocks.saturating_sub(s.f_bfree) as f64 * s.f_frsize as f64;
    Some(used / (1u64 << 30) as f64)
}
