//! A payload parsed only as far as its workload needs: the top-level fields the formula reads
//! become `serde_json::Value`s, every other value is checked and skipped without being built.
//!
//! The check is serde_json's own (`deserialize_any` all the way down): the same syntax, the same
//! number range, the same nesting limit and the same string escapes as parsing the whole payload
//! into a `Value`, so a payload is refused here exactly when the full parse would refuse it. What
//! it saves is the tree: a map node, a `String` per key and a `Value` per field of the payload,
//! which on the request path of an LLM route cost more than counting `max_tokens` itself.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `raw` (one JSON value), keeping only the top-level fields named in `keep`. A payload
/// that is not an object gives an empty object (no field can be found in it, as with the full
/// value).
pub fn parse_pruned(raw: &str, keep: &[String]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let value = Top { keep }.deserialize(&mut de)?;
    de.end()?;
    Ok(Value::Object(value))
}

struct Top<'k> {
    keep: &'k [String],
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key { keep: self.keep })? {
            match key {
                Some(i) => {
                    // Later duplicates win, as in serde_json's own map.
                    let value: Value = map.next_value()?;
                    out.insert(self.keep[i].clone(), value);
                }
                None => map.next_value::<Checked>().map(drop)?,
            }
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Map::new())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Map::new())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Map::new())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Map::new())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Map::new())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Map::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Map::new())
    }
}

/// A top-level key: its index in `keep`, or `None` for a field nobody reads.
struct Key<'k> {
    keep: &'k [String],
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(self.keep.iter().position(|k| k == s))
    }
}

/// Any JSON value, parsed and checked as a `Value` would be, then dropped. Going through
/// `deserialize_any` (not `deserialize_ignored_any`, which only skips) is what keeps the
/// number-range, escape and nesting checks of the full parse.
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<IgnoredKey>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
}

/// An object key, decoded (escapes checked) and dropped.
struct IgnoredKey;

impl<'de> de::Deserialize<'de> for IgnoredKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(IgnoredKeyVisitor)
            .map(|_: IgnoredAny| IgnoredKey)
    }
}

struct IgnoredKeyVisitor;

impl<'de> Visitor<'de> for IgnoredKeyVisitor {
    type Value = IgnoredAny;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<IgnoredAny, E> {
        Ok(IgnoredAny)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(raw: &str) -> Result<Value, String> {
        serde_json::from_str::<Value>(raw).map_err(|e| e.to_string())
    }

    fn pruned(raw: &str, keep: &[&str]) -> Result<Value, String> {
        let keep: Vec<String> = keep.iter().map(|k| k.to_string()).collect();
        parse_pruned(raw, &keep).map_err(|e| e.to_string())
    }

    #[test]
    fn keeps_the_named_fields_only() {
        let raw = r#"{"model": "m", "prompt": "hi\n", "max_tokens": 16, "stop": ["a", {"b": [1.5, null]}],
                      "max_tokens": 32}"#;
        let v = pruned(raw, &["max_tokens", "input"]).unwrap();
        assert_eq!(v, serde_json::json!({"max_tokens": 32}));
    }

    #[test]
    fn refuses_what_the_full_parse_refuses() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        for raw in [
            r#"{"max_tokens": 1e400}"#,
            r#"{"other": 1e400}"#,
            r#"{"other": "\ud800"}"#,
            r#"{"\ud800": 1}"#,
            r#"{"other": [1, 2,]}"#,
            r#"{"other": 1} x"#,
            deep.as_str(),
        ] {
            assert!(full(raw).is_err(), "{raw}");
            assert!(pruned(raw, &["max_tokens"]).is_err(), "{raw}");
        }
        let shallow = format!("{{\"a\": {}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(full(&shallow).is_ok());
        assert_eq!(
            pruned(&shallow, &["max_tokens"]).unwrap(),
            serde_json::json!({})
        );
    }

    #[test]
    fn non_objects_have_no_fields() {
        for raw in ["[1, {\"max_tokens\": 3}]", "\"s\"", "3", "null", "true"] {
            assert_eq!(pruned(raw, &["max_tokens"]).unwrap(), serde_json::json!({}));
        }
    }
}
