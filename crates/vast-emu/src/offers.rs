//! The offer catalogue: what `search offers` finds and `create instance` rents.
//!
//! An [`Offer`] is the JSON object Vast returns in `{"offers": [...]}` from
//! `POST /api/v0/bundles/`, kept as it is (field names as `vastai.data.offer.Offer` lists them:
//! `gpu_ram` and `cpu_ram` in MB, `dph_total` in $/hour, `reliability` in 0..1, ...). The only
//! field the emulator needs is an integer `id`; it keeps `rented` true to its own bookkeeping
//! in what it returns, and refuses to rent an offer whose own `rentable` is `false`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::query::Row;

/// The built-in catalogue (also a template for `--offers FILE`).
const CATALOGUE: &str = include_str!("catalogue.json");

/// One offer ("ask"): a machine's GPUs for rent.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    id: u64,
    fields: Row,
}

/// An offer the emulator cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OfferError {
    /// Not a JSON object.
    #[error("an offer must be a JSON object, got {0}")]
    NotAnObject(String),
    /// No non-negative integer `id`.
    #[error("an offer needs an integer \"id\": {0}")]
    NoId(String),
    /// Two offers with one id.
    #[error("two offers with id {0}")]
    DuplicateId(u64),
    /// A catalogue file that is neither a list of offers nor `{"offers": [...]}`.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Offer {
    /// An offer from its JSON object (which must hold an integer `id`).
    pub fn from_json(v: Value) -> Result<Offer, OfferError> {
        let Value::Object(fields) = v else {
            return Err(OfferError::NotAnObject(v.to_string()));
        };
        let id = fields
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| OfferError::NoId(Value::Object(fields.clone()).to_string()))?;
        Ok(Offer { id, fields })
    }

    /// A small offer for tests: the given id, GPU and price, verified and rentable, on
    /// machine `id + 1000`.
    pub fn new(id: u64, gpu_name: &str, dph_total: f64) -> Offer {
        let mut fields = Map::new();
        for (k, v) in [
            ("id", Value::from(id)),
            ("ask_contract_id", Value::from(id)),
            ("machine_id", Value::from(id + 1000)),
            ("host_id", Value::from(id + 2000)),
            ("gpu_name", Value::from(gpu_name)),
            ("num_gpus", Value::from(1)),
            ("gpu_ram", Value::from(24576)),
            ("dph_total", Value::from(dph_total)),
            ("min_bid", Value::from(dph_total / 2.0)),
            ("reliability", Value::from(0.99)),
            ("reliability2", Value::from(0.99)),
            ("score", Value::from(100.0 / dph_total.max(0.001))),
            ("verified", Value::from(true)),
            ("verification", Value::from("verified")),
            ("rentable", Value::from(true)),
            ("rented", Value::from(false)),
            ("is_bid", Value::from(false)),
            ("external", Value::from(false)),
            ("public_ipaddr", Value::from("127.0.0.1")),
        ] {
            fields.insert(k.to_owned(), v);
        }
        Offer { id, fields }
    }

    /// Its id (the `ask_id` a create names).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// One field.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field)
    }

    /// Sets one field (`id` cannot change).
    pub fn set(&mut self, field: &str, value: Value) {
        if field != "id" {
            self.fields.insert(field.to_owned(), value);
        }
    }

    /// All its fields, as Vast returns them.
    pub fn fields(&self) -> &Row {
        &self.fields
    }
}

/// The built-in catalogue: eight offers from an RTX 3060 at $0.062/h to an H100 SXM at
/// $2.137/h (one of them unverified, one with two GPUs), with the fields a real search returns.
pub fn default_offers() -> Vec<Offer> {
    parse_catalogue(CATALOGUE, "built-in catalogue").unwrap_or_default()
}

/// Offers from a JSON file: a list of offer objects, or a saved search answer
/// (`{"offers": [...]}`).
pub fn load_offers(path: &Path) -> Result<Vec<Offer>, OfferError> {
    let text = std::fs::read_to_string(path).map_err(|e| OfferError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_catalogue(&text, &path.display().to_string())
}

fn parse_catalogue(text: &str, what: &str) -> Result<Vec<Offer>, OfferError> {
    let file_err = |reason: String| OfferError::File {
        path: what.to_owned(),
        reason,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| file_err(e.to_string()))?;
    let list = match v {
        Value::Array(list) => list,
        Value::Object(mut m) => match m.remove("offers") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(file_err(
                    "expected a list of offers or {\"offers\": [...]}".into(),
                ))
            }
        },
        _ => {
            return Err(file_err(
                "expected a list of offers or {\"offers\": [...]}".into(),
            ))
        }
    };
    list.into_iter().map(Offer::from_json).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses_with_distinct_ids() {
        let offers = default_offers();
        assert_eq!(offers.len(), 8);
        let mut ids: Vec<u64> = offers.iter().map(Offer::id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 8);
        for o in &offers {
            for f in [
                "machine_id",
                "gpu_name",
                "num_gpus",
                "gpu_ram",
                "dph_total",
                "reliability",
            ] {
                assert!(o.get(f).is_some(), "offer {} lacks {f}", o.id());
            }
        }
    }

    #[test]
    fn offers_need_an_integer_id() {
        assert!(Offer::from_json(serde_json::json!({"gpu_name": "x"})).is_err());
        assert!(Offer::from_json(serde_json::json!([1])).is_err());
        assert!(parse_catalogue("{\"offers\": [{\"id\": 7}]}", "t").is_ok());
        assert!(parse_catalogue("{\"x\": 1}", "t").is_err());
    }
}
