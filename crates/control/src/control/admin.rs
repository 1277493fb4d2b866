//! The endpoint and workergroup API's side of [`Control`].

use super::*;

impl Control {
    // ---------------------------------------------------------------- endpoint API

    /// Checks the account key.
    pub fn check_account(&self, key: Option<&str>) -> Result<(), ControlError> {
        if secret_eq(key, &self.shared.account_key) {
            Ok(())
        } else {
            Err(ControlError::auth())
        }
    }

    /// All endpoints.
    pub fn endpoints(&self) -> Vec<Value> {
        self.lock()
            .endpoints
            .values()
            .map(Endpoint::to_api)
            .collect()
    }

    /// One endpoint.
    pub fn endpoint(&self, id: i64) -> Result<Value, ControlError> {
        self.lock()
            .endpoints
            .get(&id)
            .map(Endpoint::to_api)
            .ok_or_else(|| ControlError::NotFound(format!("no endpoint {id}")))
    }

    /// Creates an endpoint; returns its id once it is durable.
    pub async fn create_endpoint(&self, body: &Map<String, Value>) -> Result<i64, ControlError> {
        let name = endpoint::name_of(body)?
            .ok_or_else(|| ControlError::BadRequest("endpoint_name: required".into()))?;
        let mut params = EndpointParams::default();
        endpoint::apply_params(&mut params, body)?;
        let instance = endpoint::instance_of(body)?;
        let id = {
            let mut g = self.lock();
            if g.endpoints.values().any(|e| e.endpoint_name == name) {
                return Err(ControlError::Conflict(format!(
                    "endpoint {name:?} already exists"
                )));
            }
            let id = g.alloc_id(&self.shared.store);
            let ep = Endpoint {
                id,
                endpoint_name: name.clone(),
                api_key: random_hex(24),
                created_at: unix_now(),
                autoscaler_instance: instance,
                params,
            };
            self.shared.store.put_json(kind::ENDPOINT, id, &ep);
            g.endpoints.insert(id, ep);
            id
        };
        self.shared.store.flush().await;
        tracing::info!(endpoint = id, name = %name, "endpoint created");
        Ok(id)
    }

    /// Updates an endpoint.
    pub async fn update_endpoint(
        &self,
        id: i64,
        body: &Map<String, Value>,
    ) -> Result<(), ControlError> {
        {
            let mut g = self.lock();
            let name = endpoint::name_of(body)?;
            if let Some(n) = &name {
                if g.endpoints
                    .values()
                    .any(|e| e.endpoint_name == *n && e.id != id)
                {
                    return Err(ControlError::Conflict(format!(
                        "endpoint {n:?} already exists"
                    )));
                }
            }
            let ep = g
                .endpoints
                .get(&id)
                .ok_or_else(|| ControlError::NotFound(format!("no endpoint {id}")))?;
            let mut next = ep.clone();
            endpoint::apply_params(&mut next.params, body)?;
            if let Some(n) = name {
                next.endpoint_name = n;
            }
            if let Some(i) = endpoint::instance_of(body)? {
                next.autoscaler_instance = Some(i);
            }
            self.shared.store.put_json(kind::ENDPOINT, id, &next);
            let new_name = next.endpoint_name.clone();
            g.endpoints.insert(id, next);
            for wg in g.groups.values_mut().filter(|w| w.endpoint_id == id) {
                wg.endpoint_name = new_name.clone();
                self.shared.store.put_json(kind::WORKERGROUP, wg.id, &*wg);
            }
        }
        self.shared.store.flush().await;
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Deletes an endpoint, its workergroups and (asynchronously) their workers.
    pub async fn delete_endpoint(&self, id: i64) -> Result<(), ControlError> {
        let doomed = {
            let mut g = self.lock();
            if g.endpoints.remove(&id).is_none() {
                return Err(ControlError::NotFound(format!("no endpoint {id}")));
            }
            self.shared.store.delete(kind::ENDPOINT, id);
            let groups: Vec<i64> = g
                .groups
                .values()
                .filter(|w| w.endpoint_id == id)
                .map(|w| w.id)
                .collect();
            for wg in groups {
                g.groups.remove(&wg);
                self.shared.store.delete(kind::WORKERGROUP, wg);
            }
            let drop_q: Vec<u64> =
                g.q.requests
                    .iter()
                    .filter(|(_, r)| r.endpoint_id == id)
                    .map(|(i, _)| *i)
                    .collect();
            for i in drop_q {
                g.q.requests.remove(&i);
                g.q.unqueue(i);
                self.shared.store.delete(kind::QUEUED, i as i64);
            }
            g.doom(|w| w.endpoint_id == id, self.mono())
        };
        self.destroy_all(doomed);
        self.shared.store.flush().await;
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

    /// All workergroups.
    pub fn workergroups(&self) -> Vec<Value> {
        self.lock()
            .groups
            .values()
            .map(Workergroup::to_api)
            .collect()
    }

    /// One workergroup.
    pub fn workergroup(&self, id: i64) -> Result<Value, ControlError> {
        self.lock()
            .groups
            .get(&id)
            .map(Workergroup::to_api)
            .ok_or_else(|| ControlError::NotFound(format!("no workergroup {id}")))
    }

    fn resolve_endpoint(
        g: &Inner,
        body: &Map<String, Value>,
    ) -> Result<Option<(i64, String)>, ControlError> {
        let by_id = match body.get("endpoint_id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| {
                        ControlError::BadRequest("endpoint_id: must be an integer".into())
                    })?,
            ),
        };
        let by_name = match body.get("endpoint_name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ControlError::BadRequest(
                    "endpoint_name: must be a string".into(),
                ))
            }
        };
        let ep = match (by_id, by_name) {
            (Some(id), _) => g.endpoints.get(&id),
            (None, Some(n)) => g.endpoints.values().find(|e| e.endpoint_name == n),
            (None, None) => return Ok(None),
        };
        ep.map(|e| Some((e.id, e.endpoint_name.clone())))
            .ok_or_else(|| {
                ControlError::BadRequest("no such endpoint (endpoint_id / endpoint_name)".into())
            })
    }

    /// Creates a workergroup.
    pub async fn create_workergroup(&self, body: &Map<String, Value>) -> Result<i64, ControlError> {
        let id = {
            let mut g = self.lock();
            let (ep_id, ep_name) = Self::resolve_endpoint(&g, body)?.ok_or_else(|| {
                ControlError::BadRequest("endpoint_id or endpoint_name: required".into())
            })?;
            let mut wg = Workergroup {
                id: 0,
                endpoint_id: ep_id,
                endpoint_name: ep_name,
                created_at: unix_now(),
                model_cmd: None,
                worker_cmd: None,
                backend: None,
                env: BTreeMap::new(),
                max_workers: None,
                vast: Map::new(),
            };
            endpoint::apply_workergroup(&mut wg, body)?;
            let id = g.alloc_id(&self.shared.store);
            wg.id = id;
            self.shared.store.put_json(kind::WORKERGROUP, id, &wg);
            g.groups.insert(id, wg);
            id
        };
        self.shared.store.flush().await;
        tracing::info!(workergroup = id, "workergroup created");
        Ok(id)
    }

    /// Updates a workergroup (new settings apply to workers launched or resumed later).
    pub async fn update_workergroup(
        &self,
        id: i64,
        body: &Map<String, Value>,
    ) -> Result<(), ControlError> {
        {
            let mut g = self.lock();
            let target = Self::resolve_endpoint(&g, body)?;
            let wg = g
                .groups
                .get(&id)
                .ok_or_else(|| ControlError::NotFound(format!("no workergroup {id}")))?;
            let mut next = wg.clone();
            endpoint::apply_workergroup(&mut next, body)?;
            if let Some((eid, name)) = target {
                next.endpoint_id = eid;
                next.endpoint_name = name;
            }
            self.shared.store.put_json(kind::WORKERGROUP, id, &next);
            g.groups.insert(id, next);
        }
        self.shared.store.flush().await;
        Ok(())
    }

    /// Deletes a workergroup and destroys its workers.
    pub async fn delete_workergroup(&self, id: i64) -> Result<(), ControlError> {
        let doomed = {
            let mut g = self.lock();
            if g.groups.remove(&id).is_none() {
                return Err(ControlError::NotFound(format!("no workergroup {id}")));
            }
            self.shared.store.delete(kind::WORKERGROUP, id);
            g.doom(|w| w.workergroup_id == id, self.mono())
        };
        self.destroy_all(doomed);
        self.shared.store.flush().await;
        Ok(())
    }

    /// Whether `key` is a key of this control plane: the account key or an endpoint's key.
    /// Callers that are not get one 401 whatever they ask for, so nothing's existence is
    /// confirmed to them.
    pub(super) fn authenticated(&self, inner: &Inner, key: Option<&str>) -> bool {
        // No short cut: every key is compared, in constant time.
        inner
            .endpoints
            .values()
            .fold(secret_eq(key, &self.shared.account_key), |ok, ep| {
                secret_eq(key, &ep.api_key) | ok
            })
    }

    /// Workers of an endpoint (account key or the endpoint's key).
    pub fn endpoint_workers(&self, id: i64, key: Option<&str>) -> Result<Vec<Value>, ControlError> {
        let g = self.lock();
        let Some(ep) = g.endpoints.get(&id) else {
            return Err(if self.authenticated(&g, key) {
                ControlError::NotFound(format!("no endpoint {id}"))
            } else {
                ControlError::auth()
            });
        };
        if !secret_eq(key, &self.shared.account_key) && !secret_eq(key, &ep.api_key) {
            return Err(ControlError::auth());
        }
        Ok(g.workers
            .values()
            .filter(|w| w.endpoint_id == id)
            .map(WorkerRec::to_api)
            .collect())
    }

    /// Workers of a workergroup (account key or the endpoint's key).
    pub fn group_workers(&self, id: i64, key: Option<&str>) -> Result<Vec<Value>, ControlError> {
        let g = self.lock();
        let Some(wg) = g.groups.get(&id) else {
            return Err(if self.authenticated(&g, key) {
                ControlError::NotFound(format!("no workergroup {id}"))
            } else {
                ControlError::auth()
            });
        };
        let ep_key = g.endpoints.get(&wg.endpoint_id).map(|e| e.api_key.as_str());
        if !secret_eq(key, &self.shared.account_key) && !ep_key.is_some_and(|k| secret_eq(key, k)) {
            return Err(ControlError::auth());
        }
        Ok(g.workers
            .values()
            .filter(|w| w.workergroup_id == id)
            .map(WorkerRec::to_api)
            .collect())
    }

    /// The endpoint's key check for the gateway: authenticated first, so a caller with no key
    /// of this control plane gets 401 whether the endpoint exists or not.
    pub fn check_endpoint_key(&self, name: &str, key: Option<&str>) -> Result<(), ControlError> {
        let g = self.lock();
        match g.endpoints.values().find(|e| e.endpoint_name == name) {
            Some(ep) if secret_eq(key, &ep.api_key) => Ok(()),
            None if self.authenticated(&g, key) => {
                Err(ControlError::NotFound(format!("no endpoint {name:?}")))
            }
            _ => Err(ControlError::auth()),
        }
    }

    /// When the named endpoint was created (Unix seconds).
    pub fn endpoint_created_at(&self, name: &str) -> Option<f64> {
        self.lock()
            .endpoints
            .values()
            .find(|e| e.endpoint_name == name)
            .map(|e| e.created_at)
    }

    /// Endpoint key by name (tests and the gateway's own routes).
    pub fn endpoint_key(&self, name: &str) -> Option<String> {
        self.lock()
            .endpoints
            .values()
            .find(|e| e.endpoint_name == name)
            .map(|e| e.api_key.clone())
    }

    /// Number of queued requests.
    pub fn queue_len(&self) -> usize {
        self.lock().q.order.len()
    }

    /// Next `request_idx` that would be handed out.
    pub fn next_request_idx(&self) -> u64 {
        self.lock().q.peek_next()
    }

    /// A worker's record as the API shows it.
    pub fn worker(&self, id: i64) -> Option<Value> {
        self.lock().workers.get(&id).map(WorkerRec::to_api)
    }

    /// Ids and states of all workers.
    pub fn worker_states(&self) -> Vec<(i64, WorkerState)> {
        self.lock()
            .workers
            .values()
            .map(|w| (w.id, w.state))
            .collect()
    }
}

/// Compares a presented secret with the expected one in time that depends on their lengths
/// only, never on where they first differ. A missing or empty secret never matches.
pub(crate) fn secret_eq(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len() || b.is_empty());
    for (i, x) in a.iter().enumerate() {
        // Walk the whole presented value even when the lengths differ.
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::secret_eq;

    #[test]
    fn secret_eq_matches_only_the_same_secret() {
        assert!(secret_eq(Some("abc"), "abc"));
        assert!(!secret_eq(Some("abd"), "abc"));
        assert!(!secret_eq(Some("ab"), "abc"));
        assert!(!secret_eq(Some("abcd"), "abc"));
        assert!(!secret_eq(Some(""), "abc"));
        assert!(!secret_eq(None, "abc"));
        assert!(!secret_eq(Some(""), ""));
        assert!(!secret_eq(Some("x"), ""));
    }
}
