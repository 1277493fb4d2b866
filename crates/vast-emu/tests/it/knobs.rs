//! Every failure knob, from Rust and over `/_emu/`.

use std::num::NonZeroU32;
use std::time::Duration;

use ferry_vast_emu::{BootFailure, OutageMode, BOOT_FAILED_MSG, OUTBID_MSG};
use serde_json::{json, Value};

use crate::support::{
    alive, call, call_with, client, create, eventually, finish, set_state, show, start,
    wait_status, KEY,
};

const OFFER: u64 = 31000108;
const OTHER: u64 = 31000129;

async fn admin(emu: &ferry_vast_emu::Emulator, path: &str, body: Value) -> Value {
    let (status, resp) = call_with(&client(), emu, "POST", path, Some(body), None).await;
    assert_eq!(status, 200, "{path}: {resp}");
    resp
}

#[tokio::test]
async fn slow_boot() {
    let emu = start().await;
    emu.knobs().set_boot_delay(Duration::from_secs(60));
    let id = create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": "exec sleep 30"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(show(&emu, id).await["actual_status"], "loading");
    assert_eq!(emu.ledger().processes_started, 0);
    // A stop during the boot ends it at once.
    set_state(&emu, id, "stopped").await;
    wait_status(&emu, id, "stopped").await;
    let snap = admin(&emu, "/_emu/boot-delay", json!({"ms": 0})).await;
    assert_eq!(snap["boot_delay_ms"], 0);
    set_state(&emu, id, "running").await;
    wait_status(&emu, id, "running").await;
    assert_eq!(emu.ledger().processes_started, 1);
    finish(emu).await;
}

#[tokio::test]
async fn boot_failure_hang() {
    let emu = start().await;
    emu.knobs().fail_boots(1, BootFailure::Hang);
    let id = create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": "exec sleep 30"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let row = show(&emu, id).await;
    assert_eq!(row["actual_status"], "loading", "{row}");
    assert_eq!(emu.ledger().processes_started, 0);
    set_state(&emu, id, "stopped").await;
    wait_status(&emu, id, "stopped").await;
    // Used up: the next boot works.
    set_state(&emu, id, "running").await;
    wait_status(&emu, id, "running").await;
    assert_eq!(emu.ledger().processes_started, 1);
    finish(emu).await;
}

#[tokio::test]
async fn boot_failure_exit_over_http() {
    let emu = start().await;
    let snap = admin(
        &emu,
        "/_emu/fail-boots",
        json!({"count": 2, "mode": "exit"}),
    )
    .await;
    assert_eq!(
        (&snap["failing_boots"], &snap["boot_failure"]),
        (&json!(2), &json!("exit"))
    );
    let a = create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": "exec sleep 30"}),
    )
    .await;
    let b = create(
        &emu,
        OTHER,
        json!({"image": "i", "onstart": "exec sleep 30"}),
    )
    .await;
    for id in [a, b] {
        let row = wait_status(&emu, id, "exited").await;
        assert_eq!(row["status_msg"], BOOT_FAILED_MSG);
    }
    assert_eq!(emu.ledger().processes_started, 0);
    set_state(&emu, a, "running").await;
    wait_status(&emu, a, "running").await;
    finish(emu).await;
}

#[tokio::test]
async fn rate_limit_next_requests() {
    let emu = start().await;
    emu.knobs().set_retry_after(Duration::from_millis(1500));
    emu.knobs().rate_limit_next(2);
    for _ in 0..2 {
        let resp = client()
            .post(format!("{}/api/v0/bundles/", emu.url()))
            .bearer_auth(KEY)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 429);
        assert_eq!(
            resp.headers()["retry-after"],
            "2",
            "whole seconds, rounded up"
        );
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains("throttled"),
            "{body}"
        );
    }
    let (status, _) = call(&emu, "POST", "/api/v0/bundles/", Some(json!({}))).await;
    assert_eq!(status, 200);
    // The admin routes are never limited.
    admin(&emu, "/_emu/rate-limit", json!({"next": 5})).await;
    assert_eq!(
        admin(&emu, "/_emu/rate-limit", json!({"next": 0})).await["rate_limit_next"],
        0
    );
    finish(emu).await;
}

#[tokio::test]
async fn rate_limit_per_second() {
    let emu = start().await;
    emu.knobs().rate_limit_per_second(NonZeroU32::new(3));
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(call(&emu, "GET", "/api/v0/instances/", None).await.0);
    }
    // Five quick requests fall in one or two one-second windows: at least one is refused.
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 3,
        "{codes:?}"
    );
    assert!(codes.contains(&429), "{codes:?}");
    let snap = admin(&emu, "/_emu/rate-limit", json!({"per_second": null})).await;
    assert_eq!(snap["rate_limit_per_second"], Value::Null);
    for _ in 0..5 {
        assert_eq!(call(&emu, "GET", "/api/v0/instances/", None).await.0, 200);
    }
    finish(emu).await;
}

#[tokio::test]
async fn outage_503() {
    let emu = start().await;
    emu.knobs()
        .outage(Duration::from_secs(60), OutageMode::Unavailable);
    let resp = client()
        .get(format!("{}/api/v0/instances/", emu.url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["content-type"], "text/html");
    // Admin routes answer; the outage ends on request, or by itself.
    let snap = admin(&emu, "/_emu/outage", json!({"ms": 0})).await;
    assert_eq!(snap["outage_left_ms"], Value::Null);
    assert_eq!(call(&emu, "GET", "/api/v0/instances/", None).await.0, 200);
    admin(&emu, "/_emu/outage", json!({"ms": 200, "mode": "503"})).await;
    assert_eq!(call(&emu, "GET", "/api/v0/instances/", None).await.0, 503);
    eventually("the outage ends", || async {
        call(&emu, "GET", "/api/v0/instances/", None).await.0 == 200
    })
    .await;
    finish(emu).await;
}

#[tokio::test]
async fn outage_reset() {
    let emu = start().await;
    let pooled = client();
    let url = format!("{}/api/v0/instances/", emu.url());
    assert_eq!(
        pooled
            .get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    emu.knobs()
        .outage(Duration::from_secs(60), OutageMode::Reset);
    // On the pooled (already open) connection, and on a new one.
    for c in [pooled.clone(), client()] {
        let err = c.get(&url).bearer_auth(KEY).send().await.unwrap_err();
        assert!(!err.is_status(), "{err}");
    }
    // The admin routes still answer, on a new connection and on the pooled one.
    for c in [client(), pooled.clone()] {
        let (status, snap) = call_with(&c, &emu, "GET", "/_emu/knobs", None, None).await;
        assert_eq!((status, &snap["outage_mode"]), (200, &json!("reset")));
    }
    emu.knobs().outage(Duration::ZERO, OutageMode::Reset);
    assert_eq!(
        client()
            .get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    finish(emu).await;
}

#[tokio::test]
async fn stolen_offers() {
    let emu = start().await;
    emu.knobs().steal_offer(OFFER);
    let (status, body) = call(
        &emu,
        "PUT",
        &format!("/api/v0/asks/{OFFER}/"),
        Some(json!({"image": "i"})),
    )
    .await;
    assert_eq!((status, &body["error"]), (410, &json!("no_such_ask")));
    // Only the next create; the offer stays listed.
    let id = create(&emu, OFFER, json!({"image": "i"})).await;
    let snap = admin(&emu, "/_emu/steal", json!({"next": 1})).await;
    assert_eq!(snap["steal_next_creates"], 1);
    let (status, _) = call(
        &emu,
        "PUT",
        &format!("/api/v0/asks/{OTHER}/"),
        Some(json!({"image": "i"})),
    )
    .await;
    assert_eq!(status, 410);
    create(&emu, OTHER, json!({"image": "i"})).await;
    admin(&emu, "/_emu/steal", json!({"offer_id": 31000143})).await;
    let (status, _) = call(
        &emu,
        "PUT",
        "/api/v0/asks/31000143/",
        Some(json!({"image": "i"})),
    )
    .await;
    assert_eq!(status, 410);
    assert_eq!(emu.ledger().created, 2);
    set_state(&emu, id, "stopped").await;
    finish(emu).await;
}

#[tokio::test]
async fn preemption() {
    let emu = start().await;
    let id = create(
        &emu,
        OFFER,
        json!({"image": "i", "price": 0.09, "onstart": "exec sleep 30"}),
    )
    .await;
    let row = wait_status(&emu, id, "running").await;
    assert_eq!(
        (&row["is_bid"], &row["dph_total"]),
        (&json!(true), &json!(0.09))
    );
    let pid = emu.ledger().instances[0].pid.unwrap();
    emu.preempt(id).unwrap();
    let row = wait_status(&emu, id, "stopped").await;
    assert_eq!(row["intended_status"], "running");
    assert_eq!(row["cur_state"], "stopped");
    assert_eq!(row["status_msg"], OUTBID_MSG);
    assert!(!alive(pid));
    // Started again (the bid wins again), and outbid over HTTP.
    set_state(&emu, id, "running").await;
    wait_status(&emu, id, "running").await;
    admin(&emu, &format!("/_emu/preempt/{id}"), json!({})).await;
    wait_status(&emu, id, "stopped").await;
    let (status, body) = call_with(&client(), &emu, "POST", "/_emu/preempt/42", None, None).await;
    assert_eq!((status, &body["error"]), (404, &json!("no_such_instance")));
    finish(emu).await;
}

#[tokio::test]
async fn knobs_snapshot_reset_and_bad_bodies() {
    let emu = start().await;
    admin(&emu, "/_emu/fail-boots", json!({"count": 3})).await;
    admin(
        &emu,
        "/_emu/rate-limit",
        json!({"per_second": 10, "retry_after_s": 4}),
    )
    .await;
    let (status, snap) = call_with(&client(), &emu, "GET", "/_emu/knobs", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &snap["failing_boots"],
            &snap["boot_failure"],
            &snap["rate_limit_per_second"],
            &snap["retry_after_s"]
        ),
        (&json!(3), &json!("hang"), &json!(10), &json!(4.0))
    );
    let snap = admin(&emu, "/_emu/knobs/reset", json!({})).await;
    assert_eq!(
        (&snap["failing_boots"], &snap["rate_limit_per_second"]),
        (&json!(0), &Value::Null)
    );
    assert_eq!(
        snap["boot_delay_ms"], 50,
        "back to the configured boot delay"
    );
    for (path, body) in [
        ("/_emu/fail-boots", json!({"count": 1, "mode": "explode"})),
        ("/_emu/outage", json!({"mode": "503"})),
        ("/_emu/steal", json!({})),
        ("/_emu/boot-delay", json!({"ms": 1, "extra": true})),
    ] {
        let (status, resp) =
            call_with(&client(), &emu, "POST", path, Some(body.clone()), None).await;
        assert_eq!(status, 400, "{path} {body}: {resp}");
    }
    finish(emu).await;
}
