//! Ferry's optional stronger token, riding inside `auth_data`.
//!
//! Vast's signature covers only the worker URL, so any signature ever issued for a worker stays
//! valid for every request to it, forever (vastai dropped replay protection in 2026-01). A Ferry
//! control plane adds to its `/route/` answer `"ferry_exp"` (Unix seconds after which the ticket
//! is dead) and one of:
//!
//! - `"ferry_mac"` (v2): HMAC-SHA256 under the chosen worker's [`TokenKey`], derived with HKDF
//!   from the master token only that worker and the control plane know; unpadded URL-safe
//!   base64 of the tag over [`ferry_mac_message`]. About a microsecond either way.
//! - `"ferry_sig"` (v1): base64 RSA PKCS#1 v1.5 / SHA-256 signature, by the control plane's key,
//!   over [`ferry_message`]. For workers that have not announced v2 (docs/signing.md has the
//!   compatibility rule and the security argument).
//!
//! Vast's Python client forwards the whole `/route/` answer as `auth_data`, and Vast's worker
//! ignores keys it does not know, so the token passes through unmodified clients and workers;
//! a Ferry worker configured to require it can then bound a ticket's life and bind it to its
//! `endpoint`, `request_idx`, `reqnum` and `cost`.
//!
//! The authenticated message is (`N` = 1 for `ferry_sig`, 2 for `ferry_mac`)
//!
//! ```text
//! ferry-token-vN\n{url}\n{endpoint}\n{request_idx}\n{reqnum}\n{cost_milli}\n{exp}
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

use base64::Engine as _;

use crate::sign::{PublicKey, SignatureError, SigningKey};
use crate::wire::{AuthData, RouteReady};

/// First line of every RSA token message (`ferry_sig`); bump it to change the format.
pub const FERRY_TOKEN_VERSION: &str = "ferry-token-v1";

/// First line of every MAC token message (`ferry_mac`).
pub const FERRY_MAC_VERSION: &str = "ferry-token-v2";

/// HKDF-SHA256 salt for [`TokenKey::derive`]: names the purpose, so the key is never the raw
/// master token nor a key any other use of the master token could produce.
const MAC_KEY_SALT: &[u8] = b"ferry grant-token key derivation v2";
/// HKDF-SHA256 info for [`TokenKey::derive`].
const MAC_KEY_INFO: &[u8] = b"ferry-token-v2 hmac-sha256";
/// Length of an HMAC-SHA256 tag.
const MAC_LEN: usize = 32;

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
    message(
        FERRY_TOKEN_VERSION,
        &c.url,
        &c.endpoint,
        c.request_idx,
        c.reqnum,
        c.cost,
        c.exp,
    )
}

/// The canonical byte string a `ferry_mac` authenticates: [`ferry_message`]'s format with the
/// first line [`FERRY_MAC_VERSION`], so a v1 signature and a v2 MAC never cover the same bytes.
pub fn ferry_mac_message(c: &FerryClaims) -> String {
    message(
        FERRY_MAC_VERSION,
        &c.url,
        &c.endpoint,
        c.request_idx,
        c.reqnum,
        c.cost,
        c.exp,
    )
}

/// Builds the message from borrowed fields, so verification works straight from `AuthData`.
fn message(
    version: &str,
    url: &str,
    endpoint: &str,
    request_idx: u64,
    reqnum: u64,
    cost: f64,
    exp: u64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(80 + url.len() + endpoint.len());
    out.push_str(version);
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
    /// A `ferry_mac` reached a worker that has no master token to derive the MAC key from.
    #[error("Ferry MAC token, but this worker has no master token to check it with")]
    NoKey,
}

impl TokenError {
    /// Short fixed identifier for logs, metrics and JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Expired { .. } => "token_expired",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::NoKey => "token_no_key",
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
        let (sig, msg) = claimed(
            auth,
            auth.ferry_sig.as_deref(),
            FERRY_TOKEN_VERSION,
            now_unix,
        )?;
        self.verify(msg.as_bytes(), sig)
            .map_err(|_| TokenError::BadSignature)
    }
}

/// What the v1 and v2 checks share, in their order: the token and `ferry_exp` present, not
/// expired at `now_unix` (before any cryptography), and the canonical message under `version`
/// of the claims rebuilt from `auth`. Returns the token as sent and that message.
fn claimed<'a>(
    auth: &AuthData,
    token: Option<&'a str>,
    version: &str,
    now_unix: u64,
) -> Result<(&'a str, String), TokenError> {
    let (Some(exp), Some(token)) = (auth.ferry_exp, token) else {
        return Err(TokenError::Missing);
    };
    if now_unix >= exp {
        return Err(TokenError::Expired { exp, now: now_unix });
    }
    let cost = auth.cost.as_f64().ok_or(TokenError::BadSignature)?;
    let msg = message(
        version,
        &auth.url,
        &auth.endpoint,
        auth.request_idx,
        auth.reqnum,
        cost,
        exp,
    );
    Ok((token, msg))
}

/// One worker's MAC key for Ferry's v2 token (`ferry_mac`), derived from the master token that
/// only that worker and the control plane know. `Debug` prints no key material.
pub struct TokenKey {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// HKDF-SHA256 (RFC 5869) of `master_token` with a fixed salt and info naming this use; the
    /// result keys HMAC-SHA256. `None` for an empty master token: no shared secret, no MAC.
    pub fn derive(master_token: &str) -> Option<TokenKey> {
        use ring::{hkdf, hmac};
        if master_token.is_empty() {
            return None;
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, MAC_KEY_SALT).extract(master_token.as_bytes());
        let okm = prk.expand(&[MAC_KEY_INFO], hmac::HMAC_SHA256).ok()?;
        Some(TokenKey {
            key: hmac::Key::from(okm),
        })
    }

    /// The `ferry_mac` for `c`: unpadded URL-safe base64 of HMAC-SHA256 over
    /// [`ferry_mac_message`]`(c)` (43 characters).
    pub fn mac(&self, c: &FerryClaims) -> String {
        let tag = ring::hmac::sign(&self.key, ferry_mac_message(c).as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Checks the MAC token in `auth`: `ferry_mac` and `ferry_exp` present, not expired at
    /// `now_unix` (same rule and order as [`PublicKey::verify_ferry`]), and `ferry_mac` the tag
    /// of the claims rebuilt from `auth`. The tag must be exactly the canonical 43-character
    /// encoding, so one grant has one accepted spelling (the worker's replay check relies on
    /// it); the comparison is constant-time (`ring::hmac::verify`). `ferry_sig` is not looked at.
    pub fn verify(&self, auth: &AuthData, now_unix: u64) -> Result<(), TokenError> {
        let (mac, msg) = claimed(auth, auth.ferry_mac.as_deref(), FERRY_MAC_VERSION, now_unix)?;
        let mut tag = [0u8; MAC_LEN];
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(mac.as_bytes(), &mut tag)
            .map_err(|_| TokenError::BadSignature)?;
        if decoded != MAC_LEN {
            return Err(TokenError::BadSignature);
        }
        ring::hmac::verify(&self.key, msg.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)
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
            ferry_mac: None,
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

    fn mac_auth(c: &FerryClaims, key: &TokenKey) -> AuthData {
        let mut a = auth_for(c, None);
        a.ferry_mac = Some(key.mac(c));
        a
    }

    #[test]
    fn mac_message_is_a_separate_domain() {
        let c = claims();
        assert_eq!(
            ferry_mac_message(&c),
            "ferry-token-v2\nhttps://1.2.3.4:5\nep\n25\n3\n100000\n2000000000"
        );
        assert_ne!(ferry_mac_message(&c), ferry_message(&c));
    }

    #[test]
    fn mac_key_derivation() {
        assert!(TokenKey::derive("").is_none());
        let key = TokenKey::derive("0123456789abcdef0123456789abcdef").expect("key");
        assert_eq!(format!("{key:?}"), "TokenKey(***)");
        // Known answer: HKDF-SHA256(salt, ikm = mtoken, info) then HMAC-SHA256, computed
        // independently with Python's hmac/hashlib (see docs/signing.md for the recipe).
        assert_eq!(key.mac(&claims()), KNOWN_MAC);
        // The key is not the raw master token: HMAC keyed by the mtoken itself differs.
        let raw =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef");
        let raw_tag = ring::hmac::sign(&raw, ferry_mac_message(&claims()).as_bytes());
        assert_ne!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw_tag.as_ref()),
            KNOWN_MAC
        );
    }

    const KNOWN_MAC: &str = "9ajMiLd2Q-9ds-XU4HhMDTZvOuuanK6spr-LkQKsSfQ";

    #[test]
    fn mac_sign_and_verify() {
        let key = TokenKey::derive("worker-1-secret").expect("key");
        let other = TokenKey::derive("worker-2-secret").expect("key");
        let c = claims();
        let auth = mac_auth(&c, &key);
        assert_eq!(auth.ferry_mac.as_deref().map(str::len), Some(43));
        key.verify(&auth, 1_999_999_999).expect("valid");
        assert_eq!(
            key.verify(&auth, 2_000_000_000),
            Err(TokenError::Expired {
                exp: 2_000_000_000,
                now: 2_000_000_000
            })
        );
        // Another worker's key: refused.
        assert_eq!(other.verify(&auth, 0), Err(TokenError::BadSignature));

        // Every claim is bound.
        let tampered: [fn(&mut AuthData); 7] = [
            |a| a.cost = Cost::Number(1.0),
            |a| a.cost = Cost::Text("lots".into()),
            |a| a.ferry_exp = a.ferry_exp.map(|e| e + 1),
            |a| a.request_idx += 1,
            |a| a.reqnum += 1,
            |a| a.url.push('/'),
            |a| a.endpoint.push('x'),
        ];
        for t in tampered {
            let mut a = auth.clone();
            t(&mut a);
            assert_eq!(key.verify(&a, 0), Err(TokenError::BadSignature), "{a:?}");
        }
        // Cost as text is rebuilt as its number.
        let mut text = auth.clone();
        text.cost = Cost::Text("100".into());
        key.verify(&text, 0).expect("text cost");

        // Only the canonical spelling of the tag: no padding, no standard alphabet, no
        // truncation, no extra bytes, no flipped trailing bits.
        let tag = auth.ferry_mac.clone().expect("mac");
        let mut spellings = vec![
            format!("{tag}="),
            tag.replace('-', "+").replace('_', "/"),
            tag[..42].to_string(),
            format!("{tag}AA"),
            String::new(),
        ];
        let last = tag.as_bytes()[42];
        // The 43rd character carries 2 unused bits; another character with the same top
        // 4 bits decodes to the same bytes and must still be refused.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.iter().position(|&b| b == last).expect("alphabet");
        let twin = alphabet[(pos & !3) | ((pos + 1) & 3)] as char;
        spellings.push(format!("{}{twin}", &tag[..42]));
        for s in spellings {
            if s == tag {
                continue;
            }
            let mut a = auth.clone();
            a.ferry_mac = Some(s.clone());
            assert_eq!(key.verify(&a, 0), Err(TokenError::BadSignature), "{s}");
        }

        let mut missing = auth.clone();
        missing.ferry_mac = None;
        assert_eq!(key.verify(&missing, 0), Err(TokenError::Missing));
        missing = auth.clone();
        missing.ferry_exp = None;
        assert_eq!(key.verify(&missing, 0), Err(TokenError::Missing));
        assert_eq!(TokenError::NoKey.code(), "token_no_key");
    }

    /// Old and new tokens never stand in for each other.
    #[test]
    fn v1_and_v2_tokens_are_not_interchangeable() {
        let rsa = test_key();
        let public = rsa.public_key();
        let key = TokenKey::derive("worker-1-secret").expect("key");
        let c = claims();
        // A v1 checker (RSA) given only a MAC: the token is missing, not valid.
        let v2 = mac_auth(&c, &key);
        assert_eq!(public.verify_ferry(&v2, 0), Err(TokenError::Missing));
        // The MAC moved into ferry_sig: not an RSA signature.
        let mut moved = auth_for(&c, v2.ferry_mac.clone());
        assert_eq!(
            public.verify_ferry(&moved, 0),
            Err(TokenError::BadSignature)
        );
        // A v2 checker given only an RSA token: missing; an RSA signature moved into
        // ferry_mac: refused.
        let v1 = auth_for(&c, Some(rsa.sign_ferry(&c).expect("sign")));
        assert_eq!(key.verify(&v1, 0), Err(TokenError::Missing));
        moved = auth_for(&c, None);
        moved.ferry_mac = v1.ferry_sig.clone();
        assert_eq!(key.verify(&moved, 0), Err(TokenError::BadSignature));
    }
}
