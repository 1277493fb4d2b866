//! Byte-for-byte agreement with pycryptodome and Python's `json`/`base64`.

use ferry_protocol::{
    ferry_message, vast_message, AuthData, Cost, FerryClaims, PublicKey, SignatureError,
    SigningKey, TokenError,
};
use serde_json::Map;

use crate::{fixtures, key, public, Claims};

fn claims(c: &Claims) -> FerryClaims {
    FerryClaims {
        url: c.url.clone(),
        endpoint: c.endpoint.clone(),
        request_idx: c.request_idx,
        reqnum: c.reqnum,
        cost: c.cost,
        exp: c.exp,
    }
}

#[test]
fn fixture_file_is_populated() {
    let f = fixtures();
    assert!(f.generator.contains("pycryptodome"), "{}", f.generator);
    assert!(f.vast.len() >= 20);
    assert!(f.ferry.len() >= 3);
}

#[test]
fn vast_message_matches_python_json_dumps() {
    for case in &fixtures().vast {
        assert_eq!(vast_message(&case.url), case.message, "url {:?}", case.url);
    }
}

#[test]
fn python_signatures_verify() {
    let public = PublicKey::from_pem(&fixtures().public_pem).expect("python SPKI PEM");
    for case in &fixtures().vast {
        public
            .verify_url(&case.url, &case.signature)
            .unwrap_or_else(|e| panic!("url {:?}: {e}", case.url));
        public
            .verify(case.message.as_bytes(), &case.signature)
            .unwrap_or_else(|e| panic!("message {:?}: {e}", case.message));
    }
}

#[test]
fn rust_signatures_are_byte_identical_to_python() {
    let f = fixtures();
    for pem in [&f.private_pem_pkcs1, &f.private_pem_pkcs8] {
        let key = SigningKey::from_pem(pem).expect("python private PEM");
        for case in &f.vast {
            assert_eq!(
                key.sign_url(&case.url).expect("sign"),
                case.signature,
                "url {:?}",
                case.url
            );
        }
    }
}

#[test]
fn wrong_url_is_rejected() {
    let public = public();
    let cases = &fixtures().vast;
    for (i, case) in cases.iter().enumerate() {
        let other = &cases[(i + 1) % cases.len()];
        assert_eq!(
            public.verify_url(&other.url, &case.signature),
            Err(SignatureError::Mismatch),
            "signature for {:?} accepted for {:?}",
            case.url,
            other.url
        );
        let extended = format!("{}x", case.url);
        assert_eq!(
            public.verify_url(&extended, &case.signature),
            Err(SignatureError::Mismatch)
        );
    }
}

#[test]
fn keys_match_python_exports() {
    let f = fixtures();
    let from_python = PublicKey::from_pem(&f.public_pem).expect("public");
    assert_eq!(key().public_key(), from_python);
    assert_eq!(from_python.bits(), 2048);
    // Same SPKI encoding; pycryptodome omits the final newline.
    assert_eq!(from_python.to_pem().trim_end(), f.public_pem);
    let pkcs1 = SigningKey::from_pem(&f.private_pem_pkcs1).expect("pkcs1");
    assert_eq!(pkcs1.public_key(), from_python);
    let reexported = SigningKey::from_pem(&pkcs1.to_pem().expect("pem")).expect("reparse");
    assert_eq!(reexported.public_key(), from_python);
}

#[test]
fn ferry_tokens_match_python() {
    let key = key();
    let public = public();
    for case in &fixtures().ferry {
        let c = claims(&case.claims);
        assert_eq!(ferry_message(&c), case.message);
        assert_eq!(key.sign_ferry(&c).expect("sign"), case.signature);
        public
            .verify(case.message.as_bytes(), &case.signature)
            .expect("verify message");

        let auth = AuthData {
            cost: Cost::Number(c.cost),
            endpoint: c.endpoint.clone(),
            reqnum: c.reqnum,
            request_idx: c.request_idx,
            signature: String::new(),
            url: c.url.clone(),
            ferry_exp: Some(c.exp),
            ferry_sig: Some(case.signature.clone()),
            ferry_mac: None,
            extra: Map::new(),
        };
        if let Some(before) = c.exp.checked_sub(1) {
            public.verify_ferry(&auth, before).expect("verify_ferry");
        }
        assert_eq!(
            public.verify_ferry(&auth, c.exp),
            Err(TokenError::Expired {
                exp: c.exp,
                now: c.exp
            })
        );
    }
}
