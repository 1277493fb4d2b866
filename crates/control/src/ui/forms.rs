//! The console's forms: their fields (the API's names), form values ↔ the JSON bodies the API
//! reads (so `api::patch` and the patches' `validate` judge both alike), and an error placed
//! next to the field it names.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value};

use super::html;
use super::pages::{form_page, Field, Kind};
use super::session::Signed;
use crate::endpoint::{Endpoint, Workergroup};
use crate::error::ControlError;

const NUM: Kind = Kind::Number;

/// An endpoint's fields (Vast's parameters).
pub const ENDPOINT_FIELDS: &[Field] = &[
    Field { name: "endpoint_name", label: "Name", hint: "Letters, digits, - and _ (what /route/ names).", kind: Kind::Text },
    Field { name: "endpoint_state", label: "State", hint: "active: the autoscaler manages it; suspended: left alone; stopped: every worker stopped.", kind: Kind::Select(&["active", "suspended", "stopped"]) },
    Field { name: "min_load", label: "min_load", hint: "Floor on predicted load (workload/s); > 0 keeps a worker active. Default 0.", kind: NUM },
    Field { name: "min_cold_load", label: "min_cold_load", hint: "Floor on total (active + cold) capacity. Default 0.", kind: NUM },
    Field { name: "target_util", label: "target_util", hint: "Target utilisation of active capacity, in (0, 1]. Default 0.9.", kind: NUM },
    Field { name: "cold_mult", label: "cold_mult", hint: "Total capacity as a multiple of active capacity. Default 2.5.", kind: NUM },
    Field { name: "cold_workers", label: "cold_workers", hint: "Workers kept with the model loaded (ready or stopped). Default 5.", kind: NUM },
    Field { name: "max_workers", label: "max_workers", hint: "Hard cap on workers. Default 20.", kind: NUM },
    Field { name: "max_queue_time", label: "max_queue_time", hint: "Seconds: a worker whose queue is longer gets no new request. Default 30.", kind: NUM },
    Field { name: "target_queue_time", label: "target_queue_time", hint: "Seconds of endpoint queue time above which workers are added. Default 10.", kind: NUM },
    Field { name: "inactivity_timeout", label: "inactivity_timeout", hint: "Seconds without requests before scaling to zero; 0 no gating, negative never.", kind: NUM },
    Field { name: "autoscale_policy", label: "autoscale_policy", hint: "Ferry: vast (Vast's documented model, the default), kpa, ray or ferry; compare them on your traffic with ferry simulate.", kind: Kind::Select(&["vast", "kpa", "ray", "ferry"]) },
];

/// A workergroup's fields (Ferry's, then Vast's).
pub const GROUP_FIELDS: &[Field] = &[
    Field {
        name: "backend",
        label: "backend",
        hint: "Worker preset (BACKEND): openai, tgi, vllm, llama.cpp, comfyui, ...",
        kind: Kind::Text,
    },
    Field {
        name: "model_cmd",
        label: "model_cmd",
        hint: "Model server command the local provider runs ({model_port} is substituted).",
        kind: Kind::Text,
    },
    Field {
        name: "worker_cmd",
        label: "worker_cmd",
        hint: "A worker command replacing ferry worker (e.g. a PyWorker script).",
        kind: Kind::Text,
    },
    Field {
        name: "provider",
        label: "provider",
        hint: "Where workers come from; default: the control plane's --provider.",
        kind: Kind::Select(&["local", "external", "vast"]),
    },
    Field {
        name: "max_workers",
        label: "max_workers",
        hint: "Optional cap on this group's workers.",
        kind: NUM,
    },
    Field {
        name: "env",
        label: "env",
        hint: "Extra environment, one KEY=VALUE per line.",
        kind: Kind::Area,
    },
    Field {
        name: "template_hash",
        label: "template_hash",
        hint: "Vast: template to launch.",
        kind: Kind::Text,
    },
    Field {
        name: "template_id",
        label: "template_id",
        hint: "Vast: template id.",
        kind: NUM,
    },
    Field {
        name: "search_params",
        label: "search_params",
        hint: "Vast: offer search, e.g. gpu_ram>=23 num_gpus=1.",
        kind: Kind::Text,
    },
    Field {
        name: "launch_args",
        label: "launch_args",
        hint: "Vast: launch arguments (a JSON object here sets Ferry's fields too).",
        kind: Kind::Text,
    },
    Field {
        name: "gpu_ram",
        label: "gpu_ram",
        hint: "Vast: GPU RAM in GB the model needs.",
        kind: NUM,
    },
    Field {
        name: "test_workers",
        label: "test_workers",
        hint: "Vast: workers to benchmark machines with.",
        kind: NUM,
    },
];

/// Vast fields stored as sent: numbers when they read as numbers.
const VAST_NUMBERS: [&str; 3] = ["template_id", "gpu_ram", "test_workers"];

fn bad(msg: String) -> ControlError {
    ControlError::BadRequest(msg)
}

/// The API body of a form: the fields filled in (an empty field is "default" on create and
/// "unchanged" on update, as `null` is in the API), as strings the API reads leniently.
pub fn to_body(
    form: &HashMap<String, String>,
    fields: &[Field],
) -> Result<Map<String, Value>, ControlError> {
    let mut body = Map::new();
    for f in fields {
        let Some(v) = form.get(f.name).map(|v| v.trim()).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = if f.name == "env" {
            let mut env = Map::new();
            for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                match line.split_once('=') {
                    Some((k, val)) if !k.trim().is_empty() => {
                        env.insert(k.trim().to_owned(), Value::String(val.to_owned()));
                    }
                    _ => return Err(bad(format!("env: {line:?} is not KEY=VALUE"))),
                }
            }
            Value::Object(env)
        } else if VAST_NUMBERS.contains(&f.name) {
            match v.parse::<f64>() {
                Ok(n) if n.is_finite() => serde_json::Number::from_f64(n)
                    .map_or_else(|| Value::String(v.to_owned()), Value::Number),
                _ => return Err(bad(format!("{}: not a number", f.name))),
            }
        } else {
            Value::String(v.to_owned())
        };
        body.insert(f.name.to_owned(), value);
    }
    Ok(body)
}

/// The field an error names (`"field: ..."`, `"env.KEY: ..."`, a duplicate name), if any.
pub fn field_of(e: &ControlError, fields: &[Field]) -> Option<&'static str> {
    let msg = e.to_string();
    if matches!(e, ControlError::Conflict(_)) && msg.starts_with("endpoint ") {
        return fields
            .iter()
            .find(|f| f.name == "endpoint_name")
            .map(|f| f.name);
    }
    fields
        .iter()
        .find(|f| {
            msg.strip_prefix(f.name)
                .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('.'))
        })
        .map(|f| f.name)
}

/// The form again with the error next to its field (or above the form), and the status the
/// API would have answered.
pub fn refused(
    e: &ControlError,
    fields: &[Field],
    render: impl FnOnce(&HashMap<&str, String>, Option<&str>) -> String,
) -> Response {
    let status = match e {
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let msg = e.to_string();
    let mut errors = HashMap::new();
    let page = match field_of(e, fields) {
        Some(f) => {
            let text = msg
                .strip_prefix(f)
                .map_or(msg.as_str(), |r| r.trim_start_matches(':').trim());
            errors.insert(f, text.to_owned());
            render(&errors, None)
        }
        None => render(&errors, Some(&msg)),
    };
    html(status, page)
}

fn num(v: f64) -> String {
    format!("{v}")
}

/// An endpoint's current values for its edit form.
pub fn endpoint_values(ep: &Endpoint) -> HashMap<String, String> {
    let p = &ep.params;
    let state = match p.endpoint_state {
        crate::endpoint::EndpointState::Active => "active",
        crate::endpoint::EndpointState::Suspended => "suspended",
        crate::endpoint::EndpointState::Stopped => "stopped",
    };
    [
        ("endpoint_name", ep.endpoint_name.clone()),
        ("endpoint_state", state.to_owned()),
        ("min_load", num(p.min_load)),
        ("min_cold_load", num(p.min_cold_load)),
        ("target_util", num(p.target_util)),
        ("cold_mult", num(p.cold_mult)),
        ("cold_workers", p.cold_workers.to_string()),
        ("max_workers", p.max_workers.to_string()),
        ("max_queue_time", num(p.max_queue_time)),
        ("target_queue_time", num(p.target_queue_time)),
        (
            "inactivity_timeout",
            p.inactivity_timeout.map(num).unwrap_or_default(),
        ),
        ("autoscale_policy", p.autoscale_policy.as_str().to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A workergroup's current values for its edit form.
pub fn group_values(g: &Workergroup) -> HashMap<String, String> {
    let mut v: HashMap<String, String> = HashMap::new();
    let mut put = |k: &str, s: Option<String>| {
        if let Some(s) = s {
            v.insert(k.to_owned(), s);
        }
    };
    put("backend", g.backend.clone());
    put("model_cmd", g.model_cmd.clone());
    put("worker_cmd", g.worker_cmd.clone());
    put("provider", g.provider.map(|p| p.as_str().to_owned()));
    put("max_workers", g.max_workers.map(|m| m.to_string()));
    put(
        "env",
        (!g.env.is_empty()).then(|| {
            g.env
                .iter()
                .map(|(k, val)| format!("{k}={val}"))
                .collect::<Vec<_>>()
                .join("\n")
        }),
    );
    for (k, val) in &g.vast {
        let s = match val {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        put(k, Some(s));
    }
    v
}

/// The endpoint form: create (`id` none) or edit.
pub fn endpoint_form(
    signed: &Signed,
    id: Option<i64>,
    values: &HashMap<String, String>,
    errors: &HashMap<&str, String>,
    general: Option<&str>,
) -> String {
    match id {
        None => form_page(
            signed,
            "New endpoint",
            "/ui/endpoints/new",
            ENDPOINT_FIELDS,
            values,
            errors,
            general,
            "Create endpoint",
            "/ui/",
        ),
        Some(id) => form_page(
            signed,
            &format!("Edit endpoint {id}"),
            &format!("/ui/endpoints/{id}/edit"),
            ENDPOINT_FIELDS,
            values,
            errors,
            general,
            "Save",
            &format!("/ui/endpoints/{id}"),
        ),
    }
}

/// Which workergroup form.
#[derive(Debug, Clone, Copy)]
pub enum GroupTarget {
    /// A new group of this endpoint.
    New(i64),
    /// Group (id, its endpoint).
    Edit(i64, i64),
}

/// The workergroup form.
pub fn group_form(
    signed: &Signed,
    target: GroupTarget,
    values: &HashMap<String, String>,
    errors: &HashMap<&str, String>,
    general: Option<&str>,
) -> String {
    match target {
        GroupTarget::New(ep) => form_page(
            signed,
            &format!("New workergroup of endpoint {ep}"),
            &format!("/ui/endpoints/{ep}/groups/new"),
            GROUP_FIELDS,
            values,
            errors,
            general,
            "Create workergroup",
            &format!("/ui/endpoints/{ep}"),
        ),
        GroupTarget::Edit(id, ep) => form_page(
            signed,
            &format!("Edit workergroup {id}"),
            &format!("/ui/groups/{id}/edit"),
            GROUP_FIELDS,
            values,
            errors,
            general,
            "Save",
            &format!("/ui/endpoints/{ep}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn form(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn bodies_skip_empty_fields_and_read_env_lines() {
        let b = to_body(
            &form(&[("endpoint_name", " a "), ("min_load", ""), ("csrf", "x")]),
            ENDPOINT_FIELDS,
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b["endpoint_name"], "a");
        let b = to_body(
            &form(&[("env", "A=1\n\nB = x=y"), ("gpu_ram", "24")]),
            GROUP_FIELDS,
        )
        .unwrap();
        assert_eq!(b["env"]["A"], "1");
        assert_eq!(b["env"]["B"], " x=y");
        assert_eq!(b["gpu_ram"], 24.0);
        let e = to_body(&form(&[("env", "nope")]), GROUP_FIELDS).unwrap_err();
        assert_eq!(field_of(&e, GROUP_FIELDS), Some("env"));
    }

    #[test]
    fn errors_find_their_field() {
        let e = ControlError::BadRequest("target_util: must be in (0, 1]".into());
        assert_eq!(field_of(&e, ENDPOINT_FIELDS), Some("target_util"));
        let e = ControlError::Conflict("endpoint \"x\" already exists".into());
        assert_eq!(field_of(&e, ENDPOINT_FIELDS), Some("endpoint_name"));
        let e = ControlError::BadRequest("local workergroup: bad".into());
        assert_eq!(field_of(&e, GROUP_FIELDS), None);
        // "max_workers" must not match "max_workers_x" and friends.
        let e = ControlError::BadRequest("max_workersx: y".into());
        assert_eq!(field_of(&e, ENDPOINT_FIELDS), None);
    }
}
