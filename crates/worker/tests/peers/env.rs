//! Where the real peers are: `FERRY_*` variables from the environment (scripts/test.sh loads
//! `~/.cache/ferry/peers.env`), falling back to the file `FERRY_PEERS_ENV` names.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Paths of the installed peers.
#[derive(Debug)]
pub struct Peers {
    /// The `llama-server` binary.
    pub llama_server: PathBuf,
    /// SmolLM2-135M-Instruct Q4_1 (real text, ~180 tok/s here).
    pub smollm2: PathBuf,
    /// Tiny random-weight llama: byte vocab, EOS never sampled, >10k tok/s.
    pub tiny: PathBuf,
}

const HOW: &str = "run scripts/setup-peers.sh, then `set -a; . ~/.cache/ferry/peers.env; set +a` \
                   (scripts/test.sh does both)";

/// The peers, or a panic saying how to install them.
pub fn peers() -> &'static Peers {
    static PEERS: OnceLock<Peers> = OnceLock::new();
    PEERS.get_or_init(|| {
        if std::env::var_os("FERRY_PEERS").is_none() {
            panic!("FERRY_PEERS is not set: these tests need real model servers; {HOW}");
        }
        let file = std::env::var("FERRY_PEERS_ENV")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| parse_env(&text))
            .unwrap_or_default();
        let path = |key: &str| -> PathBuf {
            let v = std::env::var(key)
                .ok()
                .or_else(|| file.get(key).cloned())
                .unwrap_or_else(|| panic!("{key} is not set; {HOW}"));
            let p = PathBuf::from(v);
            assert!(p.is_file(), "{key}={} does not exist; {HOW}", p.display());
            p
        };
        Peers {
            llama_server: path("FERRY_LLAMA_SERVER"),
            smollm2: path("FERRY_MODEL_GGUF"),
            tiny: path("FERRY_TINY_GGUF"),
        }
    })
}

/// `KEY=value` lines; comments, blank lines and an `export ` prefix are tolerated.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}
