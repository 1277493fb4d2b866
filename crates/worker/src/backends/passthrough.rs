//! The pass-through preset: every POST path goes to the same path on the model server, requests
//! run in parallel, workload is Vast's default constant, and nothing is rejected for queue time.
//! Its benchmark posts `{}` to `/` unless a TOML file says otherwise; use it with
//! `--assume-loaded-perf` or a health endpoint for servers Ferry has no preset for.

use serde_json::json;

use super::{BenchmarkDef, Preset, RouteSpec, Workload, DEFAULT_WORKLOAD};
use crate::readiness::LogLines;

pub(super) fn preset() -> Preset {
    Preset {
        name: "passthrough",
        routes: Vec::new(),
        passthrough: Some(RouteSpec {
            path: String::new(),
            model_path: String::new(),
            workload: Workload::Constant(DEFAULT_WORKLOAD),
            parallel: true,
            max_queue_time: None,
            response: None,
        }),
        health_endpoint: None,
        unwrap_input: false,
        // Any model server Ferry knows: recognize every preset's "loaded" line.
        lines: LogLines {
            loaded: vec![
                "Application startup complete.".into(),
                "The server is fired up and ready to roll!".into(),
                "model loaded".into(),
                r#""message":"Connected","target":"text_generation_router"#.into(),
                "BACKENDS_READY".into(),
            ],
            error: vec!["Traceback (most recent call last):".into()],
            info: vec![],
        },
        benchmark: BenchmarkDef {
            route: "/".into(),
            payloads: vec![json!({})],
            runs: 3,
            concurrency: 10,
            warmup: true,
        },
        fill_model: false,
    }
}
