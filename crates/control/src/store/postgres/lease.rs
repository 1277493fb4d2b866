//! [`LeaseConn`]: the replicas' lease, one row of `ferry_lease` (migration 2), read and changed
//! on a connection of its own (never behind the write-behind queue: a lease answer must be
//! current).
//!
//! The row holds who owns the endpoints (`holder`: a replica's URL and a per-process nonce;
//! `url`: where the others hand requests), the term (`epoch`) and a renewal counter. Every
//! change is a compare-and-set on what the caller saw, so two replicas never both win:
//!
//! - take: `epoch + 1`, new holder, only if `(epoch, renewals)` are still what was seen;
//! - renew: `renewals + 1`, only while `(epoch, holder)` are ours;
//! - release: holder cleared and `epoch + 1`, only while ours (a free row is taken at once).
//!
//! Whether a lease has run out is never judged from clocks in the row: a follower watches
//! the counter and takes over only after seeing it unchanged for the whole lease time on its
//! own monotonic clock (see `replica`). The owner's writes carry the term as a fencing token
//! (`writer.rs`): a take-over waits for a commit under way and no later one lands.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tokio_util::task::TaskTracker;

use super::schema;
use super::target::{describe, PgTarget};

/// The lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The owner's identity (its URL and a per-process nonce); `None`: free.
    pub holder: Option<String>,
    /// The owner's base URL.
    pub url: Option<String>,
    /// The term: raised by every take-over and release.
    pub epoch: i64,
    /// Raised by every renewal.
    pub renewals: i64,
}

/// A connection for the lease; reconnects (and brings the schema up to date) on demand.
pub struct LeaseConn {
    target: PgTarget,
    op_timeout: Duration,
    client: Option<Client>,
    conns: TaskTracker,
}

impl LeaseConn {
    /// A lease connection to `target`; each operation is bounded by `op_timeout`.
    pub fn new(target: PgTarget, op_timeout: Duration) -> LeaseConn {
        LeaseConn {
            target,
            op_timeout,
            client: None,
            conns: TaskTracker::new(),
        }
    }

    /// Where the database is.
    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    async fn client(&mut self) -> Result<&Client, String> {
        if self.client.is_none() {
            let (mut client, connection) = self
                .target
                .config()
                .connect(NoTls)
                .await
                .map_err(|e| describe(&e))?;
            self.conns.spawn(async move {
                let _ = connection.await;
            });
            schema::migrate(&mut client).await.map_err(|e| match e {
                schema::SchemaError::Pg(e) => describe(&e),
                schema::SchemaError::Unusable(m) => m,
            })?;
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| "no connection".to_owned())
    }

    /// Runs one statement returning at most one row, bounded; a failure drops the connection.
    async fn one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, String> {
        let bound = self.op_timeout;
        let work = async {
            let c = self.client().await?;
            c.query_opt(sql, params).await.map_err(|e| describe(&e))
        };
        let r = match tokio::time::timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {bound:?}")),
        };
        if r.is_err() {
            self.client = None;
        }
        r
    }

    /// The lease now.
    pub async fn read(&mut self) -> Result<LeaseRow, String> {
        let row = self
            .one(
                "SELECT holder, url, epoch, renewals FROM ferry_lease WHERE name = 'control'",
                &[],
            )
            .await?
            .ok_or_else(|| "the ferry_lease row is missing".to_owned())?;
        Ok(LeaseRow {
            holder: row.get(0),
            url: row.get(1),
            epoch: row.get(2),
            renewals: row.get(3),
        })
    }

    /// Takes the lease if it is still as `seen`; the new row when taken.
    pub async fn take(
        &mut self,
        seen: &LeaseRow,
        holder: &str,
        url: &str,
    ) -> Result<Option<LeaseRow>, String> {
        let row = self
            .one(
                "UPDATE ferry_lease SET holder = $1, url = $2, epoch = epoch + 1, renewals = 0,
                     renewed_at = now()
                 WHERE name = 'control' AND epoch = $3 AND renewals = $4
                 RETURNING epoch",
                &[&holder, &url, &seen.epoch, &seen.renewals],
            )
            .await?;
        Ok(row.map(|r| LeaseRow {
            holder: Some(holder.to_owned()),
            url: Some(url.to_owned()),
            epoch: r.get(0),
            renewals: 0,
        }))
    }

    /// Renews the lease of term `epoch`; `false` when it is no longer ours.
    pub async fn renew(&mut self, epoch: i64, holder: &str) -> Result<bool, String> {
        let row = self
            .one(
                "UPDATE ferry_lease SET renewals = renewals + 1, renewed_at = now()
                 WHERE name = 'control' AND epoch = $1 AND holder = $2
                 RETURNING renewals",
                &[&epoch, &holder],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives the lease of term `epoch` up (the next term starts free); `false` when it was no
    /// longer ours.
    pub async fn release(&mut self, epoch: i64, holder: &str) -> Result<bool, String> {
        let row = self
            .one(
                "UPDATE ferry_lease SET holder = NULL, url = NULL, epoch = epoch + 1,
                     renewals = 0, renewed_at = now()
                 WHERE name = 'control' AND epoch = $1 AND holder = $2
                 RETURNING epoch",
                &[&epoch, &holder],
            )
            .await?;
        Ok(row.is_some())
    }
}
