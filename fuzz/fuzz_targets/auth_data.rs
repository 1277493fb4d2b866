//! `auth_data`: the signed routing ticket inside every worker request, and the checks on it
//! (`AuthData::from_value` / its `Deserialize`, `PublicKey::verify_auth`, `verify_ferry`, the
//! worker's cached `KeyStore::check`).
//!
//! The input is any JSON text, read as the `auth_data` member.
//!
//! Checks:
//! - `from_value` and `Deserialize` agree; an error lists only required fields, once each, and
//!   prints on one line;
//! - an accepted ticket round-trips: `to_value` equals its `Serialize` form and parses back to
//!   the same ticket;
//! - a signature verifies only for a URL the fixture key really signed, and a Ferry token only
//!   for claims it really signed (random data never verifies); what verifies re-signs to a
//!   signature that verifies too;
//! - a `ferry_mac` never verifies under a key the input was not made with;
//! - the worker's `KeyStore::check` (signature cache, token rules) agrees with the direct checks,
//!   and refuses a `ferry_mac` when it has no master token.

#![no_main]

use std::sync::LazyLock;

use ferry_fuzz::{FIXTURES, NOW};
use ferry_protocol::{cost_milli, AuthData, TokenError, TokenKey};
use ferry_worker::auth::{AuthError, KeyStore};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static KEYS: LazyLock<std::sync::Arc<KeyStore>> = LazyLock::new(|| {
    let ks = KeyStore::new();
    ks.set_key(FIXTURES.public.clone());
    ks
});

/// A v2 token key nobody minted the corpus with.
static MAC: LazyLock<TokenKey> =
    LazyLock::new(|| TokenKey::derive("fuzz-master-token").expect("non-empty"));

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let parsed = AuthData::from_value(&v);
    let via_serde = serde_json::from_value::<AuthData>(v.clone());
    let auth = match (parsed, via_serde) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            a
        }
        (Err(e), Err(_)) => {
            assert!(!e.is_empty());
            let mut seen = Vec::new();
            for (field, _) in e.iter() {
                assert!(AuthData::REQUIRED.contains(&field), "{field}");
                assert!(!seen.contains(&field), "{field} reported twice");
                seen.push(field);
            }
            assert!(!e.to_string().contains('\n'));
            assert_eq!(e.to_value().as_object().map(|o| o.len()), Some(e.len()));
            return;
        }
        (a, b) => panic!("from_value {a:?} but Deserialize {b:?}"),
    };

    // Round trip.
    let value = auth.to_value();
    assert_eq!(serde_json::to_value(&auth).expect("serializes"), value);
    assert_eq!(AuthData::from_value(&value).as_ref(), Ok(&auth));
    let _ = auth.cost.as_f64();
    let _ = auth.request_id();

    let fx = &*FIXTURES;

    // Vast's signature: only what the key signed verifies.
    let vast = fx.public.verify_auth(&auth);
    if vast.is_ok() {
        assert!(
            fx.vast.iter().any(|(url, _)| *url == auth.url),
            "forged signature verified: {auth:?}"
        );
        let again = fx.signing.sign_url(&auth.url).expect("signs");
        assert_eq!(fx.public.verify_url(&auth.url, &again), Ok(()));
    }

    // Ferry's token: only claims the key signed verify, and expiry is checked first.
    let token = fx.public.verify_ferry(&auth, NOW);
    match &token {
        Ok(()) => {
            let cost = auth.cost.as_f64().map(cost_milli);
            assert!(
                fx.ferry.iter().any(|f| f.url == auth.url
                    && f.endpoint == auth.endpoint
                    && f.request_idx == auth.request_idx
                    && f.reqnum == auth.reqnum
                    && Some(f.cost_milli) == cost
                    && Some(f.exp) == auth.ferry_exp),
                "forged token verified: {auth:?}"
            );
        }
        Err(TokenError::Missing) => {
            assert!(auth.ferry_exp.is_none() || auth.ferry_sig.is_none())
        }
        Err(TokenError::Expired { exp, now }) => assert!(now >= exp),
        Err(TokenError::BadSignature) => {}
        Err(TokenError::NoKey) => panic!("verify_ferry needs no MAC key"),
    }

    // The v2 token (`ferry_mac`): random data never verifies under a key it was not made with.
    match MAC.verify(&auth, NOW) {
        Ok(()) => panic!("forged ferry_mac verified: {auth:?}"),
        Err(TokenError::Missing) => {
            assert!(auth.ferry_exp.is_none() || auth.ferry_mac.is_none())
        }
        Err(TokenError::Expired { exp, now }) => assert!(now >= exp),
        Err(TokenError::BadSignature) => {}
        Err(TokenError::NoKey) => panic!("a TokenKey never answers NoKey"),
    }

    // The worker's check (cached) agrees with the direct ones.
    let has_token =
        auth.ferry_mac.is_some() || auth.ferry_sig.is_some() || auth.ferry_exp.is_some();
    let expected = match (&vast, &token) {
        (Err(_), _) => Err(AuthError::BadSignature),
        (Ok(()), _) if !has_token => Ok(()),
        // This store has no master token: a v2 token is refused, never waved through.
        (Ok(()), _) if auth.ferry_mac.is_some() => Err(AuthError::Token(TokenError::NoKey)),
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(AuthError::Token(e.clone())),
    };
    assert_eq!(KEYS.check(&auth, false, false, NOW), expected);
    // A second time: now possibly from the cache, same answer.
    assert_eq!(KEYS.check(&auth, false, false, NOW), expected);
});
