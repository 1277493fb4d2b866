//! `ferry call`: one request through an endpoint (or straight to one worker), printed as it
//! arrives.
//!
//! The answer is always read as it streams in: SSE / NDJSON answers print the text of each
//! event (OpenAI `choices[].text` / `delta.content`, TGI `token.text`, llama.cpp `content`), any
//! other body is copied to stdout chunk by chunk. `--raw` copies every body byte for byte.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ferry_client::{ApiKey, Client, Endpoint, RequestOptions, Tracker};
use futures_util::StreamExt as _;
use serde_json::Value;

/// Exit code for bad arguments (clap's usage errors are mapped to the same by `main`).
pub(crate) const EXIT_USAGE: i32 = 64;

/// Prints `ferry: <msg>` and exits with 64. Only used before any request is sent.
pub(crate) fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("ferry: {msg}");
    std::process::exit(EXIT_USAGE)
}

/// Where requests go and with which keys; shared by `call` and `bench`.
///
/// Every call goes to a URL the user named (or to a worker its `/route/` grants): `--url` serves
/// both `/route/` and the endpoint-key lookup unless `--webserver-url` is given too. Vast's public
/// hosts are used only when neither is named, by flag or environment.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Control plane base URL: /route/ and, unless --webserver-url is given, the endpoint-key
    /// lookup with --api-key [env: FERRY_URL, then VAST_AUTOSCALER_URL]. With neither --url nor
    /// --webserver-url: Vast's public hosts, `https://run.vast.ai` and `https://console.vast.ai`.
    #[arg(long = "url", value_name = "URL")]
    pub route_url: Option<String>,
    /// Account API base URL for the endpoint-key lookup with --api-key, when it is not the
    /// control plane's [default: --url].
    #[arg(long, env = "FERRY_WEBSERVER_URL", value_name = "URL")]
    pub webserver_url: Option<String>,
    /// The endpoint's own API key (sent to /route/).
    #[arg(
        long,
        env = "FERRY_ENDPOINT_KEY",
        hide_env_values = true,
        value_name = "KEY",
        value_parser = parse_key
    )]
    pub endpoint_key: Option<ApiKey>,
    /// Account API key, to look the endpoint key up when --endpoint-key is not given.
    #[arg(long, env = "VAST_API_KEY", hide_env_values = true, value_name = "KEY", value_parser = parse_key)]
    pub api_key: Option<ApiKey>,
    /// Call this worker directly, skipping /route/ (the worker must run with UNSECURED=true).
    #[arg(long, value_name = "URL")]
    pub worker: Option<String>,
    /// Trust this extra root certificate (PEM or DER), e.g. Vast's jvastai_root.cer.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Download Vast's root certificate from console.vast.ai and trust it, as Vast's client does
    /// (for workers with USE_SSL=true).
    #[arg(long)]
    pub vast_ca: bool,
    /// Accept any TLS certificate (debugging only).
    #[arg(long)]
    pub insecure: bool,
}

impl ConnArgs {
    /// `--url`, else the first of its environment variables that is set.
    fn route_url(&self) -> Option<String> {
        self.route_url
            .clone()
            .or_else(|| std::env::var("FERRY_URL").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                std::env::var("VAST_AUTOSCALER_URL")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
    }

    /// The SDK client; bad URLs or certificates are usage errors. The URLs named are passed on
    /// as named: the SDK falls back to Vast's hosts only when there are none.
    pub(crate) async fn client(&self, pool: usize) -> anyhow::Result<Client> {
        let mut b = Client::builder()
            .pool_idle_per_host(pool)
            .danger_accept_invalid_certs(self.insecure);
        if let Some(url) = self.route_url() {
            b = b.route_url(url);
        }
        if let Some(url) = &self.webserver_url {
            b = b.webserver_url(url);
        }
        if let Some(path) = &self.ca_cert {
            match std::fs::read(path) {
                Ok(pem) => b = b.add_root_certificate(pem),
                Err(e) => usage_error(format!("--ca-cert {}: {e}", path.display())),
            }
        }
        if self.vast_ca {
            let cert = ferry_client::fetch_vast_root_ca()
                .await
                .map_err(|e| sdk_error(&e))
                .context("downloading Vast's root certificate (--vast-ca)")?;
            b = b.add_root_certificate(cert);
        }
        if let Some(w) = &self.worker {
            check_url("--worker", w);
        }
        Ok(b.build().unwrap_or_else(|e| usage_error(e)))
    }

    /// The endpoint to call: the direct worker, or `name` with its key (from the flag or the
    /// account API).
    pub(crate) async fn endpoint(
        &self,
        client: &Client,
        name: Option<&str>,
    ) -> anyhow::Result<Endpoint> {
        if let Some(w) = &self.worker {
            return Ok(client.worker(w.as_str()));
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            usage_error("an endpoint name is required (or --worker URL)")
        };
        if let Some(key) = &self.endpoint_key {
            return Ok(client.endpoint(name, key.expose()));
        }
        let Some(account) = &self.api_key else {
            usage_error(
                "no endpoint key: pass --endpoint-key / FERRY_ENDPOINT_KEY, or --api-key / VAST_API_KEY to look it up",
            )
        };
        client
            .endpoint_from_account(name, account)
            .await
            .map_err(|e| sdk_error(&e))
            .context("looking up the endpoint key")
    }
}

/// A key from a flag or the environment; `Debug` prints `***`.
fn parse_key(s: &str) -> Result<ApiKey, String> {
    Ok(ApiKey::new(s))
}

/// Exits with a usage error unless `url` is an http(s) URL.
pub(crate) fn check_url(flag: &str, url: &str) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(_) => usage_error(format!(
            "{flag} {url:?}: must be an http:// or https:// URL"
        )),
        Err(e) => usage_error(format!("{flag} {url:?}: {e}")),
    }
}

/// An SDK error as the one-line message `main` prints: `error[code]: message`.
pub(crate) fn sdk_error(e: &ferry_client::Error) -> anyhow::Error {
    anyhow::anyhow!("error[{}]: {e}", e.code())
}

/// Parses a duration: `1500ms`, `30s`, `2m`, `1h`, or plain seconds (`2.5`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{s:?} must be a positive duration"));
    }
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses a non-negative, finite float.
pub(crate) fn parse_cost(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

/// Reads a payload argument: inline JSON, `@file`, or `-` for stdin. Errors are usage errors.
pub(crate) fn read_payload(arg: Option<&str>, default: &str) -> Value {
    let (text, origin) = match arg {
        None => (default.to_owned(), "default payload".to_owned()),
        Some("-") => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                usage_error(format!("payload from stdin: {e}"))
            }
            (s, "payload from stdin".to_owned())
        }
        Some(a) if a.starts_with('@') => {
            let path = &a[1..];
            match std::fs::read_to_string(path) {
                Ok(s) => (s, format!("payload file {path}")),
                Err(e) => usage_error(format!("payload file {path}: {e}")),
            }
        }
        Some(a) => (a.to_owned(), "payload".to_owned()),
    };
    serde_json::from_str(&text)
        .unwrap_or_else(|e| usage_error(format!("{origin} is not valid JSON: {e}")))
}

/// A worker route with its leading `/`.
pub(crate) fn normalize_route(route: &str) -> String {
    if route.starts_with('/') {
        route.to_owned()
    } else {
        format!("/{route}")
    }
}

/// Adds `"stream": true` to an object payload that does not say.
pub(crate) fn ask_for_stream(payload: &mut Value) {
    if let Value::Object(m) = payload {
        m.entry("stream").or_insert(Value::Bool(true));
    }
}

/// Arguments of `ferry call`.
#[derive(clap::Args, Debug)]
pub struct CallArgs {
    /// Endpoint name (any placeholder with --worker).
    pub endpoint: String,
    /// Worker route, e.g. /v1/completions.
    pub route: String,
    /// JSON payload: inline, @file, or - for stdin [default: {}].
    pub payload: Option<String>,
    /// Ask the model to stream (adds "stream": true to the payload unless it has "stream").
    #[arg(long)]
    pub stream: bool,
    /// Print the answer's bytes as they arrive, without extracting text from events.
    #[arg(long)]
    pub raw: bool,
    /// Workload estimate sent to /route/.
    #[arg(long, default_value = "100", value_parser = parse_cost)]
    pub cost: f64,
    /// Deadline of the whole call, answer included (e.g. 30s, 10m).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Retries on connection failures and 408/429/5xx.
    #[arg(long, default_value = "5")]
    pub max_retries: u32,
    /// Print the request's progress, worker and request_idx on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Runs `ferry call`.
pub async fn run(args: CallArgs) -> anyhow::Result<()> {
    let mut payload = read_payload(args.payload.as_deref(), "{}");
    if args.stream {
        ask_for_stream(&mut payload);
    }
    let route = normalize_route(&args.route);
    let client = args.conn.client(4).await?;
    let endpoint = args.conn.endpoint(&client, Some(&args.endpoint)).await?;
    let tracker = Tracker::new();
    let opts = RequestOptions {
        cost: args.cost,
        timeout: Some(args.timeout),
        max_retries: args.max_retries,
        tracker: Some(tracker.clone()),
        ..RequestOptions::default()
    };
    let verbose = args.verbose;
    // Prints status changes (with -v) until the request reaches a final status; runs beside
    // the request in this task, so nothing outlives `run`.
    let mut rx = tracker.subscribe();
    let watch = async move {
        if !verbose {
            return;
        }
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            eprintln!(
                "ferry: {} (request_idx {}, retries {})",
                p.status.as_str(),
                p.request_idx,
                p.retries
            );
            if p.status.is_final() {
                return;
            }
        }
    };
    let work = async {
        let res = endpoint
            .request_stream(&route, &payload, &opts)
            .await
            .map_err(|e| sdk_error(&e))?;
        if verbose {
            eprintln!(
                "ferry: HTTP {} from {} (request_idx {}, {} retries, headers after {:.3}s)",
                res.info.status,
                res.info.worker_url,
                res.info.request_idx,
                res.info.retries,
                res.info.latency.as_secs_f64()
            );
        }
        print_answer(res, args.raw).await
    };
    let mut work = std::pin::pin!(tokio::time::timeout(args.timeout, work));
    let mut watch = std::pin::pin!(watch);
    let mut watching = true;
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            () = &mut watch, if watching => watching = false,
        }
    };
    match out {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "error[timeout]: no complete answer within {:.1}s",
            args.timeout.as_secs_f64()
        ),
    }
}

async fn print_answer(res: ferry_client::StreamingResponse, raw: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let events = res.info.is_stream() && !raw;
    let mut last_newline = true;
    if events {
        let mut events = res.events();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| sdk_error(&e))?;
            let text = match event_text(&ev) {
                Some(t) => t.to_owned(),
                None => format!("{ev}\n"),
            };
            if !text.is_empty() {
                last_newline = text.ends_with('\n');
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
        }
    } else {
        let mut body = res.bytes();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| sdk_error(&e))?;
            if let Some(last) = chunk.last() {
                last_newline = *last == b'\n';
            }
            let mut out = stdout.lock();
            out.write_all(&chunk)?;
            out.flush()?;
        }
    }
    if !last_newline && (std::io::stdout().is_terminal() || !raw) {
        println!();
    }
    Ok(())
}

/// The generated text in one streamed event, for the common dialects.
pub(crate) fn event_text(ev: &Value) -> Option<&str> {
    if let Some(choice) = ev.get("choices").and_then(|c| c.get(0)) {
        if let Some(t) = choice.get("text").and_then(Value::as_str) {
            return Some(t);
        }
        if let Some(delta) = choice.get("delta") {
            return Some(delta.get("content").and_then(Value::as_str).unwrap_or(""));
        }
    }
    if let Some(t) = ev
        .get("token")
        .and_then(|t| t.get("text"))
        .and_then(Value::as_str)
    {
        return Some(t);
    }
    ev.get("content").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn text_of_each_dialect() {
        assert_eq!(event_text(&json!({"choices": [{"text": "a"}]})), Some("a"));
        assert_eq!(
            event_text(&json!({"choices": [{"delta": {"content": "b"}}]})),
            Some("b")
        );
        assert_eq!(
            event_text(&json!({"choices": [{"delta": {"role": "assistant"}}]})),
            Some("")
        );
        assert_eq!(event_text(&json!({"token": {"text": "c"}})), Some("c"));
        assert_eq!(
            event_text(&json!({"content": "d", "stop": false})),
            Some("d")
        );
        assert_eq!(event_text(&json!({"other": 1})), None);
    }

    #[test]
    fn stream_flag_respects_an_explicit_choice() {
        let mut p = json!({"prompt": "x"});
        ask_for_stream(&mut p);
        assert_eq!(p["stream"], true);
        let mut p = json!({"stream": false});
        ask_for_stream(&mut p);
        assert_eq!(p["stream"], false);
    }
}
