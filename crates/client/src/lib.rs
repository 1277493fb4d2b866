//! Ferry's client SDK for Vast.ai Serverless and compatible control planes (`ferry control`).
//!
//! It does what Vast's Python client (`vastai` 1.9.1, `vastai/serverless/client`) does, with the
//! same wire calls and retry rules: ask `/route/` for a worker (polling with the same cost and
//! `request_idx` while none is ready), send `{"auth_data", "session_id", "payload"}` to the worker,
//! and re-route on connection failures and HTTP 408/429/5xx. Unlike Vast's client, retries are
//! bounded, the request has an overall deadline, and failures are a typed [`Error`].
//!
//! ```no_run
//! use ferry_client::{Client, RequestOptions};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), ferry_client::Error> {
//! // Your own control plane for every call (`/route/` and the account API); Vast's hosts are
//! // used only by a client given no URL at all.
//! let client = Client::builder().base_url("http://127.0.0.1:8080").build()?;
//! let endpoint = client.endpoint("my-endpoint", "ENDPOINT_KEY");
//! let answer = endpoint
//!     .request("/v1/completions", &serde_json::json!({"prompt": "hi", "max_tokens": 8}),
//!              &RequestOptions::default())
//!     .await?;
//! println!("{}", answer.text());
//!
//! let payload = serde_json::json!({"prompt": "hi", "max_tokens": 8, "stream": true});
//! let mut events = endpoint
//!     .request_stream("/v1/completions", &payload, &RequestOptions::default())
//!     .await?
//!     .events();
//! while let Some(event) = events.next().await {
//!     println!("{}", event?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `client`: [`Client`], [`ClientBuilder`], [`Endpoint`], the account API lookup of an
//!   endpoint's key ([`Client::endpoint_from_account`]).
//! - `request`: the route → call → retry loop, [`RequestOptions`], [`Response`],
//!   [`StreamingResponse`], status tracking ([`Tracker`], [`RequestStatus`]).
//! - [`stream`]: [`ByteStream`], [`EventStream`] and the incremental SSE / NDJSON
//!   [`EventDecoder`].
//! - `session`: [`Session`], [`SessionOptions`].
//! - `error`: [`Error`] with [`Error::code`].

mod client;
mod error;
mod request;
mod session;
pub mod stream;

pub use client::{
    fetch_vast_root_ca, ApiKey, Backoff, Client, ClientBuilder, Endpoint, EndpointRecord,
    DEFAULT_ROUTE_URL, DEFAULT_WEBSERVER_URL, USER_AGENT, VAST_ROOT_CA_URL,
};
pub use error::{retryable_status, Error};
pub use request::{
    CallInfo, Progress, RequestOptions, RequestStatus, Response, StreamingResponse, Tracker,
};
pub use session::{Session, SessionOptions};
pub use stream::{ByteStream, EventDecoder, EventStream};
