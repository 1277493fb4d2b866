//! Property tests: signing round trips, tamper rejection, message well-formedness.

use base64::Engine as _;
use ferry_protocol::{vast_message, SignatureError};
use proptest::prelude::*;

use crate::{key, public};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    // RSA signing costs a few milliseconds in a debug build; keep the case count modest.
    #![proptest_config(config(48))]

    #[test]
    fn sign_verify_round_trip(url in any::<String>()) {
        let sig = key().sign_url(&url).unwrap();
        prop_assert_eq!(public().verify_url(&url, &sig), Ok(()));
        prop_assert_eq!(public().verify(vast_message(&url).as_bytes(), &sig), Ok(()));
    }

    #[test]
    fn flipped_signature_byte_is_rejected(
        url in "\\PC{0,40}",
        idx in 0usize..256,
        mask in 1u8..=255,
    ) {
        let sig = key().sign_url(&url).unwrap();
        let mut raw = B64.decode(&sig).unwrap();
        prop_assert_eq!(raw.len(), 256);
        raw[idx] ^= mask;
        let tampered = B64.encode(&raw);
        prop_assert!(public().verify_url(&url, &tampered).is_err());
    }

    #[test]
    fn flipped_message_byte_is_rejected(
        message in proptest::collection::vec(any::<u8>(), 1..200),
        idx in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let sig = key().sign(&message).unwrap();
        prop_assert_eq!(public().verify(&message, &sig), Ok(()));
        let mut tampered = message.clone();
        let i = idx.index(tampered.len());
        tampered[i] ^= mask;
        prop_assert_eq!(public().verify(&tampered, &sig), Err(SignatureError::Mismatch));
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn vast_message_is_ascii_json_of_the_url(url in any::<String>()) {
        let msg = vast_message(&url);
        prop_assert!(msg.is_ascii());
        let framed = msg.starts_with("{\n    \"url\": \"") && msg.ends_with("\"\n}");
        prop_assert!(framed, "unexpected framing: {:?}", msg);
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        prop_assert_eq!(v.as_object().map(|o| o.len()), Some(1));
        prop_assert_eq!(v["url"].as_str(), Some(url.as_str()));
    }

    #[test]
    fn garbage_signatures_never_verify(sig in "[A-Za-z0-9+/=\\s]{0,400}") {
        prop_assert!(public().verify_url("http://x:1", &sig).is_err());
    }
}
