//! The schema, its migrations, and the start-up read.
//!
//! Tables are prefixed `ferry_` so the database can be shared with other applications:
//! `ferry_kv (key, value)`, `ferry_records (kind, id, body)` with one JSON document per
//! `(kind, id)` stored as `text` (byte for byte what was written, so a restart reads back exactly
//! the [`Loaded`] SQLite would; `body::jsonb` works for ad-hoc queries), and
//! `ferry_schema_migrations (version, name, applied_at)`.
//!
//! Migrations run in one transaction that first takes a transaction-scoped advisory lock, so
//! two control planes starting at once apply each migration exactly once: the second waits,
//! then finds them recorded. Their DDL is plain `CREATE TABLE` (no `IF NOT EXISTS`): applying one
//! twice would fail loudly instead of passing unnoticed.

use tokio_postgres::{Client, Error, IsolationLevel};

use crate::store::Loaded;

/// `pg_advisory_xact_lock` key of the migrations: "ferry" in ASCII.
const MIGRATION_LOCK: i64 = 0x66_65_72_72_79;

/// `(version, name, SQL)`, in order. Append only: a released migration never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "kv and records",
        "CREATE TABLE ferry_kv (key text PRIMARY KEY, value text NOT NULL);
         CREATE TABLE ferry_records (
             kind text NOT NULL, id bigint NOT NULL, body text NOT NULL,
             PRIMARY KEY (kind, id));",
    ),
    (
        2,
        "replica lease",
        // One row: who owns the endpoints (`holder`, `url`), the term (`epoch`, raised by
        // every take-over and release: the fencing token of the owner's writes) and a counter
        // the owner raises at every renewal, which the others watch (see `lease.rs`).
        "CREATE TABLE ferry_lease (
             name text PRIMARY KEY, holder text, url text,
             epoch bigint NOT NULL, renewals bigint NOT NULL,
             renewed_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO ferry_lease (name, epoch, renewals) VALUES ('control', 0, 0);",
    ),
];

/// What [`migrate`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// The schema version now.
    pub version: i32,
    /// The versions this call applied (empty when another process had).
    pub applied: Vec<i32>,
}

/// Why the database cannot be used at all (retrying would not help).
#[derive(Debug)]
pub(crate) enum SchemaError {
    /// A client or server error: maybe transient.
    Pg(Error),
    /// The schema is newer than this build knows, or the database cannot hold our text.
    Unusable(String),
}

impl From<Error> for SchemaError {
    fn from(e: Error) -> Self {
        SchemaError::Pg(e)
    }
}

/// Brings the schema up to date (idempotent; safe against concurrent starts).
pub(crate) async fn migrate(client: &mut Client) -> Result<Migrated, SchemaError> {
    let encoding: String = client
        .query_one("SELECT current_setting('server_encoding')", &[])
        .await?
        .get(0);
    if encoding != "UTF8" && encoding != "SQL_ASCII" {
        return Err(SchemaError::Unusable(format!(
            "the database's encoding is {encoding}; Ferry stores UTF-8 text: create it with \
             ENCODING 'UTF8'"
        )));
    }
    let tx = client.transaction().await?;
    // No "already exists, skipping" notice in the log at every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ferry_schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM ferry_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if let Some(newer) = done.iter().copied().filter(|v| *v > known).max() {
        return Err(SchemaError::Unusable(format!(
            "the schema is at version {newer}, written by a newer Ferry; this one knows up to \
             {known}: run the newer version"
        )));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO ferry_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(Migrated {
        version: known,
        applied,
    })
}

/// Reads everything back in one snapshot, ordered as [`Loaded`] promises (kind by byte order,
/// whatever the database's collation, then id).
pub(crate) async fn load(client: &mut Client) -> Result<Loaded, Error> {
    let mut out = Loaded::default();
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    for row in tx.query("SELECT key, value FROM ferry_kv", &[]).await? {
        out.kv.insert(row.try_get(0)?, row.try_get(1)?);
    }
    for row in tx
        .query(
            "SELECT kind, id, body FROM ferry_records ORDER BY kind COLLATE \"C\", id",
            &[],
        )
        .await?
    {
        out.records
            .push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    tx.commit().await?;
    Ok(out)
}
