//! [`PostgresStore`]: the state in a PostgreSQL database, written behind by one task that owns
//! the connection.
//!
//! Same documents and contract as [`super::SqliteStore`]: [`Store::write`] hands the change to
//! the writer and returns; the writer applies changes in order, one transaction per wake-up
//! (`writer.rs`); [`PostgresStore::open`] brings the schema up to date (`schema.rs`) and reads
//! everything back. The writer runs on a thread of its own with a single-threaded runtime, like
//! SQLite's thread: the control plane's runtime never waits on the database, and
//! [`Store::close`] can block (join the thread) from anywhere.
//!
//! # When the database is down or slow
//!
//! - At start: connecting is retried with back-off for [`PgOptions::start_deadline`] (30 s),
//!   then the start fails with an error naming the database (`postgres://USER@HOST:PORT/DB`,
//!   never the password) and the last failure. Wrong credentials, a missing database, missing
//!   privileges or a schema newer than this build fail at once: waiting cannot fix them.
//! - While running: a failed or timed-out commit ([`PgOptions::op_timeout`], 10 s) drops the
//!   connection; the same writes, in order, are tried again on a new connection with doubling
//!   jittered back-off (0.1 s to 5 s) until the database takes them. Nothing is dropped and
//!   nothing reordered; requests never wait on it (writes are write-behind). The first failure
//!   and then one line every 30 s are logged as warnings, the recovery at info;
//!   `ferry_control_store_pending_writes` and `ferry_control_store_retries_total{reason}` count.
//! - [`Store::flush`] waits at most [`PgOptions::flush_timeout`] (5 s): past it the caller gets
//!   [`StoreError::Behind`] while the writes stay queued and are committed when the database
//!   answers.
//! - [`Store::close`] (at exit) keeps trying for [`PgOptions::close_timeout`] (10 s, after a
//!   commit already under way, itself bounded), then logs how many writes were not persisted
//!   and gives up.

mod lease;
mod schema;
mod target;
mod writer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lease::{LeaseConn, LeaseRow};
pub use target::PgTarget;

use super::{Loaded, Store, StoreError, Write};
use writer::{Backoff, Failure, Op, Writer};

/// The bounds of [`PostgresStore`]; the defaults are what `ferry control` uses (tests shorten
/// them).
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// How long the start keeps retrying an unreachable database.
    pub start_deadline: Duration,
    /// How long [`Store::flush`] waits before answering [`StoreError::Behind`].
    pub flush_timeout: Duration,
    /// How long [`Store::close`] keeps retrying before giving pending writes up.
    pub close_timeout: Duration,
    /// Bound on one connect, or one batch's transaction.
    pub op_timeout: Duration,
    /// First retry back-off.
    pub backoff_min: Duration,
    /// Largest retry back-off.
    pub backoff_max: Duration,
    /// How often an outage under way is logged again as a warning.
    pub warn_every: Duration,
    /// A replica's lease term: every commit checks it still holds (docs/ha.md).
    pub fence: Option<Fence>,
}

/// The fencing token of a replica's writes: the lease term it took, and the token cancelled
/// when a commit finds another term (the writer then stops writing).
#[derive(Debug, Clone)]
pub struct Fence {
    /// The term (`ferry_lease.epoch`) this replica owns.
    pub epoch: i64,
    /// Cancelled when the database holds another term.
    pub deposed: CancellationToken,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            start_deadline: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            warn_every: Duration::from_secs(30),
            fence: None,
        }
    }
}

/// Handle to the writer thread.
pub struct PostgresStore {
    tx: Mutex<Option<mpsc::UnboundedSender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pending: Arc<AtomicUsize>,
    closing: CancellationToken,
    target: PgTarget,
    flush_timeout: Duration,
    migrated: schema::Migrated,
    attempts: u32,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .field("pending", &self.pending())
            .finish()
    }
}

impl PostgresStore {
    /// Opens the database at `url` with the default bounds ([`PostgresStore::open_with`]).
    pub fn open(url: &str) -> Result<(PostgresStore, Loaded), String> {
        PostgresStore::open_with(PgTarget::parse(url)?, PgOptions::default())
    }

    /// Connects (retrying for [`PgOptions::start_deadline`]), brings the schema up to date and
    /// reads everything back. Blocking: call from `spawn_blocking` or before the runtime.
    pub fn open_with(target: PgTarget, opts: PgOptions) -> Result<(PostgresStore, Loaded), String> {
        let (tx, rx) = mpsc::unbounded_channel::<Op>();
        let (ready_tx, ready_rx) =
            std_mpsc::channel::<Result<(Loaded, schema::Migrated, u32), String>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let flush_timeout = opts.flush_timeout;
        let w_target = target.clone();
        let w_pending = pending.clone();
        let closing = CancellationToken::new();
        let w_closing = closing.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-pg-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting the store's runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let conns = TaskTracker::new();
                    let conn = match start(&w_target, &opts, &conns).await {
                        Ok((conn, loaded, migrated, attempts)) => {
                            let _ = ready_tx.send(Ok((loaded, migrated, attempts)));
                            conn
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            conns.close();
                            return;
                        }
                    };
                    Writer {
                        target: w_target,
                        opts,
                        rx,
                        conn: Some(conn),
                        conns,
                        pending: w_pending,
                        closing: w_closing,
                    }
                    .run()
                    .await;
                });
            })
            .map_err(|e| format!("starting the store thread: {e}"))?;
        let loaded = match ready_rx.recv() {
            Ok(r) => r,
            Err(_) => Err("the store thread died".to_string()),
        };
        let (loaded, migrated, attempts) = match loaded {
            Ok(l) => l,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok((
            PostgresStore {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                pending,
                closing,
                target,
                flush_timeout,
                migrated,
                attempts,
            },
            loaded,
        ))
    }

    /// Writes queued and not yet committed.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Where the database is.
    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// The schema version at open.
    pub fn schema_version(&self) -> i32 {
        self.migrated.version
    }

    /// How many attempts the open took (1 unless the database failed at first).
    pub fn open_attempts(&self) -> u32 {
        self.attempts
    }

    /// The migrations this open applied (empty when the schema was up to date, or another
    /// process starting at the same time applied them).
    pub fn applied_migrations(&self) -> &[i32] {
        &self.migrated.applied
    }

    fn send(&self, op: Op) -> bool {
        let guard = match self.tx.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match guard.as_ref() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        }
    }
}

/// Connects and reads everything back, retrying what can pass until the deadline.
async fn start(
    target: &PgTarget,
    opts: &PgOptions,
    conns: &TaskTracker,
) -> Result<(writer::Conn, Loaded, schema::Migrated, u32), String> {
    let began = Instant::now();
    let deadline = began + opts.start_deadline;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(4));
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let bound = opts
            .op_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let attempt = async {
            let (mut conn, migrated) = writer::connect(target, conns).await?;
            let loaded = conn.load().await?;
            Ok::<_, Failure>((conn, migrated, loaded))
        };
        let failure = match tokio::time::timeout(bound, attempt).await {
            Ok(Ok((conn, migrated, loaded))) => {
                tracing::info!(
                    database = target.shown(),
                    schema_version = migrated.version,
                    migrations_applied = ?migrated.applied,
                    records = loaded.records.len(),
                    attempts,
                    "PostgreSQL store open"
                );
                return Ok((conn, loaded, migrated, attempts));
            }
            Ok(Err(f)) => f,
            Err(_) => Failure::Timeout,
        };
        let detail = failure.detail(bound);
        if let Failure::Fatal(_) = failure {
            return Err(format!("PostgreSQL at {target}: {detail}"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "PostgreSQL at {target}: not reachable within {:?} ({attempts} attempts); last \
                 error: {detail}",
                opts.start_deadline
            ));
        }
        tracing::warn!(
            database = target.shown(),
            attempt = attempts,
            error = %detail,
            "PostgreSQL not reachable yet; retrying"
        );
        let wait = backoff.wait().min(deadline.saturating_duration_since(now));
        tokio::time::sleep(wait).await;
    }
}

impl Store for PostgresStore {
    fn write(&self, w: Write) {
        // PostgreSQL text cannot hold NUL. JSON documents never carry a raw one (serde_json
        // escapes it), so only a key-value entry could; refused here rather than blocking
        // every later write behind a statement that can never succeed.
        let nul = match &w {
            Write::Put { body, .. } => body.contains('\0'),
            Write::Kv { value, .. } => value.contains('\0'),
            Write::Delete { .. } => false,
        };
        if nul {
            crate::telemetry::store_refused(&w);
            return;
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        if !self.send(Op::Write(w)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("PostgreSQL store closed; change not persisted");
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Flush(tx));
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            match tokio::time::timeout(self.flush_timeout, rx).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(StoreError::Closed),
                Err(_) => Err(StoreError::Behind {
                    pending: self.pending(),
                    waited: self.flush_timeout,
                }),
            }
        })
    }

    fn close(&self) {
        let tx = match self.tx.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        drop(tx);
        self.closing.cancel();
        let handle = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Nothing listens on a port just released; the start gives up within its deadline and
    /// names the database, never the password.
    #[test]
    fn an_unreachable_database_fails_the_start_naming_it() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target =
            PgTarget::parse(&format!("postgres://ferry:s3cret@127.0.0.1:{port}/state")).unwrap();
        let opts = PgOptions {
            start_deadline: Duration::from_millis(1500),
            ..PgOptions::default()
        };
        let began = std::time::Instant::now();
        let e = PostgresStore::open_with(target, opts).unwrap_err();
        assert!(
            e.contains(&format!("postgres://ferry@127.0.0.1:{port}/state")),
            "{e}"
        );
        assert!(e.contains("not reachable within"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(began.elapsed() < Duration::from_secs(10));
    }
}
