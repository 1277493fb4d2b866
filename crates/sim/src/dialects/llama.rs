//! llama.cpp's native `POST /completion`.
//!
//! Streams send `data: {"content": ..., "stop": false, ...}` per token and a final
//! `"stop": true` event with the summary and `timings`; like llama-server, no `[DONE]`.
//! `n_predict` absent or negative (llama.cpp's "until EOS") means the default limit.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::admit::{admit, parse, sleep, Admitted, Dialect, Rejection};
use crate::dialects::openai::MODEL_ID;
use crate::state::SimState;
use crate::stream::{cut_response, sse_event, sse_response, Frames};
use crate::tokens::{generated_text, token_limit, token_text, SimOverrides, WordCount};

const D: Dialect = Dialect::Llama;

#[derive(Deserialize, Default)]
#[serde(default)]
struct CompletionRequest {
    prompt: WordCount,
    n_predict: Option<i64>,
    stream: Option<bool>,
    sim: Option<SimOverrides>,
}

#[derive(Serialize)]
struct TokenEvent<'a> {
    index: u32,
    content: &'a str,
    tokens: [u32; 1],
    stop: bool,
    id_slot: i32,
    tokens_predicted: u32,
    tokens_evaluated: u64,
}

#[derive(Serialize)]
struct GenerationSettings {
    n_predict: u32,
    stream: bool,
}

#[derive(Serialize)]
struct Timings {
    cache_n: u32,
    prompt_n: u64,
    prompt_ms: f64,
    prompt_per_token_ms: f64,
    prompt_per_second: f64,
    predicted_n: u32,
    predicted_ms: f64,
    predicted_per_token_ms: f64,
    predicted_per_second: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `total_ms / n` and `n / total_s`, zero where undefined.
fn rates(n: f64, total_ms: f64) -> (f64, f64) {
    if n > 0.0 && total_ms > 0.0 {
        (total_ms / n, n * 1000.0 / total_ms)
    } else {
        (0.0, 0.0)
    }
}

/// The summary object: the whole non-stream reply, and the stream's final event.
#[derive(Serialize)]
struct Summary<'a> {
    index: u32,
    content: &'a str,
    tokens: [u32; 0],
    id_slot: i32,
    stop: bool,
    model: &'static str,
    tokens_predicted: u32,
    tokens_evaluated: u64,
    generation_settings: GenerationSettings,
    prompt: &'static str,
    has_new_line: bool,
    truncated: bool,
    stop_type: &'static str,
    stopping_word: &'static str,
    tokens_cached: u64,
    timings: Timings,
}

/// Everything a reply needs once the request is admitted.
struct Reply {
    prompt_tokens: u64,
    ttft: Duration,
    token_delay: Duration,
    stream: bool,
}

impl Reply {
    fn summary<'a>(&self, content: &'a str, n: u32) -> Summary<'a> {
        let prompt_ms = ms(self.ttft);
        let predicted_ms = ms(self.token_delay.saturating_mul(n));
        // Token counts are far below 2^52, so the cast is exact.
        let (prompt_n, predicted_n) = (self.prompt_tokens as f64, f64::from(n));
        let (prompt_per_token_ms, prompt_per_second) = rates(prompt_n, prompt_ms);
        let (predicted_per_token_ms, predicted_per_second) = rates(predicted_n, predicted_ms);
        Summary {
            index: 0,
            content,
            tokens: [],
            id_slot: 0,
            stop: true,
            model: MODEL_ID,
            tokens_predicted: n,
            tokens_evaluated: self.prompt_tokens,
            generation_settings: GenerationSettings {
                n_predict: n,
                stream: self.stream,
            },
            prompt: "",
            has_new_line: false,
            truncated: false,
            stop_type: "limit",
            stopping_word: "",
            tokens_cached: self.prompt_tokens + u64::from(n),
            timings: Timings {
                cache_n: 0,
                prompt_n: self.prompt_tokens,
                prompt_ms,
                prompt_per_token_ms,
                prompt_per_second,
                predicted_n: n,
                predicted_ms,
                predicted_per_token_ms,
                predicted_per_second,
            },
        }
    }
}

impl Frames for Reply {
    fn token(&mut self, i: u32, _n: u32) -> Bytes {
        let text = token_text(i);
        sse_event(
            "data: ",
            &TokenEvent {
                index: 0,
                content: &text,
                tokens: [i],
                stop: false,
                id_slot: -1,
                tokens_predicted: i + 1,
                tokens_evaluated: self.prompt_tokens,
            },
        )
    }

    fn tail(&mut self, n: u32) -> Option<Bytes> {
        Some(sse_event("data: ", &self.summary("", n)))
    }
}

/// `POST /completion`.
pub(crate) async fn completion(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let mut guard = state.begin_request();
    let req: CompletionRequest = parse(D, &mut guard, &body)?;
    let admitted = admit(&state, D, guard, &req.sim.unwrap_or_default()).await?;
    let limit = req.n_predict.filter(|n| *n >= 0);
    let n = match token_limit("n_predict", limit, state.config().max_tokens_default) {
        Ok(n) => n,
        Err(e) => return Err(admitted.reject(D, StatusCode::BAD_REQUEST, e.to_string())),
    };
    let reply = Reply {
        prompt_tokens: req.prompt.0,
        ttft: admitted.ttft,
        token_delay: admitted.token_delay,
        stream: req.stream.unwrap_or(false),
    };
    if reply.stream {
        return Ok(sse_response(reply, admitted, n));
    }
    Ok(respond(reply, admitted, n).await)
}

async fn respond(reply: Reply, mut admitted: Admitted, n: u32) -> Response {
    if let Some(k) = admitted.cut_at(n) {
        return cut_response(admitted, k).await;
    }
    sleep(admitted.generation_time(n)).await;
    let text = generated_text(n);
    admitted.guard.tokens(u64::from(n));
    admitted.guard.complete();
    Json(reply.summary(&text, n)).into_response()
}
