//! Workers that join from anywhere with a token (`provider: external`).
//!
//! The control plane launches nothing for an external workergroup. A launch decision becomes a
//! placeholder record (`creating`) that the next worker joining the group claims, and the
//! group's desired worker count (`GET /api/v0/workergroups/{id}/scale/`, the
//! `ferry_control_desired_workers` gauge) tells an orchestrator how many to run. Stop and
//! resume reach the worker as the `cold` directive in the answer to its next report; destroy
//! forgets the record (a worker still running is then refused as unknown and stops taking
//! requests). So every method here succeeds at once: the work happens in the registry.

use futures_util::future::BoxFuture;

use super::{EventSink, LaunchSpec, Provider, ProviderError, ProviderKind};

/// The provider of joined workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExternalProvider;

impl Provider for ExternalProvider {
    fn name(&self) -> &'static str {
        "external"
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::External
    }

    fn subscribe(&self, _events: EventSink) {}

    fn launch(&self, _spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn stop(&self, _worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn resume(&self, _spec: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn destroy(&self, _worker_id: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>> {
        Box::pin(async { Vec::new() })
    }

    /// Joined workers outlive the control plane and report again on their own: all kept.
    fn adopt(&self, up: Vec<i64>, _cold: Vec<i64>) -> BoxFuture<'_, Option<Vec<i64>>> {
        Box::pin(async move { Some(up) })
    }
}
