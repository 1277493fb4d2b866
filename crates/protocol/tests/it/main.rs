//! Integration tests for `ferry-protocol`: interop with pycryptodome fixtures, property tests,
//! and a whole route → worker round trip through the public API.

#![allow(
    clippy::expect_used,
    reason = "shared test helpers; a broken fixture should fail loudly"
)]

mod fixtures;
mod flow;
mod props;

use std::sync::OnceLock;

use ferry_protocol::{PublicKey, SigningKey};
use serde::Deserialize;

/// `tests/fixtures/fixtures.json`, written by `gen_fixtures.py` with pycryptodome.
#[derive(Debug, Deserialize)]
pub struct Fixtures {
    pub generator: String,
    pub public_pem: String,
    pub private_pem_pkcs1: String,
    pub private_pem_pkcs8: String,
    pub vast: Vec<VastCase>,
    pub ferry: Vec<FerryCase>,
}

#[derive(Debug, Deserialize)]
pub struct VastCase {
    pub url: String,
    pub message: String,
    pub signature: String,
}

#[derive(Debug, Deserialize)]
pub struct FerryCase {
    pub claims: Claims,
    pub message: String,
    pub signature: String,
}

#[derive(Debug, Deserialize)]
pub struct Claims {
    pub url: String,
    pub endpoint: String,
    pub request_idx: u64,
    pub reqnum: u64,
    pub cost: f64,
    pub exp: u64,
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        serde_json::from_str(include_str!("../fixtures/fixtures.json")).expect("fixtures.json")
    })
}

/// The fixture's private key: no key generation in tests (slow in debug builds).
pub fn key() -> &'static SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    K.get_or_init(|| SigningKey::from_pem(&fixtures().private_pem_pkcs8).expect("pkcs8 key"))
}

pub fn public() -> PublicKey {
    key().public_key()
}
