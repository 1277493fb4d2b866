//! Fleet commands: `ferry control join-token create|list|revoke` (a control plane's join tokens,
//! through its console API) and `ferry join` (registers a worker that cannot join by itself,
//! such as an unmodified PyWorker, and prints the environment it needs).

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Where the control plane is and its account key.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Control plane base URL.
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Account API key. Default: `<state dir>/api_key` (`~/.cache/ferry/api_key`), which
    /// `ferry control` writes.
    #[arg(long, env = "FERRY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ConsoleArgs {
    fn key(&self) -> anyhow::Result<String> {
        if let Some(k) = self.api_key.as_ref().filter(|k| !k.trim().is_empty()) {
            return Ok(k.trim().to_owned());
        }
        let dir = std::env::var_os("FERRY_STATE_DIR")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| std::path::PathBuf::from(h).join(".cache").join("ferry"))
            })
            .context("no --api-key and no HOME to find ~/.cache/ferry/api_key")?;
        let path = dir.join("api_key");
        let k = std::fs::read_to_string(&path)
            .with_context(|| format!("no --api-key, and reading {}", path.display()))?;
        Ok(k.trim().to_owned())
    }
}

/// `ferry control <action>`.
#[derive(clap::Subcommand, Debug)]
pub enum ControlAction {
    /// Manage the join tokens of an external workergroup.
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
}

/// `ferry control join-token ...`.
#[derive(clap::Subcommand, Debug)]
pub enum JoinTokenCmd {
    /// Create a token and print it (it is shown this once).
    Create {
        /// The external workergroup.
        #[arg(long)]
        workergroup: i64,
        /// Free text to tell tokens apart.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        console: ConsoleArgs,
    },
    /// List a workergroup's tokens (ids, labels, use; never the secrets).
    List {
        /// The workergroup.
        #[arg(long)]
        workergroup: i64,
        #[command(flatten)]
        console: ConsoleArgs,
    },
    /// Revoke a token: no worker joins with it any more (those that joined stay).
    Revoke {
        /// Token id.
        id: i64,
        #[command(flatten)]
        console: ConsoleArgs,
    },
}

async fn call(
    console: &ConsoleArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let key = console.key()?;
    let url = format!("{}{path}", console.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v
            .get("msg")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no detail");
        bail!("{url}: {status}: {msg}");
    }
    Ok(v)
}

/// Runs `ferry control <action>`.
pub async fn run_control(action: ControlAction) -> anyhow::Result<()> {
    let ControlAction::JoinToken(cmd) = action;
    match cmd {
        JoinTokenCmd::Create {
            workergroup,
            label,
            console,
        } => {
            let path = format!("/api/v0/workergroups/{workergroup}/join_tokens/");
            let v = call(
                &console,
                reqwest::Method::POST,
                &path,
                Some(json!({"label": label})),
            )
            .await?;
            let token = v["token"].as_str().context("no token in the answer")?;
            eprintln!(
                "join token {} for workergroup {workergroup} (shown once; revoke with `ferry control join-token revoke {}`)",
                v["id"], v["id"]
            );
            println!("{token}");
        }
        JoinTokenCmd::List {
            workergroup,
            console,
        } => {
            let path = format!("/api/v0/workergroups/{workergroup}/join_tokens/");
            let v = call(&console, reqwest::Method::GET, &path, None).await?;
            println!("{:>6}  {:>6}  {:>10}  label", "id", "joins", "last used");
            for t in v["results"].as_array().into_iter().flatten() {
                let last = t["last_used_at"].as_f64().unwrap_or(0.0);
                println!(
                    "{:>6}  {:>6}  {:>10}  {}",
                    t["id"],
                    t["joins"],
                    if last > 0.0 {
                        format!("{last:.0}")
                    } else {
                        "never".into()
                    },
                    t["label"].as_str().unwrap_or("")
                );
            }
        }
        JoinTokenCmd::Revoke { id, console } => {
            call(
                &console,
                reqwest::Method::DELETE,
                &format!("/api/v0/join_tokens/{id}/"),
                None,
            )
            .await?;
            eprintln!("join token {id} revoked");
        }
    }
    Ok(())
}

/// `ferry join`: registers a worker with a join token and prints its environment.
#[derive(clap::Args, Debug)]
pub struct JoinArgs {
    /// Control plane base URL (becomes REPORT_ADDR).
    #[arg(long, env = "REPORT_ADDR")]
    pub url: String,
    /// The join token.
    #[arg(long, env = "FERRY_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The worker's public base URL, as its reports will carry it (e.g.
    /// `http://10.0.0.7:3000`).
    #[arg(long)]
    pub worker_url: String,
}

/// Runs `ferry join`: prints `export` lines for `eval` (CONTAINER_ID, MASTER_TOKEN,
/// REPORT_ADDR).
pub async fn run_join(args: JoinArgs) -> anyhow::Result<()> {
    let url = format!("{}/join/", args.url.trim_end_matches('/'));
    let res = reqwest::Client::new()
        .post(&url)
        .json(&json!({"token": args.token, "url": args.worker_url}))
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{url}: {status}: {}",
            v["error"].as_str().unwrap_or("no detail")
        );
    }
    let id = v["worker_id"]
        .as_i64()
        .context("no worker_id in the answer")?;
    let mtoken = v["mtoken"].as_str().context("no mtoken in the answer")?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    println!("export CONTAINER_ID={id}");
    println!("export MASTER_TOKEN={}", quote(mtoken));
    println!(
        "export REPORT_ADDR={}",
        quote(args.url.trim_end_matches('/'))
    );
    Ok(())
}
