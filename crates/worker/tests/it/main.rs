//! Worker integration tests: the real `build_app` on 127.0.0.1:0 in front of the sim model server,
//! with a fake control plane that serves a public key and records every report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod binary;
mod connections;
mod hardening;
mod harness;
mod lifecycle;
mod presets;
mod reports;
mod request_path;
mod sessions;
mod streaming;
mod transform;
