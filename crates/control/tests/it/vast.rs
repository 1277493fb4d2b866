//! The `vast` provider against the Vast API emulator (`ferry-vast-emu`): a real control plane
//! scales a workergroup of real `ferry worker` + `ferry sim-model` processes, started by each
//! instance's on-start script, from 0 to 4 and back to 0, plain and with each failure knob on,
//! and every instance the provider created is destroyed at the end (emulator ledger: created =
//! destroyed, nothing alive, no process left).
//!
//! Needs the `ferry` binary (`cargo build -p ferry`); run with
//! `cargo test -p ferry-control --test it -- --ignored vast`. The tests take turns (one
//! lock): each runs up to a dozen processes, and two cores shared by several at once would
//! stretch boots past the deadlines under test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_control::provider::vast::api::RetryPolicy;
use ferry_control::provider::vast::{VastConfig, VastProvider};
use ferry_control::secrets::Secret;
use ferry_control::{Control, Settings};
use ferry_vast_emu::{BootFailure, EmuConfig, Emulator, LedgerInstance, Offer, OutageMode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::{key_pem, next_id, temp_db};

const EMU_KEY: &str = "emu-secret-key";
/// The load deadline under test: an instance not running this long after its create is
/// given up. Boots take the emulator's boot delay (200 ms) plus a process start.
const LOAD_DEADLINE: Duration = Duration::from_secs(4);
/// A hang guard per step, not a performance assertion.
const STEP: Duration = Duration::from_secs(90);

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ferry_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    ferry_control::provider::ferry_exe_near(&exe).unwrap_or_else(|| {
        panic!(
            "target/<profile>/ferry not found next to {}; run `cargo build -p ferry`",
            exe.display()
        )
    })
}

/// Twelve single-GPU offers, $0.10/h to $1.20/h (machine = offer id + 1000).
fn offers() -> Vec<Offer> {
    (1..=12)
        .map(|i| Offer::new(100 + i, "RTX 4090", 0.1 * i as f64))
        .collect()
}

/// The on-start script: Ferry's simulated model on the instance's second exposed port and a
/// `ferry worker` on `VAST_TCP_PORT_3000` (the emulator does no NAT: the process listens on
/// the public port itself), both in the instance's directory, so a resumed instance finds
/// its benchmark cache.
fn onstart(ferry: &std::path::Path) -> String {
    format!(
        r#"F='{}'
MP="$VAST_TCP_PORT_18000"
"$F" sim-model --listen "127.0.0.1:$MP" --log-file "$PWD/model.log" >> model.out 2>&1 &
export WORKER_PORT="$VAST_TCP_PORT_3000" FERRY_LISTEN_HOST=127.0.0.1 WORKER_HTTP_PORT=0
export MODEL_SERVER_URL="http://127.0.0.1:$MP" MODEL_LOG="$PWD/model.log"
export FERRY_BENCHMARK_CACHE="$PWD/.has_benchmark"
exec "$F" worker"#,
        ferry.display()
    )
}

struct Opts {
    /// Extra workergroup fields (`interruptible`, ...).
    group: Value,
    db: Option<PathBuf>,
    addr: Option<SocketAddr>,
    plane: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            group: json!({}),
            db: None,
            addr: None,
            plane: format!("t{}x{}", std::process::id(), next_id()),
        }
    }
}

/// A control plane with the Vast provider pointed at `emu`.
struct Cp {
    url: String,
    addr: SocketAddr,
    control: Control,
    provider: Arc<VastProvider>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Cp {
    async fn start(emu: &Emulator, o: &Opts) -> Cp {
        let listener = TcpListener::bind(o.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let mut s = Settings::for_url(&url);
        s.db = o.db.clone();
        s.signing_key_pem = Some(key_pem());
        s.api_key = Some("acct-key".into());
        s.autoscale_interval = Duration::from_millis(200);
        s.idle_stop_after = Duration::from_secs(1);
        s.stale_after = Duration::from_secs(10);
        let provider = Arc::new(
            VastProvider::new(VastConfig {
                api_url: emu.url(),
                api_key: Secret::new(EMU_KEY),
                plane: o.plane.clone(),
                poll_interval: Duration::from_millis(200),
                load_deadline: LOAD_DEADLINE,
                create_attempts: 5,
                retry: RetryPolicy {
                    deadline: Duration::from_secs(30),
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(1),
                    request_timeout: Duration::from_secs(5),
                },
                bad_machine_ttl: Duration::from_secs(600),
                backend: "openai".into(),
            })
            .unwrap(),
        );
        let control = Control::new(s, provider.clone()).await.unwrap();
        let stop = CancellationToken::new();
        let st = stop.clone();
        let done = tokio::spawn(ferry_control::run(listener, control.clone(), async move {
            st.cancelled().await
        }));
        Cp {
            url,
            addr,
            control,
            provider,
            stop,
            done,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth("acct-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// Workers by state name.
    fn states(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, s) in self.control.worker_states() {
            *out.entry(s.as_str().to_owned()).or_default() += 1;
        }
        out
    }

    fn count(&self, state: &str) -> usize {
        self.states().get(state).copied().unwrap_or(0)
    }

    async fn shutdown(self) {
        self.stop.cancel();
        self.done.await.unwrap().unwrap();
    }
}

/// The emulator, a control plane on it, and one endpoint with one Vast workergroup.
struct Rig {
    emu: Emulator,
    cp: Cp,
    opts: Opts,
    ep: i64,
    /// Every instance seen in the ledger while waiting, by id (last sighting).
    seen: BTreeMap<u64, LedgerInstance>,
}

impl Rig {
    async fn start(opts: Opts) -> Rig {
        let mut cfg = EmuConfig::new(EMU_KEY);
        cfg.offers = offers();
        cfg.boot_delay = Duration::from_millis(200);
        cfg.stop_grace = Duration::from_secs(2);
        let emu = Emulator::start(cfg).await.unwrap();
        let cp = Cp::start(&emu, &opts).await;
        let v = cp
            .call(
                reqwest::Method::POST,
                "/api/v0/endptjobs/",
                json!({"endpoint_name": "vast", "min_load": 0, "cold_workers": 0,
                       "cold_mult": 1.0, "max_workers": 4}),
            )
            .await;
        let ep = v["result"].as_i64().unwrap();
        let mut group = json!({
            "endpoint_id": ep,
            "provider": "vast",
            "image": "ferry/sim:test",
            "onstart": onstart(&ferry_exe()),
            "ports": [18000],
            "search_params": "gpu_ram>=20 num_gpus=1 verified=true",
            "max_dph": 5.0,
            "backend": "openai",
            "env": {"FERRY_REPORT_TICK_MS": "100", "FERRY_HEARTBEAT_S": "1",
                    "FERRY_SHUTDOWN_GRACE_S": "1"},
        });
        for (k, v) in opts.group.as_object().unwrap() {
            group[k] = v.clone();
        }
        cp.call(reqwest::Method::POST, "/api/v0/workergroups/", group)
            .await;
        Rig {
            emu,
            cp,
            opts,
            ep,
            seen: BTreeMap::new(),
        }
    }

    /// Sets the endpoint's scaling: `n > 0` wants `n` active workers (an unreachable load
    /// floor capped by `max_workers`); `cold` keeps that many loaded.
    async fn scale(&self, n: u32, cold: u32) {
        let body = if n > 0 {
            json!({"min_load": 1e9, "max_workers": n, "cold_workers": cold})
        } else {
            json!({"min_load": 0, "cold_workers": cold})
        };
        self.cp
            .call(
                reqwest::Method::PUT,
                &format!("/api/v0/endptjobs/{}/", self.ep),
                body,
            )
            .await;
    }

    fn sample(&mut self) {
        for i in self.emu.ledger().instances {
            self.seen.insert(i.id, i);
        }
    }

    /// Waits until `f` holds, sampling the ledger; fails with `what` and the state after
    /// [`STEP`].
    async fn until(&mut self, what: &str, mut f: impl FnMut(&Rig) -> bool) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            self.sample();
            if f(self) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {STEP:?}; workers {:?}, ledger {:?}",
                self.cp.states(),
                self.emu.ledger()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&mut self, n: usize) {
        self.until(&format!("{n} workers ready"), |r| r.cp.count("idle") == n)
            .await;
    }

    /// Scales to zero and waits until no worker, no instance and no process is left.
    async fn drain(&mut self) {
        self.scale(0, 0).await;
        self.until("back to zero", |r| {
            let l = r.emu.ledger();
            r.cp.control.worker_states().is_empty()
                && l.alive() == 0
                && l.processes_running() == 0
                && r.cp.provider.doomed().is_empty()
        })
        .await;
    }

    /// Shuts everything down; asserts every instance created was destroyed and no process is
    /// left; returns the final ledger's created count.
    async fn finish(self) -> u64 {
        let dir = self.emu.state_dir().to_owned();
        self.cp.shutdown().await;
        let ledger = self.emu.shutdown().await;
        assert_eq!(ledger.created, ledger.destroyed, "{ledger:?}");
        assert_eq!(ledger.alive(), 0, "{ledger:?}");
        assert!(ledger.processes.is_empty(), "{ledger:?}");
        let _ = std::fs::remove_dir_all(dir);
        ledger.created
    }

    /// One request through a ready worker: route, then call it.
    async fn serve_one(&self) {
        let key = self.cp.control.endpoint_key("vast").unwrap();
        let http = reqwest::Client::new();
        let grant: Value = http
            .post(format!("{}/route/", self.cp.url))
            .bearer_auth(&key)
            .json(&json!({"endpoint": "vast", "cost": 10}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = grant["url"].as_str().unwrap_or_else(|| panic!("{grant}"));
        let resp = http
            .post(format!("{url}/v1/completions"))
            .json(&json!({"auth_data": grant,
                          "payload": {"model": "m", "prompt": "hi", "max_tokens": 3}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    /// Offers of instances that were seen and never got a process (failed boots).
    fn failed_offers(&self) -> BTreeSet<u64> {
        let alive: BTreeSet<u64> = self.emu.ledger().instances.iter().map(|i| i.id).collect();
        self.seen
            .values()
            .filter(|i| i.pid.is_none() && !alive.contains(&i.id))
            .map(|i| i.offer_id)
            .collect()
    }

    fn alive_offers(&self) -> BTreeSet<u64> {
        self.emu
            .ledger()
            .instances
            .iter()
            .map(|i| i.offer_id)
            .collect()
    }
}

/// 0 → 4 → 0: four instances created, labelled, booted, serving; then all destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_scales_0_to_4_and_back() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts::default()).await;
    assert_eq!(rig.emu.ledger().created, 0, "nothing before it is asked");
    rig.scale(4, 0).await;
    rig.ready(4).await;
    let ledger = rig.emu.ledger();
    assert_eq!(ledger.created, 4, "{ledger:?}");
    let labels: BTreeSet<String> = ledger
        .instances
        .iter()
        .filter_map(|i| i.label.clone())
        .collect();
    let workers: BTreeSet<String> = rig
        .cp
        .control
        .worker_states()
        .iter()
        .map(|(id, _)| rig.cp.provider.label(*id))
        .collect();
    assert_eq!(labels, workers, "one labelled instance per worker");
    // The cheapest four offers, one each.
    assert_eq!(rig.alive_offers(), (101..=104).collect());
    rig.serve_one().await;
    rig.drain().await;
    assert_eq!(rig.finish().await, 4);
}

/// The cold tier: idle workers are stopped on Vast (not destroyed), resumed on demand, then
/// destroyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_cold_workers_stop_and_resume() {
    let _turn = TURN.lock().await;
    let db = temp_db();
    let mut rig = Rig::start(Opts {
        db: Some(db.clone()),
        ..Opts::default()
    })
    .await;
    rig.scale(2, 2).await;
    rig.ready(2).await;
    let ids: BTreeSet<u64> = rig.emu.ledger().instances.iter().map(|i| i.id).collect();
    // No load wanted, two kept loaded: stopped, instances kept.
    rig.scale(0, 2).await;
    rig.until("both stopped on Vast", |r| {
        r.cp.count("stopped") == 2
            && r.emu
                .ledger()
                .instances
                .iter()
                .all(|i| i.actual_status == "stopped")
    })
    .await;
    assert_eq!(rig.emu.ledger().processes_running(), 0);
    // A restart of the control plane keeps the cold tier: the stopped instances stay.
    let addr = rig.cp.addr;
    let Rig {
        emu,
        cp,
        opts,
        ep,
        seen,
    } = rig;
    cp.shutdown().await;
    let cp = Cp::start(
        &emu,
        &Opts {
            addr: Some(addr),
            ..opts
        },
    )
    .await;
    let mut rig = Rig {
        emu,
        cp,
        opts: Opts::default(),
        ep,
        seen,
    };
    rig.until("both still stopped after the restart", |r| {
        r.cp.count("stopped") == 2 && r.emu.ledger().alive() == 2
    })
    .await;
    rig.scale(2, 2).await;
    rig.ready(2).await;
    let again: BTreeSet<u64> = rig.emu.ledger().instances.iter().map(|i| i.id).collect();
    assert_eq!(again, ids, "the same instances resumed");
    assert_eq!(rig.emu.ledger().created, 2);
    rig.serve_one().await;
    rig.drain().await;
    assert_eq!(rig.finish().await, 2);
    let _ = std::fs::remove_file(db);
}

/// Boots that hang in `loading` past the load deadline: destroyed, their machines avoided,
/// the workers replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_slow_boot_past_the_deadline_is_replaced() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts::default()).await;
    rig.emu.knobs().fail_boots(2, BootFailure::Hang);
    rig.scale(4, 0).await;
    rig.ready(4).await;
    let failed = rig.failed_offers();
    assert_eq!(failed.len(), 2, "{:?}", rig.seen);
    assert!(
        rig.alive_offers().is_disjoint(&failed),
        "machines that failed are avoided: {failed:?} vs {:?}",
        rig.alive_offers()
    );
    rig.drain().await;
    assert_eq!(rig.finish().await, 6);
}

/// Boots that fail (the container exits): destroyed at once, machines avoided, replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_boot_failure_is_replaced() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts::default()).await;
    rig.emu.knobs().fail_boots(2, BootFailure::Exit);
    rig.scale(4, 0).await;
    rig.ready(4).await;
    let failed = rig.failed_offers();
    assert_eq!(failed.len(), 2, "{:?}", rig.seen);
    assert!(rig.alive_offers().is_disjoint(&failed));
    rig.drain().await;
    assert_eq!(rig.finish().await, 6);
}

/// Rate limits: a burst of 429s, then at most 3 API requests per second for the whole cycle.
/// Nothing is launched twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_rate_limits_are_waited_out() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts::default()).await;
    let k = rig.emu.knobs();
    k.set_retry_after(Duration::from_secs(1));
    k.rate_limit_next(10);
    k.rate_limit_per_second(std::num::NonZeroU32::new(3));
    rig.scale(4, 0).await;
    rig.ready(4).await;
    assert_eq!(rig.emu.ledger().created, 4);
    rig.drain().await;
    assert_eq!(rig.finish().await, 4);
}

/// The API down while workers launch (6 s of 503s) and while they are destroyed (6 s of
/// connection resets): creates wait it out without a second instance, destroys are retried.
/// (Vast's outages run to minutes; 6 s exercises the same paths in a short test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_api_outage_is_waited_out() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts::default()).await;
    rig.emu
        .knobs()
        .outage(Duration::from_secs(6), OutageMode::Unavailable);
    rig.scale(4, 0).await;
    rig.ready(4).await;
    assert_eq!(rig.emu.ledger().created, 4, "no double launch");
    rig.emu
        .knobs()
        .outage(Duration::from_secs(6), OutageMode::Reset);
    rig.drain().await;
    assert_eq!(rig.finish().await, 4);
}

/// An interruptible instance outbid: the worker fails with the reason and is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_preempted_instance_is_replaced() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts {
        group: json!({"interruptible": true}),
        ..Opts::default()
    })
    .await;
    rig.scale(4, 0).await;
    rig.ready(4).await;
    let victim = rig.emu.ledger().instances[0].id;
    rig.emu.preempt(victim).unwrap();
    rig.until("the outbid worker fails with the reason", |r| {
        r.cp.control.worker_states().iter().any(|(id, _)| {
            r.cp.control
                .worker_info(*id)
                .is_some_and(|w| w.error_msg.contains("outbid or preempted"))
        })
    })
    .await;
    rig.until("replaced, the outbid instance destroyed", |r| {
        r.cp.count("idle") == 4 && r.emu.ledger().instances.iter().all(|i| i.id != victim)
    })
    .await;
    assert_eq!(rig.emu.ledger().created, 5);
    rig.drain().await;
    assert_eq!(rig.finish().await, 5);
}

/// Offers taken between the search and the create: the next offer is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_stolen_offers_are_skipped() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start(Opts::default()).await;
    rig.emu.knobs().steal_offer(101);
    rig.emu.knobs().steal_next_creates(2);
    rig.scale(4, 0).await;
    rig.ready(4).await;
    assert_eq!(
        rig.emu.ledger().created,
        4,
        "refused creates create nothing"
    );
    rig.drain().await;
    assert_eq!(rig.finish().await, 4);
}

/// A control plane restart: its instances keep running and are taken back (no new create),
/// an instance labelled for it that no worker owns is destroyed, and instances of another
/// control plane on the same account are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn vast_restart_adopts_instances_and_destroys_strays() {
    let _turn = TURN.lock().await;
    let db = temp_db();
    let mut rig = Rig::start(Opts {
        db: Some(db.clone()),
        ..Opts::default()
    })
    .await;
    rig.scale(2, 0).await;
    rig.ready(2).await;
    let before: BTreeSet<u64> = rig.emu.ledger().instances.iter().map(|i| i.id).collect();
    let addr = rig.cp.addr;
    let plane = rig.opts.plane.clone();
    // Shut down: the instances keep running.
    let Rig {
        emu,
        cp,
        opts,
        ep,
        seen,
    } = rig;
    cp.shutdown().await;
    assert_eq!(emu.ledger().alive(), 2);
    // A stray of this control plane, and another control plane's instance.
    let http = reqwest::Client::new();
    for (offer, label) in [
        (111, format!("ferry-{plane}-999999")),
        (112, "ferry-someoneelse-1".to_owned()),
    ] {
        let r: Value = http
            .put(format!("{}/api/v0/asks/{offer}/", emu.url()))
            .bearer_auth(EMU_KEY)
            .json(&json!({"image": "x", "label": label, "disk": 10}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["success"], true, "{r}");
    }
    let cp = Cp::start(
        &emu,
        &Opts {
            addr: Some(addr),
            ..opts
        },
    )
    .await;
    let mut rig = Rig {
        emu,
        cp,
        opts: Opts::default(),
        ep,
        seen,
    };
    rig.ready(2).await;
    rig.until("the stray destroyed", |r| {
        r.emu.ledger().instances.len() == 3 && r.cp.provider.doomed().is_empty()
    })
    .await;
    let ledger = rig.emu.ledger();
    let now: BTreeSet<u64> = ledger.instances.iter().map(|i| i.id).collect();
    assert!(
        before.is_subset(&now),
        "taken back, not recreated: {ledger:?}"
    );
    assert!(ledger
        .instances
        .iter()
        .any(|i| i.label.as_deref() == Some("ferry-someoneelse-1")));
    rig.drain_ours().await;
    // The other control plane's instance is the test's to remove.
    let other = rig.emu.ledger().instances[0].id;
    http.delete(format!("{}/api/v0/instances/{other}/", rig.emu.url()))
        .bearer_auth(EMU_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(rig.finish().await, 4);
    let _ = std::fs::remove_file(db);
}

impl Rig {
    /// [`Rig::drain`] with another control plane's instance left on the account.
    async fn drain_ours(&mut self) {
        self.scale(0, 0).await;
        self.until("back to zero (ours)", |r| {
            let l = r.emu.ledger();
            r.cp.control.worker_states().is_empty()
                && l.alive() == 1
                && l.processes_running() == 0
                && r.cp.provider.doomed().is_empty()
        })
        .await;
    }
}
