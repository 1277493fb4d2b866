//! Code-level customization: a trait a user implements in their own crate when a TOML preset is
//! not enough (a workload that needs a tokenizer, a payload rewritten before it reaches the model,
//! a route refused by rule). Install it with [`Worker::with_hooks`](crate::Worker::with_hooks);
//! every method has a default, so implement only what differs.
//!
//! ```
//! use ferry_worker::hooks::{Hooks, Rejection};
//! use serde_json::Value;
//!
//! /// Counts prompt characters as workload and caps max_tokens.
//! struct MyHooks;
//!
//! impl Hooks for MyHooks {
//!     fn workload(&self, _route: &str, payload: &Value, preset: f64) -> f64 {
//!         payload["prompt"].as_str().map_or(preset, |p| p.chars().count() as f64)
//!     }
//!     fn prepare(&self, _route: &str, mut payload: Value) -> Result<Value, Rejection> {
//!         if payload["max_tokens"].as_u64().is_some_and(|n| n > 4096) {
//!             return Err(Rejection::new("max_tokens above 4096"));
//!         }
//!         payload["temperature"] = 0.0.into();
//!         Ok(payload)
//!     }
//! }
//! ```

use serde_json::Value;

/// A request refused by [`Hooks::prepare`]: answered 422 `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Shown to the client.
    pub message: String,
}

impl Rejection {
    /// A rejection with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Per-request customization points.
pub trait Hooks: Send + Sync + 'static {
    /// The workload of a payload on `route`; `preset` is what the preset's formula counted.
    fn workload(&self, route: &str, payload: &Value, preset: f64) -> f64 {
        let _ = (route, payload);
        preset
    }

    /// Rewrites the payload before it is forwarded, or refuses the request.
    fn prepare(&self, route: &str, payload: Value) -> Result<Value, Rejection> {
        let _ = route;
        Ok(payload)
    }
}

/// The hooks used when none are installed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
