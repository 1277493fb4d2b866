//! `/route/`, the global queue's dispatch, and the worker reports that free capacity.

use super::*;

impl Control {
    // ---------------------------------------------------------------- routing

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
        let mono = self.mono();
        let stale = self.shared.settings.stale_after.as_secs_f64();
        let (ep_name, idx, grant, status) = {
            let mut g = self.lock();
            let inner = &mut *g;
            // Authenticate first: a caller holding no key of this control plane gets the same
            // 401 whether the endpoint exists or not.
            let found = inner
                .endpoints
                .values()
                .find(|e| e.endpoint_name == endpoint_name);
            let Some(ep) = found.filter(|ep| admin::secret_eq(api_key, &ep.api_key)) else {
                return Err(if found.is_none() && self.authenticated(inner, api_key) {
                    ControlError::BadRequest(ROUTE_BAD_REQUEST.into())
                } else {
                    ControlError::auth()
                });
            };
            let ep_id = ep.id;
            let ep_name = ep.endpoint_name.clone();
            inner.stats.entry(ep_id).or_default().last_request = Some(mono);
            let existing = request_idx != 0
                && inner
                    .q
                    .requests
                    .get(&request_idx)
                    .is_some_and(|r| r.endpoint_id == ep_id);
            // A non-zero index we issued earlier (before a restart, or since finished) and
            // nobody else holds is taken back as the client's; anything else gets a new one,
            // so a client can neither pick future indexes nor take over another's request.
            let reusable = request_idx != 0
                && !existing
                && request_idx < inner.q.peek_next()
                && !inner.q.requests.contains_key(&request_idx);
            let idx = if existing || reusable {
                request_idx
            } else {
                let (idx, ceiling) = inner.q.alloc();
                if let Some(c) = ceiling {
                    self.shared.store.set_kv(KV_IDX_CEILING, c.to_string());
                }
                idx
            };
            if existing {
                let state = inner.q.requests.get(&idx).map(|r| r.state);
                if let Some(r) = inner.q.requests.get_mut(&idx) {
                    r.touched = mono;
                }
                match state {
                    Some(ReqState::Assigned {
                        worker,
                        delivered: false,
                        ..
                    }) if inner
                        .workers
                        .get(&worker)
                        .is_some_and(|w| w.routable(mono, stale) && !exclude.contains(&w.url)) => {}
                    Some(ReqState::Assigned { .. }) => {
                        // A retry (or the worker went away): release and re-enter at the front.
                        inner.release(idx);
                        if let Some(r) = inner.q.requests.get_mut(&idx) {
                            r.state = ReqState::Queued;
                        }
                        inner.q.order.push_front(idx);
                        telemetry::reroute();
                    }
                    _ => {}
                }
            } else {
                inner.q.requests.insert(
                    idx,
                    Req {
                        endpoint_id: ep_id,
                        cost,
                        state: ReqState::Queued,
                        touched: mono,
                        persisted: false,
                    },
                );
                inner.q.order.push_back(idx);
                inner.stats.entry(ep_id).or_default().routed += cost;
            }
            self.dispatch_locked(inner, mono, exclude_for(idx, exclude));
            let grant = match inner.q.requests.get(&idx).map(|r| r.state) {
                Some(ReqState::Assigned { worker, reqnum, .. }) => {
                    if let Some(r) = inner.q.requests.get_mut(&idx) {
                        r.state = ReqState::Assigned {
                            worker,
                            reqnum,
                            delivered: true,
                        };
                    }
                    inner.workers.get(&worker).map(|w| Grant {
                        worker,
                        url: w.url.clone(),
                        signature: w
                            .signature
                            .as_ref()
                            .filter(|(u, _)| *u == w.url)
                            .map(|(_, s)| s.clone()),
                        reqnum,
                    })
                }
                _ => None,
            };
            let status = if grant.is_none() {
                if let Some(r) = inner.q.requests.get_mut(&idx) {
                    if !r.persisted {
                        r.persisted = true;
                        self.shared.store.put_json(
                            kind::QUEUED,
                            idx as i64,
                            &json!({"endpoint_id": r.endpoint_id, "cost": r.cost}),
                        );
                    }
                }
                inner.status_line(ep_id, mono, stale)
            } else {
                String::new()
            };
            telemetry::queue_length(inner.q.order.len());
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
        let signature = match grant.signature {
            Some(s) => s,
            None => {
                let s = self
                    .shared
                    .key
                    .sign_url(&grant.url)
                    .map_err(|e| ControlError::Internal(format!("signing: {e}")))?;
                if let Some(w) = self.lock().workers.get_mut(&grant.worker) {
                    if w.url == grant.url {
                        w.signature = Some((grant.url.clone(), s.clone()));
                    }
                }
                s
            }
        };
        let exp = unix_now() as u64 + self.shared.settings.token_ttl.as_secs();
        let mut ready = RouteReady {
            request_id,
            cost,
            endpoint: ep_name,
            reqnum: grant.reqnum,
            request_idx: idx,
            signature,
            url: grant.url,
            ferry_exp: Some(exp),
            ferry_sig: None,
            extra: Map::new(),
        };
        let sig = self
            .shared
            .key
            .sign_ferry(&FerryClaims::for_route(&ready, exp))
            .map_err(|e| ControlError::Internal(format!("signing: {e}")))?;
        ready.ferry_sig = Some(sig);
        telemetry::route_outcome("ready");
        tracing::debug!(request_idx = idx, worker = grant.worker, url = %ready.url, "routed");
        Ok(RouteOutcome::Ready(Box::new(ready)))
    }

    pub(super) fn dispatch_locked(
        &self,
        inner: &mut Inner,
        mono: f64,
        exclude: Option<(u64, &[String])>,
    ) {
        let stale = self.shared.settings.stale_after.as_secs_f64();
        let mut blocked: Vec<i64> = Vec::new();
        let order: Vec<u64> = inner.q.order.iter().copied().collect();
        let mut served = Vec::new();
        for idx in order {
            let Some(req) = inner.q.requests.get(&idx) else {
                served.push(idx);
                continue;
            };
            let ep_id = req.endpoint_id;
            if blocked.contains(&ep_id) {
                continue;
            }
            let Some(ep) = inner.endpoints.get(&ep_id) else {
                served.push(idx);
                continue;
            };
            let mqt = ep.params.max_queue_time;
            let skip: &[String] = match exclude {
                Some((i, ex)) if i == idx => ex,
                _ => &[],
            };
            let cands: Vec<Candidate> = inner
                .workers
                .values()
                .filter(|w| w.endpoint_id == ep_id && !skip.contains(&w.url))
                .map(|w| Candidate {
                    id: w.id,
                    routable: w.routable(mono, stale),
                    max_perf: w.max_perf,
                    load: w.load(),
                })
                .collect();
            match route::choose(&cands, mqt, &mut inner.rng) {
                Some(wid) => {
                    let cost = req.cost;
                    let persisted = req.persisted;
                    if let Some(w) = inner.workers.get_mut(&wid) {
                        w.reqnum += 1;
                        w.pending.insert(idx, (cost, mono));
                        w.last_busy = mono;
                        let reqnum = w.reqnum;
                        if let Some(r) = inner.q.requests.get_mut(&idx) {
                            r.state = ReqState::Assigned {
                                worker: wid,
                                reqnum,
                                delivered: false,
                            };
                            r.persisted = false;
                        }
                        if persisted {
                            self.shared.store.delete(kind::QUEUED, idx as i64);
                        }
                        served.push(idx);
                    }
                }
                None => blocked.push(ep_id),
            }
        }
        if !served.is_empty() {
            inner.q.order.retain(|i| !served.contains(i));
        }
    }

    /// Forgets a request whose caller went away before it reached a worker (the gateway's
    /// client disconnected while waiting): it leaves the queue and releases any load routed
    /// for it but not yet delivered.
    pub fn abandon(&self, request_idx: u64) {
        let mut g = self.lock();
        let delivered = matches!(
            g.q.requests.get(&request_idx).map(|r| r.state),
            Some(ReqState::Assigned {
                delivered: true,
                ..
            })
        );
        if delivered {
            return;
        }
        g.release(request_idx);
        if let Some(r) = g.q.requests.remove(&request_idx) {
            if r.persisted {
                self.shared.store.delete(kind::QUEUED, request_idx as i64);
            }
        }
        g.q.unqueue(request_idx);
        telemetry::queue_length(g.q.order.len());
    }

    /// Serves queued requests that can now run.
    pub fn dispatch(&self) {
        let mono = self.mono();
        {
            let mut g = self.lock();
            self.dispatch_locked(&mut g, mono, None);
            telemetry::queue_length(g.q.order.len());
        }
        self.shared.changed.notify_waiters();
    }

    // ---------------------------------------------------------------- reports

    /// `/worker_status/`.
    pub fn worker_status(&self, s: &WorkerStatus) -> Result<(), ControlError> {
        let mono = self.mono();
        {
            let mut g = self.lock();
            let inner = &mut *g;
            let w = inner
                .workers
                .get_mut(&s.id)
                .filter(|w| admin::secret_eq(Some(&s.mtoken), &w.mtoken))
                .ok_or_else(ControlError::unknown_worker)?;
            if w.apply_status(s, unix_now(), mono) {
                self.shared.store.put_json(kind::WORKER, w.id, &*w);
            }
            self.dispatch_locked(inner, mono, None);
            telemetry::queue_length(inner.q.order.len());
        }
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// `/delete_requests/`.
    pub fn delete_requests(&self, d: &DeleteRequests) -> Result<usize, ControlError> {
        let mono = self.mono();
        let n = {
            let mut g = self.lock();
            let inner = &mut *g;
            let w = inner
                .workers
                .get_mut(&d.worker_id)
                .filter(|w| admin::secret_eq(Some(&d.mtoken), &w.mtoken))
                .ok_or_else(ControlError::unknown_worker)?;
            for r in &d.requests {
                w.pending.remove(&r.request_idx);
            }
            let wid = w.id;
            let mut n = 0;
            for r in &d.requests {
                let mine = matches!(
                    inner.q.requests.get(&r.request_idx).map(|q| q.state),
                    Some(ReqState::Assigned { worker, .. }) if worker == wid
                );
                if mine {
                    inner.q.requests.remove(&r.request_idx);
                    n += 1;
                }
            }
            self.dispatch_locked(inner, mono, None);
            telemetry::queue_length(inner.q.order.len());
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
                if let Some(w) = g.workers.get_mut(&worker_id) {
                    if w.state == WorkerState::Creating {
                        w.started_at = unix_now();
                        w.set_state(WorkerState::Loading, mono);
                        self.shared.store.put_json(kind::WORKER, w.id, &*w);
                    }
                }
            }
            ProviderEvent::Exited { worker_id, reason } => {
                if let Some(w) = g.workers.get_mut(&worker_id) {
                    if w.state.is_coming() || w.state == WorkerState::Idle {
                        tracing::warn!(worker = worker_id, reason = %reason, "worker exited");
                        w.error_msg = reason;
                        w.set_state(WorkerState::Error, mono);
                        self.shared.store.put_json(kind::WORKER, w.id, &*w);
                    }
                }
            }
        }
    }
}
