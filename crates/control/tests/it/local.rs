use std::sync::Arc;
use std::time::Duration;

use ferry_control::provider::local::{LocalConfig, LocalProvider};
use ferry_control::{Control, Settings};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::harness::{eventually, key_pem};

/// The `local` provider launching real `ferry worker` + `ferry sim-model` processes. Needs the
/// `ferry` binary (`cargo build -p ferry`); run with `cargo test -p ferry-control -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn local_provider_runs_real_processes() {
    let exe = std::env::current_exe().unwrap();
    let Some(ferry) = ferry_control::provider::ferry_exe_near(&exe) else {
        panic!(
            "target/<profile>/ferry not found next to {}; run `cargo build -p ferry`",
            exe.display()
        );
    };
    let dir = std::env::temp_dir().join(format!("ferry-local-it-{}", std::process::id()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut s = Settings::for_url(&url);
    s.signing_key_pem = Some(key_pem());
    s.api_key = Some("acct-key".into());
    s.autoscale_interval = Duration::from_millis(200);
    s.idle_stop_after = Duration::from_secs(2);
    let provider = Arc::new(LocalProvider::new(LocalConfig {
        ferry_exe: ferry,
        state_dir: dir.clone(),
        model_cmd: None,
        backend: "openai".into(),
        stop_grace: Duration::from_secs(5),
        worker_env: [
            ("FERRY_REPORT_TICK_MS".to_string(), "100".to_string()),
            ("FERRY_HEARTBEAT_S".into(), "1".into()),
        ]
        .into_iter()
        .collect(),
    }));
    let control = Control::new(s, provider.clone()).await.unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    let done = tokio::spawn(ferry_control::run(listener, control.clone(), async move {
        st.cancelled().await
    }));
    let http = reqwest::Client::new();
    let r: serde_json::Value = http
        .post(format!("{url}/api/v0/endptjobs/"))
        .bearer_auth("acct-key")
        .json(&json!({"endpoint_name": "loc", "cold_workers": 1, "cold_mult": 1.0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ep = r["result"].as_i64().unwrap();
    http.post(format!("{url}/api/v0/workergroups/"))
        .bearer_auth("acct-key")
        .json(&json!({"endpoint_id": ep}))
        .send()
        .await
        .unwrap();
    let key = control.endpoint_key("loc").unwrap();
    // Wait until a request is served through the real processes.
    let mut idx = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let grant = loop {
        let r: serde_json::Value = http
            .post(format!("{url}/route/"))
            .bearer_auth(&key)
            .json(&json!({"endpoint": "loc", "cost": 10, "request_idx": idx}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        idx = r["request_idx"].as_u64().unwrap();
        if r.get("url").is_some() {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker became ready: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resp = http.post(format!("{}/v1/completions", grant["url"].as_str().unwrap()))
        .json(&json!({"auth_data": grant, "payload": {"model": "m", "prompt": "hi", "max_tokens": 3}}))
        .send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // It idles out into a stopped (cold) worker: processes gone, state dir kept.
    eventually(|| async { provider.running_ids().is_empty() }).await;
    assert!(dir.join("instances").read_dir().unwrap().count() >= 1);
    stop.cancel();
    done.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `ferry control` process on `port` with its state in `dir`; stderr to `dir/../control-N.log`.
fn spawn_control(
    ferry: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    n: u32,
) -> std::process::Child {
    let log = std::fs::File::create(dir.with_extension(format!("control-{n}.log"))).unwrap();
    std::process::Command::new(ferry)
        .args(["control", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(dir)
        .args(["--api-key", "acct-key", "--autoscale-interval-ms", "200"])
        .args(["--stop-grace-s", "5", "--idle-stop-after-s", "600"])
        // Inherited by the workers it launches: quick reports.
        .env("FERRY_REPORT_TICK_MS", "100")
        .env("FERRY_HEARTBEAT_S", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Whether a process runs (exists and is not a zombie).
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?.to_owned();
            rest.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Every pid recorded in the instances' `pids.json` files.
fn instance_pids(dir: &std::path::Path) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for e in dir
        .join("instances")
        .read_dir()
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path().join("pids.json")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for k in ["worker", "model"] {
            if let Some(pid) = v[k]["pid"].as_i64() {
                out.push((e.file_name().to_string_lossy().into_owned(), pid));
            }
        }
    }
    out.sort();
    out
}

async fn grant(http: &reqwest::Client, url: &str, ep: &str, key: &str) -> serde_json::Value {
    crate::harness::until_some(|| async {
        let r: serde_json::Value = http
            .post(format!("{url}/route/"))
            .bearer_auth(key)
            .json(&json!({"endpoint": ep, "cost": 10}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        r.get("url").is_some().then_some(r)
    })
    .await
}

async fn call(http: &reqwest::Client, grant: &serde_json::Value, worker_url: &str) -> u16 {
    http.post(format!("{worker_url}/v1/completions"))
        .json(&json!({"auth_data": grant, "payload": {"model": "m", "prompt": "hi", "max_tokens": 3}}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A `ferry control` process (the real binary) with two endpoints, `a` and `b`, of one
/// worker each, launched by its local provider.
struct Fleet {
    ferry: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    url: String,
    http: reqwest::Client,
    control: std::process::Child,
    /// (endpoint id, endpoint key) of `a` and `b`.
    keys: Vec<(i64, String)>,
    runs: u32,
}

impl Fleet {
    /// `prepare` runs on the fresh state folder before the control plane starts.
    async fn start(tag: &str, prepare: impl FnOnce(&std::path::Path)) -> Fleet {
        let exe = std::env::current_exe().unwrap();
        let ferry =
            ferry_control::provider::ferry_exe_near(&exe).expect("cargo build -p ferry first");
        let dir = std::env::temp_dir().join(format!("ferry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        prepare(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let control = spawn_control(&ferry, &dir, port, 0);
        let mut fleet = Fleet {
            ferry,
            dir,
            port,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            control,
            keys: Vec::new(),
            runs: 0,
        };
        fleet.wait_up().await;
        for name in ["a", "b"] {
            let r = fleet
                .console(
                    reqwest::Method::POST,
                    "/api/v0/endptjobs/",
                    json!({"endpoint_name": name, "cold_workers": 1, "max_workers": 1}),
                )
                .await;
            let id = r["result"].as_i64().unwrap();
            fleet
                .console(
                    reqwest::Method::POST,
                    "/api/v0/workergroups/",
                    json!({"endpoint_id": id}),
                )
                .await;
            let r = fleet
                .console(
                    reqwest::Method::GET,
                    &format!("/api/v0/endptjobs/{id}/"),
                    json!({}),
                )
                .await;
            fleet
                .keys
                .push((id, r["result"]["api_key"].as_str().unwrap().to_owned()));
        }
        fleet
    }

    async fn console(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth("acct-key");
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        req.send().await.unwrap().json().await.unwrap_or_default()
    }

    async fn wait_up(&self) {
        eventually(|| async {
            self.http
                .get(format!("{}/health", self.url))
                .send()
                .await
                .is_ok()
        })
        .await;
    }

    /// A grant for endpoint `i` (0 = a, 1 = b), once a worker is ready.
    async fn grant(&self, i: usize) -> serde_json::Value {
        grant(&self.http, &self.url, ["a", "b"][i], &self.keys[i].1).await
    }

    /// SIGKILL, then a new control plane on the same port and state.
    async fn crash_and_restart(&mut self) {
        self.control.kill().unwrap();
        self.control.wait().unwrap();
        self.runs += 1;
        self.control = spawn_control(&self.ferry, &self.dir, self.port, self.runs);
        self.wait_up().await;
    }

    /// SIGTERM; asserts a clean exit.
    fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.control.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        assert!(self.control.wait().unwrap().success());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Secrets on disk are the user's alone, even where an older version left them readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn state_folder_and_secret_files_are_private() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let fleet = Fleet::start("secrets-it", |dir| {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("api_key"), "old\n").unwrap();
        std::fs::set_permissions(dir.join("api_key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    })
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&fleet.dir), 0o700);
    assert_eq!(mode(&fleet.dir.join("control.db")), 0o600);
    assert_eq!(mode(&fleet.dir.join("api_key")), 0o600);
    assert_eq!(
        std::fs::read_to_string(fleet.dir.join("api_key")).unwrap(),
        "acct-key\n"
    );
    fleet.stop();
}

/// Between `ferry control` and its own `ferry worker`s a grant is bound to one worker, works
/// once, and cannot be downgraded by deleting its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn grants_are_strict_between_ferry_control_and_its_workers() {
    let fleet = Fleet::start("grants-it", |_| {}).await;
    let (ga, gb) = (fleet.grant(0).await, fleet.grant(1).await);
    let (wa, wb) = (ga["url"].as_str().unwrap(), gb["url"].as_str().unwrap());
    let http = &fleet.http;
    assert_eq!(
        call(http, &ga, wb).await,
        401,
        "a grant for endpoint a at b's worker"
    );
    assert_eq!(call(http, &ga, wa).await, 200);
    assert_eq!(call(http, &ga, wa).await, 401, "the same grant twice");
    let mut stripped = fleet.grant(0).await;
    let obj = stripped.as_object_mut().unwrap();
    obj.remove("ferry_exp");
    obj.remove("ferry_sig");
    obj.remove("ferry_mac");
    assert_eq!(
        call(http, &stripped, wa).await,
        401,
        "a grant without its token"
    );

    // Once the workers' reports announce v2 (after the control plane's first answer), grants
    // carry an HMAC `ferry_mac` and no RSA `ferry_sig`, under the same rules.
    let v2 = crate::harness::until_some(|| async {
        let g = fleet.grant(0).await;
        if g.get("ferry_mac").is_some() {
            return Some(g);
        }
        call(http, &g, wa).await;
        None
    })
    .await;
    assert!(v2.get("ferry_sig").is_none(), "{v2}");
    assert_eq!(
        call(http, &v2, wb).await,
        401,
        "a v2 grant at another worker"
    );
    assert_eq!(call(http, &v2, wa).await, 200);
    assert_eq!(call(http, &v2, wa).await, 401, "the same v2 grant twice");
    let mut stripped = fleet.grant(0).await;
    stripped.as_object_mut().unwrap().remove("ferry_mac");
    assert_eq!(
        call(http, &stripped, wa).await,
        401,
        "a v2 grant without its MAC"
    );
    fleet.stop();
}

/// Instances outlive a SIGKILLed control plane (the fleet keeps serving) and stay under the
/// restarted one's control: deleting an endpoint and a clean stop still end every process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/debug/ferry: cargo build -p ferry first"]
async fn control_plane_crashes_leave_no_orphan() {
    let mut fleet = Fleet::start("crash-it", |_| {}).await;
    let ga = fleet.grant(0).await;
    let gb = fleet.grant(1).await;
    let (wa, wb) = (
        ga["url"].as_str().unwrap().to_owned(),
        gb["url"].as_str().unwrap().to_owned(),
    );
    let pids = instance_pids(&fleet.dir);
    assert_eq!(pids.len(), 4, "two instances of two processes: {pids:?}");
    for round in 1..=2 {
        fleet.crash_and_restart().await;
        // The fleet kept serving while the control plane was down, and the restarted control
        // plane routes to the same instances.
        assert!(
            pids.iter().all(|(_, p)| alive(*p)),
            "round {round}: {pids:?}"
        );
        let g = fleet.grant(0).await;
        assert_eq!(g["url"].as_str(), Some(wa.as_str()), "round {round}");
        assert_eq!(call(&fleet.http, &g, &wa).await, 200, "round {round}");
        assert_eq!(
            instance_pids(&fleet.dir),
            pids,
            "round {round}: the same processes"
        );
    }
    // Deleting an endpoint stops its instance although an earlier run started it.
    let b_port: u16 = wb.rsplit(':').next().unwrap().parse().unwrap();
    let dir = fleet.dir.clone();
    let b_id = pids
        .iter()
        .map(|(id, _)| id.clone())
        .find(|id| {
            let ports = std::fs::read_to_string(dir.join("instances").join(id).join("ports.json"));
            serde_json::from_str::<serde_json::Value>(&ports.unwrap()).unwrap()["worker"] == b_port
        })
        .expect("b's instance");
    let b_pids: Vec<i64> = pids
        .iter()
        .filter(|(id, _)| *id == b_id)
        .map(|(_, p)| *p)
        .collect();
    assert_eq!(b_pids.len(), 2);
    fleet
        .console(
            reqwest::Method::DELETE,
            &format!("/api/v0/endptjobs/{}/", fleet.keys[1].0),
            json!({}),
        )
        .await;
    eventually(|| async { b_pids.iter().all(|p| !alive(*p)) }).await;
    // A clean stop of the adopted fleet leaves nothing running.
    fleet.stop();
    let left: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "processes outlived the control plane: {left:?}"
    );
}
