//! One module per imitated server; `/echo` lives here.

pub(crate) mod comfy;
pub(crate) mod llama;
pub(crate) mod openai;
pub(crate) mod tgi;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::admit::{admit, sleep, Dialect, Rejection};
use crate::state::SimState;
use crate::tokens::SimOverrides;

#[derive(Deserialize, Default)]
#[serde(default)]
struct EchoProbe {
    sim: Option<SimOverrides>,
}

/// `POST /echo`: answers with the JSON body it got, byte for byte (an empty body as `{}`),
/// after `ttft`. Any JSON value is accepted; only an object can carry `sim` overrides.
pub(crate) async fn echo(
    State(state): State<SimState>,
    body: Bytes,
) -> Result<Response, Rejection> {
    const D: Dialect = Dialect::Echo;
    let mut guard = state.begin_request();
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    let sim = match serde_json::from_slice::<EchoProbe>(&body) {
        Ok(probe) => probe.sim.unwrap_or_default(),
        Err(_) => match serde_json::from_slice::<IgnoredAny>(&body) {
            Ok(_) => SimOverrides::default(),
            Err(e) => {
                guard.fail();
                return Err(D.rejection(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")));
            }
        },
    };
    let mut admitted = admit(&state, D, guard, &sim).await?;
    sleep(admitted.generation_time(0)).await;
    admitted.guard.complete();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
