//! The provider against a scripted fake Vast, for what the emulator does not do: a create
//! that lands while its answer is lost, at once or visible only later.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::*;

/// How the next create's answer goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// `new_contract` as usual.
    Normal,
    /// 502, and the instance exists.
    LostLanded,
    /// 502, and the instance shows in the list only 300 ms later.
    LostLate,
    /// 502, the instance exists, and lists take 300 ms from now on.
    LostLandedSlowly,
    /// 502, and no instance.
    LostNothing,
}

#[derive(Debug, Default)]
struct Fake {
    answers: Vec<Answer>,
    creates: u32,
    instances: Vec<Value>,
    late: Vec<(tokio::time::Instant, Value)>,
    destroyed: Vec<i64>,
    slow_lists: bool,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(f: &Shared) -> std::sync::MutexGuard<'_, Fake> {
    f.lock().unwrap()
}

async fn bundles() -> Json<Value> {
    Json(json!({"offers": [
        {"id": 1, "machine_id": 10, "dph_total": 0.1},
        {"id": 2, "machine_id": 20, "dph_total": 0.2},
        {"id": 3, "machine_id": 30, "dph_total": 0.3},
    ]}))
}

async fn create(
    State(f): State<Shared>,
    Path(offer): Path<i64>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut g = lock(&f);
    g.creates += 1;
    let answer = if g.answers.is_empty() {
        Answer::Normal
    } else {
        g.answers.remove(0)
    };
    let id = 100 + i64::from(g.creates);
    let row = json!({"id": id, "machine_id": offer * 10, "label": body["label"],
                     "actual_status": "loading", "intended_status": "running"});
    match answer {
        Answer::Normal => {
            g.instances.push(row);
            (
                StatusCode::OK,
                Json(json!({"success": true, "new_contract": id})),
            )
        }
        Answer::LostLanded => {
            g.instances.push(row);
            (StatusCode::BAD_GATEWAY, Json(json!({})))
        }
        Answer::LostLate => {
            let at = tokio::time::Instant::now() + Duration::from_millis(300);
            g.late.push((at, row));
            (StatusCode::BAD_GATEWAY, Json(json!({})))
        }
        Answer::LostLandedSlowly => {
            g.instances.push(row);
            g.slow_lists = true;
            (StatusCode::BAD_GATEWAY, Json(json!({})))
        }
        Answer::LostNothing => (StatusCode::BAD_GATEWAY, Json(json!({}))),
    }
}

async fn list(State(f): State<Shared>) -> Json<Value> {
    let slow = lock(&f).slow_lists;
    if slow {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut g = lock(&f);
    let now = tokio::time::Instant::now();
    let (due, later): (Vec<_>, Vec<_>) = g.late.drain(..).partition(|(at, _)| *at <= now);
    g.late = later;
    g.instances.extend(due.into_iter().map(|(_, r)| r));
    Json(json!({"instances": g.instances, "next_token": null}))
}

async fn destroy(State(f): State<Shared>, Path(id): Path<i64>) -> (StatusCode, Json<Value>) {
    let mut g = lock(&f);
    let before = g.instances.len();
    g.instances.retain(|r| r["id"] != id);
    if g.instances.len() == before {
        return (StatusCode::NOT_FOUND, Json(json!({"success": false})));
    }
    g.destroyed.push(id);
    (StatusCode::OK, Json(json!({"success": true})))
}

async fn start(answers: Vec<Answer>) -> (Shared, VastProvider) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        answers,
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/api/v0/bundles/", post(bundles))
        .route("/api/v0/asks/{offer}/", put(create))
        .route("/api/v1/instances/", get(list))
        .route("/api/v0/instances/{id}/", delete(destroy))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let provider = VastProvider::new(VastConfig {
        api_url: url,
        api_key: Secret::new("k"),
        plane: "t".into(),
        poll_interval: Duration::from_millis(20),
        load_deadline: Duration::from_secs(60),
        create_attempts: 3,
        retry: RetryPolicy {
            deadline: Duration::from_secs(2),
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            request_timeout: Duration::from_secs(2),
        },
        bad_machine_ttl: Duration::from_secs(60),
        backend: "openai".into(),
    })
    .unwrap();
    // As the control plane does at start: adopt (nothing), which also starts the sweep.
    assert_eq!(
        provider.adopt(Vec::new(), Vec::new()).await,
        Some(Vec::new())
    );
    (fake, provider)
}

fn spec(worker_id: i64) -> LaunchSpec {
    let mut vast = Map::new();
    vast.insert("image".into(), json!("img"));
    LaunchSpec {
        worker_id,
        mtoken: "m".into(),
        control_url: "http://127.0.0.1:1".into(),
        endpoint: "e".into(),
        workergroup_id: 1,
        model_cmd: None,
        worker_cmd: None,
        backend: None,
        env: Default::default(),
        vast,
    }
}

async fn until(f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_found_by_its_label() {
    let (fake, p) = start(vec![Answer::LostLanded]).await;
    p.launch(spec(7)).await.unwrap();
    assert_eq!(lock(&fake).creates, 1, "not created twice");
    assert_eq!(p.inner.fleet().instance(7), Some(101));
    p.destroy(7).await.unwrap();
    assert_eq!(lock(&fake).destroyed, vec![101]);
    p.shutdown().await;
}

#[tokio::test]
async fn a_lost_create_that_did_not_land_is_tried_on_the_next_offer() {
    let (fake, p) = start(vec![Answer::LostNothing]).await;
    p.launch(spec(7)).await.unwrap();
    {
        let g = lock(&fake);
        assert_eq!(g.creates, 2);
        assert_eq!(g.instances.len(), 1);
        assert_eq!(g.instances[0]["machine_id"], 20, "offer 1 is not retried");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn a_lost_create_that_shows_up_late_is_swept_as_a_duplicate() {
    let (fake, p) = start(vec![Answer::LostLate]).await;
    p.launch(spec(7)).await.unwrap();
    assert_eq!(p.inner.fleet().instance(7), Some(102));
    until(|| lock(&fake).destroyed == vec![101]).await;
    assert_eq!(lock(&fake).instances.len(), 1);
    assert!(p.doomed().is_empty());
    p.shutdown().await;
}

#[tokio::test]
async fn a_launch_that_fails_leaves_nothing_behind() {
    let (fake, p) = start(vec![
        Answer::LostNothing,
        Answer::LostNothing,
        Answer::LostLate,
    ])
    .await;
    let e = p.launch(spec(7)).await.unwrap_err().to_string();
    assert!(e.contains("after 3 create attempt(s)"), "{e}");
    assert_eq!(p.tracked(), 0);
    // The third create landed after all: an instance of no worker, swept.
    until(|| lock(&fake).destroyed == vec![103]).await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_destroy_during_the_launch_destroys_what_it_made() {
    let (fake, p) = start(vec![Answer::LostLandedSlowly]).await;
    // The destroy lands between the lost create and the look by label.
    let p = Arc::new(p);
    let launching = {
        let p = p.clone();
        tokio::spawn(async move { p.launch(spec(7)).await })
    };
    until(|| lock(&fake).creates == 1).await;
    p.destroy(7).await.unwrap();
    let r = launching.await.unwrap();
    assert!(r.is_err(), "{r:?}");
    until(|| lock(&fake).instances.is_empty()).await;
    assert_eq!(lock(&fake).destroyed, vec![101]);
}
