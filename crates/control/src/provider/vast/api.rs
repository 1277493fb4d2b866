//! Vast's REST API, the calls the provider makes and nothing else, with one retry policy.
//!
//! | Call | Request | Answer |
//! |---|---|---|
//! | search offers | `POST /api/v0/bundles/` with a query dict | `{"offers": [...]}` |
//! | create an instance | `PUT /api/v0/asks/{offer}/` with the launch body | `{"success": true, "new_contract": <instance id>}` |
//! | list instances | `GET /api/v1/instances/?select_filters=&order_by=&limit=25[&after_token=]` | `{"instances": [...], "next_token": ...}` |
//! | stop / start | `PUT /api/v0/instances/{id}/` `{"state": "stopped" \| "running"}` | `{"success": true}` |
//! | label | `PUT /api/v0/instances/{id}/` `{"label": ...}` | `{"success": true}` |
//! | destroy | `DELETE /api/v0/instances/{id}/` `{}` | `{"success": true}`; 404 counts as done |
//!
//! The key goes in `Authorization: Bearer`, nowhere else: no URL, log line or error message
//! carries it.
//!
//! # Retries
//!
//! A call that Vast did not process is retried with jittered exponential back-off until the
//! operation's deadline ([`Patience::Persist`]) or not at all ([`Patience::Once`], for the
//! poll loop, which is its own retry): a connection that could not be opened, a 429 (after its
//! `Retry-After`, which also holds back every other call of this client: the limit is the
//! account's), and for idempotent calls a 5xx, a timeout or a connection lost mid-answer. A
//! create that was sent but got no clear answer (timeout, reset, 5xx) is never retried here:
//! it may have landed, so it ends as [`ApiError::Unknown`] and the caller looks for the
//! instance by its label before trying again.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::secrets::Secret;
use crate::telemetry;

/// Rows per page of the instance list (the most Vast's own client asks for).
const PAGE: usize = 25;
/// A bound on pages, against a `next_token` that never ends.
const MAX_PAGES: usize = 400;
/// The longest `Retry-After` waited out (a longer one fails the call).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How calls are retried and timed out.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// How long one operation keeps retrying.
    pub deadline: Duration,
    /// First back-off.
    pub initial: Duration,
    /// Largest back-off.
    pub max: Duration,
    /// One HTTP request's timeout.
    pub request_timeout: Duration,
}

/// Whether a call retries until its deadline or gives up after one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Retry what Vast did not process until the policy's deadline.
    Persist,
    /// One try (the caller retries on its own schedule).
    Once,
}

/// What a request does if repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Repeating it is harmless (reads, state changes, deletes).
    Idempotent,
    /// Repeating it may rent a second machine.
    Create,
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key was refused.
    #[error("Vast refused the API key (HTTP {0})")]
    Auth(u16),
    /// No such object.
    #[error("not found")]
    NotFound,
    /// Vast answered with a refusal (an offer already taken, a bad body, ...).
    #[error("HTTP {status}: {msg}")]
    Rejected {
        /// HTTP status (200 for a `"success": false` answer).
        status: u16,
        /// Vast's message.
        msg: String,
    },
    /// Vast could not be reached or kept failing until the deadline.
    #[error("Vast API unavailable: {0}")]
    Unavailable(String),
    /// A create was sent and its answer lost: it may or may not have happened.
    #[error("no answer to the create ({0}); it may have landed")]
    Unknown(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from Vast: {0}")]
    Decode(String),
    /// The provider is shutting down.
    #[error("shutting down")]
    Cancelled,
}

impl ApiError {
    /// Short fixed code for logs.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Auth(_) => "auth",
            ApiError::NotFound => "not_found",
            ApiError::Rejected { .. } => "rejected",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Unknown(_) => "unknown_outcome",
            ApiError::Decode(_) => "decode",
            ApiError::Cancelled => "cancelled",
        }
    }
}

/// An offer as `/bundles/` lists it (the fields the provider reads).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Offer {
    /// Offer (ask) id: what a create names.
    pub id: i64,
    /// The machine.
    #[serde(default)]
    pub machine_id: Option<i64>,
    /// On-demand price, $/h.
    #[serde(default)]
    pub dph_total: Option<f64>,
    /// Lowest bid for an interruptible instance, $/h.
    #[serde(default)]
    pub min_bid: Option<f64>,
    /// For logs.
    #[serde(default)]
    pub gpu_name: Option<String>,
}

/// An instance as the instance list shows it (the fields the provider reads).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Instance {
    /// Instance (contract) id.
    pub id: i64,
    /// The machine it runs on.
    #[serde(default)]
    pub machine_id: Option<i64>,
    /// What it is doing: `loading`, `running`, `exited`, `stopped`, `offline`, ...
    #[serde(default)]
    pub actual_status: Option<String>,
    /// What it was asked to do: `running` or `stopped`.
    #[serde(default)]
    pub intended_status: Option<String>,
    /// Vast's last message about it.
    #[serde(default)]
    pub status_msg: Option<String>,
    /// Its label.
    #[serde(default)]
    pub label: Option<String>,
}

/// One API request, as the retry loop repeats it.
struct Request {
    /// Its name in metrics.
    op: &'static str,
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    effect: Effect,
}

impl Request {
    fn new(op: &'static str, method: reqwest::Method, path: String) -> Request {
        Request {
            op,
            method,
            path,
            query: Vec::new(),
            body: None,
            effect: Effect::Idempotent,
        }
    }

    fn body(mut self, body: Value) -> Request {
        self.body = Some(body);
        self
    }
}

fn instance_path(id: i64) -> String {
    format!("/api/v0/instances/{id}/")
}

/// One request's outcome, before the retry decision.
enum Attempt {
    Answer(Value),
    /// Nothing reached Vast (the connection could not be opened).
    NotSent(String),
    /// Sent; the answer was lost (timeout, reset) or was a 5xx.
    Lost(String),
    /// 429, with its `Retry-After`.
    Limited(Option<Duration>),
    /// A final failure.
    Failed(ApiError),
}

/// The client.
pub struct Api {
    base: String,
    key: Secret,
    http: reqwest::Client,
    policy: RetryPolicy,
    cancel: CancellationToken,
    /// No call before this instant: the account's rate limit asked for a pause.
    calm_until: Mutex<Option<Instant>>,
}

impl Api {
    /// A client of the API at `base` (e.g. `https://console.vast.ai`).
    pub fn new(
        base: &str,
        key: Secret,
        policy: RetryPolicy,
        cancel: CancellationToken,
    ) -> Result<Api, ApiError> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("ferry-control/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(policy.request_timeout.min(Duration::from_secs(10)));
        // An emulator on this host is never behind the environment's proxy.
        let loopback = reqwest::Url::parse(base).ok().is_some_and(|u| {
            let host = u.host_str().unwrap_or("");
            host == "localhost"
                || host
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if loopback {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| ApiError::Unavailable(format!("building the HTTP client: {e}")))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            key,
            http,
            policy,
            cancel,
            calm_until: Mutex::new(None),
        })
    }

    /// Offers matching `query` (a Vast query dict with `order`, `type`, ...).
    pub async fn search(&self, query: &Value) -> Result<Vec<Offer>, ApiError> {
        let req = Request::new("search", reqwest::Method::POST, "/api/v0/bundles/".into())
            .body(query.clone());
        let v = self.call(&req, Patience::Persist).await?;
        let offers = v.get("offers").cloned().unwrap_or(Value::Array(Vec::new()));
        serde_json::from_value(offers).map_err(|e| ApiError::Decode(format!("offers: {e}")))
    }

    /// Creates an instance on `offer`; returns its id.
    pub async fn create(&self, offer: i64, body: &Value) -> Result<i64, ApiError> {
        let mut req = Request::new(
            "create",
            reqwest::Method::PUT,
            format!("/api/v0/asks/{offer}/"),
        )
        .body(body.clone());
        req.effect = Effect::Create;
        let v = self.call(&req, Patience::Persist).await?;
        v.get("new_contract")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::Decode(format!("no new_contract in {}", clip(&v.to_string()))))
    }

    /// Every instance of the account, page by page.
    pub async fn instances(&self, patience: Patience) -> Result<Vec<Instance>, ApiError> {
        let mut rows = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut req = Request::new("list", reqwest::Method::GET, "/api/v1/instances/".into());
            req.query = vec![
                ("select_filters", "{}".to_owned()),
                ("order_by", r#"[{"col": "id", "dir": "asc"}]"#.to_owned()),
                ("limit", PAGE.to_string()),
            ];
            if let Some(t) = &token {
                req.query.push(("after_token", t.clone()));
            }
            let v = self.call(&req, patience).await?;
            let page = match v.get("instances") {
                Some(Value::Array(a)) => a.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(other) => {
                    return Err(ApiError::Decode(format!(
                        "instances is not a list: {}",
                        clip(&other.to_string())
                    )))
                }
            };
            for row in page {
                rows.push(
                    serde_json::from_value::<Instance>(row)
                        .map_err(|e| ApiError::Decode(format!("instance row: {e}")))?,
                );
            }
            token = v
                .get("next_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                return Ok(rows);
            }
        }
        Err(ApiError::Decode(format!(
            "the instance list did not end after {MAX_PAGES} pages"
        )))
    }

    /// Asks for an instance to be `stopped` or `running`.
    pub async fn set_state(&self, id: i64, state: &str) -> Result<(), ApiError> {
        let req = Request::new("state", reqwest::Method::PUT, instance_path(id))
            .body(json!({ "state": state }));
        self.call(&req, Patience::Persist).await.map(|_| ())
    }

    /// Sets an instance's label.
    pub async fn label(&self, id: i64, label: &str, patience: Patience) -> Result<(), ApiError> {
        let req = Request::new("label", reqwest::Method::PUT, instance_path(id))
            .body(json!({ "label": label }));
        self.call(&req, patience).await.map(|_| ())
    }

    /// Destroys an instance; one already gone counts as destroyed.
    pub async fn destroy(&self, id: i64, patience: Patience) -> Result<(), ApiError> {
        let req =
            Request::new("destroy", reqwest::Method::DELETE, instance_path(id)).body(json!({}));
        match self.call(&req, patience).await {
            Ok(_) | Err(ApiError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// One call with the retry policy (see the module docs), counted by its `op`.
    async fn call(&self, req: &Request, patience: Patience) -> Result<Value, ApiError> {
        let r = self.retrying(req, patience).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        telemetry::vast_api_call(req.op, outcome);
        r
    }

    async fn retrying(&self, req: &Request, patience: Patience) -> Result<Value, ApiError> {
        let deadline = Instant::now() + self.policy.deadline;
        let mut backoff = self.policy.initial;
        loop {
            self.wait_calm().await?;
            let (wait, reason, why) = match self.attempt(req).await {
                Attempt::Answer(v) => return Ok(v),
                Attempt::Failed(e) => return Err(e),
                Attempt::NotSent(why) => (jitter(backoff), "unreachable", why),
                Attempt::Lost(why) if req.effect == Effect::Create => {
                    return Err(ApiError::Unknown(why))
                }
                Attempt::Lost(why) => (jitter(backoff), "failed", why),
                Attempt::Limited(after) => {
                    let wait = match after {
                        Some(a) if a > MAX_RETRY_AFTER => {
                            return Err(ApiError::Unavailable(format!(
                                "rate limited for {}s",
                                a.as_secs()
                            )))
                        }
                        // At least what Vast asked for, plus a little so that callers that
                        // waited together do not come back together.
                        Some(a) => a + jitter(a / 4 + Duration::from_millis(20)),
                        None => jitter(backoff),
                    };
                    self.calm_for(wait);
                    (wait, "rate_limited", "rate limited (429)".to_owned())
                }
            };
            if patience == Patience::Once || Instant::now() + wait > deadline {
                return Err(ApiError::Unavailable(why));
            }
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            telemetry::vast_api_retry(req.op, reason, &why, wait_ms);
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.policy.max);
        }
    }

    async fn attempt(&self, r: &Request) -> Attempt {
        let mut req = self
            .http
            .request(r.method.clone(), format!("{}{}", self.base, r.path))
            .bearer_auth(self.key.expose())
            .timeout(self.policy.request_timeout);
        if !r.query.is_empty() {
            req = req.query(&r.query);
        }
        if let Some(b) = &r.body {
            req = req.json(b);
        }
        let send = tokio::select! {
            _ = self.cancel.cancelled() => return Attempt::Failed(ApiError::Cancelled),
            r = req.send() => r,
        };
        let resp = match send {
            Ok(r) => r,
            // reqwest's errors name the URL, never the headers.
            Err(e) if e.is_connect() => return Attempt::NotSent(format!("connecting: {e}")),
            Err(e) => return Attempt::Lost(e.to_string()),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Attempt::Lost(format!("reading the answer: {e}")),
        };
        classify(status, retry_after, &text)
    }

    async fn wait_calm(&self) -> Result<(), ApiError> {
        let until = *lock(&self.calm_until);
        if let Some(t) = until.filter(|t| *t > Instant::now()) {
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = tokio::time::sleep_until(t) => {}
            }
        }
        Ok(())
    }

    fn calm_for(&self, wait: Duration) {
        let t = Instant::now() + wait;
        let mut g = lock(&self.calm_until);
        if g.is_none_or(|old| old < t) {
            *g = Some(t);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What an HTTP answer means for the retry loop.
fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> Attempt {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let msg = || message(&body, text);
    match status {
        200..=299 => {
            if body.get("success") == Some(&Value::Bool(false)) {
                return Attempt::Failed(ApiError::Rejected { status, msg: msg() });
            }
            if body.is_null() && !text.trim().is_empty() {
                return Attempt::Failed(ApiError::Decode(format!("not JSON: {}", clip(text))));
            }
            Attempt::Answer(body)
        }
        // A daily search quota does not refill in any wait worth making.
        429 if body.get("error").and_then(Value::as_str) == Some("search_quota_exceeded") => {
            Attempt::Failed(ApiError::Unavailable("search quota exceeded".into()))
        }
        429 => Attempt::Limited(retry_after),
        401 | 403 => Attempt::Failed(ApiError::Auth(status)),
        404 => Attempt::Failed(ApiError::NotFound),
        400..=499 => Attempt::Failed(ApiError::Rejected { status, msg: msg() }),
        _ => Attempt::Lost(format!("HTTP {status}: {}", msg())),
    }
}

/// Vast's message in an error body (`msg`, else `error`), else the text, clipped.
fn message(body: &Value, text: &str) -> String {
    for k in ["msg", "error", "detail"] {
        if let Some(s) = body.get(k).and_then(Value::as_str) {
            return clip(s);
        }
    }
    clip(text.trim())
}

fn clip(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

/// `Retry-After` in seconds (Vast sends seconds; an HTTP date is not worth parsing here).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let s: f64 = v.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s))
}

/// A wait in `[d/2, d]`: callers that failed together spread out.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::thread_rng().gen_range(0.5..=1.0);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_for_the_retry_loop() {
        let ok = classify(200, None, r#"{"success": true, "new_contract": 7}"#);
        assert!(matches!(ok, Attempt::Answer(v) if v["new_contract"] == 7));
        let taken = classify(
            200,
            None,
            r#"{"success": false, "error": "no_such_ask", "msg": "gone"}"#,
        );
        assert!(
            matches!(taken, Attempt::Failed(ApiError::Rejected { status: 200, msg }) if msg == "gone")
        );
        let bad = classify(400, None, r#"{"error": "invalid_args"}"#);
        assert!(
            matches!(bad, Attempt::Failed(ApiError::Rejected { status: 400, msg }) if msg == "invalid_args")
        );
        assert!(matches!(
            classify(401, None, ""),
            Attempt::Failed(ApiError::Auth(401))
        ));
        assert!(matches!(
            classify(404, None, "{}"),
            Attempt::Failed(ApiError::NotFound)
        ));
        assert!(matches!(
            classify(429, Some(Duration::from_secs(2)), "{}"),
            Attempt::Limited(Some(d)) if d == Duration::from_secs(2)
        ));
        assert!(matches!(
            classify(429, None, r#"{"error": "search_quota_exceeded"}"#),
            Attempt::Failed(ApiError::Unavailable(_))
        ));
        assert!(matches!(classify(503, None, "down"), Attempt::Lost(m) if m.contains("503")));
        assert!(matches!(
            classify(200, None, "<html>"),
            Attempt::Failed(ApiError::Decode(_))
        ));
    }

    #[test]
    fn retry_after_and_jitter() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j <= Duration::from_secs(2),
                "{j:?}"
            );
        }
    }

    #[test]
    fn long_messages_are_clipped() {
        let long = "x".repeat(500);
        let m = message(&Value::Null, &long);
        assert_eq!(m.chars().count(), 201);
    }
}
