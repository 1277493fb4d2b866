//! What workers and providers tell the control plane: `/worker_status/`,
//! `/delete_requests/` and provider events. Each frees or changes capacity, so each ends in a
//! dispatch of the queue.

use ferry_protocol::{DeleteRequests, StatusAnswer, WorkerStatus};

use super::{unix_now, Control};
use crate::error::ControlError;
use crate::provider::ProviderEvent;
use crate::telemetry;

impl Control {
    /// `/worker_status/`: returns the answer, with the `cold` directive for the worker.
    pub fn worker_status(&self, s: &WorkerStatus) -> Result<StatusAnswer, ControlError> {
        let mono = self.mono();
        let cold = {
            let mut g = self.lock();
            g.registry.report(s, unix_now(), mono, self.store())?;
            g.dispatch(self.store(), mono, self.stale(), None);
            telemetry::queue_length(g.queue.len());
            g.registry.get(s.id).is_some_and(|w| w.cold())
        };
        self.shared.changed.notify_waiters();
        Ok(StatusAnswer {
            success: true,
            cold,
            ferry_mac: true,
        })
    }

    /// `/delete_requests/`: returns how many of the worker's requests were forgotten.
    pub fn delete_requests(&self, d: &DeleteRequests) -> Result<usize, ControlError> {
        let mono = self.mono();
        let n = {
            let mut g = self.lock();
            let s = &mut *g;
            let idxs = d.requests.iter().map(|r| r.request_idx);
            s.registry.finished(d.worker_id, &d.mtoken, idxs.clone())?;
            let n = idxs.filter(|i| s.queue.finish(*i, d.worker_id)).count();
            s.dispatch(self.store(), mono, self.stale(), None);
            telemetry::queue_length(s.queue.len());
            n
        };
        self.shared.changed.notify_waiters();
        Ok(n)
    }

    /// A provider event.
    pub fn provider_event(&self, ev: ProviderEvent) {
        let mono = self.mono();
        let mut g = self.lock();
        match ev {
            ProviderEvent::Started { worker_id } => {
                g.registry
                    .started(worker_id, unix_now(), mono, self.store());
            }
            ProviderEvent::Exited { worker_id, reason } => {
                g.registry.exited(worker_id, reason, mono, self.store());
            }
        }
    }
}
