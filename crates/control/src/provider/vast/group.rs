//! A workergroup's Vast fields, read once into [`VastGroup`], and the create body built from
//! them.
//!
//! | Field | Meaning |
//! |---|---|
//! | `search_params` | offer filters: Vast's query string (`"gpu_ram>=23 num_gpus=1"`) or a query dict; on top of Vast's defaults (verified, rentable, not rented) |
//! | `gpu_ram` | GPU memory per GPU the model needs, GB (a `gpu_ram >=` filter unless `search_params` has one) |
//! | `max_dph` | price cap, $/h (on-demand price, or the bid) |
//! | `template_hash` (or `template_hash_id`) | Vast template to create from (its image, on-start, env) |
//! | `image` | Docker image, when no template gives one |
//! | `onstart` | on-start script (replaces the template's) |
//! | `disk` | disk, GB (default 10, Vast's) |
//! | `runtype` | Vast's launch mode without a template (default `ssh`, which runs `onstart`) |
//! | `interruptible` | `true`: rent interruptible (bid) instances, cheaper but outbid at times |
//! | `bid` | bid price, $/h (default: each offer's minimum bid) |
//! | `ports` | extra container ports to expose, besides `WORKER_PORT` |
//! | `docker_login_user`, `docker_login_pass`, `docker_login_repo` | registry login for a private image |
//!
//! Numbers may be given as JSON numbers or numeric strings (Vast's CLI sends strings).
//!
//! The instance's environment: the workergroup's `env`, then `REPORT_ADDR` (the control
//! plane), `MASTER_TOKEN`, `CONTAINER_ID` and `FERRY_WORKER_ID` (the worker id: Vast sets
//! `CONTAINER_ID` to its own instance id inside the container, so a Ferry worker reads
//! `FERRY_WORKER_ID` first), `FERRY_ENDPOINT`, `BACKEND`, `FERRY_REQUIRE_TOKEN=true` (unless
//! the group's env says otherwise), and the port exposure keys Vast reads (`"-p 3000:3000":
//! "1"` for `WORKER_PORT`, default 3000, and each of `ports`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::query::{self, Search};
use crate::provider::LaunchSpec;
use crate::secrets::Secret;

/// Vast's default disk, GB.
const DEFAULT_DISK_GB: f64 = 10.0;
/// The worker's port inside the container when the group's env names none.
const DEFAULT_WORKER_PORT: u16 = 3000;

/// A workergroup's Vast fields that do not make a launch.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct GroupError(pub String);

/// A workergroup's Vast fields, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct VastGroup {
    /// What to search for.
    pub search: Search,
    /// Template hash.
    pub template_hash: Option<String>,
    /// Image.
    pub image: Option<String>,
    /// On-start script.
    pub onstart: Option<String>,
    /// Launch mode without a template.
    pub runtype: Option<String>,
    /// Ports to expose.
    pub ports: Vec<u16>,
    /// `image_login` (`-u user -p pass repo`).
    image_login: Option<Secret>,
}

fn number(v: &Map<String, Value>, k: &str) -> Result<Option<f64>, GroupError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| GroupError(format!("{k}: {s:?} is not a number"))),
        Some(other) => Err(GroupError(format!("{k}: {other} is not a number"))),
    }
}

fn text(v: &Map<String, Value>, k: &str) -> Result<Option<String>, GroupError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(GroupError(format!("{k}: {other} is not a string"))),
    }
}

fn flag(v: &Map<String, Value>, k: &str) -> Result<bool, GroupError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err(GroupError(format!("{k}: {s:?} is not true or false"))),
        },
        Some(other) => Err(GroupError(format!("{k}: {other} is not true or false"))),
    }
}

impl VastGroup {
    /// Reads a workergroup's Vast fields; the error names the first bad one.
    pub fn from_fields(v: &Map<String, Value>) -> Result<VastGroup, GroupError> {
        let mut filters = match v.get("search_params") {
            None | Some(Value::Null) => query::defaults(),
            Some(Value::String(s)) => {
                query::parse(s, query::defaults()).map_err(|e| GroupError(e.to_string()))?
            }
            Some(Value::Object(m)) => {
                let mut q = query::defaults();
                q.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
                q
            }
            Some(other) => {
                return Err(GroupError(format!(
                    "search_params: {other} is neither a query string nor a query object"
                )))
            }
        };
        if let Some(gb) = number(v, "gpu_ram")? {
            filters
                .entry("gpu_ram")
                .or_insert_with(|| json!({"gte": gb * 1000.0}));
        }
        let max_dph = number(v, "max_dph")?;
        if let Some(cap) = max_dph {
            if cap <= 0.0 {
                return Err(GroupError("max_dph: must be positive".into()));
            }
        }
        let interruptible = flag(v, "interruptible")?;
        let bid = number(v, "bid")?;
        if !interruptible && max_dph.is_some() {
            let cap = json!(max_dph);
            match filters.get_mut("dph_total") {
                Some(Value::Object(m)) => {
                    let lower = m
                        .get("lte")
                        .and_then(Value::as_f64)
                        .is_some_and(|old| old < max_dph.unwrap_or(f64::INFINITY));
                    if !lower {
                        m.insert("lte".into(), cap);
                    }
                }
                _ => {
                    filters.insert("dph_total".into(), json!({ "lte": cap }));
                }
            }
        }
        let disk_gb = number(v, "disk")?.unwrap_or(DEFAULT_DISK_GB);
        if disk_gb <= 0.0 {
            return Err(GroupError("disk: must be positive".into()));
        }
        let template_hash = match text(v, "template_hash")? {
            Some(t) => Some(t),
            None => text(v, "template_hash_id")?,
        };
        let image = text(v, "image")?;
        if template_hash.is_none() && image.is_none() {
            return Err(GroupError(
                "a Vast workergroup needs a template_hash or an image".into(),
            ));
        }
        let ports = match v.get("ports") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|p| {
                    p.as_u64()
                        .or_else(|| p.as_str().and_then(|s| s.trim().parse().ok()))
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| GroupError(format!("ports: {p} is not a port")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(GroupError(format!("ports: {other} is not a list"))),
        };
        let image_login = match (text(v, "docker_login_user")?, text(v, "docker_login_pass")?) {
            (Some(u), Some(p)) => Some(Secret::new(&match text(v, "docker_login_repo")? {
                Some(r) => format!("-u {u} -p {p} {r}"),
                None => format!("-u {u} -p {p}"),
            })),
            _ => None,
        };
        Ok(VastGroup {
            search: Search {
                filters,
                interruptible,
                disk_gb,
                max_dph,
                bid,
            },
            template_hash,
            image,
            onstart: text(v, "onstart")?,
            runtype: text(v, "runtype")?,
            ports,
            image_login,
        })
    }

    /// The instance's environment (see the module docs).
    pub fn env(&self, spec: &LaunchSpec, default_backend: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("FERRY_REQUIRE_TOKEN".to_owned(), "true".to_owned());
        env.extend(spec.env.clone());
        let id = spec.worker_id.to_string();
        for (k, v) in [
            ("REPORT_ADDR", spec.control_url.as_str()),
            ("MASTER_TOKEN", spec.mtoken.as_str()),
            ("CONTAINER_ID", id.as_str()),
            ("FERRY_WORKER_ID", id.as_str()),
            ("FERRY_ENDPOINT", spec.endpoint.as_str()),
            (
                "BACKEND",
                spec.backend.as_deref().unwrap_or(default_backend),
            ),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        let worker_port = spec
            .env
            .get("WORKER_PORT")
            .and_then(|p| p.trim().parse::<u16>().ok())
            .unwrap_or(DEFAULT_WORKER_PORT);
        for p in std::iter::once(worker_port).chain(self.ports.iter().copied()) {
            env.insert(format!("-p {p}:{p}"), "1".to_owned());
        }
        env
    }

    /// The body of `PUT /asks/{offer}/` for `offer_price` ($/h; sent only for a bid).
    pub fn create_body(
        &self,
        env: &BTreeMap<String, String>,
        label: &str,
        offer_price: Option<f64>,
    ) -> Value {
        let mut b = json!({
            "client_id": "me",
            "image": self.image,
            "env": env,
            "price": if self.search.interruptible { offer_price } else { None },
            "disk": self.search.disk_gb,
            "label": label,
            "onstart": self.onstart,
            "image_login": self.image_login.as_ref().map(Secret::expose),
            // Fail the create if the machine cannot run it now, rather than leave a stopped
            // instance waiting for it.
            "cancel_unavail": true,
            "template_hash_id": self.template_hash,
        });
        if self.template_hash.is_none() {
            b["runtype"] = json!(self.runtype.as_deref().unwrap_or("ssh"));
        } else if let Some(r) = &self.runtype {
            b["runtype"] = json!(r);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn spec() -> LaunchSpec {
        LaunchSpec {
            worker_id: 42,
            mtoken: "tok".into(),
            control_url: "http://cp:8080".into(),
            endpoint: "ep".into(),
            workergroup_id: 2,
            model_cmd: None,
            worker_cmd: None,
            backend: None,
            env: [
                ("WORKER_PORT".to_owned(), "5000".to_owned()),
                ("CONTAINER_ID".to_owned(), "x".to_owned()),
            ]
            .into_iter()
            .collect(),
            vast: Map::new(),
        }
    }

    #[test]
    fn fields_become_search_filters() {
        let g = VastGroup::from_fields(&fields(json!({
            "search_params": "num_gpus=1 dph<=0.8",
            "gpu_ram": "24",
            "max_dph": 0.5,
            "template_hash": "abc",
        })))
        .unwrap();
        let f = &g.search.filters;
        assert_eq!(f["gpu_ram"], json!({"gte": 24000.0}));
        assert_eq!(f["num_gpus"], json!({"eq": 1}));
        assert_eq!(f["dph_total"], json!({"lte": 0.5}));
        assert_eq!(f["verified"], json!({"eq": true}));
        assert_eq!(g.search.max_dph, Some(0.5));
        // The query's own gpu_ram and a lower price bound win.
        let g = VastGroup::from_fields(&fields(json!({
            "search_params": {"gpu_ram": {"gte": 80000}, "dph_total": {"lte": 0.2}},
            "gpu_ram": 24, "max_dph": 0.5, "image": "img",
        })))
        .unwrap();
        assert_eq!(g.search.filters["gpu_ram"], json!({"gte": 80000}));
        assert_eq!(g.search.filters["dph_total"], json!({"lte": 0.2}));
    }

    #[test]
    fn bad_fields_are_named() {
        for (v, name) in [
            (json!({"image": "i", "gpu_ram": "lots"}), "gpu_ram"),
            (
                json!({"image": "i", "search_params": "gpu_ram>>"}),
                "search_params",
            ),
            (json!({"image": "i", "search_params": 3}), "search_params"),
            (json!({"image": "i", "max_dph": 0}), "max_dph"),
            (json!({"image": "i", "ports": [70000]}), "ports"),
            (
                json!({"image": "i", "interruptible": "maybe"}),
                "interruptible",
            ),
            (json!({"search_params": ""}), "template_hash or an image"),
        ] {
            let e = VastGroup::from_fields(&fields(v.clone())).unwrap_err().0;
            assert!(e.contains(name), "{v} → {e}");
        }
    }

    #[test]
    fn the_create_body_carries_env_ports_label_and_no_secrets_in_debug() {
        let g = VastGroup::from_fields(&fields(json!({
            "image": "ferry:latest", "onstart": "ferry worker", "ports": [8000],
            "interruptible": true, "bid": "0.3",
            "docker_login_user": "u", "docker_login_pass": "hunter2",
        })))
        .unwrap();
        let env = g.env(&spec(), "openai");
        assert_eq!(env["CONTAINER_ID"], "42");
        assert_eq!(env["FERRY_WORKER_ID"], "42");
        assert_eq!(env["MASTER_TOKEN"], "tok");
        assert_eq!(env["REPORT_ADDR"], "http://cp:8080");
        assert_eq!(env["BACKEND"], "openai");
        assert_eq!(env["FERRY_REQUIRE_TOKEN"], "true");
        assert_eq!(env["-p 5000:5000"], "1");
        assert_eq!(env["-p 8000:8000"], "1");
        let b = g.create_body(&env, "ferry-abc-42", Some(0.3));
        assert_eq!(b["label"], "ferry-abc-42");
        assert_eq!(b["price"], 0.3);
        assert_eq!(b["runtype"], "ssh");
        assert_eq!(b["onstart"], "ferry worker");
        assert_eq!(b["image_login"], "-u u -p hunter2");
        assert_eq!(b["env"]["WORKER_PORT"], "5000");
        assert!(!format!("{g:?}").contains("hunter2"));
        let on_demand = VastGroup::from_fields(&fields(json!({"template_hash": "t"}))).unwrap();
        let b = on_demand.create_body(&env, "l", Some(1.0));
        assert_eq!(b["price"], Value::Null);
        assert_eq!(b["template_hash_id"], "t");
        assert!(b.get("runtype").is_none());
    }
}
