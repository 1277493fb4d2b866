//! Streaming bodies: raw bytes as they arrive, or JSON events parsed from SSE / NDJSON.
//!
//! The parser follows Vast's client (`_iter_sse_json`): split on `\n`, trim, drop empty lines,
//! strip a leading `data:`, parse as JSON, and skip what does not parse (keepalives, `[DONE]`,
//! `event:` lines, comments). Whatever is left when the body ends is parsed too.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

use crate::error::Error;

/// Incremental SSE / NDJSON decoder: feed chunks with [`EventDecoder::push`], take events with
/// [`EventDecoder::next_event`]. Chunk boundaries may fall anywhere, even inside a UTF-8
/// character.
#[derive(Debug, Default)]
pub struct EventDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    ready: VecDeque<Value>,
}

impl EventDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk of the body and decodes every complete line in it.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(pos) = self.buf[from..].iter().position(|b| *b == b'\n') {
            let end = from + pos;
            if let Some(v) = parse_line(&self.buf[start..end]) {
                self.ready.push_back(v);
            }
            start = end + 1;
            from = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
    }

    /// Marks the end of the body: the unterminated tail, if any, is decoded.
    pub fn finish(&mut self) {
        if let Some(v) = parse_line(&self.buf) {
            self.ready.push_back(v);
        }
        self.buf.clear();
        self.scanned = 0;
    }

    /// The next decoded event, if one is complete.
    pub fn next_event(&mut self) -> Option<Value> {
        self.ready.pop_front()
    }
}

fn parse_line(line: &[u8]) -> Option<Value> {
    let mut line = line.trim_ascii();
    if line.is_empty() {
        return None;
    }
    if let Some(rest) = line.strip_prefix(b"data:") {
        line = rest.trim_ascii();
    }
    serde_json::from_slice(line).ok()
}

type BoxedBytes = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// A response body as a stream of raw chunks, as the worker sends them.
///
/// A worker silent for longer than `idle` (the request's `worker_timeout`) ends the stream
/// with [`Error::StreamStalled`]: a worker cut off by a partition sends no FIN, so without a
/// bound the reader would wait forever.
pub struct ByteStream {
    url: String,
    inner: BoxedBytes,
    idle: Duration,
    silence: Pin<Box<tokio::time::Sleep>>,
    stalled: bool,
}

impl ByteStream {
    pub(crate) fn new(url: String, response: reqwest::Response, idle: Duration) -> Self {
        ByteStream {
            url,
            inner: Box::pin(response.bytes_stream()),
            idle,
            silence: Box::pin(tokio::time::sleep(idle)),
            stalled: false,
        }
    }

    /// Parses the chunks as SSE / NDJSON JSON events.
    pub fn events(self) -> EventStream {
        EventStream {
            bytes: self,
            decoder: EventDecoder::new(),
            done: false,
        }
    }
}

impl std::fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteStream")
            .field("url", &self.url)
            .finish()
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stalled {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Err(source))) => Poll::Ready(Some(Err(Error::Transport {
                url: this.url.clone(),
                source,
            }))),
            Poll::Ready(Some(Ok(b))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.silence.as_mut().reset(next);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.silence.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.stalled = true;
                    Poll::Ready(Some(Err(Error::StreamStalled {
                        url: this.url.clone(),
                        idle: this.idle,
                    })))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// A response body as a stream of JSON events (see the module docs for the rules).
#[derive(Debug)]
pub struct EventStream {
    bytes: ByteStream,
    decoder: EventDecoder,
    done: bool,
}

impl Stream for EventStream {
    type Item = Result<Value, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(v) = this.decoder.next_event() {
                return Poll::Ready(Some(Ok(v)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.bytes).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.decoder.push(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.decoder.finish();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_in_pieces(body: &[u8], piece: usize) -> Vec<Value> {
        let mut d = EventDecoder::new();
        let mut out = Vec::new();
        for chunk in body.chunks(piece) {
            d.push(chunk);
            while let Some(v) = d.next_event() {
                out.push(v);
            }
        }
        d.finish();
        while let Some(v) = d.next_event() {
            out.push(v);
        }
        out
    }

    #[test]
    fn sse_with_keepalives_done_and_any_chunking() {
        let body = "event: message\ndata: {\"a\":\"é\"}\n\n: keepalive\n\ndata:{\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        for piece in 1..body.len() {
            assert_eq!(
                decode_in_pieces(body.as_bytes(), piece),
                vec![json!({"a": "é"}), json!({"b": 2})],
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn ndjson_with_unterminated_tail() {
        let body = b"{\"n\":1}\n\n  {\"n\":2}  \nnot json\n{\"n\":3}";
        for piece in [1, 3, 7, 100] {
            assert_eq!(
                decode_in_pieces(body, piece),
                vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
            );
        }
    }
}
