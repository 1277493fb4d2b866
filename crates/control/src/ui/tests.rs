//! The console over the real router on paused time: sign-in, a wrong key, sign-out, an
//! expired session, forged CSRF tokens, server-side validation shown next to the field,
//! create/edit/delete, stop and resume of a worker, the live refresh and the history.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower_service::Service as _;

use crate::endpoint::{EndpointPatch, EndpointRef, WorkergroupPatch};
use crate::provider::recorder::Recorder;
use crate::provider::ProviderEvent;
use crate::registry::WorkerState;
use crate::store::memory::MemoryStore;
use crate::store::Loaded;
use crate::{build_app, Control, Settings};

const KEY: &str = "acct-key";

struct Console {
    control: Control,
    provider: Arc<Recorder>,
    app: axum::Router,
    ep: i64,
}

struct Answer {
    status: StatusCode,
    location: String,
    cookie: String,
    body: String,
}

impl Console {
    /// A control plane with endpoint `e` (one workergroup), and its router.
    async fn start() -> Console {
        let mut s = Settings::for_url("http://127.0.0.1:9");
        s.signing_key_pem = Some(test_key());
        s.api_key = Some(KEY.into());
        let provider = Arc::new(Recorder::default());
        let control = Control::with_store(
            s,
            provider.clone(),
            Arc::new(MemoryStore::default()),
            Loaded::default(),
        )
        .await
        .unwrap();
        let patch = EndpointPatch {
            endpoint_name: Some("e".into()),
            min_load: Some(1.0),
            ..EndpointPatch::default()
        };
        let ep = control.create_endpoint(&patch).await.unwrap();
        let group = WorkergroupPatch {
            endpoint: Some(EndpointRef::Id(ep)),
            ..WorkergroupPatch::default()
        };
        control.create_workergroup(&group).await.unwrap();
        let app = build_app(control.clone());
        Console {
            control,
            provider,
            app,
            ep,
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        cookie: &str,
        form: &[(&str, &str)],
    ) -> Answer {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = Request::builder().method(method).uri(path);
        if !cookie.is_empty() {
            req = req.header(header::COOKIE, cookie);
        }
        if method == "POST" {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let res = self
            .app
            .call(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let h = |n: header::HeaderName| {
            res.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (location, cookie) = (h(header::LOCATION), h(header::SET_COOKIE));
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .unwrap();
        Answer {
            status,
            location,
            cookie,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, path: &str, cookie: &str) -> Answer {
        self.send("GET", path, cookie, &[]).await
    }

    /// Signs in; returns the cookie header to send and the session's CSRF token.
    async fn sign_in(&mut self) -> (String, String) {
        let a = self
            .send("POST", "/ui/login", "", &[("api_key", KEY)])
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(a.location, "/ui/");
        let cookie = a.cookie.split(';').next().unwrap().to_owned();
        let page = self.get("/ui/", &cookie).await;
        assert_eq!(page.status, StatusCode::OK);
        (cookie, csrf_of(&page.body))
    }
}

fn test_key() -> String {
    static K: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        ferry_protocol::SigningKey::generate(2048)
            .unwrap()
            .to_pem()
            .unwrap()
    })
    .clone()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn sign_in_wrong_key_and_sign_out() {
    let mut c = Console::start().await;
    // Not signed in: every page sends to the sign-in page; the live refresh is a 401.
    let a = c.get("/ui/", "").await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/login")
    );
    assert_eq!(
        c.get("/ui/live/endpoints", "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = c
        .get(&format!("/ui/endpoints/{}", c.ep), "ferry_session=made-up")
        .await;
    assert_eq!(a.location, "/ui/login");
    // A wrong key: 401, the error next to the key field, no cookie.
    let a = c
        .send("POST", "/ui/login", "", &[("api_key", "wrong")])
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        a.body.contains(r#"id="err-api_key">Wrong key"#),
        "{}",
        a.body
    );
    assert!(a.cookie.is_empty());
    // The right key: an HttpOnly, SameSite=Strict session cookie.
    let a = c.send("POST", "/ui/login", "", &[("api_key", KEY)]).await;
    assert!(
        a.cookie.contains("HttpOnly") && a.cookie.contains("SameSite=Strict"),
        "{}",
        a.cookie
    );
    assert!(!a.cookie.contains("Secure"), "plain http: {}", a.cookie);
    let cookie = a.cookie.split(';').next().unwrap().to_owned();
    let page = c.get("/ui/", &cookie).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(r#"<a href="/ui/endpoints/1">e</a>"#),
        "{}",
        page.body
    );
    let live = c.get("/ui/live/endpoints", &cookie).await;
    assert!(live.body.starts_with(r#"{"ep-rows":"#), "{}", live.body);
    // Sign out (with the form's token): the cookie is cleared and no longer opens anything.
    let csrf = csrf_of(&page.body);
    let a = c
        .send("POST", "/ui/logout", &cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(a.location, "/ui/login?out=1");
    assert!(a.cookie.contains("Max-Age=0"));
    assert_eq!(c.get("/ui/", &cookie).await.location, "/ui/login");
    assert!(c
        .get("/ui/login?out=1", "")
        .await
        .body
        .contains("You have signed out."));
}

#[tokio::test(start_paused = true)]
async fn a_session_expires() {
    let mut c = Console::start().await;
    let (cookie, _) = c.sign_in().await;
    // The default lifetime: 8 hours.
    let ttl = c.control.settings().ui_session_ttl;
    assert_eq!(ttl, Duration::from_secs(8 * 3600));
    tokio::time::advance(ttl - Duration::from_secs(1)).await;
    assert_eq!(c.get("/ui/", &cookie).await.status, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(2)).await;
    let a = c.get("/ui/", &cookie).await;
    assert_eq!(
        (a.status, a.location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/login?expired=1")
    );
    assert!(a.cookie.contains("Max-Age=0"));
    assert!(c
        .get(&a.location, "")
        .await
        .body
        .contains("Your session has expired"));
    assert_eq!(
        c.get("/ui/live/endpoints", &cookie).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(start_paused = true)]
async fn forged_csrf_tokens_change_nothing() {
    let mut c = Console::start().await;
    let (cookie, csrf) = c.sign_in().await;
    let (_, other_csrf) = c.sign_in().await;
    let path = format!("/ui/endpoints/{}/delete", c.ep);
    for forged in [
        vec![],
        vec![("csrf", "0000")],
        vec![("csrf", other_csrf.as_str())],
    ] {
        let a = c.send("POST", &path, &cookie, &forged).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{forged:?}");
        assert!(a.body.contains("CSRF token mismatch"));
        let mut form = forged.clone();
        form.push(("endpoint_name", "forged"));
        let a = c.send("POST", "/ui/endpoints/new", &cookie, &form).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(c.control.endpoints().len(), 1);
    // A forged sign-out does not sign out.
    let a = c
        .send("POST", "/ui/logout", &cookie, &[("csrf", "x")])
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(c.get("/ui/", &cookie).await.status, StatusCode::OK);
    // The real token works.
    let a = c.send("POST", &path, &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(c.control.endpoints().is_empty());
}

#[tokio::test(start_paused = true)]
async fn forms_validate_on_the_server_and_show_the_error_by_the_field() {
    let mut c = Console::start().await;
    let (cookie, csrf) = c.sign_in().await;
    let new = |extra: &[(&'static str, &'static str)]| {
        let mut f = vec![("csrf", csrf.clone())];
        f.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        f
    };
    let post = |f: &Vec<(&'static str, String)>| {
        f.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    for (form, field, text) in [
        (
            new(&[("endpoint_name", "ok"), ("target_util", "2")]),
            "target_util",
            "must be in (0, 1]",
        ),
        (
            new(&[("endpoint_name", "a b")]),
            "endpoint_name",
            "must match",
        ),
        (
            new(&[("endpoint_name", "e")]),
            "endpoint_name",
            "already exists",
        ),
        (
            new(&[("endpoint_name", "ok"), ("max_workers", "-1")]),
            "max_workers",
            "non-negative integer",
        ),
        (
            new(&[("endpoint_name", "ok"), ("autoscale_policy", "greedy")]),
            "autoscale_policy",
            "must be vast, kpa, ray or ferry",
        ),
        (new(&[]), "endpoint_name", "required"),
    ] {
        let form: Vec<(&str, String)> = post(&form);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = c.send("POST", "/ui/endpoints/new", &cookie, &form).await;
        assert!(a.status.is_client_error(), "{form:?}");
        let at = a
            .body
            .find(&format!(r#"<p class="err" id="err-{field}">"#))
            .unwrap_or_else(|| panic!("{field}: {}", a.body));
        assert!(
            a.body[at..]
                .split("</p>")
                .next()
                .unwrap()
                .contains(&crate::ui::pages::esc(text)),
            "{}",
            a.body
        );
        // The values typed are kept.
        assert!(a.body.contains(r#"aria-invalid="true""#));
    }
    assert_eq!(c.control.endpoints().len(), 1);
    // A valid one is created, edited, given a workergroup (whose errors show too), deleted.
    let a = c
        .send(
            "POST",
            "/ui/endpoints/new",
            &cookie,
            &[
                ("csrf", &csrf),
                ("endpoint_name", "ok"),
                ("max_workers", "3"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let id = c
        .control
        .endpoints()
        .iter()
        .find(|e| e.endpoint_name == "ok")
        .unwrap()
        .id;
    assert!(a.location.starts_with(&format!("/ui/endpoints/{id}?msg=")));
    let page = c.get(&a.location, &cookie).await;
    assert!(page.body.contains("Endpoint created."), "{}", page.body);
    let edit = format!("/ui/endpoints/{id}/edit");
    assert!(c
        .get(&edit, &cookie)
        .await
        .body
        .contains(r#"name="max_workers" type="text" inputmode="decimal" value="3""#));
    let a = c
        .send(
            "POST",
            &edit,
            &cookie,
            &[("csrf", &csrf), ("cold_workers", "x")],
        )
        .await;
    assert!(a.body.contains(r#"id="err-cold_workers""#));
    let a = c
        .send(
            "POST",
            &edit,
            &cookie,
            &[
                ("csrf", &csrf),
                ("cold_workers", "2"),
                ("autoscale_policy", "ferry"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let params = c.control.endpoint(id).unwrap().params;
    assert_eq!(params.cold_workers, 2);
    assert_eq!(
        params.autoscale_policy,
        crate::autoscale::AutoscalePolicy::Ferry
    );
    assert!(c
        .get(&edit, &cookie)
        .await
        .body
        .contains(r#"<option value="ferry" selected>"#));
    let groups = format!("/ui/endpoints/{id}/groups/new");
    let a = c
        .send(
            "POST",
            &groups,
            &cookie,
            &[("csrf", &csrf), ("env", "NOPE")],
        )
        .await;
    assert!(a.body.contains(r#"id="err-env""#), "{}", a.body);
    let a = c
        .send(
            "POST",
            &groups,
            &cookie,
            &[("csrf", &csrf), ("provider", "mars")],
        )
        .await;
    assert!(a.body.contains(r#"id="err-provider""#), "{}", a.body);
    let a = c
        .send(
            "POST",
            &groups,
            &cookie,
            &[("csrf", &csrf), ("backend", "openai"), ("env", "A=1")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let g = c
        .control
        .workergroups()
        .into_iter()
        .find(|g| g.endpoint_id == id)
        .unwrap();
    assert_eq!(g.env.get("A").map(String::as_str), Some("1"));
    let page = c.get(&format!("/ui/endpoints/{id}"), &cookie).await;
    assert!(page.body.contains(&format!(r#"id="group-{}""#, g.id)));
    let a = c
        .send(
            "POST",
            &format!("/ui/groups/{}/delete", g.id),
            &cookie,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(c.control.workergroup(g.id).is_err());
    let a = c
        .send(
            "POST",
            &format!("/ui/endpoints/{id}/delete"),
            &cookie,
            &[("csrf", &csrf)],
        )
        .await;
    assert!(
        a.location.starts_with("/ui/?msg=Endpoint+ok+deleted"),
        "{}",
        a.location
    );
    assert!(c.control.endpoint(id).is_err());
}

#[tokio::test(start_paused = true)]
async fn stop_and_resume_a_worker_and_watch_the_history() {
    let mut c = Console::start().await;
    let (cookie, csrf) = c.sign_in().await;
    // min_load > 0: the autoscaler launches one worker; it starts and reports ready.
    c.control.autoscale_tick();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let spec = c.provider.launched.lock().unwrap()[0].clone();
    c.control.provider_event(ProviderEvent::Started {
        worker_id: spec.worker_id,
    });
    let status = ferry_protocol::WorkerStatus {
        id: spec.worker_id,
        mtoken: spec.mtoken.clone(),
        loadtime: 1.0,
        max_perf: 100.0,
        url: "http://127.0.0.1:20001".into(),
        ..ferry_protocol::WorkerStatus::default()
    };
    c.control.worker_status(&status).unwrap();
    let w = spec.worker_id;
    let state = |c: &Console| c.control.worker_info(w).unwrap().status;
    assert_eq!(state(&c), WorkerState::Idle);
    // Resuming a running worker is refused with the reason.
    let a = c
        .send(
            "POST",
            &format!("/ui/workers/{w}/resume"),
            &cookie,
            &[("csrf", &csrf)],
        )
        .await;
    assert!(c
        .get(&a.location, &cookie)
        .await
        .body
        .contains("only a stopped worker can be resumed"));
    let a = c
        .send(
            "POST",
            &format!("/ui/workers/{w}/stop"),
            &cookie,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(state(&c), WorkerState::Stopped);
    assert_eq!(*c.provider.stopped.lock().unwrap(), vec![w]);
    let a = c
        .send(
            "POST",
            &format!("/ui/workers/{w}/resume"),
            &cookie,
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(state(&c), WorkerState::Loading);
    assert_eq!(c.provider.launched.lock().unwrap().len(), 2);
    // The decisions log shows both, and the live refresh carries every section.
    let live = c
        .get(&format!("/ui/live/endpoints/{}", c.ep), &cookie)
        .await;
    let v: serde_json::Value = serde_json::from_str(&live.body).unwrap();
    for k in [
        "ep-summary",
        "ep-charts",
        "ep-workers",
        "ep-log",
        "ep-groups",
    ] {
        assert!(v[k].is_string(), "{k}");
    }
    let log = v["ep-log"].as_str().unwrap();
    assert!(
        log.contains(&format!("console: stop worker {w}"))
            && log.contains(&format!("console: resume worker {w}")),
        "{log}"
    );
    // The sampler has taken samples as time passed; the charts draw them.
    tokio::time::sleep(super::history::INTERVAL * 3).await;
    assert!(v["ep-charts"].as_str().unwrap().contains("<svg"));
    let samples = c
        .get(&format!("/ui/live/endpoints/{}", c.ep), &cookie)
        .await;
    assert!(
        samples.body.contains("class=\\\"c3 ln\\\""),
        "{}",
        samples.body
    );
    // A rolling update is started from its button.
    let g = c.control.workergroups()[0].id;
    let a = c
        .send(
            "POST",
            &format!("/ui/groups/{g}/update"),
            &cookie,
            &[("csrf", &csrf)],
        )
        .await;
    assert!(a.location.contains("Rolling+update"), "{}", a.location);
}
