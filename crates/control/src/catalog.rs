//! [`Catalog`]: the endpoints and workergroups, created, updated and deleted through typed
//! patches, every change written through to the store.
//!
//! # Invariants
//!
//! - Endpoint names are unique.
//! - Every workergroup belongs to an endpoint that exists, and carries that endpoint's current
//!   name (a rename updates its groups; deleting an endpoint deletes its groups).
//! - Ids come from one counter shared by endpoints and workergroups, persisted with each
//!   allocation, never reused.
//! - A patch that fails validation changes nothing.

use std::collections::BTreeMap;

use serde_json::Map;

use crate::control::secret_eq;
use crate::endpoint::{
    Endpoint, EndpointParams, EndpointPatch, EndpointRef, Workergroup, WorkergroupPatch,
};
use crate::error::ControlError;
use crate::store::{Kind, Loaded, Store};

/// Key of the next id.
const KV_NEXT_ID: &str = "next_id";

fn no_endpoint(id: i64) -> ControlError {
    ControlError::NotFound(format!("no endpoint {id}"))
}

fn no_group(id: i64) -> ControlError {
    ControlError::NotFound(format!("no workergroup {id}"))
}

fn taken(name: &str) -> ControlError {
    ControlError::Conflict(format!("endpoint {name:?} already exists"))
}

/// Endpoints and workergroups by id.
#[derive(Debug)]
pub struct Catalog {
    endpoints: BTreeMap<i64, Endpoint>,
    groups: BTreeMap<i64, Workergroup>,
    next_id: i64,
}

impl Catalog {
    /// The catalog as the store left it (unreadable records are skipped with an error log).
    pub fn restore(loaded: &Loaded) -> Catalog {
        let mut c = Catalog {
            endpoints: BTreeMap::new(),
            groups: BTreeMap::new(),
            next_id: loaded.kv_parsed(KV_NEXT_ID).unwrap_or(1),
        };
        for (id, body) in loaded.of(Kind::Endpoint) {
            match serde_json::from_str::<Endpoint>(body) {
                Ok(e) => {
                    c.endpoints.insert(id, e);
                }
                Err(e) => tracing::error!(id, error = %e, "unreadable endpoint record skipped"),
            }
        }
        for (id, body) in loaded.of(Kind::Workergroup) {
            match serde_json::from_str::<Workergroup>(body) {
                Ok(w) => {
                    c.groups.insert(id, w);
                }
                Err(e) => tracing::error!(id, error = %e, "unreadable workergroup record skipped"),
            }
        }
        c
    }

    /// An endpoint.
    pub fn endpoint(&self, id: i64) -> Option<&Endpoint> {
        self.endpoints.get(&id)
    }

    /// An endpoint by name.
    pub fn endpoint_named(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.endpoint_name == name)
    }

    /// Every endpoint, by id.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// A workergroup.
    pub fn group(&self, id: i64) -> Option<&Workergroup> {
        self.groups.get(&id)
    }

    /// Every workergroup, by id.
    pub fn groups(&self) -> impl Iterator<Item = &Workergroup> {
        self.groups.values()
    }

    /// The workergroups of an endpoint.
    pub fn groups_of(&self, endpoint_id: i64) -> impl Iterator<Item = &Workergroup> {
        self.groups().filter(move |g| g.endpoint_id == endpoint_id)
    }

    /// Whether `key` is any endpoint's key. Every key is compared, in constant time, so the
    /// answer takes as long whichever endpoint (if any) it belongs to.
    pub fn is_endpoint_key(&self, key: Option<&str>) -> bool {
        self.endpoints
            .values()
            .fold(false, |ok, ep| secret_eq(key, &ep.api_key) | ok)
    }

    fn alloc_id(&mut self, store: &dyn Store) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        store.set_kv(KV_NEXT_ID, self.next_id.to_string());
        id
    }

    fn name_free(&self, name: &str, except: Option<i64>) -> Result<(), ControlError> {
        match self.endpoint_named(name) {
            Some(e) if Some(e.id) != except => Err(taken(name)),
            _ => Ok(()),
        }
    }

    /// Creates an endpoint from a patch that names it; returns its id.
    pub fn create_endpoint(
        &mut self,
        patch: &EndpointPatch,
        api_key: String,
        unix: f64,
        store: &dyn Store,
    ) -> Result<i64, ControlError> {
        let Some(name) = patch.endpoint_name.clone() else {
            return Err(ControlError::BadRequest("endpoint_name: required".into()));
        };
        patch.validate()?;
        self.name_free(&name, None)?;
        let mut params = EndpointParams::default();
        patch.apply_params(&mut params);
        let id = self.alloc_id(store);
        let ep = Endpoint {
            id,
            endpoint_name: name,
            api_key,
            created_at: unix,
            autoscaler_instance: patch.autoscaler_instance.clone(),
            params,
        };
        store.put_json(Kind::Endpoint, id, &ep);
        self.endpoints.insert(id, ep);
        Ok(id)
    }

    /// Updates an endpoint; a rename reaches its workergroups.
    pub fn update_endpoint(
        &mut self,
        id: i64,
        patch: &EndpointPatch,
        store: &dyn Store,
    ) -> Result<(), ControlError> {
        patch.validate()?;
        if let Some(n) = &patch.endpoint_name {
            self.name_free(n, Some(id))?;
        }
        let ep = self.endpoints.get_mut(&id).ok_or_else(|| no_endpoint(id))?;
        patch.apply_params(&mut ep.params);
        if let Some(n) = &patch.endpoint_name {
            ep.endpoint_name = n.clone();
        }
        if let Some(i) = &patch.autoscaler_instance {
            ep.autoscaler_instance = Some(i.clone());
        }
        store.put_json(Kind::Endpoint, id, &*ep);
        let name = ep.endpoint_name.clone();
        for wg in self.groups.values_mut().filter(|w| w.endpoint_id == id) {
            wg.endpoint_name = name.clone();
            store.put_json(Kind::Workergroup, wg.id, &*wg);
        }
        Ok(())
    }

    /// Deletes an endpoint and its workergroups; returns the groups' ids.
    pub fn delete_endpoint(
        &mut self,
        id: i64,
        store: &dyn Store,
    ) -> Result<Vec<i64>, ControlError> {
        self.endpoints.remove(&id).ok_or_else(|| no_endpoint(id))?;
        store.delete(Kind::Endpoint, id);
        let groups: Vec<i64> = self.groups_of(id).map(|g| g.id).collect();
        for g in &groups {
            self.groups.remove(g);
            store.delete(Kind::Workergroup, *g);
        }
        Ok(groups)
    }

    fn resolve(&self, r: &EndpointRef) -> Result<(i64, String), ControlError> {
        let ep = match r {
            EndpointRef::Id(id) => self.endpoints.get(id),
            EndpointRef::Name(n) => self.endpoint_named(n),
        };
        ep.map(|e| (e.id, e.endpoint_name.clone())).ok_or_else(|| {
            ControlError::BadRequest("no such endpoint (endpoint_id / endpoint_name)".into())
        })
    }

    /// Creates a workergroup of the endpoint the patch names; returns its id.
    pub fn create_group(
        &mut self,
        patch: &WorkergroupPatch,
        unix: f64,
        store: &dyn Store,
    ) -> Result<i64, ControlError> {
        let target = patch.endpoint.as_ref().ok_or_else(|| {
            ControlError::BadRequest("endpoint_id or endpoint_name: required".into())
        })?;
        let (endpoint_id, endpoint_name) = self.resolve(target)?;
        patch.validate()?;
        let id = self.alloc_id(store);
        let mut wg = Workergroup {
            id,
            endpoint_id,
            endpoint_name,
            created_at: unix,
            model_cmd: None,
            worker_cmd: None,
            backend: None,
            env: BTreeMap::new(),
            max_workers: None,
            provider: None,
            vast: Map::new(),
        };
        patch.apply(&mut wg);
        store.put_json(Kind::Workergroup, id, &wg);
        self.groups.insert(id, wg);
        Ok(id)
    }

    /// Updates a workergroup (possibly moving it to another endpoint).
    pub fn update_group(
        &mut self,
        id: i64,
        patch: &WorkergroupPatch,
        store: &dyn Store,
    ) -> Result<(), ControlError> {
        let target = patch
            .endpoint
            .as_ref()
            .map(|r| self.resolve(r))
            .transpose()?;
        let wg = self.groups.get_mut(&id).ok_or_else(|| no_group(id))?;
        patch.validate()?;
        patch.apply(wg);
        if let Some((eid, name)) = target {
            wg.endpoint_id = eid;
            wg.endpoint_name = name;
        }
        store.put_json(Kind::Workergroup, id, &*wg);
        Ok(())
    }

    /// Deletes a workergroup.
    pub fn delete_group(&mut self, id: i64, store: &dyn Store) -> Result<(), ControlError> {
        self.groups.remove(&id).ok_or_else(|| no_group(id))?;
        store.delete(Kind::Workergroup, id);
        Ok(())
    }

    /// Panics when an invariant of the module docs does not hold (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut names = std::collections::HashSet::new();
        for (id, e) in &self.endpoints {
            assert_eq!(*id, e.id);
            assert!(names.insert(e.endpoint_name.clone()), "name twice");
            assert!(e.id < self.next_id);
        }
        for (id, g) in &self.groups {
            assert_eq!(*id, g.id);
            let ep = self
                .endpoints
                .get(&g.endpoint_id)
                .expect("group of a missing endpoint");
            assert_eq!(g.endpoint_name, ep.endpoint_name);
            assert!(g.id < self.next_id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::memory::MemoryStore;

    fn named(n: &str) -> EndpointPatch {
        EndpointPatch {
            endpoint_name: Some(n.into()),
            ..EndpointPatch::default()
        }
    }

    fn group_of(r: EndpointRef) -> WorkergroupPatch {
        WorkergroupPatch {
            endpoint: Some(r),
            ..WorkergroupPatch::default()
        }
    }

    #[test]
    fn names_are_unique_and_renames_reach_the_groups() {
        let s = MemoryStore::default();
        let mut c = Catalog::restore(&s.loaded());
        let a = c
            .create_endpoint(&named("a"), "ka".into(), 0.0, &s)
            .unwrap();
        let b = c
            .create_endpoint(&named("b"), "kb".into(), 0.0, &s)
            .unwrap();
        let e = c
            .create_endpoint(&named("a"), "k".into(), 0.0, &s)
            .unwrap_err();
        assert!(matches!(e, ControlError::Conflict(_)));
        let e = c.update_endpoint(b, &named("a"), &s).unwrap_err();
        assert!(matches!(e, ControlError::Conflict(_)));
        // Renaming to its own name is no conflict.
        c.update_endpoint(a, &named("a"), &s).unwrap();
        let g = c
            .create_group(&group_of(EndpointRef::Name("a".into())), 0.0, &s)
            .unwrap();
        c.update_endpoint(a, &named("a2"), &s).unwrap();
        assert_eq!(c.group(g).unwrap().endpoint_name, "a2");
        c.check();
        // Moving the group follows the other endpoint's name.
        c.update_group(g, &group_of(EndpointRef::Id(b)), &s)
            .unwrap();
        assert_eq!(c.group(g).unwrap().endpoint_name, "b");
        // Deleting an endpoint deletes its groups and frees its name.
        assert_eq!(c.delete_endpoint(b, &s).unwrap(), vec![g]);
        assert!(c.group(g).is_none());
        c.create_endpoint(&named("b"), "kb2".into(), 0.0, &s)
            .unwrap();
        c.check();
        // What was written is what a restart reads.
        let back = Catalog::restore(&s.loaded());
        back.check();
        assert_eq!(back.endpoints().count(), c.endpoints().count());
        assert_eq!(back.next_id, c.next_id);
    }

    #[test]
    fn invalid_patches_change_nothing() {
        let s = MemoryStore::default();
        let mut c = Catalog::restore(&s.loaded());
        let a = c
            .create_endpoint(&named("a"), "ka".into(), 0.0, &s)
            .unwrap();
        let before = s.loaded().records;
        let bad = EndpointPatch {
            cold_mult: Some(-1.0),
            ..named("z")
        };
        assert!(c.update_endpoint(a, &bad, &s).is_err());
        assert!(c.create_endpoint(&bad, "k".into(), 0.0, &s).is_err());
        assert!(c
            .create_endpoint(&EndpointPatch::default(), "k".into(), 0.0, &s)
            .is_err());
        assert!(c
            .create_group(&group_of(EndpointRef::Id(4242)), 0.0, &s)
            .is_err());
        assert!(c
            .create_group(&WorkergroupPatch::default(), 0.0, &s)
            .is_err());
        let blank = WorkergroupPatch {
            model_cmd: Some(" ".into()),
            ..group_of(EndpointRef::Id(a))
        };
        assert!(c.create_group(&blank, 0.0, &s).is_err());
        assert!(matches!(
            c.update_group(777, &WorkergroupPatch::default(), &s),
            Err(ControlError::NotFound(_))
        ));
        assert_eq!(s.loaded().records, before);
        assert_eq!(c.endpoint(a).unwrap().endpoint_name, "a");
        c.check();
    }

    #[test]
    fn endpoint_keys_are_recognised() {
        let s = MemoryStore::default();
        let mut c = Catalog::restore(&s.loaded());
        c.create_endpoint(&named("a"), "ka".into(), 0.0, &s)
            .unwrap();
        c.create_endpoint(&named("b"), "kb".into(), 0.0, &s)
            .unwrap();
        assert!(c.is_endpoint_key(Some("kb")));
        assert!(!c.is_endpoint_key(Some("kc")));
        assert!(!c.is_endpoint_key(None));
    }
}
