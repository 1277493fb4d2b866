//! `/route/`: authenticate, admit the request into the queue, dispatch, and answer with a
//! signed grant or "keep polling".
//!
//! - `choose.rs`: the pure chooser ([`choose()`], by estimated queue time).
//! - `dispatch.rs`: serving the global queue in order against the registry.
//! - here: [`Control::route`], [`Control::abandon`] and [`Control::dispatch`].

mod choose;
mod dispatch;

pub use choose::{best_of, choose, endpoint_queue_time, queue_ticks, Candidate};

use std::sync::Arc;

use ferry_protocol::{FerryClaims, RouteReady, RouteWaiting, TokenKey};
use serde_json::Map;

use crate::autoscale::status_line;
use crate::control::{unix_now, uuid4, Control, RouteOutcome, State};
use crate::error::{ControlError, ROUTE_BAD_REQUEST};
use crate::queue::Admission;
use crate::telemetry;

fn signing(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(format!("signing: {e}"))
}

/// Where a grant points.
struct Grant {
    worker: i64,
    url: String,
    signature: Option<String>,
    reqnum: u64,
    /// The worker's v2 token key, if it checks `ferry_mac`; else it gets an RSA `ferry_sig`.
    mac_key: Option<Arc<TokenKey>>,
}

impl Control {
    /// `/route/`: authenticates with the endpoint key, then routes, polls or re-routes the
    /// request. `exclude` lists workers that already failed this request (gateway retries).
    pub fn route(
        &self,
        endpoint_name: &str,
        api_key: Option<&str>,
        cost: f64,
        request_idx: u64,
        exclude: &[String],
    ) -> Result<RouteOutcome, ControlError> {
        if endpoint_name.is_empty() || !cost.is_finite() || cost < 0.0 {
            return Err(ControlError::BadRequest(ROUTE_BAD_REQUEST.into()));
        }
        let (mono, stale, store) = (self.mono(), self.stale(), self.store());
        let (ep_name, idx, grant, status) = {
            let mut g = self.lock();
            let s = &mut *g;
            let ep = self.route_endpoint(s, endpoint_name, api_key)?;
            let (ep_id, ep_name) = (ep.id, ep.endpoint_name.clone());
            s.stats.request(ep_id, mono);
            let idx = match s.queue.admit(ep_id, request_idx, cost, mono, store) {
                Admission::New(idx) => {
                    s.stats.routed(ep_id, cost);
                    idx
                }
                Admission::Existing(idx) => {
                    s.keep_or_requeue(idx, exclude, mono, stale);
                    idx
                }
            };
            let exclude = (!exclude.is_empty()).then_some((idx, exclude));
            s.dispatch(store, mono, stale, exclude);
            let grant = s.deliver(idx);
            let status = if grant.is_none() {
                s.queue.persist_waiting(idx, store);
                status_line(&s.registry, &s.queue, ep_id, mono, stale)
            } else {
                String::new()
            };
            telemetry::queue_length(s.queue.len());
            (ep_name, idx, grant, status)
        };
        let request_id = Some(uuid4());
        let Some(grant) = grant else {
            telemetry::route_outcome("waiting");
            return Ok(RouteOutcome::Waiting(RouteWaiting {
                endpoint: ep_name,
                status,
                request_idx: idx,
                request_id,
            }));
        };
        let ready = self.sign(grant, ep_name, idx, cost, request_id)?;
        telemetry::route_outcome("ready");
        Ok(RouteOutcome::Ready(Box::new(ready)))
    }

    /// The signed grant: the URL signature (cached per worker URL) and Ferry's token: a v2
    /// `ferry_mac` (HMAC-SHA256, about a microsecond) for a worker that announced it checks
    /// them, else a v1 `ferry_sig` (RSA-2048, about a millisecond), which every Ferry worker
    /// checks. Never both. See docs/signing.md.
    fn sign(
        &self,
        grant: Grant,
        endpoint: String,
        idx: u64,
        cost: f64,
        request_id: Option<String>,
    ) -> Result<RouteReady, ControlError> {
        let signature = match grant.signature {
            Some(s) => s,
            None => {
                let s = self.shared.key.sign_url(&grant.url).map_err(signing)?;
                self.lock()
                    .registry
                    .cache_signature(grant.worker, &grant.url, s.clone());
                s
            }
        };
        let exp = unix_now() as u64 + self.shared.settings.token_ttl.as_secs();
        let mut ready = RouteReady {
            request_id,
            cost,
            endpoint,
            reqnum: grant.reqnum,
            request_idx: idx,
            signature,
            url: grant.url,
            ferry_exp: Some(exp),
            ferry_sig: None,
            ferry_mac: None,
            extra: Map::new(),
        };
        let claims = FerryClaims::for_route(&ready, exp);
        match grant.mac_key {
            Some(key) => ready.ferry_mac = Some(key.mac(&claims)),
            None => ready.ferry_sig = Some(self.shared.key.sign_ferry(&claims).map_err(signing)?),
        }
        tracing::debug!(request_idx = idx, worker = grant.worker, url = %ready.url, "routed");
        Ok(ready)
    }

    /// Forgets a request whose caller went away before it reached a worker (the gateway's
    /// client disconnected while waiting): it leaves the queue and releases any load routed
    /// for it but not yet delivered.
    pub fn abandon(&self, request_idx: u64) {
        let mut g = self.lock();
        let s = &mut *g;
        if let Some(worker) = s.queue.abandon(request_idx, self.store()) {
            s.registry.release(worker, request_idx);
        }
        telemetry::queue_length(s.queue.len());
    }

    /// Serves queued requests that can now run.
    pub fn dispatch(&self) {
        let mono = self.mono();
        {
            let mut g = self.lock();
            g.dispatch(self.store(), mono, self.stale(), None);
            telemetry::queue_length(g.queue.len());
        }
        self.shared.changed.notify_waiters();
    }
}

impl State {
    /// A poll of a request we hold: an undelivered assignment to a worker that is still
    /// routable (and not excluded) stands; any other assignment (a retry, or the worker went
    /// away) is released and the request re-enters at the front of the queue.
    fn keep_or_requeue(&mut self, idx: u64, exclude: &[String], mono: f64, stale: f64) {
        let Some(crate::queue::ReqState::Assigned {
            worker, delivered, ..
        }) = self.queue.get(idx).map(|r| r.state())
        else {
            return;
        };
        let usable = self
            .registry
            .get(worker)
            .is_some_and(|w| w.routable(mono, stale) && !exclude.iter().any(|u| u == w.url()));
        if delivered || !usable {
            if let Some(w) = self.queue.requeue_front(idx) {
                self.registry.release(w, idx);
            }
            telemetry::reroute();
        }
    }

    /// Tells the client of an assigned request where to go.
    fn deliver(&mut self, idx: u64) -> Option<Grant> {
        let (worker, reqnum) = self.queue.deliver(idx)?;
        let (url, signature) = self.registry.grant_target(worker)?;
        Some(Grant {
            worker,
            url,
            signature,
            reqnum,
            mac_key: self.registry.mac_key(worker),
        })
    }
}
