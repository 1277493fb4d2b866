//! The autoscaler: a pure [`decide`] per endpoint (see [`decide`]'s module for the model) and
//! the loop that feeds it every tick, applies its actions through the provider, and logs and
//! counts every decision.

mod decide;

pub use decide::{
    decide, Action, Decision, EndpointView, GroupView, Tuning, WorkerView, DEFAULT_PERF,
};

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
