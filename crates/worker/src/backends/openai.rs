//! OpenAI-compatible servers: vLLM, SGLang, llama.cpp's OpenAI routes (BACKEND = vllm, sglang,
//! llama or openai), as Vast's openai worker serves them: `/v1/completions` and
//! `/v1/chat/completions`, workload = `max_tokens` (0 when absent, as Vast counts it), parallel,
//! max_queue_time 600 s, health `/health`, benchmark: 250-word prompts with max_tokens 500,
//! 10 concurrent, 3 runs. Payloads may come wrapped as `{"input": {...}}`.

use serde_json::json;

use super::{filler_words, BenchmarkDef, Preset, RouteSpec, Workload};
use crate::readiness::LogLines;

fn route(path: &str) -> RouteSpec {
    RouteSpec {
        path: path.into(),
        model_path: path.into(),
        workload: Workload::FirstOf(vec![
            Workload::field("max_tokens"),
            Workload::field("max_completion_tokens"),
            Workload::Constant(0.0),
        ]),
        parallel: true,
        max_queue_time: Some(600.0),
        response: None,
    }
}

pub(super) fn preset() -> Preset {
    let model = std::env::var("MODEL_NAME")
        .or_else(|_| std::env::var("VLLM_MODEL"))
        .or_else(|_| std::env::var("SGLANG_MODEL"))
        .or_else(|_| std::env::var("LLAMA_MODEL"))
        .ok();
    Preset {
        name: "openai",
        routes: vec![route("/v1/completions"), route("/v1/chat/completions")],
        passthrough: None,
        health_endpoint: Some("/health".into()),
        unwrap_input: true,
        lines: LogLines {
            loaded: vec![
                "Application startup complete.".into(),
                "The server is fired up and ready to roll!".into(),
                "model loaded".into(),
            ],
            error: vec![
                "INFO exited: vllm".into(),
                "RuntimeError: Engine".into(),
                "Traceback (most recent call last):".into(),
            ],
            info: vec!["Loading".into(), "Downloading".into()],
        },
        benchmark: BenchmarkDef {
            route: "/v1/completions".into(),
            payloads: (0..10)
                .map(|i| {
                    json!({
                        "model": model,
                        "prompt": filler_words(250, i),
                        "temperature": 0.7,
                        "max_tokens": 500,
                    })
                })
                .collect(),
            runs: 3,
            concurrency: 10,
            warmup: true,
        },
        fill_model: true,
    }
}
