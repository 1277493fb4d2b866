//! Ferry's optional stronger token, riding inside `auth_data`.
//!
//! Vast's signature covers only the worker URL, so any signature ever issued for a worker stays
//! valid for every request to it, forever (vastai dropped replay protection in 2026-01). A Ferry
//! control plane can add two keys to its `/route/` answer:
//!
//! - `"ferry_exp"`: Unix seconds after which the ticket is dead;
//! - `"ferry_sig"`: base64 RSA PKCS#1 v1.5 / SHA-256 signature, by the same key, over
//!   [`ferry_message`] of the ticket's fields.
//!
//! Vast's Python client forwards the whole `/route/` answer as `auth_data`, and Vast's worker
//! ignores keys it does not know, so the token passes through unmodified clients and workers;
//! a Ferry worker configured to require it can then bound a ticket's life and bind it to its
//! `endpoint`, `request_idx`, `reqnum` and `cost`.
//!
//! The signed message is
//!
//! ```text
//! ferry-token-v1\n{url}\n{endpoint}\n{request_idx}\n{reqnum}\n{cost_milli}\n{exp}
//! ```
//!
//! - integers in decimal, no sign, no leading zeros;
//! - `cost_milli` = `cost × 1000` rounded half away from zero to an integer (see [`cost_milli`]),
//!   so float formatting never has to agree between languages;
//! - in `url` and `endpoint`, `\` is written `\\` and a line feed `\n` (backslash, `n`). That
//!   makes the encoding injective: no choice of field values can shift a line into the next
//!   field. Escaping was chosen over rejecting newlines because it keeps [`ferry_message`]
//!   total, and URLs never contain either character in practice.
//!
//! The leading `ferry-token-v1` line also separates the domain from Vast's message, which
//! always starts with `{`, so neither signature can stand in for the other.
//!
//! Python equivalent (what `tests/fixtures/gen_fixtures.py` uses):
//!
//! ```text
//! esc = lambda s: s.replace("\\", "\\\\").replace("\n", "\\n")
//! milli = int(Decimal(cost * 1000).to_integral_value(rounding=ROUND_HALF_UP))
//! msg = f"ferry-token-v1\n{esc(url)}\n{esc(endpoint)}\n{request_idx}\n{reqnum}\n{milli}\n{exp}"
//! ```
//!
//! (Python's `round()` rounds half to even, hence `Decimal`; `Decimal(float)` is exact.)

use crate::sign::{PublicKey, SignatureError, SigningKey};
use crate::wire::{AuthData, RouteReady};

/// First line of every token message; bump it to change the format.
pub const FERRY_TOKEN_VERSION: &str = "ferry-token-v1";

/// What a Ferry token vouches for.
#[derive(Debug, Clone, PartialEq)]
pub struct FerryClaims {
    /// Worker base URL.
    pub url: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Lifetime id of the request.
    pub request_idx: u64,
    /// Per-worker request counter.
    pub reqnum: u64,
    /// Workload the request was routed with.
    pub cost: f64,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

impl FerryClaims {
    /// The claims a `/route/` answer makes, with expiry `exp`.
    pub fn for_route(ready: &RouteReady, exp: u64) -> FerryClaims {
        FerryClaims {
            url: ready.url.clone(),
            endpoint: ready.endpoint.clone(),
            request_idx: ready.request_idx,
            reqnum: ready.reqnum,
            cost: ready.cost,
            exp,
        }
    }
}

/// `cost × 1000`, rounded half away from zero (Rust's `f64::round`). Saturates at the `i64`
/// range; not-a-number gives 0 (JSON cannot carry either).
pub fn cost_milli(cost: f64) -> i64 {
    (cost * 1000.0).round() as i64
}

/// The canonical byte string a Ferry token signs; format in the [module docs](self).
pub fn ferry_message(c: &FerryClaims) -> String {
    message(&c.url, &c.endpoint, c.request_idx, c.reqnum, c.cost, c.exp)
}

/// Builds the message from borrowed fields, so verification works straight from `AuthData`.
fn message(
    url: &str,
    endpoint: &str,
    request_idx: u64,
    reqnum: u64,
    cost: f64,
    exp: u64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(80 + url.len() + endpoint.len());
    out.push_str(FERRY_TOKEN_VERSION);
    out.push('\n');
    push_escaped(url, &mut out);
    out.push('\n');
    push_escaped(endpoint, &mut out);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "\n{request_idx}\n{reqnum}\n{}\n{exp}",
        cost_milli(cost)
    );
    out
}

fn push_escaped(s: &str, out: &mut String) {
    let mut run_start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            _ => continue,
        };
        out.push_str(s.get(run_start..i).unwrap_or_default());
        out.push_str(esc);
        run_start = i + 1;
    }
    out.push_str(s.get(run_start..).unwrap_or_default());
}

/// Why a Ferry token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `ferry_sig` or `ferry_exp` absent (or of the wrong type).
    #[error("no Ferry token in auth_data")]
    Missing,
    /// Past its expiry.
    #[error("Ferry token expired at {exp}, now {now}")]
    Expired {
        /// The token's `ferry_exp`.
        exp: u64,
        /// The time checked against.
        now: u64,
    },
    /// Does not verify against the ticket's fields (or `cost` is not a number).
    #[error("Ferry token signature does not match")]
    BadSignature,
}

impl TokenError {
    /// Short fixed identifier for logs, metrics and JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Expired { .. } => "token_expired",
            TokenError::BadSignature => "token_bad_signature",
        }
    }
}

impl SigningKey {
    /// The `ferry_sig` for `c`.
    pub fn sign_ferry(&self, c: &FerryClaims) -> Result<String, SignatureError> {
        self.sign(ferry_message(c).as_bytes())
    }
}

impl PublicKey {
    /// Checks the Ferry token in `auth`: present, not expired at `now_unix`, and signed over the
    /// claims rebuilt from `auth` (`url`, `endpoint`, `request_idx`, `reqnum`, `cost` as a number,
    /// `ferry_exp`).
    ///
    /// Expired means `now_unix >= ferry_exp` (JWT's rule); pass a `now` reduced by your allowed
    /// clock skew. Expiry is checked before the signature so a flood of stale tickets costs no
    /// RSA work; an `Expired` answer therefore says nothing about authenticity. This does not
    /// check Vast's own `signature`; do both. Neither check ties the ticket to *this* worker:
    /// compare `auth.url` with the worker's own advertised URL for that (Vast's worker does not,
    /// so any worker accepts a ticket signed for another).
    pub fn verify_ferry(&self, auth: &AuthData, now_unix: u64) -> Result<(), TokenError> {
        let (Some(exp), Some(sig)) = (auth.ferry_exp, auth.ferry_sig.as_deref()) else {
            return Err(TokenError::Missing);
        };
        if now_unix >= exp {
            return Err(TokenError::Expired { exp, now: now_unix });
        }
        let cost = auth.cost.as_f64().ok_or(TokenError::BadSignature)?;
        let msg = message(
            &auth.url,
            &auth.endpoint,
            auth.request_idx,
            auth.reqnum,
            cost,
            exp,
        );
        self.verify(msg.as_bytes(), sig)
            .map_err(|_| TokenError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::tests::test_key;
    use crate::wire::Cost;
    use serde_json::Map;

    fn claims() -> FerryClaims {
        FerryClaims {
            url: "https://1.2.3.4:5".into(),
            endpoint: "ep".into(),
            request_idx: 25,
            reqnum: 3,
            cost: 100.0,
            exp: 2_000_000_000,
        }
    }

    fn auth_for(c: &FerryClaims, sig: Option<String>) -> AuthData {
        AuthData {
            cost: Cost::Number(c.cost),
            endpoint: c.endpoint.clone(),
            reqnum: c.reqnum,
            request_idx: c.request_idx,
            signature: String::new(),
            url: c.url.clone(),
            ferry_exp: Some(c.exp),
            ferry_sig: sig,
            extra: Map::new(),
        }
    }

    #[test]
    fn message_format() {
        assert_eq!(
            ferry_message(&claims()),
            "ferry-token-v1\nhttps://1.2.3.4:5\nep\n25\n3\n100000\n2000000000"
        );
        let mut c = claims();
        c.url = "a\nb\\n".into();
        c.endpoint = "\\".into();
        c.cost = -0.0015;
        c.request_idx = u64::MAX;
        assert_eq!(
            ferry_message(&c),
            "ferry-token-v1\na\\nb\\\\n\n\\\\\n18446744073709551615\n3\n-2\n2000000000"
        );
    }

    #[test]
    fn escaping_is_injective() {
        let mut a = claims();
        a.url = "u\nep".into();
        a.endpoint = "x".into();
        let mut b = claims();
        b.url = "u".into();
        b.endpoint = "ep\nx".into();
        assert_ne!(ferry_message(&a), ferry_message(&b));
    }

    #[test]
    fn cost_rounding() {
        assert_eq!(cost_milli(0.0005), 1);
        assert_eq!(cost_milli(2.5e-3), 3);
        assert_eq!(cost_milli(-2.5e-3), -3);
        assert_eq!(cost_milli(0.1), 100);
        assert_eq!(cost_milli(f64::NAN), 0);
        assert_eq!(cost_milli(1e300), i64::MAX);
    }

    #[test]
    fn sign_and_verify() {
        let key = test_key();
        let public = key.public_key();
        let c = claims();
        let sig = key.sign_ferry(&c).expect("sign");
        let auth = auth_for(&c, Some(sig.clone()));
        public.verify_ferry(&auth, 1_999_999_999).expect("valid");
        assert_eq!(
            public.verify_ferry(&auth, 2_000_000_000),
            Err(TokenError::Expired {
                exp: 2_000_000_000,
                now: 2_000_000_000
            })
        );

        let mut cheaper = auth.clone();
        cheaper.cost = Cost::Number(1.0);
        assert_eq!(
            public.verify_ferry(&cheaper, 0),
            Err(TokenError::BadSignature)
        );
        // Cost as text is rebuilt as its number.
        let mut text = auth.clone();
        text.cost = Cost::Text("100".into());
        public.verify_ferry(&text, 0).expect("text cost");
        text.cost = Cost::Text("lots".into());
        assert_eq!(public.verify_ferry(&text, 0), Err(TokenError::BadSignature));

        let mut later = auth.clone();
        later.ferry_exp = Some(c.exp + 1);
        assert_eq!(
            public.verify_ferry(&later, 0),
            Err(TokenError::BadSignature)
        );

        let mut moved = auth.clone();
        moved.request_idx += 1;
        assert_eq!(
            public.verify_ferry(&moved, 0),
            Err(TokenError::BadSignature)
        );

        let missing = auth_for(&c, None);
        assert_eq!(public.verify_ferry(&missing, 0), Err(TokenError::Missing));
        assert_eq!(TokenError::Missing.code(), "token_missing");

        // A Vast signature is not a Ferry token, and vice versa.
        let vast_sig = key.sign_url(&c.url).expect("sign");
        assert_eq!(
            public.verify_ferry(&auth_for(&c, Some(vast_sig)), 0),
            Err(TokenError::BadSignature)
        );
        assert!(public.verify_url(&c.url, &sig).is_err());
    }
}
