//! ComfyUI behind Vast's API wrapper: `/generate/sync`, one request at a time (FIFO),
//! max_queue_time 10 s, workload from resolution x steps x batch (Vast's constant 100 when the
//! payload does not say), readiness line `BACKENDS_READY`.

use serde_json::json;

use super::{BenchmarkDef, Preset, RouteSpec, Workload};
use crate::readiness::LogLines;

pub(super) fn preset() -> Preset {
    Preset {
        name: "comfyui",
        routes: vec![RouteSpec {
            path: "/generate/sync".into(),
            model_path: "/generate/sync".into(),
            workload: Workload::Comfy,
            parallel: false,
            max_queue_time: Some(10.0),
            response: None,
        }],
        passthrough: None,
        health_endpoint: None,
        unwrap_input: false,
        lines: LogLines {
            loaded: vec!["BACKENDS_READY".into(), "To see the GUI go to: ".into()],
            error: vec![
                "BACKENDS_READY_TIMEOUT".into(),
                "BACKEND_UNRECOVERABLE".into(),
                "Application startup failed".into(),
            ],
            info: vec![],
        },
        benchmark: BenchmarkDef {
            route: "/generate/sync".into(),
            payloads: vec![json!({"input": {
                "request_id": "ferry-benchmark",
                "modifier": "Text2Image",
                "modifications": {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "steps": 20, "seed": 1}
            }})],
            runs: 1,
            concurrency: 1,
            warmup: false,
        },
        fill_model: false,
    }
}
