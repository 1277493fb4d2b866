//! Integration tests: the real sim on `127.0.0.1:0`, driven with reqwest.

// clippy's allow-*-in-tests covers `#[test]` functions only, not the shared helpers.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test on purpose"
)]

mod comfy;
mod failures;
mod lifecycle;
mod llama;
mod openai;
mod support;
mod tgi;
