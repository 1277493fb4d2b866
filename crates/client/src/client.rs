//! [`Client`] (shared HTTP pool and settings), [`ClientBuilder`], [`Endpoint`], and the account
//! API lookup of an endpoint's key.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{excerpt, retryable_status, Error};

/// Vast's hosted control plane (`/route/`), used only when no URL is named.
pub const DEFAULT_ROUTE_URL: &str = "https://run.vast.ai";
/// Vast's web/console API (endpoint list with keys), used only when no URL is named.
pub const DEFAULT_WEBSERVER_URL: &str = "https://console.vast.ai";
/// Where Vast publishes the root certificate that signs its workers' TLS certificates
/// (`USE_SSL=true`); Vast's client downloads and trusts it.
pub const VAST_ROOT_CA_URL: &str = "https://console.vast.ai/static/jvastai_root.cer";
/// `User-Agent` of every call.
pub const USER_AGENT: &str = concat!("ferry-client/", env!("CARGO_PKG_VERSION"));

/// An API key. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for a header or body.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Timing of polls and retries. Defaults are Vast's client's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first re-poll of `/route/` while no worker is ready (Vast: 1 s).
    pub first_poll: Duration,
    /// Cap of every later poll interval and of the wait before a retry (Vast:
    /// `max_poll_interval`, 5 s).
    pub max_interval: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first_poll: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
        }
    }
}

/// Builds a [`Client`].
///
/// Where the client sends its calls: a URL the caller named serves every call, and Vast's
/// hosts are used only when none is named. [`base_url`](Self::base_url) names the one control
/// plane for `/route/` and the account API (as `ferry control` serves both);
/// [`route_url`](Self::route_url) or [`webserver_url`](Self::webserver_url) alone names it too,
/// and both together split the two. Unlike Vast's Python client (whose `webserver_url` stays
/// `https://console.vast.ai` when only `autoscaler_url` is given), an account key is never sent to
/// a host the caller did not name. Workers are called at the URLs `/route/` grants.
#[derive(Debug)]
pub struct ClientBuilder {
    route_url: Option<String>,
    webserver_url: Option<String>,
    backoff: Backoff,
    route_timeout: Duration,
    connect_timeout: Duration,
    pool_idle_per_host: usize,
    root_certs: Vec<Vec<u8>>,
    accept_invalid_certs: bool,
    http: Option<reqwest::Client>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            route_url: None,
            webserver_url: None,
            backoff: Backoff::default(),
            route_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            pool_idle_per_host: 512,
            root_certs: Vec::new(),
            accept_invalid_certs: false,
            http: None,
        }
    }
}

impl ClientBuilder {
    /// Base URL of the control plane serving both `/route/` and the account API (the
    /// endpoint-key lookup), e.g. `ferry control`'s.
    pub fn base_url(self, url: impl Into<String>) -> Self {
        let url = url.into();
        self.route_url(url.clone()).webserver_url(url)
    }

    /// Base URL of the control plane serving `/route/` (Vast's `autoscaler_url`). Also the
    /// account API's unless [`webserver_url`](Self::webserver_url) is set. With neither set:
    /// [`DEFAULT_ROUTE_URL`].
    pub fn route_url(mut self, url: impl Into<String>) -> Self {
        self.route_url = Some(url.into());
        self
    }

    /// Base URL of the account API, where [`Client::endpoint_from_account`] looks an endpoint's
    /// key up (Vast's `webserver_url`). Also `/route/`'s unless [`route_url`](Self::route_url)
    /// is set. With neither set: [`DEFAULT_WEBSERVER_URL`].
    pub fn webserver_url(mut self, url: impl Into<String>) -> Self {
        self.webserver_url = Some(url.into());
        self
    }

    /// Poll and retry timing.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Timeout of one `/route/` call (Vast: 10 s).
    pub fn route_timeout(mut self, t: Duration) -> Self {
        self.route_timeout = t;
        self
    }

    /// TCP connect timeout of every call.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Idle keep-alive connections kept per host.
    pub fn pool_idle_per_host(mut self, n: usize) -> Self {
        self.pool_idle_per_host = n;
        self
    }

    /// Trusts an extra root certificate, PEM or DER, e.g. Vast's `jvastai_root.cer` (see
    /// [`fetch_vast_root_ca`]) for workers running with `USE_SSL=true`.
    pub fn add_root_certificate(mut self, cert: impl Into<Vec<u8>>) -> Self {
        self.root_certs.push(cert.into());
        self
    }

    /// Accepts any TLS certificate. For debugging only.
    pub fn danger_accept_invalid_certs(mut self, yes: bool) -> Self {
        self.accept_invalid_certs = yes;
        self
    }

    /// Uses this HTTP client instead of building one (the TLS and pool settings above, and the
    /// same-host redirect policy, are then the caller's to set).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Validates the settings and builds the client.
    pub fn build(self) -> Result<Client, Error> {
        let (route_url, webserver_url) = named_urls(self.route_url, self.webserver_url);
        let route_url = base_url("route URL", &route_url)?;
        let webserver_url = base_url("webserver URL", &webserver_url)?;
        let http = match self.http {
            Some(h) => h,
            None => {
                let mut b = reqwest::Client::builder()
                    .user_agent(USER_AGENT)
                    .connect_timeout(self.connect_timeout)
                    .pool_max_idle_per_host(self.pool_idle_per_host)
                    .tcp_nodelay(true)
                    .redirect(same_host_redirects())
                    .danger_accept_invalid_certs(self.accept_invalid_certs);
                for raw in &self.root_certs {
                    let parsed = if raw.trim_ascii_start().starts_with(b"-----BEGIN") {
                        reqwest::Certificate::from_pem(raw)
                    } else {
                        reqwest::Certificate::from_der(raw)
                    };
                    let cert =
                        parsed.map_err(|e| Error::Config(format!("root certificate: {e}")))?;
                    b = b.add_root_certificate(cert);
                }
                b.build()
                    .map_err(|e| Error::Config(format!("HTTP client: {e}")))?
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                route_url,
                webserver_url,
                backoff: self.backoff,
                route_timeout: self.route_timeout,
            }),
        })
    }
}

/// Downloads Vast's root certificate from [`VAST_ROOT_CA_URL`] (PEM or DER, as served), for
/// [`ClientBuilder::add_root_certificate`].
pub async fn fetch_vast_root_ca() -> Result<Vec<u8>, Error> {
    let transport = |source| Error::Transport {
        url: VAST_ROOT_CA_URL.into(),
        source,
    };
    let http = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
    let res = http.get(VAST_ROOT_CA_URL).send().await.map_err(transport)?;
    let status = res.status().as_u16();
    let body = res.bytes().await.map_err(transport)?;
    if status != 200 {
        return Err(Error::Config(format!(
            "{VAST_ROOT_CA_URL}: HTTP {status}: {}",
            excerpt(&body)
        )));
    }
    Ok(body.to_vec())
}

/// Follows a redirect only within the host it started at: a named control plane (or a granted
/// worker) cannot pass the request on to another host, and with it the key in a `/route/` body
/// (a 307 re-sends the body). A redirect elsewhere is answered as the 3xx itself.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_host = attempt
            .previous()
            .first()
            .is_some_and(|first| first.host_str() == attempt.url().host_str());
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if same_host {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Redirects followed per call (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// The `(route, webserver)` base URLs: Vast's hosts only when the caller named neither, else
/// the one named serves both.
fn named_urls(route: Option<String>, webserver: Option<String>) -> (String, String) {
    match (route, webserver) {
        (None, None) => (DEFAULT_ROUTE_URL.into(), DEFAULT_WEBSERVER_URL.into()),
        (Some(one), None) | (None, Some(one)) => (one.clone(), one),
        (Some(route), Some(webserver)) => (route, webserver),
    }
}

/// A base URL without its trailing `/`, checked to be http(s).
fn base_url(what: &str, url: &str) -> Result<String, Error> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| Error::Config(format!("{what} {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Config(format!("{what} {url:?}: must be http(s)")));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) route_url: String,
    pub(crate) webserver_url: String,
    pub(crate) backoff: Backoff,
    pub(crate) route_timeout: Duration,
}

/// The SDK's entry point: one pooled HTTP client plus the control plane's addresses. Cheap to
/// clone; share one per process.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("route_url", &self.inner.route_url)
            .field("webserver_url", &self.inner.webserver_url)
            .finish()
    }
}

/// One endpoint as the account API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Endpoint id.
    #[serde(default)]
    pub id: Option<u64>,
    /// Endpoint name.
    pub endpoint_name: String,
    /// The endpoint's own key, used for `/route/`.
    pub api_key: String,
    /// The other fields (`max_workers`, `endpoint_state`, ...), as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Client {
    /// A client for Vast's hosted service with default settings.
    pub fn new() -> Result<Client, Error> {
        ClientBuilder::default().build()
    }

    /// A builder, to point the client at another control plane or tune it.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The control plane's base URL (`/route/`).
    pub fn route_url(&self) -> &str {
        &self.inner.route_url
    }

    /// The account API's base URL (the endpoint-key lookup).
    pub fn webserver_url(&self) -> &str {
        &self.inner.webserver_url
    }

    /// An endpoint, routed through the control plane with the endpoint's own key.
    pub fn endpoint(
        &self,
        name: impl Into<String>,
        endpoint_api_key: impl Into<String>,
    ) -> Endpoint {
        Endpoint {
            client: self.clone(),
            name: name.into(),
            key: ApiKey::new(endpoint_api_key),
            direct: None,
        }
    }

    /// A single worker called directly, without `/route/`, with a placeholder `auth_data`: only
    /// a worker started with `UNSECURED=true` accepts it. For debugging (like Vast's
    /// `VAST_DEBUG_WORKER_URL`) and for benchmarking one worker.
    pub fn worker(&self, url: impl Into<String>) -> Endpoint {
        let url: String = url.into();
        Endpoint {
            client: self.clone(),
            name: "ferry-direct".into(),
            key: ApiKey::new(""),
            direct: Some(url.trim_end_matches('/').to_owned()),
        }
    }

    /// Lists the account's endpoints with their keys: `GET {webserver}/api/v0/endptjobs/?client_id=me`
    /// with the account key as a Bearer token, as Vast's client does.
    pub async fn list_endpoints(&self, account_key: &ApiKey) -> Result<Vec<EndpointRecord>, Error> {
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            results: Vec<EndpointRecord>,
        }
        let url = format!("{}/api/v0/endptjobs/", self.inner.webserver_url);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = self
                .inner
                .http
                .get(&url)
                .query(&[("client_id", "me")])
                .bearer_auth(account_key.expose())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let res = match sent {
                Ok(r) => r,
                Err(source) if attempt >= ACCOUNT_ATTEMPTS => {
                    return Err(Error::Transport { url, source })
                }
                Err(_) => {
                    tokio::time::sleep(crate::request::retry_delay(attempt, &self.inner.backoff))
                        .await;
                    continue;
                }
            };
            let status = res.status().as_u16();
            let body = res.bytes().await.map_err(|source| Error::Transport {
                url: url.clone(),
                source,
            })?;
            if (200..300).contains(&status) {
                let listing: Listing =
                    serde_json::from_slice(&body).map_err(|e| Error::Decode {
                        what: "endpoint list",
                        message: e.to_string(),
                    })?;
                return Ok(listing.results);
            }
            if retryable_status(status) && attempt < ACCOUNT_ATTEMPTS {
                tokio::time::sleep(crate::request::retry_delay(attempt, &self.inner.backoff)).await;
                continue;
            }
            return Err(Error::AccountApi {
                status,
                body: excerpt(&body),
            });
        }
    }

    /// Looks the endpoint's key up in the account API and returns the endpoint.
    pub async fn endpoint_from_account(
        &self,
        name: &str,
        account_key: &ApiKey,
    ) -> Result<Endpoint, Error> {
        let records = self.list_endpoints(account_key).await?;
        records
            .into_iter()
            .find(|r| r.endpoint_name == name)
            .map(|r| self.endpoint(r.endpoint_name, r.api_key))
            .ok_or_else(|| Error::EndpointNotFound { name: name.into() })
    }
}

/// Attempts of an account API call (Vast retries 5 times; a lookup is interactive, so 3).
const ACCOUNT_ATTEMPTS: u32 = 3;

/// An endpoint (or, from [`Client::worker`], a single worker) to send requests to.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) key: ApiKey,
    /// Set for a directly called worker: no `/route/`, placeholder `auth_data`.
    pub(crate) direct: Option<String>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("direct", &self.direct)
            .finish()
    }
}

impl Endpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoint's key.
    pub fn api_key(&self) -> &ApiKey {
        &self.key
    }

    /// The client this endpoint uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The `auth_data` sent to a directly called worker: every key Vast's worker requires,
    /// with an empty signature.
    pub fn placeholder_auth_data(url: &str, cost: f64) -> Value {
        serde_json::json!({
            "cost": cost,
            "endpoint": "ferry-direct",
            "reqnum": 0,
            "request_idx": 0,
            "signature": "",
            "url": url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(b: ClientBuilder) -> (String, String) {
        let c = b.build().unwrap();
        (c.route_url().to_owned(), c.webserver_url().to_owned())
    }

    #[test]
    fn vast_hosts_only_when_no_url_is_named() {
        let own = "http://127.0.0.1:8080";
        let other = "http://10.0.0.2:9000";
        let pair = |r: &str, w: &str| (r.to_owned(), w.to_owned());
        assert_eq!(
            urls(Client::builder()),
            pair(DEFAULT_ROUTE_URL, DEFAULT_WEBSERVER_URL)
        );
        assert_eq!(urls(Client::builder().base_url(own)), pair(own, own));
        assert_eq!(urls(Client::builder().route_url(own)), pair(own, own));
        assert_eq!(urls(Client::builder().webserver_url(own)), pair(own, own));
        assert_eq!(
            urls(Client::builder().route_url(own).webserver_url(other)),
            pair(own, other)
        );
        assert_eq!(
            urls(Client::builder().base_url(own).webserver_url(other)),
            pair(own, other)
        );
        assert_eq!(
            urls(Client::builder().route_url(format!("{own}/"))),
            pair(own, own)
        );
    }
}
