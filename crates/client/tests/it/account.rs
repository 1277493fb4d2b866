//! Endpoint key lookup through the account API.

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use ferry_client::{ApiKey, Client, Error};
use serde_json::json;

use crate::fake::serve;

async fn endptjobs(
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer acct-key")
        || q.get("client_id").map(String::as_str) != Some("me")
    {
        return (StatusCode::UNAUTHORIZED, r#"{"detail":"bad key"}"#).into_response();
    }
    Json(json!({"success": true, "results": [
        {"id": 1, "endpoint_name": "other", "api_key": "k1", "max_workers": 3},
        {"id": 2, "endpoint_name": "mine", "api_key": "k2", "endpoint_state": "active"}
    ]}))
    .into_response()
}

#[tokio::test]
async fn looks_the_endpoint_key_up_like_vast() {
    let (url, stop) = serve(Router::new().route("/api/v0/endptjobs/", get(endptjobs))).await;
    let c = Client::builder().webserver_url(&url).build().unwrap();
    let ep = c
        .endpoint_from_account("mine", &ApiKey::new("acct-key"))
        .await
        .unwrap();
    assert_eq!((ep.name(), ep.api_key().expose()), ("mine", "k2"));
    assert_eq!(format!("{:?}", ep.api_key()), "***");

    let list = c.list_endpoints(&ApiKey::new("acct-key")).await.unwrap();
    assert_eq!(list[0].extra["max_workers"], 3);

    let err = c
        .endpoint_from_account("absent", &ApiKey::new("acct-key"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EndpointNotFound { .. }), "{err:?}");
    let err = c
        .endpoint_from_account("mine", &ApiKey::new("wrong"))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.status()), ("account_api", Some(401)));
    stop.cancel();
}

#[test]
fn bad_base_urls_are_config_errors() {
    let err = Client::builder()
        .route_url("not a url")
        .build()
        .unwrap_err();
    assert_eq!(err.code(), "config");
    let err = Client::builder()
        .webserver_url("ftp://x")
        .build()
        .unwrap_err();
    assert_eq!(err.code(), "config");
}
