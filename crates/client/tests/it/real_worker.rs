//! The SDK against a real `ferry_worker` in front of `ferry_sim`, behind the fake `/route/`.

use std::time::Duration;

use ferry_client::{Error, RequestOptions, SessionOptions};
use ferry_sim::{SimConfig, SimServer};
use ferry_worker::{Listeners, Worker, WorkerArgs};
use futures_util::TryStreamExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::fake::{client, FakeControlPlane, RouteAnswer};

struct Stack {
    cp: FakeControlPlane,
    _sim: SimServer,
    stop: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn stack() -> Stack {
    let cp = FakeControlPlane::start(vec![]).await;
    let sim = SimServer::start(SimConfig::default()).await.unwrap();
    let cache = std::env::temp_dir().join(format!("ferry-client-it-{}", std::process::id()));
    let argv = [
        "worker",
        "--worker-port",
        "0",
        "--listen-host",
        "127.0.0.1",
        "--report-addr",
        &cp.url,
        "--model-server-url",
        &sim.url(),
        "--public-ipaddr",
        "127.0.0.1",
        "--assume-loaded-perf",
        "100",
        "--no-side-listener",
        "true",
        "--benchmark-cache",
        &cache.join("has_benchmark").display().to_string(),
    ]
    .map(str::to_owned);
    let (args, presets) = WorkerArgs::parse_from(argv).unwrap();
    let settings = args.validate(&presets).unwrap();
    let listeners = Listeners::bind(&settings).await.unwrap();
    let url = format!("http://{}", listeners.main.local_addr().unwrap());
    let worker = Worker::new(settings).unwrap();
    let keys = worker.state().keys().clone();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(worker.run_with(listeners, async move { s.cancelled().await }));
    for _ in 0..1000 {
        if keys.has_key() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(keys.has_key(), "worker never loaded the public key");
    cp.set_fallback(RouteAnswer::Ready(url, 11));
    Stack {
        cp,
        _sim: sim,
        stop,
    }
}

fn text_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect()
}

#[tokio::test]
async fn request_stream_and_session_through_a_real_worker() {
    let st = stack().await;
    let ep = client(&st.cp.url).endpoint("ep", "k");
    let opts = RequestOptions::default();

    let res = ep
        .request(
            "/v1/completions",
            &json!({"prompt": "a b", "max_tokens": 3}),
            &opts,
        )
        .await
        .unwrap();
    let v: Value = res.json().unwrap();
    assert_eq!(v["choices"][0]["text"], "tok0 tok1 tok2 ");
    assert_eq!(res.info.request_idx, 11);

    let events: Vec<Value> = ep
        .request_stream(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 4, "stream": true}),
            &opts,
        )
        .await
        .unwrap()
        .events()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(text_of(&events), "tok0 tok1 tok2 tok3 ");

    let routes_before = st.cp.bodies().len();
    let session = ep.session(&SessionOptions::default()).await.unwrap();
    assert_eq!(st.cp.bodies().len(), routes_before + 1);
    assert!(!session.id().is_empty());
    assert!(session.is_open().await.unwrap());
    let info = session.info().await.unwrap();
    assert_eq!(info.session_id, session.id());
    assert_eq!(&info.auth_data, session.auth_data());

    let res = session
        .request(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 2}),
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().unwrap()["choices"][0]["text"],
        "tok0 tok1 "
    );
    // Requests inside a session never go through /route/.
    assert_eq!(st.cp.bodies().len(), routes_before + 1);

    session.end().await.unwrap();
    assert!(!session.is_open().await.unwrap());
    let err = session
        .request("/v1/completions", &json!({"prompt": "a"}), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SessionClosed { .. }), "{err:?}");
    let err = session.end().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SessionClosed { .. } | Error::WorkerError { status: 400, .. }
        ),
        "{err:?}"
    );
}
