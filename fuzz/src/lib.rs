//! Shared pieces of Ferry's fuzz targets: the signing fixtures (a real key pair and signatures
//! made with pycryptodome, from `crates/protocol/tests/fixtures`) and chunk splitting.
//!
//! The targets live in `fuzz_targets/`, one file per parser; `docs/fuzzing.md` says what each
//! one checks.

use std::sync::LazyLock;

use ferry_protocol::{cost_milli, PublicKey, SigningKey};
use serde_json::Value;

/// A fixed "now" for token checks, before every fixture token's expiry (1.8e9), so a run is
/// deterministic.
pub const NOW: u64 = 1_700_000_000;

/// The fixture key pair and the messages it has signed.
pub struct Fixtures {
    /// The control plane's public key.
    pub public: PublicKey,
    /// Its private key (used only to re-sign what verified, as a cross-check).
    pub signing: SigningKey,
    /// URLs with a real Vast signature in the fixtures: `(url, signature)`.
    pub vast: Vec<(String, String)>,
    /// Ferry token claims with a real signature: `(url, endpoint, request_idx, reqnum,
    /// cost_milli, exp, signature)`.
    pub ferry: Vec<FerryFixture>,
}

/// One signed Ferry token from the fixtures.
pub struct FerryFixture {
    pub url: String,
    pub endpoint: String,
    pub request_idx: u64,
    pub reqnum: u64,
    pub cost_milli: i64,
    pub exp: u64,
    pub signature: String,
}

const FIXTURES_JSON: &str = include_str!("../../crates/protocol/tests/fixtures/fixtures.json");

/// The fixtures, parsed once per process.
pub static FIXTURES: LazyLock<Fixtures> = LazyLock::new(|| {
    let v: Value = serde_json::from_str(FIXTURES_JSON).expect("fixtures.json is JSON");
    let text = |v: &Value| v.as_str().expect("string").to_owned();
    let public = PublicKey::from_pem(v["public_pem"].as_str().expect("public_pem"))
        .expect("fixture public key");
    let signing = SigningKey::from_pem(v["private_pem_pkcs1"].as_str().expect("private_pem"))
        .expect("fixture private key");
    let vast = v["vast"]
        .as_array()
        .expect("vast")
        .iter()
        .map(|f| (text(&f["url"]), text(&f["signature"])))
        .collect();
    let ferry = v["ferry"]
        .as_array()
        .expect("ferry")
        .iter()
        .map(|f| {
            let c = &f["claims"];
            FerryFixture {
                url: text(&c["url"]),
                endpoint: text(&c["endpoint"]),
                request_idx: c["request_idx"].as_u64().expect("request_idx"),
                reqnum: c["reqnum"].as_u64().expect("reqnum"),
                cost_milli: cost_milli(c["cost"].as_f64().expect("cost")),
                exp: c["exp"].as_u64().expect("exp"),
                signature: text(&f["signature"]),
            }
        })
        .collect();
    Fixtures {
        public,
        signing,
        vast,
        ferry,
    }
});

/// Splits `body` into chunks whose lengths are taken from `sizes` in turn (0 counts as 1); the
/// last chunk takes the rest.
pub fn split<'a>(body: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    for s in sizes {
        if rest.is_empty() {
            break;
        }
        let n = usize::from(*s).max(1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// Whether `part` is a slice of `whole` (same memory), as the worker's zero-copy forwarding
/// of the raw payload needs.
pub fn is_subslice(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    p >= start && p + part.len() <= start + whole.len()
}

/// `a == b`, except that numbers may differ in the last bits of their f64 value.
///
/// serde_json's default float parsing (without its `float_roundtrip` feature) is not correctly
/// rounded for long mantissas: `18446744073709665115.7` and its own shortest output
/// `1.8446744073709662e19` can parse 1 ulp apart. Round trips are compared with this.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            _ if x == y => true,
            (Some(x), Some(y)) => (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| same_json(a, b)))
        }
        _ => a == b,
    }
}

/// Asserts that `a` and `b` serialize to the same JSON up to [`same_json`].
pub fn assert_same<T: serde::Serialize + std::fmt::Debug>(a: &T, b: &T) {
    let va = serde_json::to_value(a).expect("serializes");
    let vb = serde_json::to_value(b).expect("serializes");
    assert!(
        same_json(&va, &vb),
        "round trip changed the value:\n{a:?}\n{b:?}"
    );
}
