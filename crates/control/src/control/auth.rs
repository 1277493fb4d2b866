//! Who may see what: every caller-facing check authenticates first. A caller holding no key of
//! this control plane (neither the account key nor any endpoint's key) gets one 401 whatever
//! it names, so nothing's existence is confirmed to it; keys are compared in constant time.

use super::{Control, State};
use crate::endpoint::Endpoint;
use crate::error::{ControlError, ROUTE_BAD_REQUEST};
use crate::events::Logs;
use crate::registry::WorkerInfo;

impl Control {
    /// Checks the account key.
    pub fn check_account(&self, key: Option<&str>) -> Result<(), ControlError> {
        if secret_eq(key, &self.shared.account_key) {
            Ok(())
        } else {
            Err(ControlError::auth())
        }
    }

    /// Whether `key` is a key of this control plane: the account key or an endpoint's key.
    pub(crate) fn authenticated(&self, state: &State, key: Option<&str>) -> bool {
        // No short cut: every key is compared, in constant time.
        secret_eq(key, &self.shared.account_key) | state.catalog.is_endpoint_key(key)
    }

    /// The endpoint `/route/` names, with its own key; authenticated first: a caller holding
    /// no key of this control plane gets the same 401 whether the endpoint exists or not.
    pub(crate) fn route_endpoint<'s>(
        &self,
        state: &'s State,
        name: &str,
        key: Option<&str>,
    ) -> Result<&'s Endpoint, ControlError> {
        let found = state.catalog.endpoint_named(name);
        match found.filter(|ep| secret_eq(key, &ep.api_key)) {
            Some(ep) => Ok(ep),
            None if found.is_none() && self.authenticated(state, key) => {
                Err(ControlError::BadRequest(ROUTE_BAD_REQUEST.into()))
            }
            None => Err(ControlError::auth()),
        }
    }

    /// Whether `key` may read endpoint `id` (the account key or the endpoint's key).
    fn endpoint_access(&self, g: &State, id: i64, key: Option<&str>) -> Result<(), ControlError> {
        let owner = g.catalog.endpoint(id).map(|ep| ep.api_key.as_str());
        self.readable(g, owner, key, || format!("no endpoint {id}"))
    }

    /// Whether `key` may read workergroup `id` (the account key or its endpoint's key).
    fn group_access(&self, g: &State, id: i64, key: Option<&str>) -> Result<(), ControlError> {
        let owner = g.catalog.group(id).map(|wg| {
            g.catalog
                .endpoint(wg.endpoint_id)
                .map_or("", |ep| ep.api_key.as_str())
        });
        self.readable(g, owner, key, || format!("no workergroup {id}"))
    }

    /// Authenticated first: a missing thing (`owner` is `None`) is a 404 only to holders of a
    /// key of this control plane; otherwise the account key or the owning endpoint's key.
    fn readable(
        &self,
        g: &State,
        owner: Option<&str>,
        key: Option<&str>,
        missing: impl FnOnce() -> String,
    ) -> Result<(), ControlError> {
        match owner {
            None if self.authenticated(g, key) => Err(ControlError::NotFound(missing())),
            Some(k) if secret_eq(key, &self.shared.account_key) || secret_eq(key, k) => Ok(()),
            _ => Err(ControlError::auth()),
        }
    }

    /// Workers of an endpoint (account key or the endpoint's key).
    pub fn endpoint_workers(
        &self,
        id: i64,
        key: Option<&str>,
    ) -> Result<Vec<WorkerInfo>, ControlError> {
        let g = self.lock();
        self.endpoint_access(&g, id, key)?;
        Ok(g.registry.of_endpoint(id).map(|w| w.info()).collect())
    }

    /// Workers of a workergroup (account key or the endpoint's key).
    pub fn group_workers(
        &self,
        id: i64,
        key: Option<&str>,
    ) -> Result<Vec<WorkerInfo>, ControlError> {
        let g = self.lock();
        self.group_access(&g, id, key)?;
        Ok(g.registry.of_group(id).map(|w| w.info()).collect())
    }

    /// An endpoint's recent history (`/get_endpoint_logs/`), the last `tail` lines per level.
    pub fn endpoint_logs(
        &self,
        id: i64,
        key: Option<&str>,
        tail: Option<usize>,
    ) -> Result<Logs, ControlError> {
        let g = self.lock();
        self.endpoint_access(&g, id, key)?;
        Ok(g.events.endpoint(id, tail))
    }

    /// A workergroup's recent history (`/get_autogroup_logs/`).
    pub fn group_logs(
        &self,
        id: i64,
        key: Option<&str>,
        tail: Option<usize>,
    ) -> Result<Logs, ControlError> {
        let g = self.lock();
        self.group_access(&g, id, key)?;
        Ok(g.events.group(id, tail))
    }

    /// The endpoint's key check for the gateway: authenticated first, so a caller with no key
    /// of this control plane gets 401 whether the endpoint exists or not.
    pub fn check_endpoint_key(&self, name: &str, key: Option<&str>) -> Result<(), ControlError> {
        let g = self.lock();
        match g.catalog.endpoint_named(name) {
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
            .catalog
            .endpoint_named(name)
            .map(|e| e.created_at)
    }

    /// Endpoint key by name (tests and the gateway's own routes).
    pub fn endpoint_key(&self, name: &str) -> Option<String> {
        self.lock()
            .catalog
            .endpoint_named(name)
            .map(|e| e.api_key.clone())
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
