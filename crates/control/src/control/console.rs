//! The console API's side of [`Control`]: endpoints and workergroups through the catalog,
//! with what else a deletion reaches (queued requests, workers).

use super::{random_hex, unix_now, Control};
use crate::autoscale::Action;
use crate::endpoint::{Endpoint, EndpointPatch, Workergroup, WorkergroupPatch};
use crate::error::ControlError;

impl Control {
    /// All endpoints.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.lock().catalog.endpoints().cloned().collect()
    }

    /// One endpoint.
    pub fn endpoint(&self, id: i64) -> Result<Endpoint, ControlError> {
        self.lock()
            .catalog
            .endpoint(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no endpoint {id}")))
    }

    /// Creates an endpoint with a fresh key; returns its id once it is durable (or once the
    /// store's flush bound has passed, see `Control::durable`).
    pub async fn create_endpoint(&self, patch: &EndpointPatch) -> Result<i64, ControlError> {
        let id =
            self.lock()
                .catalog
                .create_endpoint(patch, random_hex(24), unix_now(), self.store())?;
        self.durable("endpoint created").await;
        tracing::info!(endpoint = id, name = ?patch.endpoint_name, "endpoint created");
        Ok(id)
    }

    /// Updates an endpoint.
    pub async fn update_endpoint(
        &self,
        id: i64,
        patch: &EndpointPatch,
    ) -> Result<(), ControlError> {
        self.lock()
            .catalog
            .update_endpoint(id, patch, self.store())?;
        self.durable("endpoint updated").await;
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Deletes an endpoint, its workergroups, its requests and (asynchronously) its workers.
    pub async fn delete_endpoint(&self, id: i64) -> Result<(), ControlError> {
        let doomed = {
            let mut g = self.lock();
            let s = &mut *g;
            for group in s.catalog.delete_endpoint(id, self.store())? {
                s.joins.forget_group(group, self.store());
            }
            for (idx, worker) in s.queue.remove_endpoint(id, self.store()) {
                s.registry.release(worker, idx);
            }
            s.stats.forget(id);
            s.registry.doom(|w| w.endpoint_id() == id, self.mono())
        };
        self.destroy_all(doomed);
        self.durable("endpoint deleted").await;
        Ok(())
    }

    /// All workergroups.
    pub fn workergroups(&self) -> Vec<Workergroup> {
        self.lock().catalog.groups().cloned().collect()
    }

    /// One workergroup.
    pub fn workergroup(&self, id: i64) -> Result<Workergroup, ControlError> {
        self.lock()
            .catalog
            .group(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no workergroup {id}")))
    }

    /// A workergroup may name only a provider this control plane has, and must carry what
    /// that provider needs (`existing`: the group a patch updates).
    fn check_provider(
        &self,
        patch: &WorkergroupPatch,
        existing: Option<i64>,
    ) -> Result<(), ControlError> {
        let (kind, mut fields) = match existing {
            Some(id) => {
                let g = self.workergroup(id)?;
                (g.provider, g.vast)
            }
            None => (None, serde_json::Map::new()),
        };
        let kind = patch
            .provider
            .or(kind)
            .unwrap_or(self.shared.settings.provider.kind);
        fields.extend(patch.vast.iter().map(|(k, v)| (k.clone(), v.clone())));
        let p = self
            .shared
            .providers
            .get(kind)
            .map_err(|e| ControlError::BadRequest(format!("provider: {e}")))?;
        p.check_group(&fields)
            .map_err(|e| ControlError::BadRequest(format!("{} workergroup: {e}", kind.as_str())))
    }

    /// Creates a workergroup; returns its id once it is durable (or once the store's flush
    /// bound has passed, see `Control::durable`).
    pub async fn create_workergroup(&self, patch: &WorkergroupPatch) -> Result<i64, ControlError> {
        self.check_provider(patch, None)?;
        let id = self
            .lock()
            .catalog
            .create_group(patch, unix_now(), self.store())?;
        self.durable("workergroup created").await;
        tracing::info!(workergroup = id, "workergroup created");
        Ok(id)
    }

    /// Updates a workergroup (new settings apply to workers launched or resumed later).
    pub async fn update_workergroup(
        &self,
        id: i64,
        patch: &WorkergroupPatch,
    ) -> Result<(), ControlError> {
        self.check_provider(patch, Some(id))?;
        self.lock().catalog.update_group(id, patch, self.store())?;
        self.durable("workergroup updated").await;
        Ok(())
    }

    /// Deletes a workergroup and destroys its workers.
    pub async fn delete_workergroup(&self, id: i64) -> Result<(), ControlError> {
        let doomed = {
            let mut g = self.lock();
            g.catalog.delete_group(id, self.store())?;
            g.joins.forget_group(id, self.store());
            g.registry.doom(|w| w.workergroup_id() == id, self.mono())
        };
        self.destroy_all(doomed);
        self.durable("workergroup deleted").await;
        Ok(())
    }

    fn destroy_all(&self, ids: Vec<i64>) {
        for id in ids {
            let this = self.clone();
            self.shared.tasks.spawn(async move {
                this.apply(Action::Destroy { worker_id: id }, None).await;
            });
        }
    }
}
