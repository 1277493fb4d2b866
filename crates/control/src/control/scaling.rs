//! The autoscaler's side of [`Control`]: housekeeping, `decide` per endpoint, and applying
//! actions through the provider; shutdown.

use super::*;

impl Control {
    // ---------------------------------------------------------------- autoscaling

    /// One autoscaler step: housekeeping, `decide` per endpoint, and the actions started.
    pub fn autoscale_tick(&self) -> Vec<Decision> {
        let mono = self.mono();
        let stale = self.shared.settings.stale_after.as_secs_f64();
        let dt = {
            let mut last = match self.shared.last_tick.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let dt = (mono - *last).max(1e-3);
            *last = mono;
            dt
        };
        let tuning = Tuning {
            idle_stop_after: self.shared.settings.idle_stop_after.as_secs_f64(),
            error_hold: ERROR_HOLD_S,
        };
        let mut all = Vec::new();
        let mut launches = Vec::new();
        let mut others = Vec::new();
        {
            let mut g = self.lock();
            let inner = &mut *g;
            self.housekeeping(inner, mono, stale);
            let ids: Vec<i64> = inner.endpoints.keys().copied().collect();
            for ep_id in ids {
                let view = inner.view(ep_id, mono, stale, dt);
                let Some(view) = view else { continue };
                for d in crate::autoscale::decide(&view, tuning) {
                    telemetry::scaling(ep_id, &d);
                    match d.action {
                        Action::Launch {
                            workergroup_id,
                            count,
                        } => {
                            for _ in 0..count {
                                if let Some(spec) = self.new_worker(inner, workergroup_id, mono) {
                                    launches.push(spec);
                                }
                            }
                        }
                        Action::Resume { worker_id } => {
                            if let Some(spec) = self.spec_for(inner, worker_id) {
                                if let Some(w) = inner.workers.get_mut(&worker_id) {
                                    w.started_at = unix_now();
                                    w.last_report = None;
                                    w.set_state(WorkerState::Loading, mono);
                                    self.shared.store.put_json(kind::WORKER, w.id, &*w);
                                }
                                others.push((d.action.clone(), Some(spec)));
                            }
                        }
                        Action::Stop { worker_id } => {
                            if let Some(w) = inner.workers.get_mut(&worker_id) {
                                w.set_state(WorkerState::Stopping, mono);
                                w.pending.clear();
                            }
                            others.push((d.action.clone(), None));
                        }
                        Action::Destroy { worker_id } => {
                            if let Some(w) = inner.workers.get_mut(&worker_id) {
                                w.set_state(WorkerState::Destroying, mono);
                                w.pending.clear();
                            }
                            others.push((d.action.clone(), None));
                        }
                    }
                    all.push(d);
                }
            }
            telemetry::workers_by_state(inner.workers.values().map(|w| w.state));
            telemetry::queue_length(inner.q.order.len());
        }
        for spec in launches {
            let this = self.clone();
            self.shared.tasks.spawn(async move {
                let id = spec.worker_id;
                if let Err(e) = this.shared.provider.launch(spec).await {
                    tracing::warn!(worker = id, error = %e, "launch failed");
                    this.mark_error(id, format!("launch failed: {e}"));
                }
            });
        }
        for (action, spec) in others {
            let this = self.clone();
            self.shared
                .tasks
                .spawn(async move { this.apply(action, spec).await });
        }
        all
    }

    pub(super) async fn apply(&self, action: Action, spec: Option<LaunchSpec>) {
        let p = &self.shared.provider;
        match action {
            Action::Resume { worker_id } => {
                if let Some(spec) = spec {
                    if let Err(e) = p.resume(spec).await {
                        tracing::warn!(worker = worker_id, error = %e, "resume failed");
                        self.mark_error(worker_id, format!("resume failed: {e}"));
                    }
                }
            }
            Action::Stop { worker_id } => {
                let r = p.stop(worker_id).await;
                let mono = self.mono();
                let mut g = self.lock();
                if let Some(w) = g.workers.get_mut(&worker_id) {
                    match r {
                        Ok(()) => {
                            if w.state == WorkerState::Stopping {
                                w.set_state(WorkerState::Stopped, mono);
                            }
                        }
                        Err(e) => {
                            w.error_msg = format!("stop failed: {e}");
                            w.set_state(WorkerState::Error, mono);
                        }
                    }
                    self.shared.store.put_json(kind::WORKER, w.id, &*w);
                }
            }
            Action::Destroy { worker_id } => {
                if let Err(e) = p.destroy(worker_id).await {
                    tracing::warn!(worker = worker_id, error = %e, "destroy failed");
                }
                let mut g = self.lock();
                g.workers.remove(&worker_id);
                self.shared.store.delete(kind::WORKER, worker_id);
            }
            Action::Launch { .. } => {}
        }
        self.shared.changed.notify_waiters();
    }

    fn mark_error(&self, worker_id: i64, msg: String) {
        let mono = self.mono();
        let mut g = self.lock();
        if let Some(w) = g.workers.get_mut(&worker_id) {
            w.error_msg = msg;
            w.set_state(WorkerState::Error, mono);
            self.shared.store.put_json(kind::WORKER, w.id, &*w);
        }
    }

    fn housekeeping(&self, inner: &mut Inner, mono: f64, stale: f64) {
        let pending_ttl = self.shared.settings.pending_ttl.as_secs_f64();
        let queue_ttl = self.shared.settings.queue_ttl.as_secs_f64();
        for w in inner.workers.values_mut() {
            w.pending.retain(|_, (_, at)| mono - *at < pending_ttl);
            let silent_too_long = w.state == WorkerState::Idle && w.silence(mono) > 2.0 * stale;
            let stuck = w.state.is_coming()
                && mono - w.state_since > LOAD_DEADLINE_S
                && w.silence(mono) > LOAD_DEADLINE_S;
            if silent_too_long || stuck {
                w.error_msg = if stuck {
                    "never became ready"
                } else {
                    "stopped reporting"
                }
                .into();
                tracing::warn!(worker = w.id, error = %w.error_msg, "worker failed");
                w.set_state(WorkerState::Error, mono);
                self.shared.store.put_json(kind::WORKER, w.id, &*w);
            }
        }
        let mut dropped = Vec::new();
        inner.q.requests.retain(|idx, r| {
            let keep = match r.state {
                ReqState::Queued => mono - r.touched < queue_ttl,
                ReqState::Assigned { .. } => mono - r.touched < REQUEST_TTL_S,
            };
            if !keep && r.persisted {
                dropped.push(*idx);
            }
            keep
        });
        for idx in &dropped {
            self.shared.store.delete(kind::QUEUED, *idx as i64);
        }
        let reqs = &inner.q.requests;
        inner.q.order.retain(|i| reqs.contains_key(i));
        self.dispatch_locked(inner, mono, None);
    }

    fn new_worker(&self, inner: &mut Inner, wg_id: i64, mono: f64) -> Option<LaunchSpec> {
        let wg = inner.groups.get(&wg_id)?.clone();
        let id = inner.next_worker_id;
        inner.next_worker_id += 1;
        self.shared
            .store
            .set_kv(KV_NEXT_WORKER_ID, inner.next_worker_id.to_string());
        let w = WorkerRec::new(id, random_hex(16), wg.endpoint_id, wg_id, unix_now(), mono);
        self.shared.store.put_json(kind::WORKER, id, &w);
        inner.workers.insert(id, w);
        self.spec_for(inner, id)
    }

    fn spec_for(&self, inner: &Inner, worker_id: i64) -> Option<LaunchSpec> {
        let w = inner.workers.get(&worker_id)?;
        let wg = inner.groups.get(&w.workergroup_id)?;
        Some(LaunchSpec {
            worker_id,
            mtoken: w.mtoken.clone(),
            control_url: self.shared.settings.public_url.clone(),
            endpoint: wg.endpoint_name.clone(),
            workergroup_id: wg.id,
            model_cmd: wg.model_cmd.clone(),
            worker_cmd: wg.worker_cmd.clone(),
            backend: wg.backend.clone(),
            env: wg.env.clone(),
        })
    }

    /// Cancels the autoscaler, stops the provider's instances and records them as stopped.
    ///
    /// [`crate::run`] calls this while its HTTP server still accepts connections: a stopping
    /// worker reports "Worker shutting down" and flushes its finished requests before it
    /// exits, and with the listener already closed it would keep retrying until the stop
    /// grace ends in SIGKILL. Calling it again does nothing more.
    pub async fn stop_workers(&self) {
        self.shared.cancel.cancel();
        let stopped = self.shared.provider.shutdown().await;
        let mono = self.mono();
        let mut g = self.lock();
        for id in stopped {
            if let Some(w) = g.workers.get_mut(&id) {
                if w.state != WorkerState::Destroying {
                    w.set_state(WorkerState::Stopped, mono);
                    self.shared.store.put_json(kind::WORKER, id, &*w);
                }
            }
        }
    }

    /// Stops the provider's instances and records them as stopped ([`Control::stop_workers`]);
    /// waits for background tasks; flushes the database.
    pub async fn shutdown(&self) {
        self.stop_workers().await;
        self.shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.shared.tasks.wait()).await;
        self.shared.store.flush().await;
    }
}
