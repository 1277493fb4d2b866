//! The writer task: owns the connection, applies writes in order, one transaction per wake-up,
//! and keeps retrying a failed one until the database takes it.
//!
//! Each wake-up takes everything queued into one [`Batch`] and commits it as one transaction.
//! Inside a transaction the order of statements cannot be observed, so a batch keeps only the
//! last write per record or key: three statements (upserts, deletes, kv) whatever its size.
//! Every committed state is therefore the state after some prefix of the writes, in order,
//! never a reordering. When a commit fails the batch is kept, the connection dropped, and
//! after a back-off the batch (plus whatever was queued meanwhile, merged in the same way) is
//! tried again on a new connection: nothing is dropped, and while the database is down the
//! memory held is bounded by the number of distinct records, not the number of writes. A
//! batch whose commit was lost in flight may be applied twice; every write is an upsert or a
//! delete, so that is harmless. A transaction given up after the timeout may still commit on the
//! server later; the retry writes every row it wrote (the batch only grows) and waits for its
//! row locks, so the newer values always land last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::schema;
use super::target::{describe, PgTarget};
use super::PgOptions;
use crate::store::{Kind, Write};
use crate::telemetry;

/// A message to the writer.
pub(crate) enum Op {
    /// A change.
    Write(Write),
    /// Answer once every change before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The writes of one transaction, the last per record and per key, and the flushes waiting
/// on it.
#[derive(Default)]
pub(crate) struct Batch {
    records: HashMap<(Kind, i64), Option<String>>,
    kv: HashMap<&'static str, String>,
    /// Writes merged in (before merging), for the pending count.
    writes: usize,
    acks: Vec<oneshot::Sender<()>>,
}

impl Batch {
    pub(crate) fn add(&mut self, op: Op) {
        match op {
            Op::Write(w) => {
                self.writes += 1;
                match w {
                    Write::Put { kind, id, body } => {
                        self.records.insert((kind, id), Some(body));
                    }
                    Write::Delete { kind, id } => {
                        self.records.insert((kind, id), None);
                    }
                    Write::Kv { key, value } => {
                        self.kv.insert(key, value);
                    }
                }
            }
            Op::Flush(ack) => self.acks.push(ack),
        }
    }

    fn is_empty(&self) -> bool {
        self.writes == 0 && self.acks.is_empty()
    }

    fn ack(&mut self) {
        for a in self.acks.drain(..) {
            let _ = a.send(());
        }
    }
}

/// The prepared statements of one connection.
struct Statements {
    put: Statement,
    delete: Statement,
    kv: Statement,
}

/// One connection and its statements.
pub(crate) struct Conn {
    client: Client,
    st: Statements,
}

/// Why a connection or a commit failed.
pub(crate) enum Failure {
    /// Could not connect (or set the connection up).
    Unreachable(String),
    /// A statement or the commit failed.
    Failed(String),
    /// The operation did not finish within [`PgOptions::op_timeout`].
    Timeout,
    /// Retrying cannot help: the schema is newer than this build, the credentials are wrong...
    Fatal(String),
    /// Another replica holds the lease now: this one's writes must never land again.
    Fenced {
        /// The term this store writes for.
        mine: i64,
        /// The term the database holds.
        now: i64,
    },
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "unreachable",
            Failure::Failed(_) => "failed",
            Failure::Timeout => "timeout",
            Failure::Fatal(_) => "fatal",
            Failure::Fenced { .. } => "fenced",
        }
    }

    pub(crate) fn detail(&self, op_timeout: Duration) -> String {
        match self {
            Failure::Unreachable(d) | Failure::Failed(d) | Failure::Fatal(d) => d.clone(),
            Failure::Timeout => format!("no answer within {op_timeout:?}"),
            Failure::Fenced { mine, now } => {
                format!("the lease is in term {now}, this replica wrote for term {mine}")
            }
        }
    }
}

/// Connects, brings the schema up to date and prepares the statements. The connection's own
/// task goes to `conns`; it ends when the [`Conn`] is dropped.
pub(crate) async fn connect(
    target: &PgTarget,
    conns: &TaskTracker,
) -> Result<(Conn, schema::Migrated), Failure> {
    let (mut client, connection) = target
        .config()
        .connect(NoTls)
        .await
        .map_err(|e| classify(&e, true))?;
    conns.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "database connection ended");
        }
    });
    let migrated = schema::migrate(&mut client).await.map_err(|e| match e {
        schema::SchemaError::Pg(e) => classify(&e, false),
        schema::SchemaError::Unusable(m) => Failure::Fatal(m),
    })?;
    let prepare = |sql: &'static str| {
        let client = &client;
        async move { client.prepare(sql).await.map_err(|e| classify(&e, false)) }
    };
    let st = Statements {
        put: prepare(
            "INSERT INTO ferry_records (kind, id, body)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
             ON CONFLICT (kind, id) DO UPDATE SET body = EXCLUDED.body",
        )
        .await?,
        delete: prepare(
            "DELETE FROM ferry_records r USING unnest($1::text[], $2::int8[]) AS d(kind, id)
             WHERE r.kind = d.kind AND r.id = d.id",
        )
        .await?,
        kv: prepare(
            "INSERT INTO ferry_kv (key, value)
             SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await?,
    };
    Ok((Conn { client, st }, migrated))
}

/// Whether an error can go away by itself. Wrong credentials, a missing database or missing
/// privileges do not, at start; while running every failure is retried (an operator can fix
/// them without a restart).
fn classify(e: &tokio_postgres::Error, connecting: bool) -> Failure {
    use tokio_postgres::error::SqlState;
    let detail = describe(e);
    match e.code() {
        Some(c)
            if c.code().starts_with("28")
                || *c == SqlState::INVALID_CATALOG_NAME
                || *c == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            Failure::Fatal(detail)
        }
        Some(c) if *c == SqlState::CANNOT_CONNECT_NOW || *c == SqlState::TOO_MANY_CONNECTIONS => {
            Failure::Unreachable(detail)
        }
        Some(_) => Failure::Failed(detail),
        None if connecting || e.is_closed() => Failure::Unreachable(detail),
        None => Failure::Failed(detail),
    }
}

impl Conn {
    /// Reads everything back.
    pub(crate) async fn load(&mut self) -> Result<crate::store::Loaded, Failure> {
        schema::load(&mut self.client)
            .await
            .map_err(|e| classify(&e, false))
    }

    /// Commits one batch in one transaction. With a `fence` (a replica's lease term) the
    /// transaction first takes a share lock on the lease row and checks the term: a take-over
    /// (which updates the row) waits for a commit under way, and no commit starts after it.
    async fn commit(&mut self, b: &Batch, fence: Option<i64>) -> Result<(), Failure> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| classify(&e, false))?;
        if let Some(mine) = fence {
            let now: Option<i64> = tx
                .query_opt(
                    "SELECT epoch FROM ferry_lease WHERE name = 'control' FOR SHARE",
                    &[],
                )
                .await
                .map_err(|e| classify(&e, false))?
                .map(|r| r.get(0));
            if now != Some(mine) {
                return Err(Failure::Fenced {
                    mine,
                    now: now.unwrap_or(-1),
                });
            }
        }
        apply(&self.st, tx, b)
            .await
            .map_err(|e| classify(&e, false))
    }
}

/// The batch's statements, then the commit.
async fn apply(
    st: &Statements,
    tx: tokio_postgres::Transaction<'_>,
    b: &Batch,
) -> Result<(), tokio_postgres::Error> {
    let (mut pk, mut pi, mut pb) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dk, mut di) = (Vec::new(), Vec::new());
    for ((kind, id), body) in &b.records {
        match body {
            Some(body) => {
                pk.push(kind.as_str());
                pi.push(*id);
                pb.push(body.as_str());
            }
            None => {
                dk.push(kind.as_str());
                di.push(*id);
            }
        }
    }
    let (kk, kvv): (Vec<&str>, Vec<&str>) = b.kv.iter().map(|(k, v)| (*k, v.as_str())).unzip();
    if !pk.is_empty() {
        tx.execute(&st.put, &[&pk, &pi, &pb]).await?;
    }
    if !dk.is_empty() {
        tx.execute(&st.delete, &[&dk, &di]).await?;
    }
    if !kk.is_empty() {
        tx.execute(&st.kv, &[&kk, &kvv]).await?;
    }
    tx.commit().await
}

/// Doubling, jittered back-off between attempts.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The wait before the next attempt.
    pub(crate) fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The writer: the receiving end of the store's channel and the connection.
pub(crate) struct Writer {
    pub(crate) target: PgTarget,
    pub(crate) opts: PgOptions,
    pub(crate) rx: mpsc::UnboundedReceiver<Op>,
    pub(crate) conn: Option<Conn>,
    pub(crate) conns: TaskTracker,
    pub(crate) pending: Arc<AtomicUsize>,
    /// Cancelled by [`super::PostgresStore::close`]: cuts a back-off short, so the close
    /// deadline starts at once.
    pub(crate) closing: CancellationToken,
}

/// An outage under way: when it began and how many attempts failed.
struct Outage {
    since: Instant,
    attempts: u32,
    last_warned: Instant,
}

impl Writer {
    /// Runs until the store is closed and everything queued is committed, or, once closed,
    /// until [`PgOptions::close_timeout`] has passed with the database still failing.
    pub(crate) async fn run(mut self) {
        let mut batch = Batch::default();
        let mut closed_at: Option<Instant> = None;
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        let mut outage: Option<Outage> = None;
        loop {
            if batch.is_empty() {
                match self.rx.recv().await {
                    Some(op) => batch.add(op),
                    None => break,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(op) => batch.add(op),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed_at.get_or_insert_with(Instant::now);
                        break;
                    }
                }
            }
            if batch.writes == 0 {
                // Flushes only: everything before them is committed already.
                batch.ack();
                continue;
            }
            let give_up = closed_at.map(|t| t + self.opts.close_timeout);
            match self.attempt(&batch, give_up).await {
                Ok(()) => {
                    let left =
                        self.pending.fetch_sub(batch.writes, Ordering::SeqCst) - batch.writes;
                    telemetry::store_pending(left);
                    if let Some(o) = outage.take() {
                        telemetry::store_resumed(
                            self.target.shown(),
                            o.since.elapsed(),
                            o.attempts,
                            batch.writes,
                        );
                    }
                    batch.ack();
                    batch = Batch::default();
                    backoff.reset();
                }
                Err(Failure::Fenced { mine, now }) => {
                    self.fenced(&batch, mine, now);
                    // Later writes are taken and dropped (flushes answer "closed").
                    while let Some(op) = self.rx.recv().await {
                        if let Op::Write(_) = op {
                            self.pending.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    break;
                }
                Err(f) => {
                    self.conn = None;
                    let pending = self.pending.load(Ordering::SeqCst);
                    telemetry::store_pending(pending);
                    let now = Instant::now();
                    let o = outage.get_or_insert(Outage {
                        since: now,
                        attempts: 0,
                        last_warned: now,
                    });
                    o.attempts += 1;
                    let loud = o.attempts == 1 || now - o.last_warned >= self.opts.warn_every;
                    if loud {
                        o.last_warned = now;
                    }
                    telemetry::store_retry(
                        self.target.shown(),
                        f.reason(),
                        &f.detail(self.opts.op_timeout),
                        pending,
                        o.since.elapsed(),
                        loud,
                    );
                    if give_up.is_some_and(|t| Instant::now() >= t) {
                        telemetry::store_abandoned(self.target.shown(), pending);
                        break;
                    }
                    let wait = backoff.wait();
                    let wait = give_up.map_or(wait, |t| wait.min(t.saturating_duration_since(now)));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.closing.cancelled(), if closed_at.is_none() => {}
                    }
                }
            }
        }
        self.conn = None;
        self.conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conns.wait()).await;
    }

    /// Another replica took the lease: nothing more is written (a newer owner's state must
    /// not be overwritten with this one's). Logged loudly with what is given up, and the
    /// replica is told through the fence's token.
    fn fenced(&mut self, batch: &Batch, mine: i64, now: i64) {
        let pending = self.pending.load(Ordering::SeqCst);
        tracing::error!(
            database = self.target.shown(),
            term = mine,
            lease_term = now,
            dropped_writes = pending,
            batch_records = batch.records.len() + batch.kv.len(),
            "another replica owns the endpoints now; this replica's pending writes are dropped"
        );
        telemetry::store_abandoned(self.target.shown(), pending);
        if let Some(f) = &self.opts.fence {
            f.deposed.cancel();
        }
        self.pending.fetch_sub(batch.writes, Ordering::SeqCst);
    }

    /// Connects if needed and commits, within the operation bound (and the close deadline).
    async fn attempt(&mut self, batch: &Batch, give_up: Option<Instant>) -> Result<(), Failure> {
        let mut bound = self.opts.op_timeout;
        if let Some(t) = give_up {
            bound = bound.min(t.saturating_duration_since(Instant::now()));
        }
        let work = async {
            if self.conn.is_none() {
                let (conn, migrated) = connect(&self.target, &self.conns).await?;
                if !migrated.applied.is_empty() {
                    tracing::warn!(
                        database = self.target.shown(),
                        applied = ?migrated.applied,
                        "schema migrations applied on reconnect (was the database replaced?)"
                    );
                }
                self.conn = Some(conn);
            }
            match self.conn.as_mut() {
                Some(c) => {
                    c.commit(batch, self.opts.fence.as_ref().map(|f| f.epoch))
                        .await
                }
                None => Err(Failure::Unreachable("no connection".into())),
            }
        };
        match tokio::time::timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put(id: i64, body: &str) -> Op {
        Op::Write(Write::Put {
            kind: Kind::Endpoint,
            id,
            body: body.into(),
        })
    }

    #[test]
    fn a_batch_keeps_the_last_write_per_record_and_key() {
        let mut b = Batch::default();
        b.add(put(1, "a"));
        b.add(put(2, "b"));
        b.add(Op::Write(Write::Delete {
            kind: Kind::Endpoint,
            id: 1,
        }));
        b.add(put(2, "c"));
        b.add(Op::Write(Write::Kv {
            key: "k",
            value: "1".into(),
        }));
        b.add(Op::Write(Write::Kv {
            key: "k",
            value: "2".into(),
        }));
        b.add(put(1, "d"));
        assert_eq!(b.writes, 7);
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.records[&(Kind::Endpoint, 1)].as_deref(), Some("d"));
        assert_eq!(b.records[&(Kind::Endpoint, 2)].as_deref(), Some("c"));
        assert_eq!(b.kv["k"], "2");
        b.add(Op::Write(Write::Delete {
            kind: Kind::Endpoint,
            id: 2,
        }));
        assert_eq!(b.records[&(Kind::Endpoint, 2)], None);
    }

    #[test]
    fn backoff_doubles_to_its_bound() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<_> = (0..5).map(|_| b.wait().as_millis()).collect();
        for (w, base) in waits.iter().zip([100, 200, 400, 400, 400]) {
            assert!((base * 8 / 10..=base * 12 / 10).contains(w), "{waits:?}");
        }
        b.reset();
        assert!(b.wait() <= Duration::from_millis(120));
    }
}
