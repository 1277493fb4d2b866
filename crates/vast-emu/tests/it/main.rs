//! Integration tests: the real emulator on `127.0.0.1:0`, driven over HTTP with reqwest, with
//! real on-start processes.

// clippy's allow-*-in-tests covers `#[test]` functions only, not the shared helpers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test on purpose"
)]

mod knobs;
mod lifecycle;
mod offers;
mod support;
