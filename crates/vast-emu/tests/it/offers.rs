//! Searching offers, renting them, and the API key.

use ferry_vast_emu::{EmuConfig, Emulator, Offer};
use serde_json::{json, Value};

use crate::support::{
    call, call_with, client, create, destroy, finish, search_ids, start, start_with, KEY,
};

const RTX_3060: u64 = 31000101;
const RTX_3090: u64 = 31000108;
const RTX_4090: u64 = 31000115;
const RTX_4090_X2: u64 = 31000122;
const RTX_A6000: u64 = 31000129;
const H100: u64 = 31000143;
const RTX_3080_UNVERIFIED: u64 = 31000150;

/// What `vastai.api.offers.search_offers` puts in every query unless told not to.
fn vast_defaults(extra: Value) -> Value {
    let mut q = json!({"verified": {"eq": true}, "external": {"eq": false},
                       "rentable": {"eq": true}, "rented": {"eq": false},
                       "type": "on-demand", "allocated_storage": 5.0});
    for (k, v) in extra.as_object().unwrap() {
        q[k] = v.clone();
    }
    q
}

#[tokio::test]
async fn filters_order_and_limit() {
    let emu = start().await;
    let cheap_24g = vast_defaults(json!({
        "gpu_ram": {"gte": 24000}, "dph_total": {"lte": 0.7},
        "order": [["dph_total", "asc"]],
    }));
    assert_eq!(
        search_ids(&emu, cheap_24g.clone()).await,
        [RTX_3090, RTX_4090, RTX_A6000, RTX_4090_X2]
    );
    let mut limited = cheap_24g.clone();
    limited["limit"] = json!(2);
    assert_eq!(search_ids(&emu, limited).await, [RTX_3090, RTX_4090]);
    let mut desc = cheap_24g;
    desc["order"] = json!([["dph_total", "desc"]]);
    assert_eq!(
        search_ids(&emu, desc).await,
        [RTX_4090_X2, RTX_A6000, RTX_4090, RTX_3090]
    );
    let one_4090 = vast_defaults(json!({"gpu_name": {"in": ["RTX 4090"]}, "num_gpus": {"eq": 1}}));
    assert_eq!(search_ids(&emu, one_4090).await, [RTX_4090]);
    let most_reliable = vast_defaults(json!({"order": [["reliability", "desc"]], "limit": 1}));
    assert_eq!(search_ids(&emu, most_reliable).await, [H100]);
    // The defaults hide the unverified offer; asking for it finds only it.
    let unverified = json!({"verified": {"eq": false}});
    assert_eq!(search_ids(&emu, unverified).await, [RTX_3080_UNVERIFIED]);
    let not_3060 = json!({"gpu_name": {"neq": "RTX 3060"}, "gpu_ram": {"lt": 12288}});
    assert_eq!(search_ids(&emu, not_3060).await, [RTX_3080_UNVERIFIED]);
    let excluded = json!({"gpu_name": {"notin": ["RTX 3060", "RTX 3080"]}, "gpu_ram": {"lte": 24576},
                          "order": [["id", "asc"]]});
    assert_eq!(
        search_ids(&emu, excluded).await,
        [RTX_3090, RTX_4090, RTX_4090_X2]
    );
    finish(emu).await;
}

#[tokio::test]
async fn bid_search_and_the_new_search_route() {
    let emu = start().await;
    let (status, body) = call(
        &emu,
        "POST",
        "/api/v0/bundles/",
        Some(vast_defaults(
            json!({"gpu_name": {"eq": "RTX 3060"}, "type": "bid"}),
        )),
    )
    .await;
    assert_eq!(status, 200);
    let offer = &body["offers"][0];
    assert_eq!(
        (offer["id"].as_u64(), &offer["is_bid"]),
        (Some(RTX_3060), &json!(true))
    );
    assert_eq!(offer["dph_total"], offer["min_bid"]);
    let (status, body) = call(
        &emu,
        "PUT",
        "/api/v0/search/asks/",
        Some(json!({"select_cols": ["*"], "q": vast_defaults(json!({"gpu_name": {"eq": "H100 SXM"}}))})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["offers"][0]["id"].as_u64(), Some(H100));
    assert_eq!(body["offers"][0]["is_bid"], false);
    finish(emu).await;
}

#[tokio::test]
async fn bad_queries_answer_400() {
    let emu = start().await;
    for q in [
        json!({"gpu_ram": {"like": 1}}),
        json!({"order": "dph_total"}),
        json!([1]),
    ] {
        let (status, body) = call(&emu, "POST", "/api/v0/bundles/", Some(q.clone())).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("invalid_args")),
            "{q}: {body}"
        );
    }
    finish(emu).await;
}

#[tokio::test]
async fn a_rented_offer_leaves_searches_until_destroyed() {
    let emu = start().await;
    let all = json!({"order": [["id", "asc"]]});
    assert!(search_ids(&emu, all.clone()).await.contains(&RTX_4090));
    let id = create(
        &emu,
        RTX_4090,
        json!({"image": "vastai/base-image", "label": "x"}),
    )
    .await;
    assert!(!search_ids(&emu, all.clone()).await.contains(&RTX_4090));
    // Even a query asking for rented offers does not find it.
    assert!(search_ids(&emu, json!({"rented": {"eq": true}}))
        .await
        .is_empty());
    let (status, body) = call(
        &emu,
        "PUT",
        &format!("/api/v0/asks/{RTX_4090}/"),
        Some(json!({"image": "i"})),
    )
    .await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(
        (&body["success"], &body["error"], &body["ask_id"]),
        (&json!(false), &json!("no_such_ask"), &json!(RTX_4090))
    );
    destroy(&emu, id).await;
    assert!(search_ids(&emu, all).await.contains(&RTX_4090));
    let again = create(&emu, RTX_4090, json!({"image": "i"})).await;
    assert!(again > id, "instance ids count up");
    destroy(&emu, again).await;
    let ledger = emu.ledger();
    assert_eq!(
        (ledger.created, ledger.destroyed, ledger.alive()),
        (2, 2, 0)
    );
    finish(emu).await;
}

#[tokio::test]
async fn create_errors() {
    let emu = start().await;
    let (status, body) = call(
        &emu,
        "PUT",
        "/api/v0/asks/12345/",
        Some(json!({"image": "i"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"], &body["ask_id"]),
        (404, &json!("no_such_ask"), &json!(12345))
    );
    for bad in [
        json!({"label": "no image"}),
        json!({"image": "i", "env": 5}),
        json!({"image": "i", "target_state": "paused"}),
    ] {
        let (status, body) = call(
            &emu,
            "PUT",
            &format!("/api/v0/asks/{RTX_3090}/"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("invalid_args")),
            "{bad}: {body}"
        );
    }
    // A refused create rents nothing.
    assert_eq!(emu.ledger().created, 0);
    assert!(search_ids(&emu, json!({})).await.contains(&RTX_3090));
    let (status, body) = call(&emu, "GET", "/api/v0/instances/777/", None).await;
    assert_eq!((status, &body["instances"]), (200, &Value::Null));
    for (method, body) in [
        ("PUT", Some(json!({"state": "stopped"}))),
        ("DELETE", Some(json!({}))),
    ] {
        let (status, resp) = call(&emu, method, "/api/v0/instances/777/", body).await;
        assert_eq!(
            (status, &resp["error"]),
            (404, &json!("no_such_instance")),
            "{method}"
        );
    }
    finish(emu).await;
}

#[tokio::test]
async fn the_api_key_is_required() {
    let emu = start().await;
    let c = client();
    for key in [None, Some("wrong")] {
        let (status, body) =
            call_with(&c, &emu, "POST", "/api/v0/bundles/", Some(json!({})), key).await;
        assert_eq!((status, &body["success"]), (401, &json!(false)), "{key:?}");
    }
    // The `api_key` query parameter works too, as older clients send it.
    let (status, _) = call_with(
        &c,
        &emu,
        "GET",
        &format!("/api/v0/instances/?api_key={KEY}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The admin routes need no key.
    let (status, body) = call_with(&c, &emu, "GET", "/_emu/ledger", None, None).await;
    assert_eq!((status, &body["created"]), (200, &json!(0)));
    finish(emu).await;
}

#[tokio::test]
async fn own_catalogue_and_config_checks() {
    let mut unrentable = Offer::new(9, "T4", 0.01);
    unrentable.set("rentable", json!(false));
    let emu = start_with(|c| {
        c.offers = vec![
            Offer::new(7, "T4", 0.1),
            Offer::new(8, "T4", 0.05),
            unrentable,
        ]
    })
    .await;
    let rentable = json!({"rentable": {"eq": true}, "order": [["dph_total", "asc"]]});
    assert_eq!(search_ids(&emu, rentable).await, [8, 7]);
    assert_eq!(
        search_ids(&emu, json!({"order": [["id", "asc"]]})).await,
        [7, 8, 9]
    );
    let (status, _) = call(&emu, "PUT", "/api/v0/asks/9/", Some(json!({"image": "i"}))).await;
    assert_eq!(status, 410, "an unrentable offer cannot be rented");
    finish(emu).await;

    let mut dup = EmuConfig::new(KEY);
    dup.offers = vec![Offer::new(7, "T4", 0.1), Offer::new(7, "T4", 0.2)];
    assert!(Emulator::start(dup).await.is_err());
    let mut public = EmuConfig::new(KEY);
    public.listen = "0.0.0.0:0".parse().unwrap();
    assert!(Emulator::start(public).await.is_err());
}
