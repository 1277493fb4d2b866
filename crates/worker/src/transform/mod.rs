//! Reshaping the model's answer without code: a route's `[route.response]` table.
//!
//! A transform has two independent parts:
//!
//! - **shape** (`pick`, `drop`, `rename`, `wrap`, applied in that order) rewrites a successful
//!   (2xx) JSON answer: a whole body, or each `data:` event of an SSE stream. Error answers are
//!   never reshaped, so a client always sees the model's own error message.
//! - **error rules** (`[[route.response.error]]`, first match wins) give the client another status
//!   when the model answered with a given status and/or a JSON field says so.
//!
//! A route with no `[route.response]` has no [`Transform`] at all (`RouteSpec::response` is
//! `None`), and its answers take exactly the path they took before the feature existed.
//!
//! Layout: this file holds the TOML form, its validation and the body-level operations;
//! `path.rs` the field paths; `sse.rs` the per-event stream reshaper.

mod path;
mod sse;

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use path::Path;
pub use sse::SseReshaper;

/// The `[route.response]` table as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResponseFile {
    /// `{ name = "path", nested = { name = "path" } }`: answer with a new object of these fields.
    pub pick: Option<toml::Table>,
    /// Paths to remove.
    #[serde(default)]
    pub drop: Vec<String>,
    /// `{ "path" = "new_name" }`: rename the field the path ends in, where it is.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Put the result under this key.
    pub wrap: Option<String>,
    /// `[[route.response.error]]` rules.
    #[serde(default, rename = "error")]
    pub errors: Vec<ErrorRuleFile>,
}

/// One `[[route.response.error]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorRuleFile {
    /// The model's status: one number or a list.
    pub model_status: Option<OneOrMany>,
    /// A field of the model's JSON answer ...
    pub field: Option<String>,
    /// ... that equals this value,
    pub equals: Option<toml::Value>,
    /// ... or whose text contains this.
    pub contains: Option<String>,
    /// The status the client gets.
    pub status: u16,
}

/// A status or a list of statuses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u16),
    Many(Vec<u16>),
}

/// A validated response transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    shape: Option<Shape>,
    errors: Vec<ErrorRule>,
}

#[derive(Debug, Clone, PartialEq)]
struct Shape {
    pick: Option<Pick>,
    drop: Vec<Path>,
    rename: Vec<(Path, String)>,
    wrap: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Pick {
    Field(Path),
    Object(Vec<(String, Pick)>),
}

#[derive(Debug, Clone, PartialEq)]
struct ErrorRule {
    model_status: Vec<u16>,
    field: Option<Path>,
    test: FieldTest,
    status: StatusCode,
}

#[derive(Debug, Clone, PartialEq)]
enum FieldTest {
    Present,
    Equals(Value),
    Contains(String),
}

/// What to do with one answer, decided from its status line and headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Plan {
    /// Read the whole body first (a JSON answer to reshape, or a field an error rule looks at).
    ReadBody,
    /// Relay the body as it comes, with this status; `reshape_events` reshapes each SSE event.
    Relay {
        status: StatusCode,
        reshape_events: bool,
    },
}

/// A successful answer that should have been JSON and was not (the client gets 502).
#[derive(Debug, thiserror::Error)]
#[error("the model's answer is not JSON ({0}); the route's [route.response] needs JSON")]
pub struct NotJson(String);

impl Transform {
    /// Validates a `[route.response]` table; `None` when it declares nothing. Errors name the
    /// setting as written (`response.pick.text: ...`).
    pub fn from_file(f: &ResponseFile) -> Result<Option<Transform>, String> {
        let pick = match &f.pick {
            None => None,
            Some(t) => Some(pick_object(t, "response.pick")?),
        };
        let drop = f
            .drop
            .iter()
            .map(|s| s.parse().map_err(|e| format!("response.drop: {e}")))
            .collect::<Result<Vec<Path>, _>>()?;
        let mut rename = f
            .rename
            .iter()
            .map(|(from, to)| {
                let path: Path = from.parse().map_err(|e| format!("response.rename: {e}"))?;
                if path.last_key().is_none() {
                    return Err(format!(
                        "response.rename: {from:?} must end in a field name, not *"
                    ));
                }
                check_key(to, &format!("response.rename.{from:?}"))?;
                Ok((path, to.clone()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Deepest first, so every rename names a field as the answer has it: renaming
        // `choices.*.text` after `choices` had become `outputs` would find nothing.
        rename.sort_by_key(|(p, _)| std::cmp::Reverse(p.depth()));
        if let Some(w) = &f.wrap {
            check_key(w, "response.wrap")?;
        }
        let errors = f
            .errors
            .iter()
            .enumerate()
            .map(|(i, r)| ErrorRule::from_file(r).map_err(|e| format!("response.error[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let shape = (pick.is_some() || !drop.is_empty() || !rename.is_empty() || f.wrap.is_some())
            .then(|| Shape {
                pick,
                drop,
                rename,
                wrap: f.wrap.clone(),
            });
        if shape.is_none() && errors.is_empty() {
            return Ok(None);
        }
        Ok(Some(Transform { shape, errors }))
    }

    /// Whether successful answers are reshaped.
    pub fn reshapes(&self) -> bool {
        self.shape.is_some()
    }

    /// Decides from the model's status and whether the answer is an SSE stream.
    pub fn plan(&self, model: StatusCode, sse: bool) -> Plan {
        let field_rules = self.errors.iter().any(|r| r.field.is_some());
        if !sse && (field_rules || (self.reshapes() && model.is_success())) {
            return Plan::ReadBody;
        }
        // Only status rules can match a body not read (an SSE stream's fields are per event,
        // and its status is sent before the first one).
        match self.mapped_status(model, None) {
            Some(status) => Plan::Relay {
                status,
                reshape_events: false,
            },
            None => Plan::Relay {
                status: model,
                reshape_events: sse && self.reshapes() && model.is_success(),
            },
        }
    }

    /// The status the client gets for a whole answer, and the new body (`None`: unchanged).
    pub fn apply(
        &self,
        model: StatusCode,
        body: &[u8],
    ) -> Result<(StatusCode, Option<Bytes>), NotJson> {
        let parsed = serde_json::from_slice::<Value>(body);
        if let Some(status) = self.mapped_status(model, parsed.as_ref().ok()) {
            return Ok((status, None));
        }
        // An empty success (204, or an empty 200) has nothing to reshape.
        if !(self.reshapes() && model.is_success()) || body.is_empty() {
            return Ok((model, None));
        }
        let value = parsed.map_err(|e| NotJson(e.to_string()))?;
        Ok((model, Some(Bytes::from(self.reshape(value).to_string()))))
    }

    /// Applies pick, drop, rename and wrap to one JSON value.
    pub fn reshape(&self, value: Value) -> Value {
        let Some(shape) = &self.shape else {
            return value;
        };
        let mut v = match &shape.pick {
            Some(p) => p.build(&value).unwrap_or_else(|| Value::Object(Map::new())),
            None => value,
        };
        for d in &shape.drop {
            d.remove(&mut v);
        }
        for (from, to) in &shape.rename {
            from.rename(&mut v, to);
        }
        match &shape.wrap {
            Some(key) => path::wrap(key, v),
            None => v,
        }
    }

    fn mapped_status(&self, model: StatusCode, body: Option<&Value>) -> Option<StatusCode> {
        self.errors
            .iter()
            .find(|r| r.matches(model, body))
            .map(|r| r.status)
    }
}

impl Pick {
    /// The picked value; a missing field is left out of its object.
    fn build(&self, root: &Value) -> Option<Value> {
        match self {
            Pick::Field(p) => p.select(root),
            Pick::Object(fields) => Some(Value::Object(
                fields
                    .iter()
                    .filter_map(|(k, p)| Some((k.clone(), p.build(root)?)))
                    .collect(),
            )),
        }
    }
}

fn pick_object(t: &toml::Table, at: &str) -> Result<Pick, String> {
    if t.is_empty() {
        return Err(format!("{at} names no fields"));
    }
    let fields = t
        .iter()
        .map(|(k, v)| {
            let here = format!("{at}.{k}");
            check_key(k, &here)?;
            let p = match v {
                toml::Value::String(s) => {
                    Pick::Field(s.parse().map_err(|e| format!("{here}: {e}"))?)
                }
                toml::Value::Table(t) => pick_object(t, &here)?,
                other => {
                    return Err(format!(
                        "{here}: expected a field path (\"a.b\") or a table, found {}",
                        other.type_str()
                    ))
                }
            };
            Ok((k.clone(), p))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Pick::Object(fields))
}

fn check_key(key: &str, at: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{at}: the key cannot be empty"));
    }
    Ok(())
}

impl ErrorRule {
    fn from_file(r: &ErrorRuleFile) -> Result<ErrorRule, String> {
        let model_status = match &r.model_status {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![*s],
            Some(OneOrMany::Many(v)) if v.is_empty() => {
                return Err("model_status: the list is empty".into())
            }
            Some(OneOrMany::Many(v)) => v.clone(),
        };
        if let Some(bad) = model_status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!("model_status: {bad} is not an HTTP status"));
        }
        let field = match &r.field {
            None => None,
            Some(f) => Some(f.parse::<Path>().map_err(|e| format!("field: {e}"))?),
        };
        let test = match (&r.equals, &r.contains) {
            (Some(_), Some(_)) => return Err("give equals or contains, not both".into()),
            (None, None) => FieldTest::Present,
            (Some(v), None) => {
                FieldTest::Equals(serde_json::to_value(v).map_err(|e| format!("equals: {e}"))?)
            }
            (None, Some(s)) => FieldTest::Contains(s.clone()),
        };
        if field.is_none() && test != FieldTest::Present {
            return Err("equals and contains need a field".into());
        }
        if field.is_none() && model_status.is_empty() {
            return Err("needs model_status, field, or both".into());
        }
        let status = StatusCode::from_u16(r.status)
            .ok()
            .filter(|s| (200..=599).contains(&s.as_u16()))
            .ok_or_else(|| format!("status: {} is not a status from 200 to 599", r.status))?;
        Ok(ErrorRule {
            model_status,
            field,
            test,
            status,
        })
    }

    fn matches(&self, model: StatusCode, body: Option<&Value>) -> bool {
        if !self.model_status.is_empty() && !self.model_status.contains(&model.as_u16()) {
            return false;
        }
        let Some(field) = &self.field else {
            return true;
        };
        let Some(found) = body.and_then(|b| field.select(b)) else {
            return false;
        };
        // A path with `*` matches when any of the values it reaches does.
        let values = match (&found, field.fans_out()) {
            (Value::Array(a), true) => a.iter().collect(),
            _ => vec![&found],
        };
        values.into_iter().any(|v| match &self.test {
            FieldTest::Present => true,
            FieldTest::Equals(want) => v == want,
            FieldTest::Contains(s) => v.as_str().is_some_and(|t| t.contains(s.as_str())),
        })
    }
}

#[cfg(test)]
mod tests;
