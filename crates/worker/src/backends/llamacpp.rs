//! llama.cpp's native API (`llama-server`): `/completion`, workload = `n_predict`, parallel,
//! readiness line `model loaded` (what llama-server prints and Vast's llama worker matches),
//! health `/health` (503 while loading).

use serde_json::json;

use super::{filler_words, BenchmarkDef, Preset, RouteSpec, Workload};
use crate::readiness::LogLines;

pub(super) fn preset() -> Preset {
    Preset {
        name: "llamacpp",
        routes: vec![RouteSpec {
            path: "/completion".into(),
            model_path: "/completion".into(),
            workload: Workload::FirstOf(vec![Workload::field("n_predict"), Workload::Constant(0.0)]),
            parallel: true,
            max_queue_time: Some(600.0),
            response: None,
        }],
        passthrough: None,
        health_endpoint: Some("/health".into()),
        unwrap_input: true,
        lines: LogLines {
            loaded: vec!["model loaded".into()],
            // Vast's llama worker's list. Not "error: ": llama-server logs every rejected client
            // request as `send_error: task id = N, error: ...`, which is no model failure.
            error: vec![
                "INFO exited: llama".into(),
                "error loading model".into(),
                "failed to load model".into(),
            ],
            info: vec![],
        },
        benchmark: BenchmarkDef {
            route: "/completion".into(),
            payloads: (0..10)
                .map(|i| json!({"prompt": filler_words(250, i), "n_predict": 500, "temperature": 0.7}))
                .collect(),
            runs: 3,
            concurrency: 10,
            warmup: true,
        },
        fill_model: false,
    }
}
