//! The web console at `/ui/`: server-rendered HTML with one small script, signed in with the
//! account API key, its assets inside the binary.
//!
//! - Sign-in trades the key for a session ([`session`]): an `HttpOnly`, `SameSite=Strict`
//!   cookie, and a CSRF token every form that changes something carries and the server checks.
//! - Pages: the endpoints list (workers by state, request rate, queue, p99 queue time, cost
//!   rate) and an endpoint's page (charts over the last hour, the autoscaler's decisions — the
//!   log behind `/get_endpoint_logs/` —, its workers and workergroups). `console.js` refreshes
//!   their live parts every 2 s from `/ui/live/...` (HTML fragments by element id, so the
//!   markup is rendered in one place, [`pages`]).
//! - Actions go through the same [`Control`] methods and body parsing (`api::patch`) as the
//!   JSON API, so validation is shared; an error is shown next to the field it names.
//! - Reads are read-only: [`history`] takes snapshots under the control plane's lock and keeps
//!   an hour of samples per endpoint in memory, bounded. Nothing here runs on `/route/`'s path.
//!
//! # Layout
//!
//! `mod.rs` (routes, handlers, the sign-in gate), `session.rs`, `history.rs`, `pages.rs` (HTML),
//! `charts.rs` (SVG), `forms.rs` (form fields ↔ API bodies, errors ↔ fields), `assets/`.

pub mod charts;
pub mod forms;
pub mod history;
pub mod pages;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{
    DefaultBodyLimit, Form, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{Map, Value};

use self::forms::{endpoint_values, group_values, to_body, ENDPOINT_FIELDS, GROUP_FIELDS};
use self::history::{snapshots, History};
use self::pages::Sections;
use self::session::{clear_cookie, cookie, set_cookie, Lookup, Sessions, Signed, COOKIE};
use crate::api::patch::{endpoint_patch, workergroup_patch};
use crate::control::unix_now;
use crate::error::ControlError;
use crate::Control;

/// Largest form body accepted.
const MAX_FORM: usize = 64 * 1024;
/// Decision-log lines the endpoint page shows.
const LOG_TAIL: usize = 200;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The console's state: the control plane, the sessions, the charts' history.
#[derive(Clone)]
pub struct Ui {
    control: Control,
    sessions: Arc<Sessions>,
    history: Arc<History>,
}

type Fields = HashMap<String, String>;

/// The console's routes, and its history sampler started on the control plane's task tracker
/// (it stops with the control plane).
pub fn router<S: Clone + Send + Sync + 'static>(control: Control) -> Router<S> {
    let ui = Ui {
        control: control.clone(),
        sessions: Arc::new(Sessions::new(control.settings().ui_session_ttl)),
        history: Arc::new(History::default()),
    };
    control
        .tasks()
        .spawn(history::sample_loop(control.clone(), ui.history.clone()));
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/console.css", get(css))
        .route("/ui/assets/console.js", get(js))
        .route("/ui/live/endpoints", get(live_endpoints))
        .route("/ui/live/endpoints/{id}", get(live_endpoint))
        .route("/ui/endpoints/new", get(new_endpoint).post(create_endpoint))
        .route("/ui/endpoints/{id}", get(endpoint_page))
        .route(
            "/ui/endpoints/{id}/edit",
            get(edit_endpoint).post(update_endpoint),
        )
        .route("/ui/endpoints/{id}/delete", post(delete_endpoint))
        .route(
            "/ui/endpoints/{id}/groups/new",
            get(new_group).post(create_group),
        )
        .route("/ui/groups/{id}/edit", get(edit_group).post(update_group))
        .route("/ui/groups/{id}/delete", post(delete_group))
        .route("/ui/groups/{id}/update", post(rolling_update))
        .route("/ui/workers/{id}/{action}", post(worker_action))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .with_state(ui)
}

/// An HTML answer with the console's security headers: nothing cached, no framing, scripts
/// and styles only from the console itself.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    r
}

fn secure(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure(r.headers_mut());
    r
}

fn with_cookie(mut r: Response, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `/ui/...?msg=` for the page after an action.
fn after(path: &str, msg: &str) -> Response {
    let q: String = msg
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            b => format!("%{b:02X}"),
        })
        .collect();
    redirect(&format!("{path}?msg={q}"))
}

/// A flash message from `?msg=` (escaped when rendered; bounded).
fn flash(q: &HashMap<String, String>) -> Option<&str> {
    q.get("msg")
        .map(|m| m.get(..m.len().min(300)).unwrap_or(m.as_str()))
}

fn parse_id(s: &str) -> Option<i64> {
    s.parse().ok()
}

impl Ui {
    /// The caller's session, or the answer that sends it to sign in.
    fn gate(&self, headers: &HeaderMap) -> Result<Signed, Box<Response>> {
        match self
            .sessions
            .lookup(cookie(headers, COOKIE), self.control.mono())
        {
            Lookup::Valid(s) => Ok(s),
            Lookup::Expired => Err(Box::new(with_cookie(
                redirect("/ui/login?expired=1"),
                &clear_cookie(),
            ))),
            Lookup::Missing => Err(Box::new(redirect("/ui/login"))),
        }
    }

    /// [`Ui::gate`] plus the form's CSRF token: a form this session did not issue is refused
    /// (403) and changes nothing.
    fn gate_form(&self, headers: &HeaderMap, form: &Fields) -> Result<Signed, Box<Response>> {
        let s = self.gate(headers)?;
        if s.csrf_ok(form.get("csrf").map(String::as_str)) {
            return Ok(s);
        }
        tracing::warn!("console form refused: CSRF token mismatch");
        Err(Box::new(html(
            StatusCode::FORBIDDEN,
            pages::problem(
                Some(&s),
                "Form refused",
                "This form was not issued by your session (CSRF token mismatch), so nothing \
                 was changed. Reload the page and try again.",
            ),
        )))
    }

    fn secure_cookie(&self) -> bool {
        self.control.settings().public_url.starts_with("https://")
    }

    /// An endpoint page's live sections.
    fn sections(
        &self,
        id: i64,
        signed: &Signed,
    ) -> Result<(history::Snapshot, Sections), ControlError> {
        let c = &self.control;
        let snap = snapshots(c)
            .into_iter()
            .find(|s| s.endpoint.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no endpoint {id}")))?;
        let key = Some(c.account_key());
        let mut workers = c.endpoint_workers(id, key)?;
        workers.sort_by_key(|w| w.id);
        let logs = c.endpoint_logs(id, key, Some(LOG_TAIL))?;
        let groups: Vec<_> = c
            .workergroups()
            .into_iter()
            .filter(|g| g.endpoint_id == id)
            .collect();
        let sections = vec![
            ("ep-summary", pages::summary(&snap, &self.history)),
            ("ep-charts", pages::charts(&self.history.of(id), unix_now())),
            ("ep-workers", pages::workers(&workers, signed)),
            ("ep-log", pages::log(&logs.info1)),
            ("ep-groups", pages::groups(&groups, id, signed)),
        ];
        Ok((snap, sections))
    }
}

/// A page's caller, signed in ([`Ui::gate`]); otherwise the answer is the way to sign in.
struct Page(Signed);

impl FromRequestParts<Ui> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Page, Response> {
        ui.gate(&parts.headers).map(Page).map_err(|r| *r)
    }
}

/// A live refresh's caller, signed in; otherwise 401 (the script then goes to the sign-in page).
struct Live(Signed);

impl FromRequestParts<Ui> for Live {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Live, Response> {
        ui.gate(&parts.headers)
            .map(Live)
            .map_err(|_| (StatusCode::UNAUTHORIZED, "sign in again").into_response())
    }
}

/// A form posted by a signed-in caller with this session's CSRF token ([`Ui::gate_form`]);
/// otherwise the answer is the way to sign in, or 403 and nothing changed.
struct Posted {
    s: Signed,
    form: Fields,
}

impl FromRequest<Ui> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, ui: &Ui) -> Result<Posted, Response> {
        let headers = req.headers().clone();
        let Form(form) = Form::<Fields>::from_request(req, ui)
            .await
            .map_err(IntoResponse::into_response)?;
        let s = ui.gate_form(&headers, &form).map_err(|r| *r)?;
        Ok(Posted { s, form })
    }
}

/// A form's API body read and parsed as the JSON API parses it, with `extra` fields set.
fn read<P>(
    form: &Fields,
    fields: &[pages::Field],
    extra: Option<(&str, Value)>,
    parse: fn(&Map<String, Value>) -> Result<P, ControlError>,
) -> Result<P, ControlError> {
    let mut body = to_body(form, fields)?;
    if let Some((k, v)) = extra {
        body.insert(k.to_owned(), v);
    }
    parse(&body)
}

fn not_found(signed: &Signed, what: &str) -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::problem(Some(signed), "Not found", what),
    )
}

fn live(sections: Sections) -> Response {
    let m: Map<String, Value> = sections
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    let mut r = axum::Json(Value::Object(m)).into_response();
    secure(r.headers_mut());
    r
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
}

async fn login_form(State(ui): State<Ui>, headers: HeaderMap, Query(q): Query<Fields>) -> Response {
    if let Lookup::Valid(_) = ui
        .sessions
        .lookup(cookie(&headers, COOKIE), ui.control.mono())
    {
        return redirect("/ui/");
    }
    let notice = if q.contains_key("expired") {
        Some("Your session has expired: sign in again.")
    } else if q.contains_key("out") {
        Some("You have signed out.")
    } else {
        None
    };
    html(StatusCode::OK, pages::login_page(None, notice))
}

async fn login(State(ui): State<Ui>, Form(form): Form<Fields>) -> Response {
    let key = form.get("api_key").map(|k| k.trim());
    if ui.control.check_account(key).is_err() {
        tracing::info!("console sign-in refused: wrong key");
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login_page(Some("Wrong key: this is not the account API key."), None),
        );
    }
    let signed = ui.sessions.open(ui.control.mono());
    tracing::info!("console sign-in");
    with_cookie(
        redirect("/ui/"),
        &set_cookie(&signed.token, ui.sessions.ttl(), ui.secure_cookie()),
    )
}

async fn logout(State(ui): State<Ui>, Posted { s, .. }: Posted) -> Response {
    ui.sessions.close(&s.token);
    with_cookie(redirect("/ui/login?out=1"), &clear_cookie())
}

async fn index(State(ui): State<Ui>, Page(s): Page, Query(q): Query<Fields>) -> Response {
    let rows = pages::endpoint_rows(&snapshots(&ui.control), &ui.history);
    html(StatusCode::OK, pages::endpoints_page(&s, &rows, flash(&q)))
}

async fn live_endpoints(State(ui): State<Ui>, _: Live) -> Response {
    let rows = pages::endpoint_rows(&snapshots(&ui.control), &ui.history);
    live(vec![("ep-rows", rows)])
}

async fn endpoint_page(
    State(ui): State<Ui>,
    Page(s): Page,
    Path(id): Path<String>,
    Query(q): Query<Fields>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&s, "No such endpoint.");
    };
    match ui.sections(id, &s) {
        Ok((snap, sections)) => html(
            StatusCode::OK,
            pages::endpoint_page(&s, &snap, &sections, flash(&q)),
        ),
        Err(_) => not_found(&s, &format!("No endpoint {id}.")),
    }
}

async fn live_endpoint(State(ui): State<Ui>, Live(s): Live, Path(id): Path<String>) -> Response {
    match parse_id(&id).map(|id| ui.sections(id, &s)) {
        Some(Ok((_, sections))) => live(sections),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn new_endpoint(Page(s): Page) -> Response {
    let values = HashMap::new();
    html(
        StatusCode::OK,
        forms::endpoint_form(&s, None, &values, &HashMap::new(), None),
    )
}

async fn create_endpoint(State(ui): State<Ui>, Posted { s, form }: Posted) -> Response {
    let result = match read(&form, ENDPOINT_FIELDS, None, endpoint_patch) {
        Ok(patch) => ui.control.create_endpoint(&patch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(id) => after(&format!("/ui/endpoints/{id}"), "Endpoint created."),
        Err(e) => forms::refused(&e, ENDPOINT_FIELDS, |errors, general| {
            forms::endpoint_form(&s, None, &form, errors, general)
        }),
    }
}

async fn edit_endpoint(State(ui): State<Ui>, Page(s): Page, Path(id): Path<String>) -> Response {
    match parse_id(&id).map(|id| ui.control.endpoint(id)) {
        Some(Ok(ep)) => html(
            StatusCode::OK,
            forms::endpoint_form(
                &s,
                Some(ep.id),
                &endpoint_values(&ep),
                &HashMap::new(),
                None,
            ),
        ),
        _ => not_found(&s, "No such endpoint."),
    }
}

async fn update_endpoint(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Posted { s, form }: Posted,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&s, "No such endpoint.");
    };
    let result = match read(&form, ENDPOINT_FIELDS, None, endpoint_patch) {
        Ok(patch) => ui.control.update_endpoint(id, &patch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => after(&format!("/ui/endpoints/{id}"), "Endpoint updated."),
        Err(e) => forms::refused(&e, ENDPOINT_FIELDS, |errors, general| {
            forms::endpoint_form(&s, Some(id), &form, errors, general)
        }),
    }
}

async fn delete_endpoint(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Posted { s, .. }: Posted,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&s, "No such endpoint.");
    };
    let name = ui.control.endpoint(id).map(|e| e.endpoint_name);
    match (name, ui.control.delete_endpoint(id).await) {
        (Ok(name), Ok(())) => after("/ui/", &format!("Endpoint {name} deleted.")),
        (_, Err(e)) | (Err(e), _) => after("/ui/", &format!("Not deleted: {e}")),
    }
}

async fn new_group(State(ui): State<Ui>, Page(s): Page, Path(id): Path<String>) -> Response {
    match parse_id(&id).map(|id| ui.control.endpoint(id)) {
        Some(Ok(ep)) => html(
            StatusCode::OK,
            forms::group_form(
                &s,
                forms::GroupTarget::New(ep.id),
                &HashMap::new(),
                &HashMap::new(),
                None,
            ),
        ),
        _ => not_found(&s, "No such endpoint."),
    }
}

async fn create_group(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Posted { s, form }: Posted,
) -> Response {
    let Some(ep) = parse_id(&id) else {
        return not_found(&s, "No such endpoint.");
    };
    let extra = Some(("endpoint_id", Value::from(ep)));
    let result = match read(&form, GROUP_FIELDS, extra, workergroup_patch) {
        Ok(patch) => ui.control.create_workergroup(&patch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(g) => after(
            &format!("/ui/endpoints/{ep}"),
            &format!("Workergroup {g} created."),
        ),
        Err(e) => forms::refused(&e, GROUP_FIELDS, |errors, general| {
            forms::group_form(&s, forms::GroupTarget::New(ep), &form, errors, general)
        }),
    }
}

async fn edit_group(State(ui): State<Ui>, Page(s): Page, Path(id): Path<String>) -> Response {
    match parse_id(&id).map(|id| ui.control.workergroup(id)) {
        Some(Ok(g)) => html(
            StatusCode::OK,
            forms::group_form(
                &s,
                forms::GroupTarget::Edit(g.id, g.endpoint_id),
                &group_values(&g),
                &HashMap::new(),
                None,
            ),
        ),
        _ => not_found(&s, "No such workergroup."),
    }
}

async fn update_group(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Posted { s, form }: Posted,
) -> Response {
    let Some(Ok(g)) = parse_id(&id).map(|id| ui.control.workergroup(id)) else {
        return not_found(&s, "No such workergroup.");
    };
    let result = match read(&form, GROUP_FIELDS, None, workergroup_patch) {
        Ok(patch) => ui.control.update_workergroup(g.id, &patch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => after(
            &format!("/ui/endpoints/{}", g.endpoint_id),
            &format!("Workergroup {} updated.", g.id),
        ),
        Err(e) => forms::refused(&e, GROUP_FIELDS, |errors, general| {
            forms::group_form(
                &s,
                forms::GroupTarget::Edit(g.id, g.endpoint_id),
                &form,
                errors,
                general,
            )
        }),
    }
}

/// The endpoint page of a workergroup's endpoint, for the answer after an action.
fn group_page(ui: &Ui, group: i64) -> String {
    ui.control.workergroup(group).map_or_else(
        |_| "/ui/".to_owned(),
        |g| format!("/ui/endpoints/{}", g.endpoint_id),
    )
}

async fn delete_group(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Posted { s, .. }: Posted,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&s, "No such workergroup.");
    };
    let back = group_page(&ui, id);
    match ui.control.delete_workergroup(id).await {
        Ok(()) => after(&back, &format!("Workergroup {id} deleted.")),
        Err(e) => after(&back, &format!("Not deleted: {e}")),
    }
}

async fn rolling_update(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    Posted { s, .. }: Posted,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&s, "No such workergroup.");
    };
    let back = group_page(&ui, id);
    match ui.control.update_workers(id) {
        Ok(n) => after(
            &back,
            &format!("Rolling update of workergroup {id}: {n} worker(s) to replace."),
        ),
        Err(e) => after(&back, &format!("No rolling update: {e}")),
    }
}

async fn worker_action(
    State(ui): State<Ui>,
    Path((id, action)): Path<(String, String)>,
    Posted { s, .. }: Posted,
) -> Response {
    let Some(info) = parse_id(&id).and_then(|id| ui.control.worker_info(id)) else {
        return not_found(&s, "No such worker.");
    };
    let back = format!("/ui/endpoints/{}", info.endpoint_id);
    let done = match action.as_str() {
        "stop" => ui.control.stop_worker(info.id).map(|()| "stopping"),
        "resume" => ui.control.resume_worker(info.id).map(|()| "resuming"),
        _ => return not_found(&s, "No such action."),
    };
    match done {
        Ok(what) => after(&back, &format!("Worker {} {what}.", info.id)),
        Err(e) => after(&back, &format!("Worker {}: {e}", info.id)),
    }
}

#[cfg(test)]
mod tests;
