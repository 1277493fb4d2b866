//! SSE and NDJSON answers, chunked in the middle of lines.

use std::time::Duration;

use bytes::Bytes;
use ferry_client::RequestOptions;
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::fake::{client, FakeControlPlane, FakeWorker, RouteAnswer, WorkerAnswer};

const DELAY: Duration = Duration::from_millis(5);

/// The answer, plus the fakes, which must outlive the body.
async fn stream_from(
    answer: WorkerAnswer,
) -> (
    ferry_client::StreamingResponse,
    FakeWorker,
    FakeControlPlane,
) {
    let w = FakeWorker::start(vec![answer]).await;
    let cp = FakeControlPlane::start(vec![RouteAnswer::Ready(w.url.clone(), 2)]).await;
    let res = client(&cp.url)
        .endpoint("ep", "k")
        .request_stream(
            "/v1/completions",
            &json!({"stream": true}),
            &RequestOptions::default(),
        )
        .await
        .unwrap();
    (res, w, cp)
}

#[tokio::test]
async fn sse_events_across_chunk_boundaries() {
    let chunks = vec![
        "data: {\"choices\":[{\"te",
        "xt\":\"tok0 \"}]}\n",
        "\n: keepalive\n\nda",
        "ta: {\"choices\":[{\"text\":\"tok1 \"}]}\n\ndata: [DO",
        "NE]\n\n",
    ];
    let (res, _w, _cp) =
        stream_from(WorkerAnswer::Chunks("text/event-stream", chunks, DELAY)).await;
    assert!(res.info.is_stream());
    let events: Vec<Value> = res.events().try_collect().await.unwrap();
    assert_eq!(
        events,
        vec![
            json!({"choices": [{"text": "tok0 "}]}),
            json!({"choices": [{"text": "tok1 "}]})
        ]
    );
}

#[tokio::test]
async fn ndjson_events_with_an_unterminated_last_line() {
    let chunks = vec![
        "{\"token\":{\"te",
        "xt\":\"a\"}}\n{\"tok",
        "en\":{\"text\":\"b\"}}",
    ];
    let (res, _w, _cp) =
        stream_from(WorkerAnswer::Chunks("application/x-ndjson", chunks, DELAY)).await;
    let events: Vec<Value> = res.events().try_collect().await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["token"]["text"], "b");
}

#[tokio::test]
async fn raw_bytes_arrive_chunk_by_chunk() {
    let chunks = vec!["one ", "two ", "three"];
    let (res, _w, _cp) = stream_from(WorkerAnswer::Chunks(
        "text/plain",
        chunks,
        Duration::from_millis(30),
    ))
    .await;
    let mut body = res.bytes();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(first, Bytes::from_static(b"one "));
    let rest: Vec<Bytes> = body.try_collect().await.unwrap();
    assert_eq!(rest.concat(), b"two three");
}

#[tokio::test]
async fn a_stream_silent_past_the_worker_timeout_ends_with_an_error() {
    let chunks = vec!["data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"];
    // The worker sends its headers at once, then nothing for 3 s: a partitioned worker.
    let w = FakeWorker::start(vec![WorkerAnswer::Chunks(
        "text/event-stream",
        chunks,
        Duration::from_secs(3),
    )])
    .await;
    let cp = FakeControlPlane::start(vec![RouteAnswer::Ready(w.url.clone(), 2)]).await;
    let opts = RequestOptions {
        worker_timeout: Duration::from_millis(300),
        ..RequestOptions::default()
    };
    let res = client(&cp.url)
        .endpoint("ep", "k")
        .request_stream("/v1/completions", &json!({"stream": true}), &opts)
        .await
        .unwrap();
    let mut events = res.events();
    let first = events.next().await.unwrap();
    let e = first.unwrap_err();
    assert_eq!(e.code(), "stream_stalled", "{e}");
    assert!(e.to_string().contains("nothing for 0.3s"), "{e}");
    assert!(
        events.next().await.is_none(),
        "the stream ends after the stall"
    );
}
