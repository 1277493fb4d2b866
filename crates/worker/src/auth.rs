//! Request authentication: the control plane's public key, Vast's signature check, and Ferry's
//! optional stronger token: v2 (`ferry_mac`, HMAC-SHA256 under a key derived from this worker's
//! master token, a microsecond) or v1 (`ferry_sig`, RSA, from control planes that predate v2 or
//! do not know this worker checks v2). See docs/signing.md for the compatibility rule.
//!
//! Vast signs only `{"url": ...}` with RSA PKCS#1 v1.5, which is deterministic: every route to
//! this worker carries the same signature until the key changes. So a verified (url, signature)
//! pair is remembered and later requests skip the RSA operation; PyWorker spends about 0.4 ms of
//! CPU per request redoing it. Determinism also means one valid signature per url: a request
//! for a remembered url whose signature decodes to other bytes is refused without the RSA
//! operation (see [`PublicKey::signature_bytes`]). The cache is cleared whenever the key
//! changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ferry_protocol::{ferry_message, AuthData, FerryClaims, PublicKey, TokenError, TokenKey};
use tokio_util::sync::CancellationToken;

use crate::load::Tracker;

/// Error text PyWorker reports when the key cannot be fetched.
pub const PUBKEY_FAILED: &str = "Failed to get Serverless public key after all retry attempts";

/// At most this many verified (url, signature) pairs are remembered. A worker has one url, so
/// one entry per key is the common case; the list is scanned, not hashed (hashing the
/// 344-character signature cost more than the whole comparison).
const VERIFIED_CACHE_MAX: usize = 16;
/// At most this many single-use Ferry tokens are remembered (pruned by expiry first).
const REPLAY_MAX: usize = 1_000_000;

/// Why a request was refused (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the control plane's public key is not loaded yet")]
    NoKey,
    #[error("signature verification failed")]
    BadSignature,
    #[error("Ferry token: {0}")]
    Token(TokenError),
    #[error("Ferry token already used (replay of request_idx {0})")]
    Replay(u64),
    #[error("the grant was issued for {0}, not this worker")]
    WrongUrl(String),
}

impl AuthError {
    /// Short fixed code for bodies, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::NoKey => "no_public_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Token(t) => t.code(),
            AuthError::Replay(_) => "token_replay",
            AuthError::WrongUrl(_) => "wrong_worker",
        }
    }
}

/// A Vast signature that verified under the current key: as sent, and decoded.
#[derive(Debug)]
struct Verified {
    url: String,
    signature: String,
    bytes: Vec<u8>,
}

/// The keys and the caches that go with them.
#[derive(Debug, Default)]
pub struct KeyStore {
    key: ArcSwapOption<PublicKey>,
    /// This worker's v2 token key, from its master token (`None` without one).
    mac: Option<TokenKey>,
    verified: Mutex<Vec<Verified>>,
    used_tokens: Mutex<HashMap<String, u64>>,
}

impl KeyStore {
    /// A store with no key yet and no v2 token key.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A store with no public key yet, checking v2 tokens with the key derived from
    /// `master_token` (none if it is empty).
    pub fn with_master_token(master_token: &str) -> Arc<Self> {
        Arc::new(Self {
            mac: TokenKey::derive(master_token),
            ..Self::default()
        })
    }

    /// Whether this worker checks v2 tokens (it says so in its reports as `ferry_mac`).
    pub fn checks_mac(&self) -> bool {
        self.mac.is_some()
    }

    /// Installs (or replaces) the key.
    pub fn set_key(&self, key: PublicKey) {
        self.key.store(Some(Arc::new(key)));
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether a key is loaded.
    pub fn has_key(&self) -> bool {
        self.key.load().is_some()
    }

    /// Checks a request's auth data. `in_session` requests reuse the session's grant, so the
    /// single-use and expiry rules of Ferry's token do not apply to them.
    pub fn check(
        &self,
        auth: &AuthData,
        require_token: bool,
        in_session: bool,
        now_unix: u64,
    ) -> Result<(), AuthError> {
        let guard = self.key.load();
        let Some(key) = guard.as_deref() else {
            return Err(AuthError::NoKey);
        };
        self.check_vast_signature(key, &auth.url, &auth.signature)?;
        let has_token =
            auth.ferry_mac.is_some() || auth.ferry_sig.is_some() || auth.ferry_exp.is_some();
        if !has_token && !require_token {
            return Ok(());
        }
        // A v2 token decides when present (its MAC covers the same claims as a v1 signature);
        // otherwise the v1 token, as before v2 existed.
        let verdict = match (&auth.ferry_mac, &self.mac) {
            (Some(_), Some(mac)) => mac.verify(auth, now_unix),
            (Some(_), None) => Err(TokenError::NoKey),
            (None, _) => key.verify_ferry(auth, now_unix),
        };
        match verdict {
            Ok(()) => {}
            Err(TokenError::Expired { .. }) if in_session => {}
            Err(e) => return Err(AuthError::Token(e)),
        }
        if require_token && !in_session {
            self.use_once(auth, now_unix)?;
        }
        Ok(())
    }

    fn check_vast_signature(&self, key: &PublicKey, url: &str, sig: &str) -> Result<(), AuthError> {
        let known = {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            match cache.iter().find(|v| v.url == url) {
                Some(v) if v.signature == sig => return Ok(()),
                Some(v) => Some(v.bytes.clone()),
                None => None,
            }
        };
        let bytes = key
            .signature_bytes(sig)
            .map_err(|_| AuthError::BadSignature)?;
        if let Some(known) = known {
            // The one valid signature for this url under this key is known: no RSA needed
            // either way (another spelling of the same bytes is still that signature).
            return if known == bytes {
                Ok(())
            } else {
                Err(AuthError::BadSignature)
            };
        }
        key.verify_url(url, sig)
            .map_err(|_| AuthError::BadSignature)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.clear();
        }
        cache.push(Verified {
            url: url.to_owned(),
            signature: sig.to_owned(),
            bytes,
        });
        Ok(())
    }

    /// Remembers the verified token until its expiry, refusing it if already seen. The v2 tag
    /// has one accepted spelling ([`TokenKey::verify`]), so it is its own key. The v1 signature
    /// is decoded leniently (Python's `b64decode` skips stray characters), so many spellings
    /// verify: it is keyed by the message it signs, which is canonical.
    fn use_once(&self, auth: &AuthData, now_unix: u64) -> Result<(), AuthError> {
        let exp = auth.ferry_exp.unwrap_or(0);
        let sig = match (&auth.ferry_mac, &auth.ferry_sig) {
            (Some(mac), _) => mac.clone(),
            (None, Some(_)) => ferry_message(&FerryClaims {
                url: auth.url.clone(),
                endpoint: auth.endpoint.clone(),
                request_idx: auth.request_idx,
                reqnum: auth.reqnum,
                cost: auth.cost.as_f64().unwrap_or_default(),
                exp,
            }),
            (None, None) => return Err(AuthError::Token(TokenError::Missing)),
        };
        let mut used = self.used_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains_key(&sig) {
            return Err(AuthError::Replay(auth.request_idx));
        }
        if used.len() >= REPLAY_MAX {
            used.retain(|_, e| *e >= now_unix);
            if used.len() >= REPLAY_MAX {
                // Still full of unexpired grants: refuse rather than forget one (fail closed).
                return Err(AuthError::Replay(auth.request_idx));
            }
        }
        used.insert(sig, exp);
        Ok(())
    }
}

/// Fetches `{REPORT_ADDR}/pubkey/` with PyWorker's schedule (5 attempts, backoff 1, 2, 4, 8 s,
/// addresses tried in order), reporting [`PUBKEY_FAILED`] after the last one. Unlike PyWorker it
/// then keeps trying every `retry_after_failure` and clears the error once a key arrives.
pub async fn fetch_pubkey_loop(
    http: reqwest::Client,
    report_addrs: Vec<String>,
    keys: Arc<KeyStore>,
    tracker: Tracker,
    base_backoff: Duration,
    retry_after_failure: Duration,
    cancel: CancellationToken,
) {
    const ATTEMPTS: u32 = 5;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        for addr in &report_addrs {
            match fetch_once(&http, addr).await {
                Ok(key) => {
                    tracing::info!(addr = %addr, attempt, "loaded the control plane's public key");
                    keys.set_key(key);
                    tracker.clear_error(PUBKEY_FAILED);
                    return;
                }
                Err(e) => {
                    tracing::warn!(addr = %addr, attempt, error = %e, "public key fetch failed")
                }
            }
        }
        let delay = if attempt < ATTEMPTS {
            base_backoff * 2u32.pow(attempt - 1)
        } else {
            if attempt == ATTEMPTS {
                tracing::error!("{PUBKEY_FAILED}");
                tracker.model_errored(PUBKEY_FAILED);
            }
            retry_after_failure
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn fetch_once(http: &reqwest::Client, addr: &str) -> Result<PublicKey, String> {
    let url = format!("{}/pubkey/", addr.trim_end_matches('/'));
    let res = http
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let text = res.text().await.map_err(|e| e.to_string())?;
    PublicKey::from_pem(&text).map_err(|e| e.to_string())
}
