//! Vast's request signature: RSA PKCS#1 v1.5 over SHA-256 of a JSON document naming the worker URL.
//!
//! The control plane signs `json.dumps({"url": url}, indent=4, sort_keys=True)` for every `/route/`
//! answer and the worker checks it before doing any work (vastai 1.9.1 `backend.py`
//! `__check_signature`, pycryptodome `pkcs1_15`). Ferry must produce and accept the same bytes
//! as the Python side, so:
//!
//! - [`vast_message`] reproduces Python's `json.dumps` byte for byte, escaping included;
//! - signatures are decoded with Python's lenient `base64.b64decode` rules (see
//!   [`PublicKey::verify`]);
//! - signing is deterministic, so a key loaded from the same PEM signs byte-identically to
//!   pycryptodome (the integration tests check this against fixtures made with it).
//!
//! The RSA operations run on `ring`, the implementation behind rustls/webpki: verification of a
//! 2048-bit signature takes ~35 µs in release (the `rsa` crate's generic bignum exponentiation
//! takes ~300-400 µs), and signing is constant-time (the `rsa` 0.9 crate's is not,
//! RUSTSEC-2023-0071). The `rsa` crate is still used to generate keys and read/write PEM.
//!
//! One deliberate difference from pycryptodome: its `pkcs1_15` also accepts a SHA-256
//! `DigestInfo` that omits the NULL algorithm parameters; `ring` accepts only the standard
//! encoding with them (RFC 8017 §9.2), which is what pycryptodome, OpenSSL, Go and Java all
//! emit. A signer producing the other form would be rejected here and accepted by Vast's worker.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rand::rngs::OsRng;
use ring::signature::{RsaKeyPair, RsaParameters, RsaPublicKeyComponents};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::pycompat;
use crate::wire::AuthData;

/// Largest modulus accepted, in bytes (4096 bits: the `rsa` crate's ceiling for parsing public
/// keys and `ring`'s for private keys). It bounds the stack buffer a signature is decoded into.
const MAX_KEY_BYTES: usize = 512;

/// Smallest public key accepted. Vast uses 2048; 1024 is allowed for old test setups.
const MIN_PUBLIC_BITS: usize = 1024;

/// Smallest private key accepted, by `ring` and for generation.
const MIN_PRIVATE_BITS: usize = 2048;

/// A key could not be parsed, generated or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not a PEM RSA key of a supported kind.
    #[error("invalid RSA key PEM: {detail}")]
    Pem {
        /// What the decoder objected to.
        detail: String,
    },
    /// The modulus size is outside what Ferry accepts.
    #[error("unsupported RSA key size: {bits} bits")]
    Size {
        /// Size of the rejected key or request.
        bits: usize,
    },
    /// A well-formed key the signing engine refuses (`ring` signs only with a public exponent
    /// of at least 65537).
    #[error("unsupported RSA key: {detail}")]
    Unsupported {
        /// Why.
        detail: String,
    },
    /// Key generation failed.
    #[error("RSA key generation failed: {detail}")]
    Generate {
        /// The underlying error.
        detail: String,
    },
    /// The key could not be written as PEM.
    #[error("RSA key encoding failed: {detail}")]
    Encode {
        /// The underlying error.
        detail: String,
    },
}

impl KeyError {
    /// Short fixed identifier for logs, metrics and JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Pem { .. } => "key_pem",
            KeyError::Size { .. } => "key_size",
            KeyError::Unsupported { .. } => "key_unsupported",
            KeyError::Generate { .. } => "key_generate",
            KeyError::Encode { .. } => "key_encode",
        }
    }
}

/// A signature was refused, or could not be made.
///
/// Vast's worker answers every verification failure with a bare 401; the variants exist so logs
/// and metrics can tell a garbled header from a forged one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not base64 by Python's rules (non-ASCII text, or dangling characters).
    #[error("signature is not valid base64")]
    Encoding,
    /// Decoded to the wrong number of bytes for this key.
    #[error("signature is {actual} bytes, key needs {expected}")]
    Length {
        /// The key's modulus size in bytes.
        expected: usize,
        /// What the signature decoded to.
        actual: usize,
    },
    /// Well-formed, but not a signature of this message by this key.
    #[error("signature does not match the message")]
    Mismatch,
    /// Signing failed (the engine refused; not expected with a key that loaded).
    #[error("signing failed: {detail}")]
    Sign {
        /// The underlying error.
        detail: String,
    },
}

impl SignatureError {
    /// Short fixed identifier for logs, metrics and JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Encoding => "signature_encoding",
            SignatureError::Length { .. } => "signature_length",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Sign { .. } => "signature_sign",
        }
    }
}

/// The message Vast signs for a worker URL: Python's
/// `json.dumps({"url": url}, indent=4, sort_keys=True)`, i.e. `{\n    "url": "<url>"\n}` with
/// `ensure_ascii` escaping (every character outside printable ASCII, DEL included, as `\uXXXX`).
pub fn vast_message(url: &str) -> String {
    let mut out = String::with_capacity(url.len() + 20);
    out.push_str("{\n    \"url\": ");
    pycompat::write_json_str(url, &mut out);
    out.push_str("\n}");
    out
}

/// The control plane's public key, as served at `{REPORT_ADDR}/pubkey/`. Cheap to clone.
#[derive(Clone)]
pub struct PublicKey {
    inner: Arc<PublicInner>,
}

struct PublicInner {
    key: RsaPublicKey,
    /// Big-endian minimal encodings of the modulus and exponent, as `ring` takes them.
    n: Vec<u8>,
    e: Vec<u8>,
    /// `ring`'s parameter set: PKCS#1 v1.5, SHA-256, and a modulus range that admits this key.
    params: &'static RsaParameters,
    /// Modulus length in bytes: the only valid signature length.
    size: usize,
    /// SPKI PEM, encoded once at construction so [`PublicKey::to_pem`] cannot fail.
    pem: String,
}

impl PublicKey {
    /// Parses a PEM public key: SPKI (`BEGIN PUBLIC KEY`, what pycryptodome's `export_key` and
    /// Vast's `/pubkey/` produce) or PKCS#1 (`BEGIN RSA PUBLIC KEY`). Surrounding whitespace and
    /// CRLF line endings are tolerated. Accepts 1024 to 4096-bit keys.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let pem = pem.trim();
        let key = if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
            RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| KeyError::Pem {
                detail: e.to_string(),
            })?
        } else {
            RsaPublicKey::from_public_key_pem(pem).map_err(|e| KeyError::Pem {
                detail: e.to_string(),
            })?
        };
        PublicKey::from_rsa(key)
    }

    fn from_rsa(key: RsaPublicKey) -> Result<PublicKey, KeyError> {
        let bits = key.n().bits();
        if !(MIN_PUBLIC_BITS..=MAX_KEY_BYTES * 8).contains(&bits) {
            return Err(KeyError::Size { bits });
        }
        // No exponent check needed: the `rsa` crate only builds keys with an odd exponent in
        // [3, 2^33-1], which is exactly the range `ring` verifies with.
        let params = if bits >= MIN_PRIVATE_BITS {
            &ring::signature::RSA_PKCS1_2048_8192_SHA256
        } else {
            &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
        };
        let pem = key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode {
                detail: e.to_string(),
            })?;
        Ok(PublicKey {
            inner: Arc::new(PublicInner {
                n: key.n().to_bytes_be(),
                e: key.e().to_bytes_be(),
                params,
                size: key.size(),
                key,
                pem,
            }),
        })
    }

    /// SPKI PEM (`BEGIN PUBLIC KEY`), LF line endings, trailing newline.
    pub fn to_pem(&self) -> String {
        self.inner.pem.clone()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.inner.key.n().bits()
    }

    /// Checks `signature_b64` over `message` (RSA PKCS#1 v1.5, SHA-256).
    ///
    /// The signature is decoded the way Vast's worker decodes it (`base64.b64decode` without
    /// `validate`): characters outside the standard alphabet, such as line breaks, are skipped,
    /// text after a closing pad is ignored, and unused trailing bits are dropped. Accepting
    /// exactly what Python accepts keeps the two workers interchangeable behind one control
    /// plane; it does not weaken anything, because the decoded bytes must still verify.
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> Result<(), SignatureError> {
        let k = self.inner.size;
        // Decoded into a stack buffer: no allocation for the signature itself.
        let mut buf = [0u8; MAX_KEY_BYTES];
        let sig = buf.get_mut(..k).ok_or(SignatureError::Length {
            expected: k,
            actual: 0,
        })?;
        let len =
            pycompat::b64decode_into(signature_b64, sig).map_err(|_| SignatureError::Encoding)?;
        if len != k {
            return Err(SignatureError::Length {
                expected: k,
                actual: len,
            });
        }
        let components = RsaPublicKeyComponents {
            n: self.inner.n.as_slice(),
            e: self.inner.e.as_slice(),
        };
        components
            .verify(self.inner.params, message, sig)
            .map_err(|_| SignatureError::Mismatch)
    }

    /// The bytes of a signature as [`PublicKey::verify`] decodes them (Python's lenient
    /// `b64decode`), or why they cannot be a signature under this key (encoding, length).
    ///
    /// RSA PKCS#1 v1.5 is deterministic and a signature must be exactly the modulus' length
    /// and below the modulus, so one key has exactly one valid signature per message: once
    /// `(message, bytes)` has verified, any other bytes for the same message are wrong without
    /// an RSA operation (how the worker refuses a forged signature for its own URL cheaply).
    pub fn signature_bytes(&self, signature_b64: &str) -> Result<Vec<u8>, SignatureError> {
        let k = self.inner.size;
        let mut sig = vec![0u8; k];
        let len = pycompat::b64decode_into(signature_b64, &mut sig)
            .map_err(|_| SignatureError::Encoding)?;
        if len != k {
            return Err(SignatureError::Length {
                expected: k,
                actual: len,
            });
        }
        Ok(sig)
    }

    /// Checks Vast's signature for a worker URL: [`PublicKey::verify`] over
    /// [`vast_message`]`(url)`.
    pub fn verify_url(&self, url: &str, signature_b64: &str) -> Result<(), SignatureError> {
        self.verify(vast_message(url).as_bytes(), signature_b64)
    }

    /// [`PublicKey::verify_url`] on an `auth_data` object's `url` and `signature`.
    pub fn verify_auth(&self, auth: &AuthData) -> Result<(), SignatureError> {
        self.verify_url(&auth.url, &auth.signature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.key == other.inner.key
    }
}

impl Eq for PublicKey {}

/// The control plane's private signing key.
pub struct SigningKey {
    /// Kept for PEM export; zeroized on drop by the `rsa` crate.
    key: RsaPrivateKey,
    /// The same key in `ring`'s form, which does the signing.
    pair: RsaKeyPair,
    rng: ring::rand::SystemRandom,
    public: PublicKey,
}

impl SigningKey {
    /// Generates a fresh key of `bits` bits (2048 to 4096; Vast uses 2048).
    pub fn generate(bits: usize) -> Result<SigningKey, KeyError> {
        if !(MIN_PRIVATE_BITS..=MAX_KEY_BYTES * 8).contains(&bits) {
            return Err(KeyError::Size { bits });
        }
        let key = RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| KeyError::Generate {
            detail: e.to_string(),
        })?;
        SigningKey::from_rsa(key)
    }

    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`,
    /// pycryptodome's default `export_key()` format). Surrounding whitespace is tolerated.
    /// The key must be 2048 to 4096 bits with a public exponent of at least 65537 (`ring`'s
    /// rules; every common generator, pycryptodome and OpenSSL included, meets them).
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let pem = pem.trim();
        let key = if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| KeyError::Pem {
                detail: e.to_string(),
            })?
        } else {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Pem {
                detail: e.to_string(),
            })?
        };
        SigningKey::from_rsa(key)
    }

    fn from_rsa(key: RsaPrivateKey) -> Result<SigningKey, KeyError> {
        let bits = key.n().bits();
        if !(MIN_PRIVATE_BITS..=MAX_KEY_BYTES * 8).contains(&bits) {
            return Err(KeyError::Size { bits });
        }
        let der = key.to_pkcs1_der().map_err(|e| KeyError::Encode {
            detail: e.to_string(),
        })?;
        let pair = RsaKeyPair::from_der(der.as_bytes()).map_err(|e| KeyError::Unsupported {
            detail: e.to_string(),
        })?;
        let public = PublicKey::from_rsa(key.to_public_key())?;
        Ok(SigningKey {
            key,
            pair,
            rng: ring::rand::SystemRandom::new(),
            public,
        })
    }

    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), LF line endings.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|e| KeyError::Encode {
                detail: e.to_string(),
            })
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    /// Signs `message` (RSA PKCS#1 v1.5, SHA-256); standard padded base64.
    pub fn sign(&self, message: &[u8]) -> Result<String, SignatureError> {
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &self.rng,
                message,
                &mut sig,
            )
            .map_err(|e| SignatureError::Sign {
                detail: e.to_string(),
            })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig))
    }

    /// Signs [`vast_message`]`(url)`: the `signature` field of a `/route/` answer.
    pub fn sign_url(&self, url: &str) -> Result<String, SignatureError> {
        self.sign(vast_message(url).as_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("bits", &self.public.bits())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// One 2048-bit key for every unit test: keygen in a debug build takes seconds.
    pub(crate) fn test_key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate(2048).expect("keygen"))
    }

    #[test]
    fn message_shape() {
        assert_eq!(
            vast_message("http://1.2.3.4:5"),
            "{\n    \"url\": \"http://1.2.3.4:5\"\n}"
        );
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = test_key();
        let public = key.public_key();
        let sig = key.sign_url("https://10.0.0.1:443").expect("sign");
        assert_eq!(sig.len(), 344);
        public
            .verify_url("https://10.0.0.1:443", &sig)
            .expect("verify");
        assert_eq!(
            public.verify_url("https://10.0.0.1:444", &sig),
            Err(SignatureError::Mismatch)
        );
        let msg = vast_message("https://10.0.0.1:443");
        public.verify(msg.as_bytes(), &sig).expect("verify bytes");
    }

    #[test]
    fn lenient_base64_like_python() {
        let key = test_key();
        let public = key.public_key();
        let sig = key.sign_url("u").expect("sign");
        // Wrapped at 64 columns, as some tools emit it.
        let wrapped: String = sig
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        public.verify_url("u", &wrapped).expect("wrapped");
        public
            .verify_url("u", &format!("{sig}trailing"))
            .expect("data after padding is ignored");
        assert_eq!(
            public.verify_url("u", &sig[..sig.len() - 2]),
            Err(SignatureError::Encoding)
        );
        assert_eq!(
            public.verify_url("u", "QUJD"),
            Err(SignatureError::Length {
                expected: 256,
                actual: 3
            })
        );
        assert_eq!(public.verify_url("u", "é"), Err(SignatureError::Encoding));
    }

    #[test]
    fn signature_not_below_modulus_is_rejected() {
        let public = test_key().public_key();
        let all_ff = base64::engine::general_purpose::STANDARD.encode([0xffu8; 256]);
        assert_eq!(
            public.verify_url("u", &all_ff),
            Err(SignatureError::Mismatch)
        );
    }

    /// The one documented divergence from pycryptodome: a `DigestInfo` without NULL parameters.
    #[test]
    fn rejects_digest_info_without_null_params() {
        const NO_PARAMS: [u8; 17] = [
            0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x04, 0x20,
        ];
        let key = test_key();
        let digest = ring::digest::digest(&ring::digest::SHA256, vast_message("x").as_bytes());
        let mut t = NO_PARAMS.to_vec();
        t.extend_from_slice(digest.as_ref());
        let raw = key
            .key
            .sign(rsa::Pkcs1v15Sign::new_unprefixed(), &t)
            .expect("sign unprefixed");
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            key.public_key().verify_url("x", &b64),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn pkcs1_public_and_unsupported_private_keys() {
        // PKCS#1 public PEM of a 2048-bit key loads too.
        use rsa::pkcs1::EncodeRsaPublicKey;
        let rsa_pub = test_key().key.to_public_key();
        let pkcs1 = rsa_pub.to_pkcs1_pem(LineEnding::LF).expect("pkcs1 pem");
        assert!(pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        assert_eq!(
            PublicKey::from_pem(&pkcs1).expect("pkcs1"),
            test_key().public_key()
        );
        // ring signs only with e >= 65537; such a key is refused at load, not at first use.
        let e3 = RsaPrivateKey::new_with_exp(&mut OsRng, 2048, &rsa::BigUint::from(3u32))
            .expect("keygen e=3");
        assert_eq!(
            SigningKey::from_rsa(e3).map(|_| ()).map_err(|e| e.code()),
            Err("key_unsupported")
        );
    }

    #[test]
    fn pem_round_trips() {
        let key = test_key();
        let pem = key.to_pem().expect("pem");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = SigningKey::from_pem(&format!("\n  {pem}\n")).expect("reparse");
        assert_eq!(again.public_key(), key.public_key());
        let public_pem = key.public_key().to_pem();
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let crlf = public_pem.replace('\n', "\r\n");
        assert_eq!(PublicKey::from_pem(&crlf).expect("crlf"), key.public_key());
        assert_eq!(
            PublicKey::from_pem("nope").map_err(|e| e.code()),
            Err("key_pem")
        );
    }

    #[test]
    fn debug_does_not_leak() {
        let shown = format!("{:?}", test_key());
        assert_eq!(shown, "SigningKey { bits: 2048, .. }");
    }

    #[test]
    fn generate_rejects_small_keys() {
        assert_eq!(
            SigningKey::generate(1024).map(|_| ()),
            Err(KeyError::Size { bits: 1024 })
        );
    }
}
