//! Hugging Face TGI, as Vast's TGI worker serves it: `/generate` and `/generate_stream`,
//! workload = `parameters.max_new_tokens`, parallel, max_queue_time 60 s, health `/health`,
//! benchmark concurrency 50.

use serde_json::json;

use super::{filler_words, BenchmarkDef, Preset, RouteSpec, Workload};
use crate::readiness::LogLines;

fn route(path: &str) -> RouteSpec {
    RouteSpec {
        path: path.into(),
        model_path: path.into(),
        workload: Workload::field("parameters.max_new_tokens"),
        parallel: true,
        max_queue_time: Some(60.0),
        response: None,
    }
}

pub(super) fn preset() -> Preset {
    Preset {
        name: "tgi",
        routes: vec![route("/generate"), route("/generate_stream")],
        passthrough: None,
        health_endpoint: Some("/health".into()),
        unwrap_input: false,
        lines: LogLines {
            loaded: vec![
                r#""message":"Connected","target":"text_generation_router""#.into(),
                r#""message":"Connected","target":"text_generation_router::server""#.into(),
            ],
            error: vec![
                "Error: WebserverFailed".into(),
                "Error: DownloadError".into(),
                "Error: ShardCannotStart".into(),
            ],
            info: vec![],
        },
        benchmark: BenchmarkDef {
            route: "/generate".into(),
            payloads: (0..10)
                .map(|i| json!({"inputs": filler_words(250, i), "parameters": {"max_new_tokens": 256}}))
                .collect(),
            runs: 3,
            concurrency: 50,
            warmup: true,
        },
        fill_model: false,
    }
}
