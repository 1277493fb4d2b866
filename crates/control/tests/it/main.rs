//! Integration tests: real control plane, real `ferry_worker::Worker`s in front of the sim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agree;
mod connections;
mod errors;
mod fleet;
mod flow;
mod hardening;
mod harness;
mod inproc;
mod inputs;
mod local;
mod pg;
mod replica;
mod rollout;
mod store_pg;
mod vast;
