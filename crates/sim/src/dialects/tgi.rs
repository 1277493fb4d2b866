//! Text Generation Inference routes: `/generate`, `/generate_stream`, `/info`.
//!
//! `/generate_stream` sends TGI's `data:{...}` events (no space after the colon), one per
//! token; the last token's event carries `generated_text` and `details`. TGI refuses
//! `max_new_tokens: 0` with a 422 validation error, and so does the sim.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::admit::{admit, loading_gate, parse, sleep, Admitted, Dialect, Rejection};
use crate::dialects::openai::MODEL_ID;
use crate::state::SimState;
use crate::stream::{cut_response, sse_event, sse_response, Frames};
use crate::tokens::{generated_text, token_limit, token_text, SimOverrides, WordCount};

const D: Dialect = Dialect::Tgi;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Parameters {
    max_new_tokens: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GenerateRequest {
    inputs: WordCount,
    parameters: Option<Parameters>,
    sim: Option<SimOverrides>,
}

#[derive(Serialize)]
struct Details {
    finish_reason: &'static str,
    generated_tokens: u32,
    seed: Option<u64>,
    prefill: [(); 0],
    tokens: [(); 0],
}

#[derive(Serialize)]
struct Generated<'a> {
    generated_text: &'a str,
    details: Details,
}

#[derive(Serialize)]
struct Token<'a> {
    id: u32,
    text: &'a str,
    logprob: f32,
    special: bool,
}

#[derive(Serialize)]
struct StreamDetails {
    finish_reason: &'static str,
    generated_tokens: u32,
    seed: Option<u64>,
    input_length: u64,
}

#[derive(Serialize)]
struct StreamEvent<'a> {
    index: u32,
    token: Token<'a>,
    generated_text: Option<&'a str>,
    details: Option<StreamDetails>,
    top_tokens: Option<()>,
}

struct TgiFrames {
    input_length: u64,
}

impl Frames for TgiFrames {
    fn token(&mut self, i: u32, n: u32) -> Bytes {
        let text = token_text(i);
        let last = i + 1 == n;
        let full = if last {
            generated_text(n)
        } else {
            String::new()
        };
        sse_event(
            "data:",
            &StreamEvent {
                index: i,
                token: Token {
                    id: i,
                    text: &text,
                    logprob: 0.0,
                    special: false,
                },
                generated_text: last.then_some(full.as_str()),
                details: last.then_some(StreamDetails {
                    finish_reason: "length",
                    generated_tokens: n,
                    seed: None,
                    input_length: self.input_length,
                }),
                top_tokens: None,
            },
        )
    }

    fn tail(&mut self, _n: u32) -> Option<Bytes> {
        None
    }
}

/// Parses and admits a TGI request: the admitted request, its token count and prompt size.
async fn accept(state: &SimState, body: &[u8]) -> Result<(Admitted, u32, u64), Rejection> {
    let mut guard = state.begin_request();
    let req: GenerateRequest = parse(D, &mut guard, body)?;
    let admitted = admit(state, D, guard, &req.sim.unwrap_or_default()).await?;
    let limit = req.parameters.and_then(|p| p.max_new_tokens);
    match token_limit("max_new_tokens", limit, state.config().max_tokens_default) {
        Ok(0) => Err(admitted.reject(
            D,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Input validation error: `max_new_tokens` must be strictly positive",
        )),
        Ok(n) => Ok((admitted, n, req.inputs.0)),
        Err(e) => Err(admitted.reject(
            D,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Input validation error: {e}"),
        )),
    }
}

/// `POST /generate`.
pub(crate) async fn generate(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (mut admitted, n, _) = accept(&state, &body).await?;
    if let Some(k) = admitted.cut_at(n) {
        return Ok(cut_response(admitted, k).await);
    }
    sleep(admitted.generation_time(n)).await;
    let text = generated_text(n);
    admitted.guard.tokens(u64::from(n));
    admitted.guard.complete();
    Ok(Json(Generated {
        generated_text: &text,
        details: Details {
            finish_reason: "length",
            generated_tokens: n,
            seed: None,
            prefill: [],
            tokens: [],
        },
    })
    .into_response())
}

/// `POST /generate_stream`.
pub(crate) async fn generate_stream(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (admitted, n, input_length) = accept(&state, &body).await?;
    Ok(sse_response(TgiFrames { input_length }, admitted, n))
}

#[derive(Serialize)]
struct Info {
    model_id: &'static str,
    model_sha: Option<()>,
    model_dtype: &'static str,
    model_device_type: &'static str,
    model_pipeline_tag: &'static str,
    max_concurrent_requests: u32,
    max_best_of: u32,
    max_stop_sequences: u32,
    max_input_tokens: u32,
    max_total_tokens: u32,
    validation_workers: u32,
    max_client_batch_size: u32,
    router: &'static str,
    version: &'static str,
    sha: Option<()>,
    docker_label: Option<()>,
}

/// `GET /info`.
pub(crate) async fn info(State(state): State<SimState>) -> Response {
    if let Some(loading) = loading_gate(&state, D) {
        return loading;
    }
    Json(Info {
        model_id: MODEL_ID,
        model_sha: None,
        model_dtype: "float16",
        model_device_type: "cpu",
        model_pipeline_tag: "text-generation",
        max_concurrent_requests: 128,
        max_best_of: 2,
        max_stop_sequences: 4,
        max_input_tokens: crate::tokens::MAX_TOKENS_LIMIT,
        max_total_tokens: crate::tokens::MAX_TOKENS_LIMIT * 2,
        validation_workers: 2,
        max_client_batch_size: 4,
        router: "text-generation-router",
        version: concat!("ferry-sim ", env!("CARGO_PKG_VERSION")),
        sha: None,
        docker_label: None,
    })
    .into_response()
}
