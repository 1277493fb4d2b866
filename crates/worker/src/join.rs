//! Joining an external workergroup of a Ferry control plane (`FERRY_JOIN_TOKEN`).
//!
//! Before it serves, a worker holding a join token posts `{"token", "url"}` to the first
//! REPORT_ADDR's `/join/` and takes the worker id and master token from the answer, in place of
//! CONTAINER_ID and MASTER_TOKEN. While the control plane cannot be reached, or answers 5xx or
//! 409 (the workergroup is full), it retries with back-off (1 s doubling to 30 s). A refused
//! token (401) or a refused body (400) is final: the worker exits with a configuration error.
//! After joining, the reports carry the new identity, and the answers to them carry the control
//! plane's `cold` directive (see [`crate::report`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Secret, Settings};

/// Why joining failed for good.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The control plane refused the token or the request.
    #[error("the control plane at {addr} refused to join this worker ({status}): {message}")]
    Refused {
        /// Where.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The control plane's `error` text.
        message: String,
    },
}

#[derive(Serialize)]
struct JoinBody<'a> {
    token: &'a str,
    url: &'a str,
}

#[derive(Deserialize)]
struct JoinAnswer {
    worker_id: i64,
    mtoken: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    workergroup_id: i64,
}

fn error_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// Joins with the settings' join token, if any, and puts the identity it gets into `settings`.
/// Returns `Ok(false)` if `stop` fired first.
pub async fn join(
    settings: &mut Settings,
    http: &reqwest::Client,
    stop: &CancellationToken,
) -> Result<bool, JoinError> {
    let Some(token) = settings.join_token.clone() else {
        return Ok(true);
    };
    let Some(addr) = settings.report_addrs.first().cloned() else {
        return Ok(true);
    };
    let url = format!("{}/join/", addr.trim_end_matches('/'));
    let body = JoinBody {
        token: token.expose(),
        url: &settings.public_url,
    };
    let mut delay = Duration::from_secs(1);
    loop {
        let wait = match http.post(&url).json(&body).send().await {
            Ok(res) => {
                let status = res.status();
                let bytes = res.bytes().await.unwrap_or_default();
                if status.is_success() {
                    match serde_json::from_slice::<JoinAnswer>(&bytes) {
                        Ok(a) => {
                            tracing::info!(
                                worker = a.worker_id,
                                endpoint = %a.endpoint,
                                workergroup = a.workergroup_id,
                                url = %settings.public_url,
                                "joined"
                            );
                            settings.container_id = a.worker_id;
                            settings.master_token = Secret::new(a.mtoken);
                            return Ok(true);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable join answer; retrying");
                        }
                    }
                } else if matches!(status.as_u16(), 400 | 401 | 403 | 404) {
                    return Err(JoinError::Refused {
                        addr,
                        status: status.as_u16(),
                        message: error_text(&bytes),
                    });
                } else {
                    tracing::warn!(
                        status = status.as_u16(),
                        error = %error_text(&bytes),
                        retry_in = ?delay,
                        "join not accepted yet"
                    );
                }
                delay
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %e, retry_in = ?delay, "cannot reach the control plane to join");
                delay
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
