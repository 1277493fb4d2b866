//! [`SqliteStore`]: an embedded SQLite database owned by one dedicated thread.
//!
//! Two tables: `kv (key, value)` and `records (kind, id, body)` with one JSON document per
//! `(kind, id)`. Writes arrive as messages, so no async task ever blocks on SQLite and no
//! mutex is held across an `.await`; they are applied in order and batched into one
//! transaction per wake-up.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use futures_util::future::BoxFuture;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::{Loaded, Store, StoreError, Write};

enum Op {
    Write(Write),
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub struct SqliteStore {
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, or an in-memory one for `None`,
    /// and reads everything back. Blocking: call from `spawn_blocking` or before the runtime.
    pub fn open(path: Option<&Path>) -> Result<(SqliteStore, Loaded), String> {
        if let Some(p) = path {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            // It holds the signing key, the account and endpoint keys and master tokens.
            crate::secrets::private_file(p).map_err(|e| e.to_string())?;
        }
        let (tx, rx) = mpsc::channel::<Op>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Loaded, String>>();
        let owned = path.map(Path::to_path_buf);
        let thread_path = owned.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-store".into())
            .spawn(move || {
                let conn = match open_conn(thread_path.as_deref()) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(load(&conn));
                writer(conn, rx);
            })
            .map_err(|e| format!("starting the store thread: {e}"))?;
        let loaded = ready_rx
            .recv()
            .map_err(|_| "the store thread died".to_string())??;
        Ok((
            SqliteStore {
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                path: owned,
            },
            loaded,
        ))
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

impl Store for SqliteStore {
    fn write(&self, w: Write) {
        if !self.send(Op::Write(w)) {
            tracing::error!("store thread gone; change not persisted");
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Op::Flush(tx));
        Box::pin(async move {
            if sent && rx.await.is_ok() {
                Ok(())
            } else {
                Err(StoreError::Closed)
            }
        })
    }

    fn close(&self) {
        let tx = match self.tx.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        drop(tx);
        let handle = match self.thread.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_conn(path: Option<&Path>) -> Result<Connection, String> {
    let conn = match path {
        Some(p) => Connection::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?,
        None => Connection::open_in_memory().map_err(|e| e.to_string())?,
    };
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS records (
             kind TEXT NOT NULL, id INTEGER NOT NULL, body TEXT NOT NULL,
             PRIMARY KEY (kind, id));",
    )
    .map_err(|e| format!("creating tables: {e}"))?;
    Ok(conn)
}

fn load(conn: &Connection) -> Result<Loaded, String> {
    let mut out = Loaded::default();
    let mut st = conn
        .prepare("SELECT key, value FROM kv")
        .map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (k, v) = row.map_err(|e| e.to_string())?;
        out.kv.insert(k, v);
    }
    let mut st = conn
        .prepare("SELECT kind, id, body FROM records ORDER BY kind, id")
        .map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    for row in rows {
        out.records.push(row.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 512 {
                break;
            }
        }
        let mut acks = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for op in batch {
                match op {
                    Op::Write(Write::Put { kind, id, body }) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO records (kind, id, body) VALUES (?1, ?2, ?3)",
                            params![kind.as_str(), id, body],
                        )?;
                    }
                    Op::Write(Write::Delete { kind, id }) => {
                        tx.execute(
                            "DELETE FROM records WHERE kind = ?1 AND id = ?2",
                            params![kind.as_str(), id],
                        )?;
                    }
                    Op::Write(Write::Kv { key, value }) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                            params![key, value],
                        )?;
                    }
                    Op::Flush(ack) => acks.push(ack),
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "database write failed");
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::Kind;

    #[tokio::test]
    async fn round_trip_on_disk() {
        let dir = std::env::temp_dir().join(format!("ferry-store-{}", std::process::id()));
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let (s, loaded) = SqliteStore::open(Some(&path)).unwrap();
            assert!(loaded.records.is_empty());
            let s: &dyn Store = &s;
            s.put_json(Kind::Endpoint, 1, &serde_json::json!({"a": 1}));
            s.put_json(Kind::Endpoint, 2, &serde_json::json!({}));
            s.delete(Kind::Endpoint, 2);
            s.set_kv("k", "v".into());
            s.flush().await.unwrap();
        }
        let (_s, loaded) = SqliteStore::open(Some(&path)).unwrap();
        assert_eq!(loaded.kv.get("k").map(String::as_str), Some("v"));
        let eps: Vec<_> = loaded.of(Kind::Endpoint).collect();
        assert_eq!(eps, vec![(1, "{\"a\":1}")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
