//! Vast.ai Serverless wire protocol for Ferry: the JSON bodies exchanged by client, control plane
//! and worker, and the RSA signature that ties a routed request to a worker.
//!
//! Everything here is checked against vastai 1.9.1 (the PyPI package that now carries Vast's
//! serverless worker and client), so a Ferry component can stand in for a Vast one on either side
//! of each call: byte-identical signed messages and signatures, the same 422 bodies, the same
//! key names. Where Vast's behaviour is a crash rather than a contract (a 500 on a malformed
//! body), the item's docs say what Ferry does instead.
//!
//! No I/O and no async (serde, `ring`, `rsa`), so every binary can depend on it.
//!
//! # Layout
//!
//! - [`sign`]: [`vast_message`], [`PublicKey`] (verify) and [`SigningKey`] (sign), RSA PKCS#1
//!   v1.5 over SHA-256, interoperable with pycryptodome.
//! - [`token`]: Ferry's optional expiring token carried in `auth_data`: `ferry_exp` with
//!   `ferry_mac` (v2, HMAC-SHA256 under a per-worker key, [`TokenKey`]) or `ferry_sig` (v1, RSA).
//! - [`wire`]: serde types for `/route/`, the worker request body, `/worker_status/`,
//!   `/delete_requests/` and the `/session/*` calls, plus [`parse_worker_request`] with Vast's
//!   exact error bodies.
//! - `pycompat` (private): Python's `json.dumps` string escaping and lenient `b64decode`.
//!
//! # Example
//!
//! ```
//! use ferry_protocol::{parse_worker_request, SigningKey};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let key = SigningKey::generate(2048)?;
//! // Control plane: sign the chosen worker's URL.
//! let url = "https://203.0.113.7:41000";
//! let signature = key.sign_url(url)?;
//!
//! // Worker: parse the body and check the signature against the control plane's key.
//! let body = serde_json::json!({
//!     "auth_data": {"cost": 100.0, "endpoint": "ep", "reqnum": 0, "request_idx": 25,
//!                   "signature": signature, "url": url, "__request_id": "r-1"},
//!     "session_id": null,
//!     "payload": {"prompt": "hi"}
//! });
//! let req = parse_worker_request(body.to_string().as_bytes())?;
//! key.public_key().verify_auth(&req.auth_data)?;
//! # Ok(())
//! # }
//! ```

mod pycompat;
pub mod sign;
pub mod token;
pub mod wire;

pub use sign::{vast_message, KeyError, PublicKey, SignatureError, SigningKey};
pub use token::{
    cost_milli, ferry_mac_message, ferry_message, FerryClaims, TokenError, TokenKey,
    FERRY_MAC_VERSION, FERRY_TOKEN_VERSION,
};
pub use wire::*;
