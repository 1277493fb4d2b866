//! A throwaway PostgreSQL cluster per test, through `scripts/pg-cluster.sh` (the one place
//! that knows how to find, run and remove a server; Python suites use it too): a new
//! temporary folder, a server on 127.0.0.1 and a free port, removed on drop, also when the test
//! fails.
//!
//! When PostgreSQL cannot be found, [`PgCluster::start`] answers `None` after saying why, and
//! the test returns: except on CI (`CI` set), where that is a failure. `scripts/test.sh`
//! installs PostgreSQL first.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_control::store::PgTarget;

/// One running (or stopped) cluster.
pub struct PgCluster {
    dir: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/ferry`.
    pub url: String,
    port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster.sh")
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap()
}

impl PgCluster {
    /// A new cluster with a database `ferry`; `None` when PostgreSQL is not installed (and
    /// this is not CI).
    pub fn start() -> Option<PgCluster> {
        let out = run(&["start"]);
        if out.status.code() == Some(3) {
            let why = String::from_utf8_lossy(&out.stderr);
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the PostgreSQL tests: {why}"
            );
            eprintln!(
                "SKIPPED: PostgreSQL not found ({}); scripts/test.sh installs it",
                why.trim()
            );
            return None;
        }
        assert!(
            out.status.success(),
            "pg-cluster.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
                .to_owned()
        };
        Some(PgCluster {
            dir: PathBuf::from(get("PG_CLUSTER_DIR")),
            port: get("PG_PORT").parse().unwrap(),
            url: get("FERRY_STORE"),
        })
    }

    /// The database `ferry`.
    pub fn target(&self) -> PgTarget {
        PgTarget::parse(&self.url).unwrap()
    }

    /// The cluster's folder (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates another database; its URL.
    pub fn createdb(&self, name: &str) -> String {
        let out = run(&["createdb", &self.dir.to_string_lossy(), name]);
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server (fast shutdown); the data stays.
    pub fn stop(&self) {
        let out = run(&["stop", &self.dir.to_string_lossy()]);
        assert!(
            out.status.success(),
            "stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again on the same port.
    pub fn resume(&self) {
        let out = run(&["resume", &self.dir.to_string_lossy()]);
        assert!(
            out.status.success(),
            "resume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A plain client connection to `url` (its connection task spawned).
    pub async fn client(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let out = run(&["remove", &self.dir.to_string_lossy()]);
        if !out.status.success() {
            eprintln!(
                "pg-cluster.sh remove {}: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Skips the test (see the module docs) when PostgreSQL is missing.
macro_rules! pg_or_skip {
    () => {
        match $crate::pg::PgCluster::start() {
            Some(pg) => pg,
            None => return,
        }
    };
}
pub(crate) use pg_or_skip;
