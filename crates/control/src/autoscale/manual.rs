//! A person's stop or resume of one worker (the web console's buttons), carried out through the
//! same bookkeeping and provider calls as the autoscaler's own [`Action`]s, and logged with the
//! decisions. The autoscaler stays in charge: a worker stopped by hand is resumed when the
//! endpoint needs its capacity, and one resumed by hand is stopped again once idle too long.

use super::apply::Effect;
use super::Action;
use crate::control::{unix_now, Control};
use crate::error::ControlError;
use crate::events::Level;
use crate::registry::WorkerState;

impl Control {
    /// Stops a ready worker that has no work, keeping it cold (`stopping`, then `stopped`).
    pub fn stop_worker(&self, worker_id: i64) -> Result<(), ControlError> {
        self.act_by_hand(worker_id, Action::Stop { worker_id })
    }

    /// Starts a stopped (cold) worker again.
    pub fn resume_worker(&self, worker_id: i64) -> Result<(), ControlError> {
        self.act_by_hand(worker_id, Action::Resume { worker_id })
    }

    fn act_by_hand(&self, worker_id: i64, action: Action) -> Result<(), ControlError> {
        let mono = self.mono();
        let mut effects = Vec::new();
        {
            let mut g = self.lock();
            let s = &mut *g;
            let w = s
                .registry
                .get(worker_id)
                .ok_or_else(|| ControlError::NotFound(format!("no worker {worker_id}")))?;
            let (state, ep, group) = (w.state(), w.endpoint_id(), w.workergroup_id());
            let busy = w.pending_load() > 0.0 || w.info().reqs_working > 0;
            match action {
                Action::Stop { .. } if state != WorkerState::Idle => {
                    return Err(ControlError::Conflict(format!(
                        "worker {worker_id} is {}: only a ready (idle) worker can be stopped",
                        state.as_str()
                    )));
                }
                Action::Stop { .. } if busy => {
                    return Err(ControlError::Conflict(format!(
                        "worker {worker_id} is serving requests: stop it once they are done"
                    )));
                }
                Action::Resume { .. } if state != WorkerState::Stopped => {
                    return Err(ControlError::Conflict(format!(
                        "worker {worker_id} is {}: only a stopped worker can be resumed",
                        state.as_str()
                    )));
                }
                _ => {}
            }
            let text = format!("console: {} worker {worker_id}", action.kind());
            s.events
                .record(unix_now(), ep, Some(group), Level::Info0, text);
            self.begin(s, &action, mono, &mut effects);
        }
        for effect in effects {
            if let Effect::Act(action, spec) = effect {
                let this = self.clone();
                self.shared
                    .tasks
                    .spawn(async move { this.apply(action, spec).await });
            }
        }
        Ok(())
    }
}
