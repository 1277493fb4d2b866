//! Persistence behind a small trait: the in-memory state is authoritative while running, and
//! every change is written through to a [`Store`] as a [`Write`].
//!
//! What is stored: endpoints, workergroups, worker records and queued requests (one JSON
//! document per `(kind, id)`, see [`Kind`]), and small values in a key-value table: the
//! signing key, the account key, the `request_idx` ceiling and the id counters. Everything is
//! read back once at start-up as a [`Loaded`].
//!
//! The trait is shaped for write-behind back ends: [`Store::write`] never blocks on I/O (it
//! hands the change to the back end's own thread or task, in order), so it can be called with
//! the control plane's mutex held; callers that must know a change is durable before they
//! answer (endpoint creation) await [`Store::flush`]. [`sqlite::SqliteStore`] is the one
//! implementation today; a PostgreSQL one would keep the same documents (`jsonb`) and the same
//! contract, and nothing above this module would change.
//!
//! `request_idx` is never reused across restarts: the counter is persisted as a *ceiling*
//! reserved in blocks (see `queue.rs`), so even a crash that loses the last writes restarts
//! above every index handed out.

pub mod sqlite;

use std::collections::HashMap;

use futures_util::future::BoxFuture;

pub use sqlite::SqliteStore;

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
    /// Resolves once every change written before it is durable.
    fn flush(&self) -> BoxFuture<'_, ()>;
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
        fn flush(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn close(&self) {}
    }
}
