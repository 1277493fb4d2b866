//! `ferry call`, `ferry bench` and `ferry simulate` as processes, against `ferry sim-model` +
//! `ferry worker` processes on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod args;
mod bench;
mod call;
mod fleet;
mod simulate;
mod stack;
mod trap;
