//! The console's HTML, rendered on the server: the layout, the sign-in page, the endpoints
//! list, the endpoint page's sections (each also served alone for the live refresh), and the
//! forms with their errors next to the fields. Everything interpolated goes through [`esc`].

use std::collections::HashMap;
use std::fmt::Write as _;

use super::charts::{chart, fmt_num, Line};
use super::history::{History, Sample, Snapshot};
use super::session::Signed;
use crate::endpoint::Workergroup;
use crate::registry::{WorkerInfo, WorkerState};

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: header (with sign-out when signed in), an optional message, the body.
pub fn layout(title: &str, signed: Option<&Signed>, msg: Option<&str>, body: &str) -> String {
    let nav = match signed {
        Some(s) => format!(
            r#"<nav><a href="/ui/">Endpoints</a> <a href="/ui/endpoints/new">New endpoint</a>
<form method="post" action="/ui/logout" class="inline">{}<button type="submit" id="sign-out">Sign out</button></form></nav>"#,
            csrf_field(s)
        ),
        None => String::new(),
    };
    let msg = msg
        .map(|m| {
            format!(
                r#"<p class="flash" role="status" id="flash">{}</p>"#,
                esc(m)
            )
        })
        .unwrap_or_default();
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t} · Ferry console</title>
<link rel="stylesheet" href="/ui/assets/console.css">
<script src="/ui/assets/console.js" defer></script>
</head><body>
<a class="skip" href="#main">Skip to content</a>
<header><a class="brand" href="/ui/">Ferry console</a>{nav}</header>
<main id="main" tabindex="-1">{msg}
{body}
</main></body></html>"##,
        t = esc(title),
    )
}

/// The hidden CSRF field of a session's forms.
pub fn csrf_field(s: &Signed) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&s.csrf)
    )
}

/// The sign-in page (`error` next to the key field; `notice` above the form).
pub fn login_page(error: Option<&str>, notice: Option<&str>) -> String {
    let err = error
        .map(|e| format!(r#"<p class="err" id="err-api_key">{}</p>"#, esc(e)))
        .unwrap_or_default();
    let invalid = if error.is_some() {
        r#" aria-invalid="true" aria-describedby="err-api_key""#
    } else {
        ""
    };
    let body = format!(
        r#"<h1>Sign in</h1>
<form method="post" action="/ui/login" class="card narrow" id="login">
<label for="api_key">Account API key</label>
<input id="api_key" name="api_key" type="password" autocomplete="current-password" required autofocus{invalid}>
{err}<p class="hint">The key <code>ferry control</code> wrote to <code>STATE_DIR/api_key</code> (or <code>--api-key</code>).</p>
<button type="submit">Sign in</button>
</form>"#
    );
    layout("Sign in", None, notice, &body)
}

fn state_counts(ready: u32, loading: u32, cold: u32, error: u32) -> String {
    format!(
        r#"<span class="pill ready" title="ready">{ready} ready</span> <span class="pill loading" title="loading">{loading} loading</span> <span class="pill cold" title="stopped">{cold} cold</span> <span class="pill error" title="error">{error} error</span>"#
    )
}

fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "∞".to_owned(), |t| format!("{} s", fmt_num(t)))
}

/// The endpoints list's rows (the live part of the list).
pub fn endpoint_rows(snaps: &[Snapshot], history: &History) -> String {
    if snaps.is_empty() {
        return r#"<tr><td colspan="7">No endpoint yet: <a href="/ui/endpoints/new">create one</a>.</td></tr>"#.into();
    }
    let mut out = String::new();
    for s in snaps {
        let (rate, p99) = history.recent(s.endpoint.id);
        let _ = write!(
            out,
            r#"<tr id="ep-{id}"><th scope="row"><a href="/ui/endpoints/{id}">{name}</a></th><td data-label="State">{state}</td><td class="states" data-label="Workers">{counts}</td><td class="num" data-label="Req/s">{rate}</td><td class="num" data-label="Queued">{queued}</td><td class="num" data-label="p99 queue">{p99}</td><td class="num" data-label="Cost (GPU-h/h)">{gpus}</td></tr>"#,
            id = s.endpoint.id,
            name = esc(&s.endpoint.endpoint_name),
            state = esc(&format!("{:?}", s.endpoint.params.endpoint_state).to_lowercase()),
            counts = state_counts(s.ready, s.loading, s.cold, s.error),
            rate = fmt_num(rate),
            queued = s.queued,
            p99 = opt_secs(p99),
            gpus = s.running,
        );
    }
    out
}

/// The endpoints list.
pub fn endpoints_page(signed: &Signed, rows: &str, msg: Option<&str>) -> String {
    let body = format!(
        r#"<div class="bar"><h1>Endpoints</h1><a class="button" href="/ui/endpoints/new" id="new-endpoint">New endpoint</a></div>
<div class="scroll"><table class="list cards" data-live="/ui/live/endpoints">
<thead><tr><th scope="col">Endpoint</th><th scope="col">State</th><th scope="col">Workers</th><th scope="col" class="num">Req/s</th><th scope="col" class="num">Queued</th><th scope="col" class="num" title="p99 of the estimated queue time over 5 minutes">p99 queue</th><th scope="col" class="num" title="running workers: GPU-hours per hour">Cost (GPU-h/h)</th></tr></thead>
<tbody id="ep-rows">{rows}</tbody></table></div>
<p class="hint">Updates every 2 s. Req/s over the last {int} s; queue time is the estimated wait (work on ready workers and queued work over their benchmarked throughput).</p>"#,
        int = super::history::INTERVAL.as_secs(),
    );
    layout("Endpoints", Some(signed), msg, &body)
}

/// The endpoint page's summary line.
pub fn summary(s: &Snapshot, history: &History) -> String {
    let (rate, p99) = history.recent(s.endpoint.id);
    format!(
        r#"<dl class="stats"><div><dt>Workers</dt><dd>{}</dd></div><div><dt>Req/s</dt><dd>{}</dd></div><div><dt>Queued</dt><dd>{}</dd></div><div><dt>Queue time (est.)</dt><dd>{}</dd></div><div><dt>p99 queue, 5 min</dt><dd>{}</dd></div><div><dt>Cost rate</dt><dd>{} GPU-h/h</dd></div></dl>"#,
        state_counts(s.ready, s.loading, s.cold, s.error),
        fmt_num(rate),
        s.queued,
        opt_secs(s.queue_time),
        opt_secs(p99),
        s.running
    )
}

/// The endpoint page's four charts.
pub fn charts(samples: &[Sample], now: f64) -> String {
    let rate = |s: &Sample| Some(s.rate);
    let ready = |s: &Sample| Some(f64::from(s.ready));
    let loading = |s: &Sample| Some(f64::from(s.loading));
    let cold = |s: &Sample| Some(f64::from(s.cold));
    let error = |s: &Sample| Some(f64::from(s.error));
    let qt = |s: &Sample| s.queue_time;
    let gpu = |s: &Sample| Some(s.gpu_seconds);
    let line = |label, class, value| Line {
        label,
        class,
        value,
    };
    [
        chart(
            "Request rate",
            "req/s",
            samples,
            &[line("req/s", "c1", &rate)],
            now,
        ),
        chart(
            "Workers by state",
            "workers",
            samples,
            &[
                line("ready", "c2", &ready),
                line("loading", "c3", &loading),
                line("cold", "c4", &cold),
                line("error", "c5", &error),
            ],
            now,
        ),
        chart(
            "Queue time (est.)",
            "s",
            samples,
            &[line("queue", "c1", &qt)],
            now,
        ),
        chart(
            "GPU-seconds",
            "cumulative",
            samples,
            &[line("GPU-s", "c4", &gpu)],
            now,
        ),
    ]
    .iter()
    .map(|c| format!(r#"<figure class="fig">{c}</figure>"#))
    .collect()
}

/// The decisions log (newest first).
pub fn log(text: &str) -> String {
    let mut out = String::from(r#"<ol class="log">"#);
    let lines: Vec<&str> = text.lines().rev().take(100).collect();
    if lines.is_empty() {
        out.push_str("<li>No decision yet.</li>");
    }
    for l in lines {
        let (ts, rest) = l.split_once(' ').unwrap_or(("", l));
        let class = if rest.starts_with("autoscaler:") || rest.starts_with("console:") {
            "decision"
        } else if rest.contains("error") {
            "bad"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<li class="{class}"><time>{}</time> {}</li>"#,
            esc(ts),
            esc(rest)
        );
    }
    out.push_str("</ol>");
    out
}

/// The workers table with stop and resume buttons.
pub fn workers(list: &[WorkerInfo], signed: &Signed) -> String {
    let mut out = String::from(
        r#"<div class="scroll"><table class="list workers cards"><thead><tr><th scope="col">Worker</th><th scope="col">Group</th><th scope="col">State</th><th scope="col" class="num">Load</th><th scope="col" class="num">Working</th><th scope="col" class="num">Perf</th><th scope="col">Error</th><th scope="col">Action</th></tr></thead><tbody>"#,
    );
    if list.is_empty() {
        out.push_str(r#"<tr><td colspan="8">No worker: the autoscaler starts them when load (or <code>cold_workers</code>) calls for it.</td></tr>"#);
    }
    for w in list {
        let action = match w.status {
            WorkerState::Idle => button(signed, &format!("/ui/workers/{}/stop", w.id), "Stop", ""),
            WorkerState::Stopped => button(
                signed,
                &format!("/ui/workers/{}/resume", w.id),
                "Resume",
                "",
            ),
            _ => String::new(),
        };
        let _ = write!(
            out,
            r#"<tr id="worker-{id}"><th scope="row">{id}</th><td data-label="Group">{group}</td><td data-label="State"><span class="pill {cls}">{state}</span></td><td class="num" data-label="Load">{load} <small>(avg {avg})</small></td><td class="num" data-label="Working">{working}</td><td class="num" data-label="Perf">{perf}</td><td class="error-msg" data-label="Error">{err}</td><td data-label="Action">{action}</td></tr>"#,
            id = w.id,
            group = w.workergroup_id,
            cls = state_class(w.status),
            state = w.status.as_str(),
            load = fmt_num(w.cur_load),
            avg = fmt_num(w.cur_load_rolling_avg),
            working = w.reqs_working,
            perf = fmt_num(w.perf),
            err = esc(&w.error_msg),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

fn state_class(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Idle => "ready",
        WorkerState::Stopping | WorkerState::Stopped => "cold",
        WorkerState::Error | WorkerState::Destroying => "error",
        _ => "loading",
    }
}

/// A one-button form posting to `action` (`confirm`: a question asked first, if any).
pub fn button(signed: &Signed, action: &str, label: &str, confirm: &str) -> String {
    let confirm = if confirm.is_empty() {
        String::new()
    } else {
        format!(r#" data-confirm="{}""#, esc(confirm))
    };
    format!(
        r#"<form method="post" action="{}" class="inline"{confirm}>{}<button type="submit">{}</button></form>"#,
        esc(action),
        csrf_field(signed),
        esc(label)
    )
}

/// The workergroups with their settings and actions.
pub fn groups(list: &[Workergroup], endpoint_id: i64, signed: &Signed) -> String {
    let mut out = String::new();
    if list.is_empty() {
        out.push_str(r#"<p>No workergroup: workers need one to launch from.</p>"#);
    }
    for g in list {
        let mut settings: Vec<(String, String)> = vec![
            (
                "provider".into(),
                g.provider.map_or("(default)", |p| p.as_str()).into(),
            ),
            ("backend".into(), g.backend.clone().unwrap_or_default()),
            ("model_cmd".into(), g.model_cmd.clone().unwrap_or_default()),
            (
                "worker_cmd".into(),
                g.worker_cmd.clone().unwrap_or_default(),
            ),
            (
                "max_workers".into(),
                g.max_workers.map(|m| m.to_string()).unwrap_or_default(),
            ),
        ];
        settings.extend(g.env.iter().map(|(k, v)| (format!("env.{k}"), v.clone())));
        settings.extend(g.vast.iter().map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        }));
        let rows: String = settings
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("<dt>{}</dt><dd><code>{}</code></dd>", esc(k), esc(v)))
            .collect();
        let _ = write!(
            out,
            r#"<section class="card group" id="group-{id}"><h3>Workergroup {id}</h3><dl class="kv">{rows}</dl><div class="actions"><a class="button" href="/ui/groups/{id}/edit">Edit</a> {update} {delete}</div></section>"#,
            id = g.id,
            update = button(
                signed,
                &format!("/ui/groups/{}/update", g.id),
                "Rolling update",
                "Replace this workergroup's workers one by one?"
            ),
            delete = button(
                signed,
                &format!("/ui/groups/{}/delete", g.id),
                "Delete",
                "Delete this workergroup and destroy its workers?"
            ),
        );
    }
    let _ = write!(
        out,
        r#"<p><a class="button" href="/ui/endpoints/{endpoint_id}/groups/new" id="new-group">Add workergroup</a></p>"#
    );
    out
}

/// Sections of the endpoint page, by element id (what the live refresh replaces).
pub type Sections = Vec<(&'static str, String)>;

/// The endpoint page around its sections.
pub fn endpoint_page(
    signed: &Signed,
    snap: &Snapshot,
    sections: &Sections,
    msg: Option<&str>,
) -> String {
    let ep = &snap.endpoint;
    let get = |id: &str| {
        sections
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let body = format!(
        r#"<div class="bar"><h1>Endpoint <span id="ep-name">{name}</span></h1><div class="actions"><a class="button" href="/ui/endpoints/{id}/edit" id="edit-endpoint">Edit</a> {delete}</div></div>
<div data-live="/ui/live/endpoints/{id}">
<div id="ep-summary">{summary}</div>
<h2>History <small class="hint">(up to an hour)</small></h2><div class="charts" id="ep-charts">{charts}</div>
<h2>Workers</h2><div id="ep-workers">{workers}</div>
<h2>Autoscaler decisions</h2><div id="ep-log" class="logbox" tabindex="0" aria-label="Autoscaler decisions and worker changes, newest first">{log}</div>
<h2>Workergroups</h2><div id="ep-groups">{groups}</div>
</div>"#,
        id = ep.id,
        name = esc(&ep.endpoint_name),
        delete = button(
            signed,
            &format!("/ui/endpoints/{}/delete", ep.id),
            "Delete",
            "Delete this endpoint, its workergroups and workers?"
        ),
        summary = get("ep-summary"),
        charts = get("ep-charts"),
        workers = get("ep-workers"),
        log = get("ep-log"),
        groups = get("ep-groups"),
    );
    layout(&ep.endpoint_name, Some(signed), msg, &body)
}

/// How a form field is edited.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// One line of text.
    Text,
    /// A number (a text box with a numeric keyboard: the server validates).
    Number,
    /// A choice.
    Select(&'static [&'static str]),
    /// Several lines.
    Area,
}

/// A form field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Name (the API's).
    pub name: &'static str,
    /// Label.
    pub label: &'static str,
    /// Help under it.
    pub hint: &'static str,
    /// Editor.
    pub kind: Kind,
}

/// A form to create or edit something: values as given, each error next to its field, an
/// error of the whole form above it.
#[allow(clippy::too_many_arguments)]
pub fn form_page(
    signed: &Signed,
    title: &str,
    action: &str,
    fields: &[Field],
    values: &HashMap<String, String>,
    errors: &HashMap<&str, String>,
    form_error: Option<&str>,
    submit: &str,
    cancel: &str,
) -> String {
    let mut body = format!(
        r#"<h1>{}</h1><form method="post" action="{}" class="card form" novalidate id="edit-form">{}"#,
        esc(title),
        esc(action),
        csrf_field(signed)
    );
    if let Some(e) = form_error {
        let _ = write!(
            body,
            r#"<p class="err" id="err-form" role="alert">{}</p>"#,
            esc(e)
        );
    }
    for f in fields {
        let v = values.get(f.name).map(String::as_str).unwrap_or("");
        let err = errors.get(f.name);
        let aria = match err {
            Some(_) => format!(
                r#" aria-invalid="true" aria-describedby="err-{} hint-{}""#,
                f.name, f.name
            ),
            None => format!(r#" aria-describedby="hint-{}""#, f.name),
        };
        let _ = write!(
            body,
            r#"<div class="field{}"><label for="f-{n}">{}</label>"#,
            if err.is_some() { " invalid" } else { "" },
            esc(f.label),
            n = f.name
        );
        let input = match f.kind {
            Kind::Text => format!(
                r#"<input id="f-{n}" name="{n}" type="text" value="{}"{aria}>"#,
                esc(v),
                n = f.name
            ),
            Kind::Number => format!(
                r#"<input id="f-{n}" name="{n}" type="text" inputmode="decimal" value="{}"{aria}>"#,
                esc(v),
                n = f.name
            ),
            Kind::Area => format!(
                r#"<textarea id="f-{n}" name="{n}" rows="3"{aria}>{}</textarea>"#,
                esc(v),
                n = f.name
            ),
            Kind::Select(options) => {
                let opts: String = std::iter::once("")
                    .chain(options.iter().copied())
                    .map(|o| {
                        format!(
                            r#"<option value="{o}"{}>{}</option>"#,
                            if o == v { " selected" } else { "" },
                            if o.is_empty() { "(default)" } else { o }
                        )
                    })
                    .collect();
                format!(
                    r#"<select id="f-{n}" name="{n}"{aria}>{opts}</select>"#,
                    n = f.name
                )
            }
        };
        body.push_str(&input);
        if let Some(e) = err {
            let _ = write!(body, r#"<p class="err" id="err-{}">{}</p>"#, f.name, esc(e));
        }
        let _ = write!(
            body,
            r#"<p class="hint" id="hint-{}">{}</p></div>"#,
            f.name,
            esc(f.hint)
        );
    }
    let _ = write!(
        body,
        r#"<div class="actions"><button type="submit" id="submit">{}</button> <a href="{}" class="button secondary">Cancel</a></div></form>"#,
        esc(submit),
        esc(cancel)
    );
    layout(title, Some(signed), None, &body)
}

/// A page for an answer that is not a form's (forged form, not found).
pub fn problem(signed: Option<&Signed>, title: &str, text: &str) -> String {
    let body = format!(
        r#"<h1>{}</h1><p class="err" id="problem">{}</p><p><a href="/ui/">Back to the endpoints</a></p>"#,
        esc(title),
        esc(text)
    );
    layout(title, signed, None, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_log_order() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let l = log("2026-01-01T00:00:00Z first\n2026-01-01T00:00:01Z autoscaler: launch <1>");
        let first = l.find("first").unwrap_or(usize::MAX);
        let second = l.find("launch &lt;1&gt;").unwrap_or(usize::MAX);
        assert!(second < first, "{l}");
        assert!(l.contains(r#"class="decision""#));
    }
}
