//! A simulated model server: every dialect Ferry's worker fronts (OpenAI-compatible as vLLM
//! and llama-server speak it, TGI, llama.cpp native, the ComfyUI API wrapper), on one port,
//! with deterministic output and knobs for latency and failure. Every test and benchmark runs
//! against it; `ferry sim-model` runs it as a process.
//!
//! # Routes
//!
//! | Route | Imitates |
//! |---|---|
//! | `POST /v1/completions`, `POST /v1/chat/completions`, `GET /v1/models` | vLLM / llama-server OpenAI API, SSE with `[DONE]` |
//! | `POST /generate`, `POST /generate_stream`, `GET /info` | TGI |
//! | `POST /completion` | llama-server native (stream ends with a `stop: true` event) |
//! | `POST /generate/sync` | ComfyUI API wrapper (`{"input": {...}}` → Result envelope) |
//! | `POST /echo` | answers the JSON it got (the "hello" preset) |
//! | `GET /health` | 503 while loading or unhealthy, then 200 `{"status":"ok"}` |
//! | `GET /sim/stats`, `POST /sim/control` | [`SimStats`]; change live knobs ([`SimControl`]) |
//!
//! # The fake model
//!
//! Token `i` (0-based) is always `"tok{i} "` ([`token_text`]); a request generates exactly its
//! limit (`max_tokens` / `max_completion_tokens`, `parameters.max_new_tokens`, `n_predict`,
//! ComfyUI steps), or `max_tokens_default`. Prompt tokens are whitespace-separated words of the
//! prompt, inputs or message contents ([`WordCount`]). A reply of `n` tokens takes
//! `ttft + n * token_delay`, streamed or not; a stream sends its headers at once, then one
//! frame per token as it is "generated".
//!
//! # Failure knobs
//!
//! Config ([`SimConfig`]), live ([`SimControl`]), or per request in an optional `"sim"` object of
//! the body ([`SimOverrides`]): stall before the first byte, injected status, error rate
//! (deterministic from the seed), cut the connection after N tokens, slow load, failing
//! health. A client going away mid-reply stops generation and counts as `cancelled`.
//!
//! # Request log
//!
//! With `--request-log PATH` every model request (a `POST` outside `/sim/`) is appended to
//! `PATH` on arrival, one line each (`path body`), so a test can tell which requests a model
//! saw and how often (the fault-injection suite counts requests executed twice with it).
//!
//! # Layout
//!
//! - `config`: [`SimConfig`], the `ferry sim-model` flags.
//! - `state`: [`SimState`] (atomics: counters, live knobs), the request guard, the model log.
//! - `tokens`: token text, prompt word counting, per-request [`SimOverrides`].
//! - `admit`: what every model request goes through before generating, and error bodies.
//! - `stream`: token-by-token bodies, pulled by hyper so nothing runs ahead of the client.
//! - `dialects/`: one module per imitated server (`openai`, `tgi`, `llama`, `comfy`) + `/echo`.
//! - `server`: the router, the accept loop, loading, and the test handle [`SimServer`].

mod admit;
mod config;
mod dialects;
mod server;
mod state;
mod stream;
mod tokens;

pub use admit::LOADING_MESSAGE;
pub use config::{
    parse_millis, parse_rate, ConfigError, SimConfig, DEFAULT_LOADED_LINE, DEFAULT_MAX_TOKENS,
};
pub use dialects::comfy::DEFAULT_STEPS;
pub use dialects::openai::MODEL_ID;
pub use server::{build_app, run, SimControl, SimServer};
pub use state::{SimKnobs, SimState, SimStats};
pub use stream::SimError;
pub use tokens::{
    count_words, generated_text, token_text, SimOverrides, WordCount, MAX_TOKENS_LIMIT,
};
