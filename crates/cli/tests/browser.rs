//! The web console in a real browser: Debian's `chromium` driven through `chromedriver`
//! (W3C WebDriver, spoken here over plain HTTP with reqwest), against `ferry demo --keep`
//! (control plane, autoscaled local workers in front of the simulated model, a burst of load).
//!
//! Signs in (after a wrong key), watches the demo endpoint's workers go from loading to idle
//! while the load runs, sees a forged CSRF token refused, creates an endpoint through the form
//! (after a validation error shown next to its field), deletes it, signs out; then, against a
//! control plane whose sessions last 8 s, signs in with the keyboard alone and sees the open
//! page sent to sign in again when the session expires. Screenshots of
//! the main pages go to `$FERRY_UI_SCREENSHOTS` (default `target/ui-screenshots`).
//!
//! Ignored by default (it needs `chromium` and `chromium-driver`); `scripts/test.sh` installs
//! them and runs it with `--ignored`. Everything binds to 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// How long any one "eventually" may take before the test gives up (a hang guard, not a
/// speed assertion).
const PATIENCE: Duration = Duration::from_secs(180);

/// A child process killed (SIGINT first, for a clean shutdown) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session.
struct Browser {
    http: reqwest::Client,
    base: String,
}

impl Browser {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {v}");
        v["value"].clone()
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> Value {
        self.cmd(reqwest::Method::GET, path, None).await
    }
    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }
    async fn url(&self) -> String {
        let v = self.get("/url").await;
        v.as_str().unwrap_or_else(|| panic!("url: {v}")).to_owned()
    }
    async fn find(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        // The W3C element reference: an object with one key (the spec's web element id).
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{css}: {v}"))
            .to_owned()
    }
    async fn exists(&self, css: &str) -> bool {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await;
        !v.as_array().unwrap().is_empty()
    }
    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.get(&format!("/element/{e}/text"))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }
    async fn html(&self, css: &str) -> String {
        self.script(
            "return document.querySelector(arguments[0]).innerHTML",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or("")
        .to_owned()
    }
    async fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
        self.post(&format!("/element/{e}/value"), json!({ "text": text }))
            .await;
    }
    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.post(&format!("/element/{e}/click"), json!({})).await;
    }
    /// Types `text` on the keyboard, into whatever has the focus (WebDriver key codes allowed:
    /// U+E007 Enter, U+E004 Tab).
    async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                [
                    json!({"type": "keyDown", "value": c.to_string()}),
                    json!({"type": "keyUp", "value": c.to_string()}),
                ]
            })
            .collect();
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    async fn script(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }
    async fn size(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height}))
            .await;
    }
    async fn screenshot(&self, name: &str) {
        let b64 = self.get("/screenshot").await;
        let png = base64_decode(b64.as_str().unwrap());
        let dir = std::env::var_os("FERRY_UI_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
            });
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
    /// Waits until an element matching `css` is on the page (a click's navigation may still be
    /// under way when the click returns).
    async fn wait_for(&self, css: &str) {
        self.eventually(css, || async { self.exists(css).await })
            .await;
    }

    /// Waits until `f` holds, checking every 250 ms, for at most [`PATIENCE`].
    async fn eventually<F, Fut>(&self, what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !f().await {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().take_while(|&&c| c != b'=').count();
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().take(n).enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..n.max(1)]);
    }
    out
}

/// Starts `ferry demo --keep` with a long enough burst; returns it, the console's URL and key.
fn start_demo() -> (Proc, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "demo",
            "--keep",
            "--requests",
            "400",
            "--concurrency",
            "6",
            "--max-tokens",
            "24",
            "--max-workers",
            "3",
        ])
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ferry demo");
    let stdout = child.stdout.take().unwrap();
    let demo = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Keep draining so the demo never blocks on a full pipe.
                continue;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("ferry demo printed no console address");
        if let Some(rest) = line.strip_prefix("web console: ") {
            let url = rest.split(' ').next().unwrap().to_owned();
            let key = rest
                .rsplit(' ')
                .next()
                .unwrap()
                .trim_end_matches(')')
                .to_owned();
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (demo, url, key);
        }
    }
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver (scripts/test.sh installs them)"]
async fn console_in_a_real_browser() {
    let driver_port = free_port();
    let driver = Proc(
        Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromedriver (apt-get install chromium-driver)"),
    );
    let http = reqwest::Client::new();
    let driver_url = format!("http://127.0.0.1:{driver_port}");
    let mut up = false;
    for _ in 0..200 {
        if http
            .get(format!("{driver_url}/status"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "chromedriver did not come up");
    let (demo, console, key) = start_demo();
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--force-device-scale-factor=1"]
        }
    }}});
    let res: Value = http
        .post(format!("{driver_url}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = res["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {res}"))
        .to_owned();
    let b = Browser {
        http: http.clone(),
        base: format!("{driver_url}/session/{session}"),
    };

    // Not signed in: the console sends to the sign-in page. A wrong key is refused there.
    b.goto(&console).await;
    assert!(b.url().await.ends_with("/ui/login"), "{}", b.url().await);
    b.type_in("#api_key", "not-the-key").await;
    b.click("#login button[type=submit]").await;
    b.wait_for("#err-api_key").await;
    assert!(b.text("#err-api_key").await.contains("Wrong key"));
    b.type_in("#api_key", &key).await;
    b.click("#login button[type=submit]").await;
    b.eventually("the endpoints list", || async {
        b.exists("#ep-rows").await
    })
    .await;
    b.eventually("the demo endpoint listed", || async {
        b.text("#ep-rows").await.contains("demo")
    })
    .await;
    // The session cookie is not readable from scripts (HttpOnly).
    let cookies = b.script("return document.cookie", json!([])).await;
    assert!(
        !cookies.as_str().unwrap().contains("ferry_session"),
        "{cookies}"
    );

    // The demo endpoint: its workers come up (loading) and become ready (idle) while the
    // burst runs; the log shows the transitions and the autoscaler's decisions.
    b.click("#ep-rows a").await;
    b.eventually("the endpoint page", || async {
        b.exists("#ep-workers").await
    })
    .await;
    let seen_loading = std::cell::Cell::new(false);
    b.eventually("a worker ready and the load visible", || {
        let (b, seen) = (&b, &seen_loading);
        async move {
            let workers = b.text("#ep-workers").await;
            seen.set(seen.get() || workers.contains("loading"));
            let log = b.text("#ep-log").await;
            workers.contains("idle")
                && log.contains("-> idle")
                && (log.contains("-> loading") || log.contains("-> model_loading"))
                && log.contains("autoscaler: launch")
        }
    })
    .await;
    let log = b.text("#ep-log").await;
    assert!(
        log.contains("loading -> ") || log.contains("model_loading -> idle"),
        "{log}"
    );
    eprintln!(
        "workers table showed a loading worker while polled: {}",
        seen_loading.get()
    );
    // The charts fill in as samples come, one every 5 s: wait for half a minute of them
    // (the request-rate line's points are its "L" steps) so the screenshot shows a history.
    b.eventually("charts with half a minute of data", || async {
        let charts = b.html("#ep-charts").await;
        charts.matches("<path").count() >= 4 && charts.matches(" L").count() >= 4 * 6
    })
    .await;
    b.size(1280, 1500).await;
    b.screenshot("endpoint.png").await;
    b.size(390, 1400).await;
    b.screenshot("endpoint-phone.png").await;
    b.size(1280, 900).await;
    b.click("a.brand").await;
    b.eventually("the list", || async { b.exists("#ep-rows").await })
        .await;
    b.screenshot("endpoints.png").await;
    b.size(390, 844).await;
    b.screenshot("endpoints-phone.png").await;
    b.size(1280, 900).await;

    // A forged CSRF token: refused, nothing created.
    b.goto(&format!("{console}endpoints/new")).await;
    b.type_in("#f-endpoint_name", "forged").await;
    b.script(
        "document.querySelector('#edit-form input[name=csrf]').value = 'forged'",
        json!([]),
    )
    .await;
    b.click("#submit").await;
    b.wait_for("#problem").await;
    assert!(b.text("#problem").await.contains("CSRF token mismatch"));

    // Create an endpoint through the form: first an invalid value, shown by its field.
    b.goto(&format!("{console}endpoints/new")).await;
    b.type_in("#f-endpoint_name", "from-the-browser").await;
    b.type_in("#f-target_util", "2").await;
    b.type_in("#f-max_workers", "2").await;
    b.click("#submit").await;
    b.wait_for("#err-target_util").await;
    assert!(b
        .text("#err-target_util")
        .await
        .contains("must be in (0, 1]"));
    // What was typed is kept.
    let kept = b
        .script(
            "return document.querySelector('#f-endpoint_name').value",
            json!([]),
        )
        .await;
    assert_eq!(kept, "from-the-browser");
    b.screenshot("form-error.png").await;
    b.type_in("#f-target_util", "0.8").await;
    b.click("#submit").await;
    b.eventually("the new endpoint's page", || async {
        b.exists("#ep-name").await && b.text("#ep-name").await == "from-the-browser"
    })
    .await;
    assert!(b.text("#flash").await.contains("Endpoint created."));
    b.click("a.brand").await;
    b.eventually("listed", || async {
        b.text("#ep-rows").await.contains("from-the-browser")
    })
    .await;
    assert!(!b.text("#ep-rows").await.contains("forged"));

    // Delete it (the page asks first).
    b.click("#ep-rows tr:last-child a").await;
    b.eventually("its page", || async { b.exists("#ep-name").await })
        .await;
    assert_eq!(b.text("#ep-name").await, "from-the-browser");
    b.click(".bar form[action$='/delete'] button").await;
    b.post("/alert/accept", json!({})).await;
    b.eventually("back on the list", || async { b.exists("#ep-rows").await })
        .await;
    assert!(b.text("#flash").await.contains("from-the-browser deleted"));
    assert!(!b.text("#ep-rows").await.contains("from-the-browser"));

    // Sign out: back to the sign-in page, and the console is closed again.
    b.click("#sign-out").await;
    b.eventually("signed out", || async { b.exists("#login").await })
        .await;
    assert!(b.text("#flash").await.contains("signed out"));
    b.goto(&console).await;
    assert!(b.url().await.ends_with("/ui/login"));

    // An expired session: a control plane whose sessions last 8 s (long enough to sign in on a
    // busy machine before it ends). The open page's next
    // live refresh after that is refused, and the page goes to the sign-in page, saying why.
    drop(demo);
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("ferry-ui-expiry-{}", std::process::id()));
    let short = Proc(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "control",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--api-key",
                "short-key",
            ])
            .arg("--state-dir")
            .arg(&dir)
            .args(["--ui-session-ttl-s", "8"])
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ferry control"),
    );
    let short_url = format!("http://127.0.0.1:{port}/ui/");
    b.eventually("the short-session control plane", || async {
        http.get(format!("{short_url}login")).send().await.is_ok()
    })
    .await;
    // With the keyboard only: the key field has the focus; type, Enter; then Tab reaches the
    // skip link first.
    b.goto(&short_url).await;
    // Chromium applies `autofocus` on a rendering step that may come after the navigation
    // returns: keys sent before it land on the body.
    b.eventually("the key field has the focus", || async {
        b.script("return document.activeElement.id", json!([]))
            .await
            == "api_key"
    })
    .await;
    b.keys("short-key\u{E007}").await;
    b.eventually("signed in", || async { b.exists("#ep-rows").await })
        .await;
    b.keys("\u{E004}").await;
    let focused = b
        .script("return document.activeElement.textContent", json!([]))
        .await;
    assert_eq!(focused, "Skip to content");
    b.eventually("sent back to sign in once the session expired", || async {
        b.url().await.ends_with("/ui/login?expired=1")
    })
    .await;
    assert!(b.text("#flash").await.contains("Your session has expired"));
    b.goto(&short_url).await;
    assert!(b.url().await.ends_with("/ui/login"));
    drop(short);
    let _ = std::fs::remove_dir_all(&dir);

    let _ = b.cmd(reqwest::Method::DELETE, "", None).await;
    drop(driver);
}
