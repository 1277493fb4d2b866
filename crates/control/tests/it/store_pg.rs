//! The PostgreSQL store against a real server (a throwaway cluster per test, see `pg.rs`):
//! round trips through a restart, order under bursts, the database stopped and slow while
//! writes go on, a control plane restarting on it, and concurrent starts migrating once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_control::store::{
    Kind, Loaded, PgOptions, PgTarget, PostgresStore, SqliteStore, Store, StoreError, Write,
};
use ferry_sim::SimConfig;
use serde_json::json;

use crate::harness::{eventually, temp_db, Cp, Opts};
use crate::inproc::InProc;
use crate::pg::{pg_or_skip, PgCluster};

/// Short bounds, so an outage shows within a test.
fn quick() -> PgOptions {
    PgOptions {
        start_deadline: Duration::from_secs(20),
        flush_timeout: Duration::from_secs(1),
        close_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        warn_every: Duration::from_secs(5),
        fence: None,
    }
}

async fn open(target: &PgTarget, opts: PgOptions) -> (Arc<PostgresStore>, Loaded) {
    let target = target.clone();
    let (s, l) = tokio::task::spawn_blocking(move || PostgresStore::open_with(target, opts))
        .await
        .unwrap()
        .unwrap();
    (Arc::new(s), l)
}

/// Closes on the blocking pool (close joins the writer thread).
async fn close(s: Arc<PostgresStore>) {
    tokio::task::spawn_blocking(move || s.close())
        .await
        .unwrap();
}

/// Every kind of record and every key the control plane keeps, with deletes and overwrites.
fn sample_writes() -> Vec<Write> {
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
    let mut w = Vec::new();
    let kinds = [
        Kind::Endpoint,
        Kind::Workergroup,
        Kind::Worker,
        Kind::Queued,
        Kind::JoinToken,
    ];
    for (n, kind) in kinds.into_iter().enumerate() {
        for id in 1..=3 {
            let body = json!({"kind": kind.as_str(), "id": id, "n": n,
                              "text": "naïve ✓ \"quoted\" \u{0} tab\t", "nested": {"a": [1, 2.5, null]}});
            w.push(Write::Put {
                kind,
                id,
                body: body.to_string(),
            });
        }
        w.push(Write::Delete { kind, id: 2 });
        w.push(Write::Put {
            kind,
            id: 3,
            body: json!({"overwritten": kind.as_str()}).to_string(),
        });
    }
    w.push(Write::Delete {
        kind: Kind::Worker,
        id: 999,
    });
    w.push(Write::Put {
        kind: Kind::Queued,
        id: i64::MAX,
        body: "{}".into(),
    });
    for (key, value) in [
        ("signing_key_pem", pem.to_owned()),
        ("account_api_key", "0123abcd".to_owned()),
        ("request_idx_ceiling", "1024".to_owned()),
        ("request_idx_ceiling", "2048".to_owned()),
        ("next_id", "7".to_owned()),
        ("next_worker_id", "1001".to_owned()),
        ("next_join_token_id", "4".to_owned()),
    ] {
        w.push(Write::Kv { key, value });
    }
    w
}

/// Every record kind and every key come back the same after a restart, exactly as SQLite
/// gives them back; a value PostgreSQL cannot hold (NUL) is refused alone; reopening applies
/// no migration again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_round_trips_every_kind_and_kv_through_a_restart() {
    let pg = pg_or_skip!();
    let target = pg.target();
    let (s, loaded) = open(&target, quick()).await;
    assert!(loaded.records.is_empty() && loaded.kv.is_empty());
    assert_eq!(s.applied_migrations(), &[1, 2]);
    for w in sample_writes() {
        s.write(w);
    }
    s.write(Write::Kv {
        key: "refused",
        value: "a\0b".into(),
    });
    s.write(Write::Kv {
        key: "after_refused",
        value: "kept".into(),
    });
    s.flush().await.unwrap();
    close(s).await;

    let (s, back) = open(&target, quick()).await;
    assert!(s.applied_migrations().is_empty(), "migrations ran once");
    assert_eq!(s.schema_version(), 2);

    let db = temp_db();
    let (lite, _) = SqliteStore::open(Some(&db)).unwrap();
    for w in sample_writes() {
        lite.write(w);
    }
    lite.write(Write::Kv {
        key: "after_refused",
        value: "kept".into(),
    });
    lite.flush().await.unwrap();
    drop(lite);
    let (_lite, expected) = SqliteStore::open(Some(&db)).unwrap();
    let _ = std::fs::remove_file(&db);

    assert_eq!(back.kv, expected.kv);
    assert_eq!(back.records, expected.records);
    assert!(!back.kv.contains_key("refused"));
    assert_eq!(back.records.len(), 5 * 2 + 1);
    assert_eq!(
        back.of(Kind::JoinToken)
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(back.kv_parsed::<u64>("request_idx_ceiling"), Some(2048));
    close(s).await;

    let c = PgCluster::client(&pg.url).await.unwrap();
    let rows = c
        .query("SELECT version FROM ferry_schema_migrations", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
}

/// The steps the order tests write: step `i` puts worker `i` (never deleted: every write must
/// land), puts queued `i`, deletes queued `i - 5`, and sets `it_seq` to `i`.
fn step(s: &dyn Store, i: i64) {
    s.write(Write::Put {
        kind: Kind::Worker,
        id: i,
        body: json!({"i": i}).to_string(),
    });
    s.write(Write::Put {
        kind: Kind::Queued,
        id: i,
        body: json!({"q": i}).to_string(),
    });
    if i > 5 {
        s.write(Write::Delete {
            kind: Kind::Queued,
            id: i - 5,
        });
    }
    s.write(Write::Kv {
        key: "it_seq",
        value: i.to_string(),
    });
}

/// Whether a state the database shows is one some prefix of the steps, in order, produces.
fn check_prefix(seq: i64, workers: &BTreeSet<i64>, queued: &BTreeSet<i64>) -> Result<(), String> {
    let max_w = workers.last().copied().unwrap_or(0);
    let ok_max = |m: i64| m == seq || m == seq + 1;
    if !ok_max(max_w) || workers.len() as i64 != max_w {
        return Err(format!(
            "seq {seq}: workers {}..={max_w} ({} of them)",
            workers.first().copied().unwrap_or(0),
            workers.len()
        ));
    }
    let (lo, hi) = (
        queued.first().copied().unwrap_or(0),
        queued.last().copied().unwrap_or(0),
    );
    if !ok_max(hi) || queued.len() as i64 != hi - lo + 1 || queued.len() > 6 {
        return Err(format!("seq {seq}: queued {queued:?}"));
    }
    Ok(())
}

/// Reads the database from its own connection while the store writes, and checks each state
/// it sees is a prefix of the steps. Counts what it saw.
struct Observer {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Observer {
    fn start(url: String) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let (st, sn) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut client = None;
            while !st.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if client.is_none() {
                    client = PgCluster::client(&url).await.ok();
                }
                let Some(c) = client.as_mut() else { continue };
                let snap = async {
                    let tx = c
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .start()
                        .await?;
                    let seq = tx
                        .query_opt("SELECT value FROM ferry_kv WHERE key = 'it_seq'", &[])
                        .await?
                        .map(|r| r.get::<_, String>(0));
                    let ids = |kind: &'static str| {
                        let tx = &tx;
                        async move {
                            Ok::<_, tokio_postgres::Error>(
                                tx.query("SELECT id FROM ferry_records WHERE kind = $1", &[&kind])
                                    .await?
                                    .iter()
                                    .map(|r| r.get::<_, i64>(0))
                                    .collect::<BTreeSet<i64>>(),
                            )
                        }
                    };
                    let (w, q) = (ids("worker").await?, ids("queued").await?);
                    tx.commit().await?;
                    Ok::<_, tokio_postgres::Error>((seq, w, q))
                };
                match snap.await {
                    Ok((Some(seq), w, q)) => {
                        check_prefix(seq.parse().unwrap(), &w, &q)?;
                        sn.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((None, w, _)) if w.len() <= 1 => {}
                    Ok((None, w, _)) => return Err(format!("no seq, workers {w:?}")),
                    Err(_) => client = None,
                }
            }
            Ok(())
        });
        Observer { stop, seen, task }
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap().unwrap();
        self.seen.load(Ordering::SeqCst)
    }
}

/// The state after steps `1..=n`, read back after a restart.
fn assert_final(back: &Loaded, n: i64) {
    assert_eq!(back.kv_parsed::<i64>("it_seq"), Some(n));
    let workers: Vec<(i64, &str)> = back.of(Kind::Worker).collect();
    assert_eq!(workers.len() as i64, n, "every step's worker record landed");
    for (i, (id, body)) in workers.into_iter().enumerate() {
        assert_eq!(id, i as i64 + 1);
        assert_eq!(body, json!({"i": id}).to_string());
    }
    let queued: Vec<i64> = back.of(Kind::Queued).map(|(id, _)| id).collect();
    assert_eq!(queued, ((n - 4).max(1)..=n).collect::<Vec<_>>());
}

/// Bursts of thousands of writes with no pause: what the database shows at any moment is the
/// result of a prefix of them, in order, and all of them are there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_write_order_under_bursts() {
    let pg = pg_or_skip!();
    let target = pg.target();
    let (s, _) = open(&target, quick()).await;
    let observer = Observer::start(pg.url.clone());
    let n = 20_000;
    for i in 1..=n {
        step(s.as_ref(), i);
        if i % 2_000 == 0 {
            // A burst, then a breath for the observer.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if i == n / 2 {
            s.flush().await.unwrap();
        }
    }
    s.flush().await.unwrap();
    assert_eq!(s.pending(), 0);
    let seen = observer.finish().await;
    assert!(seen > 0, "the observer saw the database");
    close(s).await;
    let (_s, back) = open(&target, quick()).await;
    assert_final(&back, n);
}

/// The database stopped for 10 s while writes go on: flushes answer `Behind` meanwhile
/// (nothing waits longer than the flush bound), the writes stay queued, and once it is back
/// they all land, in order (the observer never sees a state out of order), and flush answers
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_loses_and_reorders_nothing() {
    let pg = Arc::new(pg_or_skip!());
    let target = pg.target();
    let (s, _) = open(&target, quick()).await;
    let observer = Observer::start(pg.url.clone());
    let stop_writing = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicU64::new(0));
    let writer = {
        let (s, stop, steps) = (s.clone(), stop_writing.clone(), steps.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                step(s.as_ref(), i);
                steps.store(i as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };
    eventually(|| {
        let o = observer.seen();
        async move { o >= 3 }
    })
    .await;
    s.flush().await.unwrap();

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    let down_at = steps.load(Ordering::SeqCst);
    // Down: a flush answers within its bound, with the writes still queued.
    let began = std::time::Instant::now();
    match s.flush().await {
        Err(StoreError::Behind { pending, .. }) => assert!(pending > 0),
        other => panic!("flush while down: {other:?}"),
    }
    assert!(began.elapsed() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        steps.load(Ordering::SeqCst) > down_at + 100,
        "writes went on"
    );
    assert!(s.pending() > 0);
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.resume())
        .await
        .unwrap();

    // Back: flush answers Ok again once the queue is in.
    let s2 = s.clone();
    eventually(move || {
        let s = s2.clone();
        async move { s.flush().await.is_ok() }
    })
    .await;
    let seen_before = observer.seen();
    eventually(|| {
        let o = observer.seen();
        async move { o > seen_before + 3 }
    })
    .await;
    stop_writing.store(true, Ordering::SeqCst);
    let n = writer.await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.pending(), 0);
    observer.finish().await;
    close(s).await;
    let (_s, back) = open(&target, quick()).await;
    assert_final(&back, n);
}

/// A slow database: a table locked by another session holds every commit past the operation
/// bound. Flush answers `Behind` within its bound, the writer gives up the stuck connection
/// and keeps retrying, and everything lands once the lock goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_slow_database_holds_writes_until_it_answers() {
    let pg = pg_or_skip!();
    let target = pg.target();
    let (s, _) = open(&target, quick()).await;
    s.write(Write::Kv {
        key: "slow",
        value: "0".into(),
    });
    s.flush().await.unwrap();

    let mut locker = PgCluster::client(&pg.url).await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE ferry_kv IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for i in 1..=50 {
        s.write(Write::Kv {
            key: "slow",
            value: i.to_string(),
        });
    }
    let began = std::time::Instant::now();
    assert!(matches!(
        s.flush().await,
        Err(StoreError::Behind { pending: 50, .. })
    ));
    assert!(began.elapsed() < Duration::from_secs(5));
    // Past the operation bound (2 s): the writer has dropped a connection and retried.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.pending(), 50);
    tx.rollback().await.unwrap();
    let s2 = s.clone();
    eventually(move || {
        let s = s2.clone();
        async move { s.flush().await.is_ok() }
    })
    .await;
    let v: String = locker
        .query_one("SELECT value FROM ferry_kv WHERE key = 'slow'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "50");
    close(s).await;
}

/// Closing while the database is down gives up within its bound (the writes still queued are
/// not persisted: what was committed before stays); a flush after the close answers `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_close_while_down_gives_up_within_its_bound() {
    let pg = Arc::new(pg_or_skip!());
    let target = pg.target();
    let opts = PgOptions {
        close_timeout: Duration::from_secs(2),
        ..quick()
    };
    let (s, _) = open(&target, opts.clone()).await;
    s.write(Write::Kv {
        key: "before",
        value: "1".into(),
    });
    s.flush().await.unwrap();
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    s.write(Write::Kv {
        key: "during",
        value: "1".into(),
    });
    assert!(s.flush().await.is_err());
    let began = std::time::Instant::now();
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.close())
        .await
        .unwrap();
    // The close bound, after at most one commit under way (the operation bound).
    assert!(
        began.elapsed() < opts.close_timeout + opts.op_timeout + Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(s.flush().await, Err(StoreError::Closed));
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.resume())
        .await
        .unwrap();
    let (_s, back) = open(&target, quick()).await;
    assert_eq!(back.kv.get("before").map(String::as_str), Some("1"));
    assert!(!back.kv.contains_key("during"));
}

/// A control plane on PostgreSQL creates endpoints and workergroups and hands out request
/// indexes; restarted on the same database it has the same account key, signing key,
/// endpoints (with their keys) and workergroups, and numbers requests above every index it
/// handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_on_postgres_restarts_with_the_same_keys_endpoints_and_request_idx() {
    let pg = pg_or_skip!();
    let provider = InProc::new(SimConfig::default(), true);
    let opts = || Opts {
        postgres: Some(pg.target()),
        api_key: None,
        ..Opts::default()
    };
    let cp = Cp::start(provider.clone(), opts()).await;
    let acct = cp.acct.clone();
    let (ep_id, ep_key, wg_id) = cp
        .endpoint(
            "pg-ep",
            json!({"min_load": 1, "cold_workers": 0, "max_workers": 1}),
        )
        .await;
    let (st, v) = cp
        .post(
            "/api/v0/endptjobs/",
            Some(&acct),
            json!({"endpoint_name": "pg-idle", "cold_workers": 0}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    cp.wait_ready(ep_id, 1).await;
    let mut last_idx = 0;
    for _ in 0..5 {
        let g = cp.route("pg-ep", &ep_key, 1.0, 0).await;
        last_idx = last_idx.max(g["request_idx"].as_u64().unwrap());
    }
    let pubkey = cp.control.pubkey_pem().to_owned();
    let addr = cp.addr;
    cp.shutdown().await;

    // Without the test key preset: a lost signing key would be replaced by a new one.
    let cp = Cp::start(
        provider.clone(),
        Opts {
            addr: Some(addr),
            preset_key: false,
            ..opts()
        },
    )
    .await;
    assert_eq!(cp.acct, acct, "the generated account key came back");
    assert_eq!(cp.control.pubkey_pem(), pubkey, "the signing key came back");
    let names: Vec<String> = cp
        .control
        .endpoints()
        .iter()
        .map(|e| e.endpoint_name.clone())
        .collect();
    assert_eq!(names, ["pg-ep", "pg-idle"]);
    assert_eq!(cp.control.endpoint(ep_id).unwrap().api_key, ep_key);
    assert_eq!(cp.control.workergroup(wg_id).unwrap().endpoint_id, ep_id);
    assert!(cp.control.next_request_idx() > last_idx);
    cp.wait_ready(ep_id, 1).await;
    let g = cp.route("pg-ep", &ep_key, 1.0, 0).await;
    assert!(g["request_idx"].as_u64().unwrap() > last_idx, "{g}");
    cp.shutdown().await;
    drop(provider);
}

/// Two processes starting on a new database at the same moment: the schema's migrations are
/// applied by exactly one of them, and both start. Five rounds, each on a fresh database.
/// The processes are this test binary run again as this test, with `FERRY_IT_PG_CHILD` set.
#[test]
fn postgres_migrations_run_once_when_two_processes_start_at_once() {
    const NAME: &str = "store_pg::postgres_migrations_run_once_when_two_processes_start_at_once";
    if let Ok(url) = std::env::var("FERRY_IT_PG_CHILD") {
        // The child: wait for the gate, open, tell what it applied.
        let gate = std::path::PathBuf::from(std::env::var("FERRY_IT_PG_GATE").unwrap());
        while !gate.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (s, _) = PostgresStore::open(&url).unwrap();
        println!(
            "APPLIED={:?} ATTEMPTS={}",
            s.applied_migrations(),
            s.open_attempts()
        );
        return;
    }
    let pg = pg_or_skip!();
    for round in 0..5 {
        let url = pg.createdb(&format!("race{round}"));
        // In the cluster's folder: removed with it, whatever happens.
        let gate = pg.dir().join(format!("gate-{round}"));
        let children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                    .env("FERRY_IT_PG_CHILD", &url)
                    .env("FERRY_IT_PG_GATE", &gate)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(&gate, b"go").unwrap();
        let mut applied = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "round {round}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = text
                .lines()
                .find_map(|l| l.split_once("APPLIED=").map(|(_, a)| a))
                .unwrap_or_else(|| panic!("round {round}: {text}"))
                .to_owned();
            applied.push(line);
        }
        applied.sort();
        // One attempt each: no clash hidden by the start's retry.
        assert_eq!(
            applied,
            ["[1, 2] ATTEMPTS=1", "[] ATTEMPTS=1"],
            "round {round}"
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let rows = rt.block_on(async {
            let c = PgCluster::client(&url).await.unwrap();
            c.query("SELECT version FROM ferry_schema_migrations", &[])
                .await
                .unwrap()
                .len()
        });
        assert_eq!(rows, 2, "round {round}");
    }
}
