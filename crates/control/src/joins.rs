//! Join tokens: how a worker started anywhere becomes a worker of an external workergroup.
//!
//! A token is `fjt_<id>_<secret>` (64 hex digits of secret). Only the SHA-256 of the secret is
//! stored; the token itself is shown once, when it is created. A token belongs to one
//! workergroup, can be used any number of times (a Kubernetes Deployment's pods all share
//! one) and stops working the moment it is revoked; revoking does not remove the workers that
//! already joined with it (they hold their own master tokens).
//!
//! # Invariants
//!
//! - Ids come from one persisted counter, never reused.
//! - A token is accepted only if its id exists and the hash of its secret matches, compared in
//!   constant time; a malformed, unknown, revoked or wrong token gets the same answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::control::{random_hex, secret_eq};
use crate::error::ControlError;
use crate::store::{Kind, Loaded, Store};

/// Key of the next token id.
const KV_NEXT_JOIN_ID: &str = "next_join_token_id";
/// Prefix of every token.
const PREFIX: &str = "fjt_";

/// A stored token (hash only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Id.
    pub id: i64,
    /// The workergroup it joins workers to.
    pub workergroup_id: i64,
    /// Free text given at creation.
    #[serde(default)]
    pub label: String,
    /// Hex SHA-256 of the secret part.
    hash: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds of the last join with it (0: never).
    #[serde(default)]
    pub last_used_at: f64,
    /// Workers joined with it.
    #[serde(default)]
    pub joins: u64,
}

/// A token as the API lists it (no secret, no hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JoinTokenInfo {
    /// Id.
    pub id: i64,
    /// Its workergroup.
    pub workergroup_id: i64,
    /// Label.
    pub label: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds of the last join (0: never).
    pub last_used_at: f64,
    /// Workers joined with it.
    pub joins: u64,
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn refused() -> ControlError {
    ControlError::Unauthorized("invalid or revoked join token".into())
}

/// Every join token by id.
#[derive(Debug, Default)]
pub struct JoinTokens {
    by_id: BTreeMap<i64, JoinToken>,
    next_id: i64,
}

impl JoinTokens {
    /// The tokens as the store left them.
    pub fn restore(loaded: &Loaded) -> JoinTokens {
        let mut by_id = BTreeMap::new();
        for (id, body) in loaded.of(Kind::JoinToken) {
            match serde_json::from_str::<JoinToken>(body) {
                Ok(t) => {
                    by_id.insert(id, t);
                }
                Err(e) => tracing::error!(id, error = %e, "unreadable join token skipped"),
            }
        }
        JoinTokens {
            by_id,
            next_id: loaded.kv_parsed(KV_NEXT_JOIN_ID).unwrap_or(1),
        }
    }

    /// Creates a token for a workergroup; returns it with its id (the only time the secret
    /// exists outside the caller).
    pub fn create(
        &mut self,
        workergroup_id: i64,
        label: String,
        unix: f64,
        store: &dyn Store,
    ) -> (i64, String) {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        store.set_kv(KV_NEXT_JOIN_ID, self.next_id.to_string());
        let secret = random_hex(32);
        let t = JoinToken {
            id,
            workergroup_id,
            label,
            hash: digest(&secret),
            created_at: unix,
            last_used_at: 0.0,
            joins: 0,
        };
        store.put_json(Kind::JoinToken, id, &t);
        self.by_id.insert(id, t);
        (id, format!("{PREFIX}{id}_{secret}"))
    }

    /// The tokens of a workergroup (all when `None`).
    pub fn list(&self, workergroup_id: Option<i64>) -> Vec<JoinTokenInfo> {
        self.by_id
            .values()
            .filter(|t| workergroup_id.is_none_or(|g| t.workergroup_id == g))
            .map(|t| JoinTokenInfo {
                id: t.id,
                workergroup_id: t.workergroup_id,
                label: t.label.clone(),
                created_at: t.created_at,
                last_used_at: t.last_used_at,
                joins: t.joins,
            })
            .collect()
    }

    /// Revokes a token.
    pub fn revoke(&mut self, id: i64, store: &dyn Store) -> Result<(), ControlError> {
        self.by_id
            .remove(&id)
            .ok_or_else(|| ControlError::NotFound(format!("no join token {id}")))?;
        store.delete(Kind::JoinToken, id);
        Ok(())
    }

    /// Revokes every token of a deleted workergroup.
    pub fn forget_group(&mut self, workergroup_id: i64, store: &dyn Store) {
        let ids: Vec<i64> = self
            .by_id
            .values()
            .filter(|t| t.workergroup_id == workergroup_id)
            .map(|t| t.id)
            .collect();
        for id in ids {
            let _ = self.revoke(id, store);
        }
    }

    /// Checks a presented token; returns its id and workergroup.
    pub fn check(&self, token: &str) -> Result<(i64, i64), ControlError> {
        let rest = token.trim().strip_prefix(PREFIX).ok_or_else(refused)?;
        let (id, secret) = rest.split_once('_').ok_or_else(refused)?;
        let id: i64 = id.parse().map_err(|_| refused())?;
        let t = self.by_id.get(&id).ok_or_else(refused)?;
        if !secret_eq(Some(&digest(secret)), &t.hash) {
            return Err(refused());
        }
        Ok((id, t.workergroup_id))
    }

    /// Records a join with token `id`.
    pub fn used(&mut self, id: i64, unix: f64, store: &dyn Store) {
        if let Some(t) = self.by_id.get_mut(&id) {
            t.last_used_at = unix;
            t.joins += 1;
            store.put_json(Kind::JoinToken, id, &*t);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn tokens_are_checked_stored_hashed_and_revocable() {
        let store = MemoryStore::default();
        let mut t = JoinTokens::default();
        let (id, token) = t.create(7, "k8s".into(), 1.0, &store);
        assert!(token.starts_with("fjt_"));
        assert_eq!(t.check(&token).unwrap(), (id, 7));
        // Only the hash is stored.
        let loaded = store.loaded();
        let body: Vec<_> = loaded.of(Kind::JoinToken).collect();
        assert_eq!(body.len(), 1);
        let secret = token.rsplit('_').next().unwrap();
        assert!(!body[0].1.contains(secret));
        // Restored tokens still check; ids are not reused.
        let mut back = JoinTokens::restore(&loaded);
        assert_eq!(back.check(&token).unwrap(), (id, 7));
        let (id2, token2) = back.create(7, String::new(), 2.0, &store);
        assert!(id2 > id);
        // Wrong, malformed, and other ids' secrets are all refused alike.
        let other = format!("fjt_{id2}_{secret}");
        for bad in [
            "",
            "fjt_",
            "fjt_x_y",
            "nope",
            &token[..token.len() - 1],
            &other,
        ] {
            let e = back.check(bad).unwrap_err();
            assert_eq!(e.to_string(), refused().to_string(), "{bad}");
        }
        back.used(id, 3.0, &store);
        assert_eq!(back.list(Some(7))[0].joins, 1);
        back.revoke(id, &store).unwrap();
        assert!(back.check(&token).is_err());
        assert!(back.check(&token2).is_ok());
        assert!(back.revoke(id, &store).is_err());
        back.forget_group(7, &store);
        assert!(back.check(&token2).is_err());
        assert!(back.list(None).is_empty());
    }
}
