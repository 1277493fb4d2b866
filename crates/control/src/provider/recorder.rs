//! A provider for unit tests that only records what it was asked to do.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::{EventSink, LaunchSpec, Provider, ProviderError};

/// Records launches (and resumes) and stops; every call succeeds at once.
#[derive(Default)]
pub(crate) struct Recorder {
    /// Launches and resumes, in order.
    pub(crate) launched: Mutex<Vec<LaunchSpec>>,
    /// Stopped worker ids, in order.
    pub(crate) stopped: Mutex<Vec<i64>>,
}

impl Provider for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn subscribe(&self, _: EventSink) {}
    fn launch(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.launched.lock().unwrap().push(spec);
        Box::pin(async { Ok(()) })
    }
    fn stop(&self, id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.stopped.lock().unwrap().push(id);
        Box::pin(async { Ok(()) })
    }
    fn resume(&self, spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        self.launch(spec)
    }
    fn destroy(&self, _: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>> {
        Box::pin(async { Vec::new() })
    }
}
