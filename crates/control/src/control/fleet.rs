//! The fleet side of [`Control`]: join tokens, workers joining external workergroups
//! (`POST /join/`), and the desired worker count an orchestrator scales a workergroup on
//! (`GET /api/v0/workergroups/{id}/scale/`, the `ferry_control_desired_workers` gauge).

use serde::{Deserialize, Serialize};

use super::{unix_now, Control, State};
use crate::config::ProviderKind;
use crate::error::ControlError;
use crate::events::Level;
use crate::joins::JoinTokenInfo;
use crate::registry::WorkerState;

/// Body of `POST /join/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JoinRequest {
    /// The join token (or as Bearer).
    pub token: Option<String>,
    /// The worker's public base URL, as its reports will carry it.
    pub url: String,
}

/// Answer to `POST /join/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    /// Always true.
    pub success: bool,
    /// `CONTAINER_ID` for the worker's reports.
    pub worker_id: i64,
    /// `MASTER_TOKEN` for the worker's reports.
    pub mtoken: String,
    /// Endpoint name.
    pub endpoint: String,
    /// Workergroup.
    pub workergroup_id: i64,
    /// Where to report (`REPORT_ADDR`).
    pub report_addr: String,
}

/// A workergroup's worker counts and the autoscaler's wish for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupScale {
    /// Workergroup.
    pub workergroup_id: i64,
    /// Its endpoint.
    pub endpoint_id: i64,
    /// Its endpoint's name.
    pub endpoint_name: String,
    /// Where its workers come from.
    pub provider: ProviderKind,
    /// Workers the autoscaler wants to exist, warm or cold: what a Deployment's replica count
    /// should be.
    pub desired_workers: u32,
    /// Of those, workers it wants warm (not cold).
    pub desired_active: u32,
    /// Ready workers.
    pub ready: u32,
    /// Workers loading (joined, not ready yet).
    pub loading: u32,
    /// Launch decisions no worker has claimed yet (external groups).
    pub waiting_to_join: u32,
    /// Cold workers (told to stop taking requests).
    pub cold: u32,
    /// Workers whose reports stopped (they get no requests; they may come back).
    pub unreachable: u32,
}

fn is_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| {
        !r.is_empty()
            && r.len() < 512
            && !r.starts_with('/')
            && r.bytes().all(|b| b.is_ascii_graphic())
    })
}

impl Control {
    fn group_provider(&self, s: &State, id: i64) -> Result<ProviderKind, ControlError> {
        let g = s
            .catalog
            .group(id)
            .ok_or_else(|| ControlError::NotFound(format!("no workergroup {id}")))?;
        Ok(g.provider.unwrap_or(self.shared.settings.provider.kind))
    }

    fn external_group(&self, s: &State, id: i64) -> Result<(), ControlError> {
        match self.group_provider(s, id)? {
            ProviderKind::External => Ok(()),
            other => Err(ControlError::Conflict(format!(
                "workergroup {id} takes no joined workers: its provider is {} \
                 (create it with \"provider\": \"external\")",
                other.as_str()
            ))),
        }
    }

    /// Creates a join token for an external workergroup; returns its id and the token (shown
    /// this once).
    pub async fn create_join_token(
        &self,
        workergroup_id: i64,
        label: String,
    ) -> Result<(i64, String), ControlError> {
        let made = {
            let mut g = self.lock();
            self.external_group(&g, workergroup_id)?;
            g.joins
                .create(workergroup_id, label, unix_now(), self.store())
        };
        self.durable("join token created").await;
        tracing::info!(
            workergroup = workergroup_id,
            token = made.0,
            "join token created"
        );
        Ok(made)
    }

    /// The join tokens of a workergroup (all when `None`).
    pub fn join_tokens(
        &self,
        workergroup_id: Option<i64>,
    ) -> Result<Vec<JoinTokenInfo>, ControlError> {
        let g = self.lock();
        if let Some(id) = workergroup_id {
            self.group_provider(&g, id)?;
        }
        Ok(g.joins.list(workergroup_id))
    }

    /// Revokes a join token (workers that joined with it stay).
    pub async fn revoke_join_token(&self, id: i64) -> Result<(), ControlError> {
        self.lock().joins.revoke(id, self.store())?;
        self.durable("join token revoked").await;
        tracing::info!(token = id, "join token revoked");
        Ok(())
    }

    /// `POST /join/`: registers a worker of an external workergroup.
    pub async fn join(&self, token: &str, url: &str) -> Result<Joined, ControlError> {
        if !is_url(url) {
            return Err(ControlError::BadRequest(
                "url: the worker's public base URL (http[s]://host:port) is required".into(),
            ));
        }
        let (mono, unix) = (self.mono(), unix_now());
        let joined = {
            let mut g = self.lock();
            let s = &mut *g;
            let (token_id, group) = s.joins.check(token)?;
            self.external_group(s, group)?;
            let Some(origin) = self.origin(s, group) else {
                return Err(ControlError::NotFound(format!("no workergroup {group}")));
            };
            let live = |w: &&crate::registry::WorkerRec| {
                !matches!(w.state(), WorkerState::Error | WorkerState::Destroying)
            };
            let placeholder = s
                .registry
                .of_group(group)
                .any(|w| w.state() == WorkerState::Creating);
            if !placeholder {
                let ep = s.catalog.endpoint(origin.endpoint_id);
                let wg = s.catalog.group(group);
                let in_group = s.registry.of_group(group).filter(live).count() as u32;
                let in_ep = s
                    .registry
                    .of_endpoint(origin.endpoint_id)
                    .filter(live)
                    .count() as u32;
                let full = wg
                    .and_then(|g| g.max_workers)
                    .is_some_and(|m| in_group >= m)
                    || ep.is_some_and(|e| in_ep >= e.params.max_workers);
                if full {
                    return Err(ControlError::Conflict(format!(
                        "workergroup {group} is full (max_workers reached)"
                    )));
                }
            }
            let (worker_id, mtoken) = s.registry.join(origin, url, unix, mono, self.store());
            s.joins.used(token_id, unix, self.store());
            let text = format!("worker {worker_id} joined from {url}");
            s.events
                .record(unix, origin.endpoint_id, Some(group), Level::Info0, text);
            Joined {
                success: true,
                worker_id,
                mtoken,
                endpoint: s
                    .catalog
                    .endpoint(origin.endpoint_id)
                    .map(|e| e.endpoint_name.clone())
                    .unwrap_or_default(),
                workergroup_id: group,
                report_addr: self.shared.settings.report_addr(),
            }
        };
        self.durable("worker joined").await;
        tracing::info!(
            worker = joined.worker_id,
            workergroup = joined.workergroup_id,
            url,
            "worker joined"
        );
        Ok(joined)
    }

    /// A workergroup's counts and desired size.
    pub fn group_scale(&self, workergroup_id: i64) -> Result<GroupScale, ControlError> {
        let g = self.lock();
        let provider = self.group_provider(&g, workergroup_id)?;
        Ok(scale_of(&g, workergroup_id, provider))
    }

    /// Publishes every workergroup's desired size as a gauge.
    pub(crate) fn publish_desired(&self, s: &State) {
        for g in s.catalog.groups() {
            let provider = g.provider.unwrap_or(self.shared.settings.provider.kind);
            let scale = scale_of(s, g.id, provider);
            crate::telemetry::desired_workers(g.id, scale.desired_workers);
        }
    }
}

fn scale_of(s: &State, workergroup_id: i64, provider: ProviderKind) -> GroupScale {
    let (endpoint_id, endpoint_name) = s
        .catalog
        .group(workergroup_id)
        .map(|g| (g.endpoint_id, g.endpoint_name.clone()))
        .unwrap_or_default();
    let mut out = GroupScale {
        workergroup_id,
        endpoint_id,
        endpoint_name,
        provider,
        desired_workers: 0,
        desired_active: 0,
        ready: 0,
        loading: 0,
        waiting_to_join: 0,
        cold: 0,
        unreachable: 0,
    };
    for w in s.registry.of_group(workergroup_id) {
        match w.state() {
            WorkerState::Creating => out.waiting_to_join += 1,
            WorkerState::Loading | WorkerState::ModelLoading => out.loading += 1,
            WorkerState::Idle => out.ready += 1,
            WorkerState::Stopping | WorkerState::Stopped => out.cold += 1,
            WorkerState::Error if w.unreachable() => out.unreachable += 1,
            WorkerState::Error | WorkerState::Destroying => {}
        }
    }
    if provider != ProviderKind::External {
        // Only joined workers wait for someone else to start them.
        out.loading += out.waiting_to_join;
        out.waiting_to_join = 0;
    }
    out.desired_active = out.ready + out.loading + out.waiting_to_join;
    out.desired_workers = out.desired_active + out.cold;
    out
}
