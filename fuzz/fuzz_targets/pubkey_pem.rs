//! The control plane's public key as the worker fetches it from `{REPORT_ADDR}/pubkey/`
//! (`auth::fetch_once`: the body as lossy UTF-8 text, then `PublicKey::from_pem`).
//!
//! Input: PEM text; or, when it starts like DER (`0x30`, a SEQUENCE), the bytes wrapped in
//! both `PUBLIC KEY` and `RSA PUBLIC KEY` armour, so the fuzzer reaches the DER parsers without
//! having to discover base64.
//!
//! Checks:
//! - an accepted key is 1024 to 4096 bits, and its own PEM parses back to the same key;
//! - a signature made of the input bytes never verifies under it, and the fixture's real
//!   signature verifies under no other key than the fixture's.

#![no_main]

use base64::Engine as _;
use ferry_fuzz::FIXTURES;
use ferry_protocol::{vast_message, PublicKey};
use libfuzzer_sys::fuzz_target;

fn armour(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn check(pem: &str, data: &[u8]) {
    let Ok(key) = PublicKey::from_pem(pem) else {
        return;
    };
    let bits = key.bits();
    assert!((1024..=4096).contains(&bits), "{bits}-bit key accepted");
    let again = PublicKey::from_pem(&key.to_pem()).expect("own PEM parses");
    assert_eq!(again, key);
    assert_eq!(again.to_pem(), key.to_pem());

    // Random bytes of exactly the key's size are not a signature.
    let size = bits.div_ceil(8);
    let mut sig: Vec<u8> = data.iter().copied().cycle().take(size).collect();
    sig.resize(size, 0);
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(&sig);
    assert!(
        key.verify(data, &sig_b64).is_err(),
        "random signature verified"
    );

    let fx = &*FIXTURES;
    if let Some((url, real)) = fx.vast.first() {
        let ok = key.verify(vast_message(url).as_bytes(), real).is_ok();
        assert_eq!(ok, key == fx.public, "fixture signature under another key");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&0x30) {
        check(&armour("PUBLIC KEY", data), data);
        check(&armour("RSA PUBLIC KEY", data), data);
    } else {
        check(&String::from_utf8_lossy(data), data);
    }
});
