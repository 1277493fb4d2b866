//! Integration tests of the client SDK against scripted fakes and a real worker + sim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod account;
mod fake;
mod hosts;
mod real_worker;
mod routing;
mod sessions;
mod streaming;
