//! The autoscaler, in three parts:
//!
//! - `decide.rs`: the pure [`decide`] per endpoint (see its module for the model), table-tested.
//! - `view.rs`: the [`EndpointView`] it reads, built from the catalog, registry, queue and
//!   stats, and the status line of a waiting `/route/` answer ([`status_line`]).
//! - `apply.rs`: one tick ([`Control::autoscale_tick`]): housekeeping, views, decisions, the
//!   bookkeeping under the lock and the provider calls in background tasks; each decision and
//!   worker change goes into the logs ([`crate::events`]).
//! - `manual.rs`: a person's stop or resume of one worker (the web console), carried out as
//!   the autoscaler's own actions are.
//! - `policy.rs`: the policy an endpoint selects (`autoscale_policy`: Vast's documented
//!   model, KPA-like, Ray-like or Ferry's own) and the short [`History`] they read.
//! - `rollout.rs`: rolling updates of a workergroup (`/update_workers/`), a step per tick.
//!
//! Here: the loop that runs a tick every interval and pumps provider events.

mod apply;
mod decide;
mod manual;
pub mod policy;
pub mod rollout;
pub(crate) mod view;

pub use decide::{
    decide, Action, Decision, EndpointView, GroupView, Tuning, WorkerView, DEFAULT_PERF,
};
pub use policy::{decide_with, AutoscalePolicy, History};
pub use view::status_line;

use crate::Control;

/// Runs the autoscaler and the provider-event pump until the control plane shuts down.
pub async fn run(control: Control) {
    let cancel = control.cancel_token().clone();
    if let Some(mut events) = control.take_events() {
        let c = control.clone();
        let stop = cancel.clone();
        control.tasks().spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = events.recv() => match ev {
                        Some(ev) => {
                            c.provider_event(ev);
                            c.dispatch();
                        }
                        None => break,
                    },
                }
            }
        });
    }
    let mut tick = tokio::time::interval(control.settings().autoscale_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                control.autoscale_tick();
            }
        }
    }
    tracing::info!("autoscaler stopped");
}
