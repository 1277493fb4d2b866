//! Sessions: a worker reserved for a series of requests.
//!
//! Created through the normal route flow (worker route `/session/create`, payload
//! [`SessionCreate`], 10 s worker timeout as in Vast's client); later requests go straight to the
//! session's worker with the creating `auth_data` and the `session_id`, and are never re-routed:
//! a connection failure is [`Error::SessionWorkerGone`], a 410 is [`Error::SessionClosed`].
//! Retryable statuses (408/429/5xx) are retried on the same worker, as Vast's client does.

use std::time::Duration;

use ferry_protocol::{OkBody, SessionCreate, SessionCreated, SessionInfo, SessionRef};
use serde::Serialize;
use serde_json::Value;

use crate::client::Endpoint;
use crate::error::{excerpt, Error};
use crate::request::{
    execute, execute_full, execute_stream, to_payload, Outcome, RequestOptions, Response,
    StreamingResponse, Target,
};

/// Timeout of `/session/create`, `/session/get`, `/session/health` and `/session/end` (Vast: 10 s).
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open a session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Workload estimate routed with (Vast's default: 100).
    pub cost: f64,
    /// Seconds the session lives without requests (each request extends it).
    pub lifetime: f64,
    /// URL the worker POSTs to when the session closes.
    pub on_close_route: Option<String>,
    /// Body of that POST.
    pub on_close_payload: Option<Value>,
    /// Deadline for getting a worker and creating the session.
    pub timeout: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            cost: 100.0,
            lifetime: 60.0,
            on_close_route: None,
            on_close_payload: None,
            timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// An open session on one worker.
#[derive(Debug, Clone)]
pub struct Session {
    endpoint: Endpoint,
    id: String,
    url: String,
    auth_data: Value,
    lifetime: f64,
    expiration: f64,
}

impl Endpoint {
    /// Opens a session: routes like a request, then `POST {worker}/session/create`.
    pub async fn session(&self, opts: &SessionOptions) -> Result<Session, Error> {
        let payload = to_payload(&SessionCreate {
            lifetime: opts.lifetime,
            on_close_route: opts.on_close_route.clone(),
            on_close_payload: opts.on_close_payload.clone(),
        })?;
        let ropts = RequestOptions {
            cost: opts.cost,
            timeout: opts.timeout,
            worker_timeout: SESSION_CALL_TIMEOUT,
            ..RequestOptions::default()
        };
        let res = match execute(
            self,
            Target::Endpoint,
            "/session/create",
            &payload,
            &ropts,
            false,
        )
        .await?
        {
            Outcome::Full(r) => r,
            Outcome::Streaming(_) => {
                return Err(Error::Config("internal: unexpected stream".into()))
            }
        };
        let created: SessionCreated = decode("/session/create answer", &res.body)?;
        Ok(Session {
            endpoint: self.clone(),
            id: created.session_id,
            url: res.info.worker_url,
            auth_data: res.info.auth_data,
            lifetime: opts.lifetime,
            expiration: created.expiration,
        })
    }

    /// Re-attaches to an existing session from its id and `auth_data` (checked with
    /// `/session/get` on the worker named in `auth_data.url`).
    pub async fn resume_session(
        &self,
        session_id: &str,
        auth_data: Value,
    ) -> Result<Session, Error> {
        let url = auth_data
            .get("url")
            .and_then(Value::as_str)
            .map(|u| u.trim_end_matches('/').to_owned())
            .ok_or_else(|| Error::Decode {
                what: "session auth_data",
                message: "no \"url\" string".into(),
            })?;
        let mut session = Session {
            endpoint: self.clone(),
            id: session_id.to_owned(),
            url,
            auth_data,
            lifetime: 0.0,
            expiration: 0.0,
        };
        let info = session.info().await?;
        session.lifetime = info.lifetime;
        session.expiration = info.expiration;
        Ok(session)
    }
}

impl Session {
    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker holding the session.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `auth_data` the session was created with (its `session_auth`).
    pub fn auth_data(&self) -> &Value {
        &self.auth_data
    }

    /// Seconds each request extends the session by.
    pub fn lifetime(&self) -> f64 {
        self.lifetime
    }

    /// Expiry (Unix seconds) as of creation or the last [`Session::info`].
    pub fn expiration(&self) -> f64 {
        self.expiration
    }

    fn target(&self) -> Target<'_> {
        Target::Session {
            id: &self.id,
            url: &self.url,
            auth_data: &self.auth_data,
        }
    }

    /// Sends a request inside the session and reads the whole answer.
    pub async fn request<P: Serialize + ?Sized>(
        &self,
        route: &str,
        payload: &P,
        opts: &RequestOptions,
    ) -> Result<Response, Error> {
        execute_full(&self.endpoint, self.target(), route, payload, opts).await
    }

    /// Sends a request inside the session and returns once the headers arrive.
    pub async fn request_stream<P: Serialize + ?Sized>(
        &self,
        route: &str,
        payload: &P,
        opts: &RequestOptions,
    ) -> Result<StreamingResponse, Error> {
        execute_stream(&self.endpoint, self.target(), route, payload, opts).await
    }

    /// `/session/get`: the worker's view of the session.
    pub async fn info(&self) -> Result<SessionInfo, Error> {
        let body = self.manage("/session/get").await?;
        decode("/session/get answer", &body)
    }

    /// `/session/health`: false when the worker no longer knows the session.
    pub async fn is_open(&self) -> Result<bool, Error> {
        let body = self.manage("/session/health").await?;
        Ok(decode::<OkBody>("/session/health answer", &body)?.ok)
    }

    /// `/session/end`. Ending a session the worker already closed is [`Error::SessionClosed`].
    pub async fn end(&self) -> Result<(), Error> {
        self.manage("/session/end").await.map(drop)
    }

    async fn manage(&self, route: &str) -> Result<bytes::Bytes, Error> {
        let url = format!("{}{route}", self.url);
        let body = SessionRef {
            session_id: Some(self.id.clone()),
            session_auth: Some(self.auth_data.clone()),
        };
        let res = self
            .endpoint
            .client
            .inner
            .http
            .post(&url)
            .json(&body)
            .timeout(SESSION_CALL_TIMEOUT)
            .send()
            .await
            .map_err(|source| {
                if source.is_connect() {
                    Error::SessionWorkerGone {
                        session_id: self.id.clone(),
                        source,
                    }
                } else {
                    Error::Transport {
                        url: url.clone(),
                        source,
                    }
                }
            })?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?;
        match status {
            200..=299 => Ok(bytes),
            410 => Err(Error::SessionClosed {
                session_id: self.id.clone(),
            }),
            _ => Err(Error::WorkerError {
                status,
                body: excerpt(&bytes),
            }),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        what,
        message: e.to_string(),
    })
}
