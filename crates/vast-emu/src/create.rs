//! A create-instance body (`PUT /api/v0/asks/{id}/`), as
//! `vastai.api.instances.build_create_instance_payload` builds it: what to run, its env, and
//! the ports it exposes.

use serde_json::Value;

use crate::error::ApiError;
use crate::query::Row;

/// Transport of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `-p` of a create: the container's port and the loopback port standing in for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Port {
    pub container: u16,
    pub proto: Proto,
    pub host: u16,
}

/// What a create body asks for (`vastai.api.instances.build_create_instance_payload`).
#[derive(Debug, Clone, Default)]
pub(crate) struct CreateRequest {
    pub image: Option<String>,
    pub label: Option<String>,
    pub env: Vec<(String, String)>,
    pub onstart: Option<String>,
    pub args: Option<Value>,
    pub args_str: Option<String>,
    pub runtype: Option<String>,
    pub disk: Option<f64>,
    pub price: Option<f64>,
    pub template_hash_id: Option<String>,
    pub start_stopped: bool,
}

impl CreateRequest {
    /// Reads a create body. `env` may be an object (what the SDK sends) or a docker-flags
    /// string (`"-e K=V -p 8000:8000"`, which the REST API also takes); the on-start command
    /// is `onstart` (or `onstart_cmd`).
    pub fn from_body(body: &Row) -> Result<CreateRequest, ApiError> {
        let string = |k: &str| -> Result<Option<String>, ApiError> {
            match body.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(ApiError::BadRequest(format!(
                    "{k} must be a string, got {v}"
                ))),
            }
        };
        let number = |k: &str| -> Result<Option<f64>, ApiError> {
            match body.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| ApiError::BadRequest(format!("{k} must be a number, got {v}"))),
            }
        };
        let image = string("image")?;
        let template_hash_id = string("template_hash_id")?;
        if image.is_none() && template_hash_id.is_none() {
            return Err(ApiError::BadRequest(
                "image is required (or template_hash_id)".into(),
            ));
        }
        let env = match body.get("env") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            Some(Value::String(s)) => parse_docker_env(s),
            Some(v) => {
                return Err(ApiError::BadRequest(format!(
                    "env must be an object or a string, got {v}"
                )))
            }
        };
        let target = string("target_state")?;
        let start_stopped = match target.as_deref() {
            None | Some("running") => false,
            Some("stopped") => true,
            Some(t) => {
                return Err(ApiError::BadRequest(format!(
                    "target_state must be running or stopped, got {t:?}"
                )))
            }
        };
        Ok(CreateRequest {
            image,
            label: string("label")?,
            env,
            onstart: string("onstart")?.or(string("onstart_cmd")?),
            args: body.get("args").filter(|v| !v.is_null()).cloned(),
            args_str: string("args_str")?,
            runtype: string("runtype")?,
            disk: number("disk")?,
            price: number("price")?,
            template_hash_id,
            start_stopped,
        })
    }

    /// The command a boot runs: `onstart`, else `args_str`, else `args` (a list, each
    /// element shell-quoted, or a string), else none (the instance runs with no process, like
    /// an image whose entrypoint just idles).
    pub fn command(&self) -> Option<String> {
        if let Some(c) = self.onstart.as_ref().filter(|c| !c.trim().is_empty()) {
            return Some(c.clone());
        }
        if let Some(c) = self.args_str.as_ref().filter(|c| !c.trim().is_empty()) {
            return Some(c.clone());
        }
        match &self.args {
            Some(Value::Array(items)) if !items.is_empty() => Some(
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => shell_quote(s),
                        other => shell_quote(&other.to_string()),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        }
    }
}

/// `"-e K=V -e Q='a b' -p 8000:8000"` → `[("K","V"), ("Q","a b"), ("-p 8000:8000","1")]`,
/// as Vast's own parser (`vastai.utils.parse_env`) reads it.
fn parse_docker_env(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = shell_words(s).into_iter();
    while let Some(flag) = words.next() {
        let Some(arg) = (match flag.as_str() {
            "-e" | "-p" | "-v" | "-h" | "-n" => words.next(),
            _ => None,
        }) else {
            continue;
        };
        match flag.as_str() {
            "-e" => {
                if let Some((k, v)) = arg.split_once('=') {
                    out.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => out.push((format!("{flag} {arg}"), "1".to_owned())),
        }
    }
    out
}

/// Whitespace-separated words, with single and double quotes grouping (no escapes).
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// `s` as one `sh` word.
pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A `-p` env key (`"-p 3000:3000"`, `"-p 8080/udp"`, `"-p 70000:22"` ...) → the container
/// port and transport; `None` for anything else.
pub(crate) fn port_of_key(key: &str) -> Option<(u16, Proto)> {
    let spec = key.strip_prefix("-p ")?.trim();
    let container = spec.rsplit(':').next()?;
    let (port, proto) = match container.split_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some(_) => return None,
        None => (container, Proto::Tcp),
    };
    Some((port.parse().ok()?, proto))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn ports_from_env_keys() {
        assert_eq!(port_of_key("-p 3000:3000"), Some((3000, Proto::Tcp)));
        assert_eq!(port_of_key("-p 70000:22"), Some((22, Proto::Tcp)));
        assert_eq!(port_of_key("-p 8080/udp"), Some((8080, Proto::Udp)));
        assert_eq!(port_of_key("-p 1:9000/tcp"), Some((9000, Proto::Tcp)));
        assert_eq!(port_of_key("-p 1:x"), None);
        assert_eq!(port_of_key("PORT"), None);
        assert_eq!(port_of_key("-v /a:/b"), None);
    }

    #[test]
    fn docker_env_string() {
        let env = parse_docker_env("-e A=1 -e B='x y=z' -p 3000:3000 -h host junk");
        assert_eq!(
            env,
            [
                ("A".into(), "1".into()),
                ("B".into(), "x y=z".into()),
                ("-p 3000:3000".into(), "1".into()),
                ("-h host".into(), "1".into()),
            ]
        );
    }

    #[test]
    fn command_choice() {
        let c = |v: Value| CreateRequest::from_body(&body(v)).unwrap().command();
        assert_eq!(
            c(json!({"image": "i", "onstart": "echo hi", "args": ["x"]})),
            Some("echo hi".into())
        );
        assert_eq!(
            c(json!({"image": "i", "onstart_cmd": "echo hi"})),
            Some("echo hi".into())
        );
        assert_eq!(
            c(json!({"image": "i", "args": ["sh", "-c", "echo 'a b'"]})),
            Some("sh -c 'echo '\\''a b'\\'''".into())
        );
        assert_eq!(
            c(json!({"image": "i", "args_str": "run"})),
            Some("run".into())
        );
        assert_eq!(c(json!({"image": "i"})), None);
        assert!(CreateRequest::from_body(&body(json!({"label": "x"}))).is_err());
        assert!(CreateRequest::from_body(&body(json!({"image": "i", "env": 3}))).is_err());
        assert!(
            CreateRequest::from_body(&body(json!({"image": "i", "target_state": "x"}))).is_err()
        );
    }
}
