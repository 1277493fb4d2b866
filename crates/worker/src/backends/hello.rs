//! `hello`: an echo worker for trying things out. `/generate` and `/echo` go to the model
//! server's `/echo`; workload = `max_tokens` or 1.

use serde_json::json;

use super::{BenchmarkDef, Preset, RouteSpec, Workload};
use crate::readiness::LogLines;

fn route(path: &str) -> RouteSpec {
    RouteSpec {
        path: path.into(),
        model_path: "/echo".into(),
        workload: Workload::FirstOf(vec![Workload::field("max_tokens"), Workload::Constant(1.0)]),
        parallel: true,
        max_queue_time: None,
        response: None,
    }
}

pub(super) fn preset() -> Preset {
    Preset {
        name: "hello",
        routes: vec![route("/generate"), route("/echo")],
        passthrough: None,
        health_endpoint: None,
        unwrap_input: false,
        lines: LogLines {
            loaded: vec![
                "Application startup complete.".into(),
                "infer server has started".into(),
            ],
            error: vec!["Traceback (most recent call last):".into()],
            info: vec![],
        },
        benchmark: BenchmarkDef {
            route: "/generate".into(),
            payloads: vec![json!({"prompt": "hello", "max_tokens": 1})],
            runs: 3,
            concurrency: 10,
            warmup: true,
        },
        fill_model: false,
    }
}
