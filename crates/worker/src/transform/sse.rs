//! Reshaping an SSE stream event by event, as its chunks arrive.
//!
//! Chunks are cut anywhere (mid-line, mid-`\r\n`), so the reshaper keeps the bytes of the one
//! event not yet complete, and nothing more: each complete event leaves at once, so the stream
//! is never buffered. An event whose `data:` lines join into JSON is rewritten as one
//! `data: <json>` line, its other lines (`event:`, `id:`, `retry:`) kept in order; every other
//! event (`data: [DONE]`, comments, text) passes through byte for byte.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::Transform;

/// The per-stream state.
#[derive(Debug)]
pub struct SseReshaper {
    transform: Arc<Transform>,
    pending: BytesMut,
    /// Where the scan for the pending event's end resumes: the start of its last line seen.
    scanned: usize,
    limit: usize,
}

/// An event grew past the limit before it ended.
#[derive(Debug, thiserror::Error)]
#[error("an SSE event of the model's stream is larger than {0} bytes")]
pub struct EventTooLarge(pub usize);

impl SseReshaper {
    /// A reshaper that refuses events longer than `limit` bytes.
    pub fn new(transform: Arc<Transform>, limit: usize) -> Self {
        Self {
            transform,
            pending: BytesMut::new(),
            scanned: 0,
            limit,
        }
    }

    /// Takes a chunk of the stream; returns what can go to the client now (possibly empty).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        loop {
            match event_end(&self.pending, self.scanned) {
                Ok(end) => {
                    let event = self.pending.split_to(end);
                    self.scanned = 0;
                    reshape_event(&self.transform, &event, &mut out);
                }
                Err(resume) => {
                    self.scanned = resume;
                    break;
                }
            }
        }
        if self.pending.len() > self.limit {
            return Err(EventTooLarge(self.limit));
        }
        Ok(out.freeze())
    }

    /// The stream ended: an unterminated last event, as it came (a client would not dispatch it).
    pub fn finish(&mut self) -> Bytes {
        self.scanned = 0;
        let rest = self.pending.split();
        rest.freeze()
    }
}

/// The end (exclusive, after the blank line) of the first complete event in `buf`, scanning
/// from `from`, a line start with no blank line before it; or, when the event is not complete
/// yet, the start of its last line (where the next scan resumes).
fn event_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut line_start = from;
    let mut i = from;
    while i < buf.len() {
        let next = match buf[i] {
            b'\n' => i + 1,
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => i + 2,
                Some(_) => i + 1,
                // A `\r` at the end: a `\n` may follow in the next chunk.
                None => return Err(line_start),
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Ok(next);
        }
        line_start = next;
        i = next;
    }
    Err(line_start)
}

/// Lines of one event, without terminators; empty lines dropped.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|l| l.split('\r'))
        .filter(|l| !l.is_empty())
}

/// The value of a `data` line (`data:x`, `data: x`, or a bare `data`).
fn data_value(line: &str) -> Option<&str> {
    if line == "data" {
        return Some("");
    }
    let v = line.strip_prefix("data:")?;
    Some(v.strip_prefix(' ').unwrap_or(v))
}

fn reshape_event(t: &Transform, event: &[u8], out: &mut BytesMut) {
    let Some(json) = reshaped_data(t, event) else {
        out.extend_from_slice(event);
        return;
    };
    let text = std::str::from_utf8(event).unwrap_or_default();
    let mut wrote = false;
    for line in lines(text) {
        if data_value(line).is_some() {
            if !wrote {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json.as_bytes());
                out.extend_from_slice(b"\n");
                wrote = true;
            }
        } else {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\n");
        }
    }
    out.extend_from_slice(b"\n");
}

/// The event's data reshaped, when it is JSON.
fn reshaped_data(t: &Transform, event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for v in lines(text).filter_map(data_value) {
        match &mut data {
            None => data = Some(v.to_owned()),
            Some(d) => {
                d.push('\n');
                d.push_str(v);
            }
        }
    }
    let value: Value = serde_json::from_str(&data?).ok()?;
    Some(t.reshape(value).to_string())
}
