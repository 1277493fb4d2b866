//! Persistence behind a small trait: the in-memory state is authoritative while running, and
//! every change is written through to a [`Store`] as a [`Write`].
//!
//! What is stored: endpoints, workergroups, worker records, queued requests and join tokens
//! (one JSON document per `(kind, id)`, see [`Kind`]), and small values in a key-value table:
//! the signing key, the account key, the `request_idx` ceiling and the id counters. Everything
//! is read back once at start-up as a [`Loaded`].
//!
//! The trait is shaped for write-behind back ends: [`Store::write`] never blocks on I/O (it
//! hands the change to the back end's own thread or task, in order), so it can be called with
//! the control plane's mutex held; callers that must know a change is durable before they
//! answer (endpoint creation) await [`Store::flush`], which a back end may bound
//! ([`StoreError::Behind`]: the change stays queued). Two implementations:
//! [`sqlite::SqliteStore`] (a file, the default) and [`postgres::PostgresStore`] (`--store
//! postgres://...`), with the same documents and the same contract; nothing above this module
//! knows which one runs.
//!
//! Operations that need an answer from the database itself are not write-behind: the
//! replicas' lease has its own connection ([`LeaseConn`]), and its term fences the writer
//! ([`Fence`]; docs/ha.md).
//!
//! `request_idx` is never reused across restarts: the counter is persisted as a *ceiling*
//! reserved in blocks (see `queue.rs`), so even a crash that loses the last writes restarts
//! above every index handed out.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use postgres::{Fence, LeaseConn, LeaseRow, PgOptions, PgTarget, PostgresStore};
pub use sqlite::SqliteStore;

/// Why a [`Store::flush`] could not confirm durability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database did not confirm in time; the changes stay queued, in order, and are
    /// written when it answers.
    #[error("the database has not confirmed {pending} queued change(s) within {waited:?}; they stay queued and are written when it answers")]
    Behind {
        /// Changes queued and not yet committed.
        pending: usize,
        /// How long the flush waited.
        waited: Duration,
    },
    /// The store is closed (or gave up at close): later changes are not persisted.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// Short fixed code for logs and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Behind { .. } => "store_behind",
            StoreError::Closed => "store_closed",
        }
    }
}

/// Kinds of record. Their names ([`Kind::as_str`]) are what the database holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Endpoint records.
    Endpoint,
    /// Workergroup records.
    Workergroup,
    /// Worker records.
    Worker,
    /// Queued requests.
    Queued,
    /// Join tokens of external workergroups (hashes only).
    JoinToken,
}

impl Kind {
    /// Name on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Endpoint => "endpoint",
            Kind::Workergroup => "workergroup",
            Kind::Worker => "worker",
            Kind::Queued => "queued",
            Kind::JoinToken => "join_token",
        }
    }
}

/// One change, applied in the order written.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Inserts or replaces one record.
    Put {
        /// Kind.
        kind: Kind,
        /// Id within the kind.
        id: i64,
        /// JSON document.
        body: String,
    },
    /// Deletes one record (absent is not an error).
    Delete {
        /// Kind.
        kind: Kind,
        /// Id within the kind.
        id: i64,
    },
    /// Sets a key-value entry.
    Kv {
        /// Key.
        key: &'static str,
        /// Value.
        value: String,
    },
}

/// Where the control plane's state is persisted.
pub trait Store: Send + Sync + 'static {
    /// Queues one change; never blocks on I/O.
    fn write(&self, w: Write);
    /// Resolves once every change written before it is durable, or with an error when the
    /// back end cannot confirm that within its bound (the changes stay queued).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Makes everything pending durable and releases the back end. Blocking; calling it again
    /// does nothing.
    fn close(&self);
}

impl dyn Store {
    /// Serializes and writes one record.
    pub fn put_json<T: serde::Serialize + ?Sized>(&self, kind: Kind, id: i64, value: &T) {
        match serde_json::to_string(value) {
            Ok(body) => self.write(Write::Put { kind, id, body }),
            Err(e) => {
                tracing::error!(kind = kind.as_str(), id, error = %e, "cannot serialize record")
            }
        }
    }

    /// Deletes one record.
    pub fn delete(&self, kind: Kind, id: i64) {
        self.write(Write::Delete { kind, id });
    }

    /// Sets a key-value entry.
    pub fn set_kv(&self, key: &'static str, value: String) {
        self.write(Write::Kv { key, value });
    }
}

/// Everything read at start-up.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// The key-value table.
    pub kv: HashMap<String, String>,
    /// `(kind, id, json)` records, ordered by kind then id.
    pub records: Vec<(String, i64, String)>,
}

impl Loaded {
    /// The JSON bodies of one kind, by id order.
    pub fn of(&self, k: Kind) -> impl Iterator<Item = (i64, &str)> {
        self.records
            .iter()
            .filter(move |(kk, _, _)| kk == k.as_str())
            .map(|(_, id, body)| (*id, body.as_str()))
    }

    /// A key-value entry parsed as `T`.
    pub fn kv_parsed<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.kv.get(key).and_then(|v| v.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// Records carry Unix times as JSON floats (`created_at`); a replica that reads them back
    /// must get the very same value (serde_json's `float_roundtrip`), or every read-back and
    /// re-write would drift the last bit.
    #[test]
    fn json_floats_read_back_exactly() {
        for text in ["1795983843.4812875", "0.1", "1795983843.481287", "5e-324"] {
            let v: f64 = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&v).unwrap(), text);
            let again: f64 = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(again.to_bits(), v.to_bits());
        }
    }
}

/// An in-memory store for tests: records what is written, and can play it back as the
/// [`Loaded`] of a restart.
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Written {
        kv: HashMap<String, String>,
        records: BTreeMap<(&'static str, i64), String>,
    }

    /// The state as written so far.
    #[derive(Debug, Default)]
    pub(crate) struct MemoryStore {
        state: Mutex<Written>,
    }

    impl MemoryStore {
        /// What a restart would read.
        pub(crate) fn loaded(&self) -> Loaded {
            let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            Loaded {
                kv: g.kv.clone(),
                records: g
                    .records
                    .iter()
                    .map(|((k, id), b)| ((*k).to_owned(), *id, b.clone()))
                    .collect(),
            }
        }
    }

    impl Store for MemoryStore {
        fn write(&self, w: Write) {
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match w {
                Write::Put { kind, id, body } => {
                    g.records.insert((kind.as_str(), id), body);
                }
                Write::Delete { kind, id } => {
                    g.records.remove(&(kind.as_str(), id));
                }
                Write::Kv { key, value } => {
                    g.kv.insert(key.to_owned(), value);
                }
            }
        }
        fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Ok(()) })
        }
        fn close(&self) {}
    }
}
