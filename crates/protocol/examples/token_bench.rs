//! Runs one token operation `n` times, for `bench/token_callgrind.py` to count (callgrind) and
//! time (process CPU). Not a test and not a criterion bench: the figures that matter are
//! instruction counts per operation, which do not move with the machine's load.
//!
//! ```text
//! token_bench OP N     OP: rsa-sign | rsa-verify | mac-sign | mac-verify | mac-derive
//! token_bench print-key  (a fresh RSA-2048 PEM, for FERRY_BENCH_KEY)
//! ```
//!
//! - `rsa-sign`: the control plane's v1 `ferry_sig` for one grant ([`SigningKey::sign_ferry`]);
//! - `rsa-verify`: the worker's v1 check ([`PublicKey::verify_ferry`]);
//! - `mac-sign`: the control plane's v2 `ferry_mac` ([`TokenKey::mac`]);
//! - `mac-verify`: the worker's v2 check ([`TokenKey::verify`]);
//! - `mac-derive`: deriving a worker's key from its master token (once per worker, not per
//!   request; shown for scale).
//!
//! Each iteration changes `request_idx`, as consecutive grants do. The key is generated once at
//! start (the same work for every `N`, so it cancels out of a difference of two runs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use ferry_protocol::{FerryClaims, RouteReady, SigningKey, TokenKey};
use serde_json::Map;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("mac-sign");
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);

    // A fixed key, so runs are repeatable instruction for instruction: generated once (outside
    // the measured difference) from the PEM in FERRY_BENCH_KEY if set, else freshly.
    let rsa = match std::env::var("FERRY_BENCH_KEY") {
        Ok(path) => SigningKey::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap(),
        Err(_) => SigningKey::generate(2048).unwrap(),
    };
    let public = rsa.public_key();
    let mac = TokenKey::derive("8f0c2e1d9b7a65430f1e2d3c4b5a6978").unwrap();

    let mut claims = FerryClaims {
        url: "http://203.0.113.7:41000".into(),
        endpoint: "my-endpoint".into(),
        request_idx: 1_000_000,
        reqnum: 17,
        cost: 256.0,
        exp: 4_000_000_000,
    };
    let ready = |c: &FerryClaims| RouteReady {
        request_id: None,
        cost: c.cost,
        endpoint: c.endpoint.clone(),
        reqnum: c.reqnum,
        request_idx: c.request_idx,
        signature: String::new(),
        url: c.url.clone(),
        ferry_exp: Some(c.exp),
        ferry_sig: None,
        ferry_mac: None,
        extra: Map::new(),
    };
    let now = 3_000_000_000;
    let mut sink = 0usize;
    match op {
        "rsa-sign" => {
            for i in 0..n {
                claims.request_idx = 1_000_000 + i;
                sink += rsa.sign_ferry(black_box(&claims)).unwrap().len();
            }
        }
        "mac-sign" => {
            for i in 0..n {
                claims.request_idx = 1_000_000 + i;
                sink += mac.mac(black_box(&claims)).len();
            }
        }
        "rsa-verify" | "mac-verify" => {
            // Grants made outside the loop would count in both runs alike; make them in the
            // loop with the cheap signer for MAC and precompute a bounded pool for RSA.
            let pool: Vec<_> = (0..64u64)
                .map(|i| {
                    let mut c = claims.clone();
                    c.request_idx = 1_000_000 + i;
                    let mut r = ready(&c);
                    if op == "rsa-verify" {
                        r.ferry_sig = Some(rsa.sign_ferry(&c).unwrap());
                    } else {
                        r.ferry_mac = Some(mac.mac(&c));
                    }
                    r.into_auth_data()
                })
                .collect();
            for i in 0..n {
                let auth = &pool[(i % 64) as usize];
                let ok = if op == "rsa-verify" {
                    public.verify_ferry(black_box(auth), now)
                } else {
                    mac.verify(black_box(auth), now)
                };
                assert!(ok.is_ok());
                sink += 1;
            }
        }
        "mac-derive" => {
            for i in 0..n {
                let k = TokenKey::derive(black_box(&format!("master-token-{i}"))).unwrap();
                sink += k.mac(&claims).len();
            }
        }
        "print-key" => println!("{}", rsa.to_pem().unwrap()),
        other => panic!("unknown op {other}"),
    }
    black_box(sink);
}
