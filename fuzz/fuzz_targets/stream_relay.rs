//! Streamed response bodies, split into chunks anywhere: the client's SSE / NDJSON decoder
//! (`ferry_client::EventDecoder`) and the worker's SSE event counter
//! (`ferry_worker::telemetry::SseEvents`, fed every chunk `RelayBody` relays).
//!
//! Input: one byte `n`, then `n` chunk sizes, then the body.
//!
//! Checks (chunk-split invariance, against a one-line-at-a-time reference):
//! - the decoder yields the same events whether the body arrives whole, in the fuzzer's
//!   chunks, or one byte at a time, and those are exactly the lines of the body that are JSON
//!   after trimming and stripping `data:` (the rule in `stream.rs`'s module docs);
//! - the worker counts the same number of events for every chunking: the lines that start with
//!   `data:`.

#![no_main]

use ferry_client::EventDecoder;
use ferry_fuzz::split;
use ferry_worker::telemetry::SseEvents;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn decode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Value> {
    let mut d = EventDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c);
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

fn count<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut c = SseEvents::new();
    for chunk in chunks {
        c.feed(chunk);
    }
    c.count()
}

/// The reference: each line on its own.
fn reference(body: &[u8]) -> (Vec<Value>, u64) {
    let mut events = Vec::new();
    let mut data_lines = 0;
    for line in body.split(|b| *b == b'\n') {
        if line.starts_with(b"data:") {
            data_lines += 1;
        }
        let mut l = line.trim_ascii();
        if let Some(rest) = l.strip_prefix(b"data:") {
            l = rest.trim_ascii();
        }
        if let Ok(v) = serde_json::from_slice(l) {
            events.push(v);
        }
    }
    (events, data_lines)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, body) = rest.split_at(n);
    let chunks = split(body, sizes);

    let (want_events, want_count) = reference(body);
    assert_eq!(decode([body]), want_events, "whole body");
    assert_eq!(
        decode(chunks.iter().copied()),
        want_events,
        "chunks {sizes:?}"
    );
    assert_eq!(decode(body.chunks(1)), want_events, "byte by byte");

    assert_eq!(count([body]), want_count, "whole body");
    assert_eq!(
        count(chunks.iter().copied()),
        want_count,
        "chunks {sizes:?}"
    );
    assert_eq!(count(body.chunks(1)), want_count, "byte by byte");
});
