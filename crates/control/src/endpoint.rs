//! Endpoint and workergroup records (Vast's fields and their defaults) and the typed patches
//! that create and update them ([`EndpointPatch`], [`WorkergroupPatch`]), with their
//! validation. The JSON they are read from is parsed in `api::patch`; the catalog
//! ([`crate::catalog`]) applies them.
//!
//! # Endpoint parameters (Vast's names and meaning)
//!
//! | Field | Default | Meaning in Ferry |
//! |---|---|---|
//! | `min_load` | 0 | floor on predicted load (workload units/s); > 0 keeps ≥ 1 worker active |
//! | `min_cold_load` | 0 | floor on total (active + cold) capacity |
//! | `target_util` | 0.9 | active capacity = max(predicted load, min_load) / target_util |
//! | `cold_mult` | 2.5 | total capacity = active capacity × cold_mult |
//! | `cold_workers` | 5 | workers with the model loaded (ready or stopped) kept before any is destroyed |
//! | `max_workers` | 20 | hard cap on workers of the endpoint |
//! | `max_queue_time` | 30 s | a worker whose estimated queue time exceeds it gets no new request |
//! | `target_queue_time` | 10 s | endpoint queue time above which the autoscaler adds workers |
//! | `inactivity_timeout` | unset | seconds without requests before scaling to zero is allowed; 0 = no gating; negative = never scale to zero |
//! | `autoscale_policy` | `vast` | Ferry: `vast` (this model), `kpa`, `ray` or `ferry` (see `autoscale::policy`) |
//! | `endpoint_state` | `active` | `active` managed; `suspended` left alone; `stopped` all workers stopped |
//!
//! Defaults are those of Vast's CLI (`vastai create endpoint`). Create bodies may send `null`
//! for any of them (the CLI does): `null` means "default" on create and "unchanged" on update.
//!
//! # Workergroups
//!
//! Vast's fields are stored as given (`template_hash`, `template_id`, `search_params`,
//! `launch_args`, `gpu_ram`, `test_workers`, ...). Ferry's own: `model_cmd` (the model server
//! command the local provider runs), `worker_cmd` (a worker command replacing `ferry worker`,
//! e.g. an official PyWorker script), `backend` (the worker preset, `BACKEND`), `env` (extra
//! environment for both processes), `max_workers` (a per-group cap) and `provider` (where its
//! workers come from: `local`, `external` or `vast`; see docs/fleet.md). They can be given as
//! top-level keys or, since the official client only forwards Vast's fields, as a JSON object
//! in `launch_args`, e.g.
//! `launch_args='{"backend": "tgi", "model_cmd": "text-generation-launcher --port {model_port}"}'`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::autoscale::AutoscalePolicy;
use crate::config::ProviderKind;
use crate::error::ControlError;

/// Endpoint state as Vast names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// The autoscaler manages the endpoint.
    #[default]
    Active,
    /// The autoscaler leaves it alone; workers keep their state.
    Suspended,
    /// Every worker is stopped.
    Stopped,
}

impl EndpointState {
    /// Parses Vast's name (any case).
    pub fn parse(s: &str) -> Option<EndpointState> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Some(EndpointState::Active),
            "suspended" => Some(EndpointState::Suspended),
            "stopped" => Some(EndpointState::Stopped),
            _ => None,
        }
    }
}

/// Scaling and routing parameters of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointParams {
    /// Floor on predicted load.
    pub min_load: f64,
    /// Floor on total capacity.
    pub min_cold_load: f64,
    /// Target utilisation of active capacity, (0, 1].
    pub target_util: f64,
    /// Total capacity multiple of active capacity.
    pub cold_mult: f64,
    /// Loaded workers kept (ready or stopped).
    pub cold_workers: u32,
    /// Hard cap on workers.
    pub max_workers: u32,
    /// Per-worker queue time limit for routing, seconds.
    pub max_queue_time: f64,
    /// Endpoint queue time that triggers scale-up, seconds.
    pub target_queue_time: f64,
    /// Idle seconds before scale to zero (see module docs).
    pub inactivity_timeout: Option<f64>,
    /// Managed, suspended or stopped.
    pub endpoint_state: EndpointState,
    /// Ferry: the scaling policy.
    #[serde(default)]
    pub autoscale_policy: AutoscalePolicy,
}

impl Default for EndpointParams {
    fn default() -> Self {
        EndpointParams {
            min_load: 0.0,
            min_cold_load: 0.0,
            target_util: 0.9,
            cold_mult: 2.5,
            cold_workers: 5,
            max_workers: 20,
            max_queue_time: 30.0,
            target_queue_time: 10.0,
            inactivity_timeout: None,
            endpoint_state: EndpointState::Active,
            autoscale_policy: AutoscalePolicy::Vast,
        }
    }
}

/// A stored endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Id.
    pub id: i64,
    /// Name used by `/route/`.
    pub endpoint_name: String,
    /// The endpoint's own key for `/route/` and the gateway.
    pub api_key: String,
    /// Unix seconds.
    pub created_at: f64,
    /// `autoscaler_instance` as sent (informational).
    #[serde(default)]
    pub autoscaler_instance: Option<String>,
    /// Parameters.
    #[serde(flatten)]
    pub params: EndpointParams,
}

/// A stored workergroup (Vast calls them autojobs too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workergroup {
    /// Id.
    pub id: i64,
    /// Owning endpoint.
    pub endpoint_id: i64,
    /// Owning endpoint's name.
    pub endpoint_name: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Ferry: model server command (see [`crate::provider::LaunchSpec`]).
    #[serde(default)]
    pub model_cmd: Option<String>,
    /// Ferry: worker command replacing `ferry worker` (see [`crate::provider::LaunchSpec`]).
    #[serde(default)]
    pub worker_cmd: Option<String>,
    /// Ferry: worker preset.
    #[serde(default)]
    pub backend: Option<String>,
    /// Ferry: extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Optional per-group cap on workers.
    #[serde(default)]
    pub max_workers: Option<u32>,
    /// Ferry: where its workers come from; `None`: the control plane's `--provider`.
    #[serde(default)]
    pub provider: Option<ProviderKind>,
    /// Every other field as sent (Vast's `template_hash`, `search_params`, ...).
    #[serde(flatten)]
    pub vast: Map<String, Value>,
}

/// Checks Vast's endpoint name rule: `^[a-zA-Z0-9_-]+$`, at most 255 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn bad(msg: impl Into<String>) -> ControlError {
    ControlError::BadRequest(msg.into())
}

/// A create or update of an endpoint: the fields given (`None` = default on create,
/// unchanged on update).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointPatch {
    /// New name.
    pub endpoint_name: Option<String>,
    /// `autoscaler_instance` (informational).
    pub autoscaler_instance: Option<String>,
    /// See [`EndpointParams::min_load`].
    pub min_load: Option<f64>,
    /// See [`EndpointParams::min_cold_load`].
    pub min_cold_load: Option<f64>,
    /// See [`EndpointParams::target_util`].
    pub target_util: Option<f64>,
    /// See [`EndpointParams::cold_mult`].
    pub cold_mult: Option<f64>,
    /// See [`EndpointParams::cold_workers`].
    pub cold_workers: Option<u32>,
    /// See [`EndpointParams::max_workers`].
    pub max_workers: Option<u32>,
    /// See [`EndpointParams::max_queue_time`].
    pub max_queue_time: Option<f64>,
    /// See [`EndpointParams::target_queue_time`].
    pub target_queue_time: Option<f64>,
    /// See [`EndpointParams::inactivity_timeout`].
    pub inactivity_timeout: Option<f64>,
    /// See [`EndpointParams::endpoint_state`].
    pub endpoint_state: Option<EndpointState>,
    /// See [`EndpointParams::autoscale_policy`].
    pub autoscale_policy: Option<AutoscalePolicy>,
}

impl EndpointPatch {
    /// Checks the name rule and every range; the first violation is the error.
    pub fn validate(&self) -> Result<(), ControlError> {
        if self
            .endpoint_name
            .as_deref()
            .is_some_and(|n| !valid_name(n))
        {
            return Err(bad(
                "endpoint_name: must match ^[a-zA-Z0-9_-]+$ (at most 255 characters)",
            ));
        }
        let numbers = [
            ("min_load", self.min_load),
            ("min_cold_load", self.min_cold_load),
            ("target_util", self.target_util),
            ("cold_mult", self.cold_mult),
            ("max_queue_time", self.max_queue_time),
            ("target_queue_time", self.target_queue_time),
            ("inactivity_timeout", self.inactivity_timeout),
        ];
        for (k, v) in numbers {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(bad(format!("{k}: not a finite number")));
            }
        }
        let nonneg = |k: &str, v: Option<f64>| match v {
            Some(v) if v < 0.0 => Err(bad(format!("{k}: must be >= 0"))),
            _ => Ok(()),
        };
        nonneg("min_load", self.min_load)?;
        nonneg("min_cold_load", self.min_cold_load)?;
        if self.target_util.is_some_and(|v| !(v > 0.0 && v <= 1.0)) {
            return Err(bad("target_util: must be in (0, 1]"));
        }
        nonneg("cold_mult", self.cold_mult)?;
        nonneg("max_queue_time", self.max_queue_time)?;
        nonneg("target_queue_time", self.target_queue_time)
    }

    /// Applies the parameters given to `p` (validate first).
    pub fn apply_params(&self, p: &mut EndpointParams) {
        fn set<T: Copy>(to: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *to = v;
            }
        }
        set(&mut p.min_load, self.min_load);
        set(&mut p.min_cold_load, self.min_cold_load);
        set(&mut p.target_util, self.target_util);
        set(&mut p.cold_mult, self.cold_mult);
        set(&mut p.cold_workers, self.cold_workers);
        set(&mut p.max_workers, self.max_workers);
        set(&mut p.max_queue_time, self.max_queue_time);
        set(&mut p.target_queue_time, self.target_queue_time);
        if self.inactivity_timeout.is_some() {
            p.inactivity_timeout = self.inactivity_timeout;
        }
        set(&mut p.endpoint_state, self.endpoint_state);
        set(&mut p.autoscale_policy, self.autoscale_policy);
    }
}

/// How a workergroup names its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointRef {
    /// By id (wins when both are given).
    Id(i64),
    /// By name.
    Name(String),
}

/// A create or update of a workergroup (see the module docs for the fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkergroupPatch {
    /// Its endpoint (required on create).
    pub endpoint: Option<EndpointRef>,
    /// Ferry: model server command.
    pub model_cmd: Option<String>,
    /// Ferry: worker command.
    pub worker_cmd: Option<String>,
    /// Ferry: worker preset.
    pub backend: Option<String>,
    /// Ferry: extra environment (replaces the old one).
    pub env: Option<BTreeMap<String, String>>,
    /// Per-group cap.
    pub max_workers: Option<u32>,
    /// Ferry: where its workers come from.
    pub provider: Option<ProviderKind>,
    /// Vast's own fields as sent (`template_hash`, `search_params`, ...), merged into the
    /// record.
    pub vast: Map<String, Value>,
}

impl WorkergroupPatch {
    /// Checks the commands are not blank.
    pub fn validate(&self) -> Result<(), ControlError> {
        for (k, v) in [
            ("model_cmd", &self.model_cmd),
            ("worker_cmd", &self.worker_cmd),
        ] {
            if v.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(bad(format!("{k}: must not be empty")));
            }
        }
        Ok(())
    }

    /// Applies the fields given to `wg` (validate first; the endpoint is the catalog's).
    pub fn apply(&self, wg: &mut Workergroup) {
        if let Some(v) = &self.model_cmd {
            wg.model_cmd = Some(v.clone());
        }
        if let Some(v) = &self.worker_cmd {
            wg.worker_cmd = Some(v.clone());
        }
        if let Some(v) = &self.backend {
            wg.backend = Some(v.clone());
        }
        if let Some(v) = &self.env {
            wg.env = v.clone();
        }
        if let Some(v) = self.max_workers {
            wg.max_workers = Some(v);
        }
        if let Some(v) = self.provider {
            wg.provider = Some(v);
        }
        wg.vast
            .extend(self.vast.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn patch_validation_names_the_first_bad_field() {
        let ok = EndpointPatch {
            endpoint_name: Some("a-b_9".into()),
            target_util: Some(1.0),
            min_load: Some(0.0),
            ..EndpointPatch::default()
        };
        assert!(ok.validate().is_ok());
        let cases = [
            (
                EndpointPatch {
                    endpoint_name: Some("a b".into()),
                    ..ok.clone()
                },
                "endpoint_name",
            ),
            (
                EndpointPatch {
                    target_util: Some(0.0),
                    ..ok.clone()
                },
                "target_util",
            ),
            (
                EndpointPatch {
                    target_util: Some(1.5),
                    ..ok.clone()
                },
                "target_util",
            ),
            (
                EndpointPatch {
                    cold_mult: Some(-1.0),
                    ..ok.clone()
                },
                "cold_mult",
            ),
            (
                EndpointPatch {
                    min_load: Some(f64::NAN),
                    ..ok.clone()
                },
                "min_load",
            ),
            (
                EndpointPatch {
                    max_queue_time: Some(-0.5),
                    ..ok.clone()
                },
                "max_queue_time",
            ),
        ];
        for (p, field) in cases {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.starts_with(field), "{p:?} → {e}");
        }
        // Negative inactivity_timeout means "never scale to zero": valid.
        let never = EndpointPatch {
            inactivity_timeout: Some(-1.0),
            ..ok
        };
        assert!(never.validate().is_ok());
    }

    #[test]
    fn patches_change_only_what_they_name() {
        let mut p = EndpointParams::default();
        EndpointPatch {
            min_load: Some(5.0),
            inactivity_timeout: Some(-1.0),
            endpoint_state: Some(EndpointState::Stopped),
            ..EndpointPatch::default()
        }
        .apply_params(&mut p);
        let expected = EndpointParams {
            min_load: 5.0,
            inactivity_timeout: Some(-1.0),
            endpoint_state: EndpointState::Stopped,
            ..EndpointParams::default()
        };
        assert_eq!(p, expected);
        EndpointPatch::default().apply_params(&mut p);
        assert_eq!(p, expected);

        let mut wg = Workergroup {
            id: 1,
            endpoint_id: 2,
            endpoint_name: "e".into(),
            created_at: 0.0,
            model_cmd: Some("m".into()),
            worker_cmd: None,
            backend: None,
            env: BTreeMap::new(),
            max_workers: None,
            provider: None,
            vast: Map::new(),
        };
        let mut vast = Map::new();
        vast.insert("template_hash".into(), Value::from("abc"));
        let patch = WorkergroupPatch {
            backend: Some("tgi".into()),
            vast,
            ..WorkergroupPatch::default()
        };
        patch.validate().unwrap();
        patch.apply(&mut wg);
        assert_eq!(wg.model_cmd.as_deref(), Some("m"));
        assert_eq!(wg.backend.as_deref(), Some("tgi"));
        assert_eq!(wg.vast["template_hash"], "abc");
        let blank = WorkergroupPatch {
            worker_cmd: Some("  ".into()),
            ..WorkergroupPatch::default()
        };
        assert!(blank.validate().is_err());
    }
}
