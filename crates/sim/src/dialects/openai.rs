//! OpenAI-compatible routes as vLLM and llama-server serve them: `/v1/completions`,
//! `/v1/chat/completions`, `/v1/models`.
//!
//! Streams send one chunk per token; the last token's chunk carries `finish_reason`. Chat
//! streams start with a `{"role":"assistant","content":""}` delta chunk (after the prefill),
//! as vLLM does, so they have `n + 1` chunks before any usage chunk. With
//! `stream_options.include_usage` a `"choices": []` chunk with `usage` follows (vLLM's form on
//! both routes), then `data: [DONE]`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::admit::{admit, loading_gate, parse, sleep, Admitted, Dialect, Rejection};
use crate::state::SimState;
use crate::stream::{cut_response, sse_event, sse_response, Frames, DONE};
use crate::tokens::{generated_text, token_limit, token_text, SimOverrides, WordCount};

/// Model id reported when the request names none.
pub const MODEL_ID: &str = "ferry-sim";

const D: Dialect = Dialect::OpenAi;

#[derive(Deserialize, Default)]
#[serde(default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CompletionRequest {
    model: Option<String>,
    prompt: WordCount,
    max_tokens: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    sim: Option<SimOverrides>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChatRequest {
    model: Option<String>,
    messages: WordCount,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    sim: Option<SimOverrides>,
}

/// Token usage, in the OpenAI shape.
#[derive(Serialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    fn new(prompt: u64, completion: u32) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: u64::from(completion),
            total_tokens: prompt + u64::from(completion),
        }
    }
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct DeltaChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// Every OpenAI body: `choices` varies by route and stream-ness.
#[derive(Serialize)]
struct Envelope<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Completions,
    Chat,
}

/// Everything a reply needs once the request is parsed and admitted.
struct Reply {
    route: Route,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    include_usage: bool,
}

impl Reply {
    fn envelope<'a, C: Serialize>(
        &'a self,
        object: &'static str,
        choices: C,
        usage: Option<Usage>,
    ) -> Envelope<'a, C> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    fn chunk_object(&self) -> &'static str {
        match self.route {
            Route::Completions => "text_completion",
            Route::Chat => "chat.completion.chunk",
        }
    }

    /// A stream chunk with one choice holding `text` (the delta for chat).
    fn chunk(&self, text: &str, finish_reason: Option<&'static str>) -> Bytes {
        match self.route {
            Route::Completions => sse_event(
                "data: ",
                &self.envelope(
                    self.chunk_object(),
                    [TextChoice {
                        index: 0,
                        text,
                        logprobs: None,
                        finish_reason,
                    }],
                    None,
                ),
            ),
            Route::Chat => sse_event(
                "data: ",
                &self.envelope(
                    self.chunk_object(),
                    [DeltaChoice {
                        index: 0,
                        delta: Delta {
                            role: None,
                            content: (!text.is_empty() || finish_reason.is_none()).then_some(text),
                        },
                        logprobs: None,
                        finish_reason,
                    }],
                    None,
                ),
            ),
        }
    }
}

impl Frames for Reply {
    fn head(&mut self) -> Option<Bytes> {
        (self.route == Route::Chat).then(|| {
            sse_event(
                "data: ",
                &self.envelope(
                    self.chunk_object(),
                    [DeltaChoice {
                        index: 0,
                        delta: Delta {
                            role: Some("assistant"),
                            content: Some(""),
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                ),
            )
        })
    }

    fn token(&mut self, i: u32, n: u32) -> Bytes {
        let finish = (i + 1 == n).then_some("length");
        self.chunk(&token_text(i), finish)
    }

    fn tail(&mut self, n: u32) -> Option<Bytes> {
        let mut buf = Vec::with_capacity(512);
        if n == 0 {
            // No token chunk carried the finish reason.
            buf.extend_from_slice(&self.chunk("", Some("length")));
        }
        if self.include_usage {
            let usage = Usage::new(self.prompt_tokens, n);
            let empty: [(); 0] = [];
            buf.extend_from_slice(&sse_event(
                "data: ",
                &self.envelope(self.chunk_object(), empty, Some(usage)),
            ));
        }
        buf.extend_from_slice(DONE);
        Some(Bytes::from(buf))
    }
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let mut guard = state.begin_request();
    let req: CompletionRequest = parse(D, &mut guard, &body)?;
    let admitted = admit(&state, D, guard, &req.sim.unwrap_or_default()).await?;
    let n = match token_limit(
        "max_tokens",
        req.max_tokens,
        state.config().max_tokens_default,
    ) {
        Ok(n) => n,
        Err(e) => return Err(admitted.reject(D, StatusCode::BAD_REQUEST, e.to_string())),
    };
    let reply = Reply {
        route: Route::Completions,
        id: format!("cmpl-sim-{}", admitted.guard.seq()),
        model: req.model.unwrap_or_else(|| MODEL_ID.to_owned()),
        created: unix_now(),
        prompt_tokens: req.prompt.0,
        include_usage: include_usage(req.stream_options.as_ref()),
    };
    Ok(respond(reply, admitted, n, req.stream.unwrap_or(false)).await)
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let mut guard = state.begin_request();
    let req: ChatRequest = parse(D, &mut guard, &body)?;
    let admitted = admit(&state, D, guard, &req.sim.unwrap_or_default()).await?;
    let (field, limit) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, v) => ("max_tokens", v),
    };
    let n = match token_limit(field, limit, state.config().max_tokens_default) {
        Ok(n) => n,
        Err(e) => return Err(admitted.reject(D, StatusCode::BAD_REQUEST, e.to_string())),
    };
    let reply = Reply {
        route: Route::Chat,
        id: format!("chatcmpl-sim-{}", admitted.guard.seq()),
        model: req.model.unwrap_or_else(|| MODEL_ID.to_owned()),
        created: unix_now(),
        prompt_tokens: req.messages.0,
        include_usage: include_usage(req.stream_options.as_ref()),
    };
    Ok(respond(reply, admitted, n, req.stream.unwrap_or(false)).await)
}

fn include_usage(options: Option<&StreamOptions>) -> bool {
    options.and_then(|o| o.include_usage).unwrap_or(false)
}

async fn respond(reply: Reply, mut admitted: Admitted, n: u32, stream: bool) -> Response {
    if stream {
        return sse_response(reply, admitted, n);
    }
    if let Some(k) = admitted.cut_at(n) {
        return cut_response(admitted, k).await;
    }
    sleep(admitted.generation_time(n)).await;
    let text = generated_text(n);
    let usage = Some(Usage::new(reply.prompt_tokens, n));
    admitted.guard.tokens(u64::from(n));
    admitted.guard.complete();
    match reply.route {
        Route::Completions => Json(reply.envelope(
            "text_completion",
            [TextChoice {
                index: 0,
                text: &text,
                logprobs: None,
                finish_reason: Some("length"),
            }],
            usage,
        ))
        .into_response(),
        Route::Chat => Json(reply.envelope(
            "chat.completion",
            [ChatChoice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content: &text,
                },
                logprobs: None,
                finish_reason: "length",
            }],
            usage,
        ))
        .into_response(),
    }
}

#[derive(Serialize)]
struct ModelCard {
    id: &'static str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    max_model_len: u32,
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: [ModelCard; 1],
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): State<SimState>) -> Response {
    if let Some(loading) = loading_gate(&state, D) {
        return loading;
    }
    Json(ModelList {
        object: "list",
        data: [ModelCard {
            id: MODEL_ID,
            object: "model",
            created: 0,
            owned_by: "ferry",
            max_model_len: crate::tokens::MAX_TOKENS_LIMIT,
        }],
    })
    .into_response()
}
