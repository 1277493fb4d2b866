//! A key goes only where the user sent it: with a base URL named, the endpoint-key lookup,
//! `/route/` and the worker call go to that URL and to the worker its grant names, never to
//! Vast's hosts. Every other host is routed to a [`Trap`] that records it.

use std::time::Duration;

use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use ferry_client::{ApiKey, Backoff, Client, ClientBuilder, RequestOptions};
use serde_json::{json, Value};

use crate::fake::{
    serve, FakeControlPlane, FakeWorker, RouteAnswer, Trap, WorkerAnswer, ACCOUNT_KEY, EP_KEY,
};

/// One way to name the control plane's URL on a builder.
type NameUrl = fn(ClientBuilder, &str) -> ClientBuilder;

fn fast(b: ClientBuilder) -> ClientBuilder {
    b.backoff(Backoff {
        first_poll: Duration::from_millis(10),
        max_interval: Duration::from_millis(20),
    })
}

/// Looks `ep` up with the account key, then sends one request; returns the answer's text.
async fn lookup_and_call(c: &Client) -> Result<Value, ferry_client::Error> {
    let ep = c
        .endpoint_from_account("ep", &ApiKey::new(ACCOUNT_KEY))
        .await?;
    assert_eq!(ep.api_key().expose(), EP_KEY);
    let res = ep
        .request(
            "/v1/completions",
            &json!({"prompt": "hi"}),
            &RequestOptions::default(),
        )
        .await?;
    res.json::<Value>()
}

async fn stack() -> (FakeControlPlane, FakeWorker) {
    let w = FakeWorker::start(vec![WorkerAnswer::Json(
        200,
        json!({"choices": [{"text": "hello"}]}),
    )])
    .await;
    let cp = FakeControlPlane::start(vec![RouteAnswer::Ready(w.url.clone(), 1)]).await;
    (cp, w)
}

#[tokio::test]
async fn one_named_url_serves_the_lookup_route_and_call() {
    let trap = Trap::start().await;
    let forms: [(&str, NameUrl); 3] = [
        ("route_url", |b, u| b.route_url(u)),
        ("base_url", |b, u| b.base_url(u)),
        ("webserver_url", |b, u| b.webserver_url(u)),
    ];
    for (form, name_url) in forms {
        let (cp, w) = stack().await;
        let c = fast(name_url(Client::builder(), &cp.url))
            .http_client(trap.http_client())
            .build()
            .unwrap();
        let answer = lookup_and_call(&c).await;
        assert_eq!(
            trap.hits(),
            Vec::<String>::new(),
            "{form}: left for a host not named"
        );
        assert_eq!(answer.unwrap()["choices"][0]["text"], "hello", "{form}");
        assert_eq!(
            cp.lookups(),
            vec![Some(format!("Bearer {ACCOUNT_KEY}"))],
            "{form}"
        );
        assert_eq!(
            cp.auth_headers(),
            vec![Some(format!("Bearer {EP_KEY}"))],
            "{form}"
        );
        assert_eq!(w.requests().len(), 1, "{form}");
    }
}

/// The trap catches what it should: a client given no URL goes to Vast's hosts, and the
/// lookup ends at the trap.
#[tokio::test]
async fn no_url_named_means_vast_and_the_trap_sees_it() {
    let trap = Trap::start().await;
    let c = fast(Client::builder())
        .http_client(trap.http_client())
        .build()
        .unwrap();
    assert_eq!(c.route_url(), ferry_client::DEFAULT_ROUTE_URL);
    let err = c
        .list_endpoints(&ApiKey::new(ACCOUNT_KEY))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "transport", "{err:?}");
    let hits = trap.hits();
    assert!(!hits.is_empty(), "no request reached the trap");
    assert!(
        hits.iter()
            .all(|h| h.starts_with("CONNECT console.vast.ai:443 ")),
        "{hits:?}"
    );
}

/// A named control plane that redirects elsewhere does not take the request with it: a 307 on
/// `/route/` would re-send the endpoint key in the body to the other host.
#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed() {
    let trap = Trap::start().await;
    // The trap listens on 127.0.0.1; "localhost" names it as another host.
    let elsewhere = trap.url.replace("127.0.0.1", "localhost");
    let (to_route, to_list) = (
        format!("{elsewhere}/route/"),
        format!("{elsewhere}/api/v0/endptjobs/"),
    );
    let app = Router::new()
        .route(
            "/route/",
            post(move || async move { Redirect::temporary(&to_route) }),
        )
        .route(
            "/api/v0/endptjobs/",
            get(move || async move { Redirect::temporary(&to_list) }),
        );
    let (cp, stop) = serve(app).await;
    // The client as built by the SDK (no proxy: the redirect is what would leave).
    let c = fast(Client::builder().base_url(&cp)).build().unwrap();

    let err = c
        .list_endpoints(&ApiKey::new(ACCOUNT_KEY))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        ("account_api", Some(307)),
        "{err:?}"
    );
    let err = c
        .endpoint("ep", EP_KEY)
        .request(
            "/v1/completions",
            &json!({}),
            &RequestOptions {
                max_retries: 0,
                ..RequestOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(307), "{err:?}");
    assert_eq!(
        trap.hits(),
        Vec::<String>::new(),
        "followed a redirect to another host"
    );
    stop.cancel();
}
