//! The ComfyUI API wrapper's `POST /generate/sync` (ai-dock/comfyui-api-wrapper, which Vast's
//! ComfyUI template runs on port 18288).
//!
//! The payload is `{"input": {...}}` with exactly one of `workflow_json` (a ComfyUI API-format
//! workflow) or `modifier` (+ `modifications`), as the wrapper requires; anything else is its
//! 422. The job takes `ttft + steps * token_delay`, where `steps` is
//! `input.modifications.steps`, else the first workflow node with a numeric `inputs.steps`,
//! else 20; each step counts as one generated token. The reply is the wrapper's Result
//! envelope with one fake PNG output.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::admit::{admit, parse, sleep, Dialect, Rejection};
use crate::state::SimState;
use crate::stream::cut_response;
use crate::tokens::{SimOverrides, MAX_TOKENS_LIMIT};

const D: Dialect = Dialect::Comfy;

/// Sampler steps when neither the modifications nor the workflow name any.
pub const DEFAULT_STEPS: u32 = 20;

/// Node id reported for the output when the workflow has no `SaveImage` node (the id the
/// wrapper's bundled text-to-image workflow uses).
const DEFAULT_OUTPUT_NODE: &str = "9";

#[derive(Deserialize, Default)]
#[serde(default)]
struct SyncRequest {
    input: Option<Input>,
    sim: Option<SimOverrides>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    request_id: Option<String>,
    modifier: Option<String>,
    modifications: Option<Map<String, Value>>,
    workflow_json: Option<Map<String, Value>>,
    /// Overrides may also sit inside `input`, where a worker forwarding only `input` keeps them.
    sim: Option<SimOverrides>,
}

#[derive(Serialize)]
struct Output<'a> {
    filename: &'a str,
    local_path: String,
    subfolder: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    node_id: &'a str,
    output_type: &'static str,
}

#[derive(Serialize)]
struct Timings {
    preprocess_ms: u64,
    generation_ms: u64,
    postprocess_ms: u64,
}

#[derive(Serialize)]
struct SyncResult<'a> {
    id: &'a str,
    message: &'static str,
    status: &'static str,
    comfyui_response: Map<String, Value>,
    output: [Output<'a>; 1],
    timings: Timings,
}

/// Checks the wrapper's rule: exactly one of `workflow_json` and `modifier`, and
/// `modifications` only with a modifier.
fn validate(input: &Input) -> Result<(), &'static str> {
    let workflow = input.workflow_json.as_ref().is_some_and(|w| !w.is_empty());
    let modifier = input.modifier.as_deref().is_some_and(|m| !m.is_empty());
    let modifications = input.modifications.as_ref().is_some_and(|m| !m.is_empty());
    match (workflow, modifier) {
        (true, true) => {
            Err("Cannot provide both workflow_json and modifier - they are mutually exclusive")
        }
        (false, false) => Err("Must provide either workflow_json OR modifier"),
        (true, false) if modifications => {
            Err("modifications can only be provided when modifier is specified")
        }
        _ => Ok(()),
    }
}

fn steps_of(input: &Input) -> Option<u64> {
    if let Some(steps) = input
        .modifications
        .as_ref()
        .and_then(|m| m.get("steps"))
        .and_then(Value::as_u64)
    {
        return Some(steps);
    }
    input
        .workflow_json
        .as_ref()?
        .values()
        .find_map(|node| node.get("inputs")?.get("steps")?.as_u64())
}

fn output_node(input: &Input) -> &str {
    input
        .workflow_json
        .as_ref()
        .and_then(|w| {
            w.iter()
                .find(|(_, node)| {
                    node.get("class_type").and_then(Value::as_str) == Some("SaveImage")
                })
                .map(|(id, _)| id.as_str())
        })
        .unwrap_or(DEFAULT_OUTPUT_NODE)
}

/// `POST /generate/sync`.
pub(crate) async fn generate_sync(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let mut guard = state.begin_request();
    let req: SyncRequest = parse(D, &mut guard, &body)?;
    let Some(input) = req.input else {
        guard.fail();
        return Err(D.rejection(StatusCode::UNPROCESSABLE_ENTITY, "Field required: input"));
    };
    if let Err(msg) = validate(&input) {
        guard.fail();
        return Err(D.rejection(StatusCode::UNPROCESSABLE_ENTITY, msg));
    }
    let sim = req.sim.or_else(|| input.sim.clone()).unwrap_or_default();
    let mut admitted = admit(&state, D, guard, &sim).await?;
    let steps = match steps_of(&input).map(u32::try_from) {
        None => DEFAULT_STEPS,
        Some(Ok(steps)) if steps <= MAX_TOKENS_LIMIT => steps,
        Some(_) => {
            return Err(admitted.reject(
                D,
                StatusCode::UNPROCESSABLE_ENTITY,
                "steps exceeds the sim's limit",
            ))
        }
    };
    if let Some(k) = admitted.cut_at(steps) {
        return Ok(cut_response(admitted, k).await);
    }
    let generation = admitted.generation_time(steps);
    sleep(generation).await;
    admitted.guard.tokens(u64::from(steps));
    admitted.guard.complete();

    let seq = admitted.guard.seq();
    let id = match input.request_id.as_deref() {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("sim-{seq}"),
    };
    let filename = format!("ComfyUI_{:05}_.png", seq + 1);
    Ok(Json(SyncResult {
        id: &id,
        message: "Processing complete.",
        status: "completed",
        comfyui_response: Map::new(),
        output: [Output {
            local_path: format!("/workspace/ComfyUI/output/{id}/{filename}"),
            filename: &filename,
            subfolder: "",
            kind: "output",
            node_id: output_node(&input),
            output_type: "images",
        }],
        timings: Timings {
            preprocess_ms: 0,
            generation_ms: u64::try_from(generation.as_millis()).unwrap_or(u64::MAX),
            postprocess_ms: 0,
        },
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: Value) -> Input {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn steps_come_from_modifications_then_workflow() {
        let i = input(serde_json::json!({"modifier": "Text2Image", "modifications": {"steps": 7}}));
        assert_eq!(steps_of(&i), Some(7));
        let i = input(serde_json::json!({"workflow_json": {
            "3": {"class_type": "KSampler", "inputs": {"steps": 30, "seed": 1}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}
        }}));
        assert_eq!(steps_of(&i), Some(30));
        assert_eq!(output_node(&i), "9");
        let i = input(serde_json::json!({"modifier": "Text2Image"}));
        assert_eq!(steps_of(&i), None);
    }

    #[test]
    fn exactly_one_of_workflow_and_modifier() {
        assert!(validate(&input(serde_json::json!({}))).is_err());
        assert!(validate(&input(serde_json::json!({
            "modifier": "Text2Image", "workflow_json": {"1": {}}
        })))
        .is_err());
        assert!(validate(&input(serde_json::json!({
            "workflow_json": {"1": {}}, "modifications": {"steps": 2}
        })))
        .is_err());
        assert!(validate(&input(serde_json::json!({"workflow_json": {"1": {}}}))).is_ok());
    }
}
