//! Field paths into a JSON answer: `id`, `usage.completion_tokens`, `choices.0.text`,
//! `output.*.url`.
//!
//! A path is dot-separated keys. A key made of digits is an index when it meets an array and a
//! key when it meets an object (ComfyUI names its nodes `"9"`), and `*` stands for every element
//! of an array (or every value of an object). Keys that contain a dot cannot be named; nothing
//! Ferry fronts uses them.

use serde_json::{Map, Value};

/// One parsed path; `Display` gives it back as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Any,
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Path {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a field path cannot be empty".into());
        }
        let segs = text
            .split('.')
            .map(|s| match s {
                "" => Err(format!(
                    "{text:?} has an empty part (write fields as a.b.0.c)"
                )),
                "*" => Ok(Seg::Any),
                key => Ok(Seg::Key(key.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Path {
            text: text.to_owned(),
            segs,
        })
    }
}

impl Path {
    /// Whether the path fans out over an array (`*`), so it selects a list.
    pub fn fans_out(&self) -> bool {
        self.segs.contains(&Seg::Any)
    }

    /// How many parts the path has.
    pub fn depth(&self) -> usize {
        self.segs.len()
    }

    /// The last part when it is a plain key (a field that can be renamed).
    pub fn last_key(&self) -> Option<&str> {
        match self.segs.last() {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The value the path names: the one value (`None` if missing), or for a path with `*` the
    /// list of every value it reaches (possibly empty).
    pub fn select(&self, root: &Value) -> Option<Value> {
        let mut found = Vec::new();
        collect(root, &self.segs, &mut found);
        if self.fans_out() {
            Some(Value::Array(found.into_iter().cloned().collect()))
        } else {
            found.pop().cloned()
        }
    }

    /// Removes every field the path reaches.
    pub fn remove(&self, root: &mut Value) {
        if let Some((last, parents)) = self.segs.split_last() {
            for_each_mut(root, parents, &mut |v| match (last, v) {
                (Seg::Any, Value::Array(a)) => a.clear(),
                (Seg::Any, Value::Object(m)) => m.clear(),
                (Seg::Key(k), Value::Object(m)) => {
                    m.remove(k);
                }
                (Seg::Key(k), Value::Array(a)) => {
                    if let Some(i) = index(k).filter(|&i| i < a.len()) {
                        a.remove(i);
                    }
                }
                _ => {}
            });
        }
    }

    /// Renames the field the path ends in to `to`, in the same object; a field `to` already
    /// there is replaced.
    pub fn rename(&self, root: &mut Value, to: &str) {
        if let Some((Seg::Key(from), parents)) = self.segs.split_last() {
            for_each_mut(root, parents, &mut |v| {
                if let Value::Object(m) = v {
                    if let Some(x) = m.remove(from) {
                        m.insert(to.to_owned(), x);
                    }
                }
            });
        }
    }
}

fn index(key: &str) -> Option<usize> {
    // "01" is a key, not an index: only canonical numbers address array elements.
    if key.len() > 1 && key.starts_with('0') {
        return None;
    }
    key.parse().ok()
}

fn child<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => a.get(index(key)?),
        _ => None,
    }
}

fn child_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match v {
        Value::Object(m) => m.get_mut(key),
        Value::Array(a) => a.get_mut(index(key)?),
        _ => None,
    }
}

fn collect<'a>(v: &'a Value, segs: &[Seg], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push(v);
        return;
    };
    match first {
        Seg::Key(k) => {
            if let Some(c) = child(v, k) {
                collect(c, rest, out);
            }
        }
        Seg::Any => match v {
            Value::Array(a) => a.iter().for_each(|c| collect(c, rest, out)),
            Value::Object(m) => m.values().for_each(|c| collect(c, rest, out)),
            _ => {}
        },
    }
}

fn for_each_mut(v: &mut Value, segs: &[Seg], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = segs.split_first() else {
        f(v);
        return;
    };
    match first {
        Seg::Key(k) => {
            if let Some(c) = child_mut(v, k) {
                for_each_mut(c, rest, f);
            }
        }
        Seg::Any => match v {
            Value::Array(a) => a.iter_mut().for_each(|c| for_each_mut(c, rest, f)),
            Value::Object(m) => m.values_mut().for_each(|c| for_each_mut(c, rest, f)),
            _ => {}
        },
    }
}

/// Builds an object with `key` set to `value` (the `wrap` step).
pub fn wrap(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.to_owned(), value);
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        s.parse().unwrap()
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["", ".", "a.", ".a", "a..b"] {
            assert!(bad.parse::<Path>().is_err(), "{bad:?}");
        }
        assert_eq!(p("a.*.b").to_string(), "a.*.b");
    }

    #[test]
    fn select_walks_objects_arrays_and_wildcards() {
        let v = json!({
            "choices": [{"text": "a", "i": 0}, {"text": "b"}, {"x": 1}],
            "nodes": {"9": {"url": "u9"}, "10": {"url": "u10"}},
            "n": null,
        });
        assert_eq!(p("choices.0.text").select(&v), Some(json!("a")));
        assert_eq!(p("choices.1.text").select(&v), Some(json!("b")));
        assert_eq!(p("choices.3.text").select(&v), None);
        assert_eq!(p("choices.*.text").select(&v), Some(json!(["a", "b"])));
        assert_eq!(p("nodes.9.url").select(&v), Some(json!("u9")));
        // Object values in key order (serde_json sorts keys).
        assert_eq!(p("nodes.*.url").select(&v), Some(json!(["u10", "u9"])));
        assert_eq!(p("missing.*").select(&v), Some(json!([])));
        assert_eq!(p("n").select(&v), Some(json!(null)));
        assert_eq!(p("n.deeper").select(&v), None);
        // Leading zeros and signs are keys, never indices.
        assert_eq!(p("choices.00.text").select(&v), None);
        assert_eq!(p("choices.-1.text").select(&v), None);
        // A path through a scalar finds nothing.
        assert_eq!(p("choices.0.text.len").select(&v), None);
    }

    #[test]
    fn remove_and_rename_reach_every_match() {
        let mut v = json!({"choices": [{"text": "a", "logprobs": 1}, {"text": "b", "logprobs": 2}], "usage": {"t": 1}});
        p("choices.*.logprobs").remove(&mut v);
        p("usage").remove(&mut v);
        p("not.there").remove(&mut v);
        assert_eq!(v, json!({"choices": [{"text": "a"}, {"text": "b"}]}));
        p("choices.*.text").rename(&mut v, "content");
        assert_eq!(v, json!({"choices": [{"content": "a"}, {"content": "b"}]}));
        p("choices.1").remove(&mut v);
        assert_eq!(v, json!({"choices": [{"content": "a"}]}));
        p("choices.*").remove(&mut v);
        assert_eq!(v, json!({"choices": []}));
        // Renaming onto an existing field replaces it; renaming a missing field does nothing.
        let mut v = json!({"a": 1, "b": 2});
        p("a").rename(&mut v, "b");
        p("zzz").rename(&mut v, "a");
        assert_eq!(v, json!({"b": 1}));
    }

    #[test]
    fn scalars_and_mismatched_shapes_are_left_alone() {
        for mut v in [json!(null), json!(3), json!("s"), json!([1, 2])] {
            let before = v.clone();
            p("a.b").remove(&mut v);
            p("a").rename(&mut v, "b");
            assert_eq!(v, before);
        }
    }
}
