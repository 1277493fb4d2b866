//! Vast's query language, as its clients send it: a JSON object whose keys are columns and whose
//! values are `{operator: operand}` maps, e.g. `{"gpu_ram": {"gte": 20000}, "rentable": {"eq":
//! true}}` (`vastai.api.offers.search_offers`, `vastai.data.query.Query`; the operators are the
//! ones `vastai.data.query.OP_TO_STR` knows). The same filters select instances in
//! `GET /api/v1/instances/?select_filters=...`.
//!
//! Semantics, chosen to match what a SQL backend does for the cases clients use: a missing
//! column is `null`; two strings compare as strings, exactly (no case folding); anything else
//! compares as numbers, with `true`/`false` as 1/0 (Python's `True == 1`) and a string that
//! holds a number as that number (`vastai`'s query parser sends `num_gpus=1` as `{"eq": "1"}`);
//! a comparison that is still not between two numbers (a word against a number, anything
//! against `null`) is false. Sorting puts `null`s
//! last in either direction and breaks ties by `id`, ascending.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// One row: an offer or an instance, as its JSON object.
pub type Row = Map<String, Value>;

/// A query the emulator cannot evaluate: answered 400 like any bad argument.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// An operator outside eq/neq/gt/gte/lt/lte/in/notin.
    #[error("unknown operator {op:?} for column {column:?}")]
    UnknownOp {
        /// The column.
        column: String,
        /// The operator as sent.
        op: String,
    },
    /// `in`/`notin` with an operand that is not a list.
    #[error("operator {op:?} for column {column:?} needs a list")]
    NotAList {
        /// The column.
        column: String,
        /// The operator.
        op: String,
    },
    /// An `order`/`order_by` that is not a list of `[column, "asc"|"desc"]` (or
    /// `{"col": ..., "dir": ...}`).
    #[error("bad order: {0}")]
    BadOrder(String),
    /// A `limit` that is not a non-negative integer.
    #[error("bad limit: {0}")]
    BadLimit(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "notin" => Op::NotIn,
            _ => return None,
        })
    }
}

/// One `column op operand` condition.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    column: String,
    op: Op,
    operand: Value,
}

impl Filter {
    fn matches(&self, row: &Row) -> bool {
        let v = row.get(&self.column).unwrap_or(&Value::Null);
        match self.op {
            Op::Eq => equal(v, &self.operand),
            Op::Neq => !equal(v, &self.operand),
            Op::Gt => compare(v, &self.operand) == Some(Ordering::Greater),
            Op::Gte => matches!(
                compare(v, &self.operand),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Lt => compare(v, &self.operand) == Some(Ordering::Less),
            Op::Lte => matches!(
                compare(v, &self.operand),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::In => list(&self.operand).iter().any(|o| equal(v, o)),
            Op::NotIn => !list(&self.operand).iter().any(|o| equal(v, o)),
        }
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Asc,
    Desc,
}

impl Dir {
    fn parse(s: &str) -> Option<Dir> {
        match s.to_ascii_lowercase().as_str() {
            "asc" => Some(Dir::Asc),
            "desc" => Some(Dir::Desc),
            _ => None,
        }
    }
}

/// Filters, an order and a limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    filters: Vec<Filter>,
    order: Vec<(String, Dir)>,
    limit: Option<usize>,
}

/// Keys of a search body that are parameters, not columns (they may hold objects, so they
/// cannot be told apart by shape alone).
const SEARCH_PARAMS: &[&str] = &["order", "limit", "type", "q", "select_cols", "extra_ids"];

impl Query {
    /// The body of `POST /api/v0/bundles/` (or the `q` of `PUT /api/v0/search/asks/`): every
    /// key whose value is an object is a column filter; `order` (`[[column, dir], ...]`) and
    /// `limit` are read; every other key (`type`, `allocated_storage`, `disable_bundling`,
    /// `target_reliability`, ...) is a search parameter, not a filter.
    pub fn from_search(body: &Row) -> Result<Query, QueryError> {
        let mut q = Query {
            filters: filters(
                body.iter()
                    .filter(|(k, _)| !SEARCH_PARAMS.contains(&k.as_str())),
            )?,
            ..Query::default()
        };
        if let Some(order) = body.get("order") {
            q.order = order_pairs(order)?;
        }
        if let Some(limit) = body.get("limit") {
            q.limit = Some(parse_limit(limit)?);
        }
        Ok(q)
    }

    /// `select_filters` and `order_by` (`[{"col": c, "dir": d}, ...]`) of
    /// `GET /api/v1/instances/`, already parsed from their JSON strings; no limit (paging is the
    /// caller's).
    pub fn from_select(filters_obj: &Row, order_by: Option<&Value>) -> Result<Query, QueryError> {
        let mut q = Query {
            filters: filters(filters_obj.iter())?,
            ..Query::default()
        };
        if let Some(order) = order_by {
            q.order = order_cols(order)?;
        }
        Ok(q)
    }

    /// The limit, if the query had one.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Whether `row` passes every filter.
    pub fn matches(&self, row: &Row) -> bool {
        self.filters.iter().all(|f| f.matches(row))
    }

    /// Sorts by the order (nulls last, ties by `id` ascending).
    pub fn sort(&self, rows: &mut [Row]) {
        rows.sort_by(|a, b| {
            for (col, dir) in &self.order {
                let x = a.get(col).unwrap_or(&Value::Null);
                let y = b.get(col).unwrap_or(&Value::Null);
                let o = match (x.is_null(), y.is_null()) {
                    (true, true) => Ordering::Equal,
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    (false, false) => {
                        let o = compare(x, y).unwrap_or(Ordering::Equal);
                        if *dir == Dir::Desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            let id = |r: &Row| r.get("id").and_then(Value::as_u64).unwrap_or(0);
            id(a).cmp(&id(b))
        });
    }
}

fn filters<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Result<Vec<Filter>, QueryError> {
    let mut out = Vec::new();
    for (column, ops) in entries {
        let Some(ops) = ops.as_object() else {
            continue;
        };
        for (op, operand) in ops {
            let parsed = Op::parse(op).ok_or_else(|| QueryError::UnknownOp {
                column: column.clone(),
                op: op.clone(),
            })?;
            if matches!(parsed, Op::In | Op::NotIn) && !operand.is_array() {
                return Err(QueryError::NotAList {
                    column: column.clone(),
                    op: op.clone(),
                });
            }
            out.push(Filter {
                column: column.clone(),
                op: parsed,
                operand: operand.clone(),
            });
        }
    }
    Ok(out)
}

fn order_pairs(v: &Value) -> Result<Vec<(String, Dir)>, QueryError> {
    let bad = || QueryError::BadOrder(v.to_string());
    let mut out = Vec::new();
    for item in v.as_array().ok_or_else(bad)? {
        let pair = item.as_array().ok_or_else(bad)?;
        let col = pair.first().and_then(Value::as_str).ok_or_else(bad)?;
        let dir = match pair.get(1) {
            None => Dir::Asc,
            Some(d) => d.as_str().and_then(Dir::parse).ok_or_else(bad)?,
        };
        out.push((col.to_owned(), dir));
    }
    Ok(out)
}

fn order_cols(v: &Value) -> Result<Vec<(String, Dir)>, QueryError> {
    let bad = || QueryError::BadOrder(v.to_string());
    let mut out = Vec::new();
    for item in v.as_array().ok_or_else(bad)? {
        let col = item.get("col").and_then(Value::as_str).ok_or_else(bad)?;
        let dir = match item.get("dir") {
            None => Dir::Asc,
            Some(d) => d.as_str().and_then(Dir::parse).ok_or_else(bad)?,
        };
        out.push((col.to_owned(), dir));
    }
    Ok(out)
}

/// A limit: a non-negative integer, or a string holding one (query strings carry text).
pub fn parse_limit(v: &Value) -> Result<usize, QueryError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| QueryError::BadLimit(v.to_string()))
}

/// A number for comparison: numbers as they are, booleans as 1/0, and strings that hold a
/// number (the CLI's query parser sends `num_gpus=1` as `{"eq": "1"}`; Vast's backend casts
/// it to the column's type).
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => num(a)?.partial_cmp(&num(b)?),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => a == b,
        _ => compare(a, b) == Some(Ordering::Equal),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn search(body: Value) -> Query {
        Query::from_search(&row(body)).unwrap()
    }

    #[test]
    fn operators() {
        let r = row(
            json!({"id": 1, "gpu_ram": 24576, "num_gpus": 1, "gpu_name": "RTX 4090", "verified": true,
                           "external": false, "rented": false, "label": null}),
        );
        let cases = [
            (json!({"gpu_ram": {"gte": 24576}}), true),
            (json!({"gpu_ram": {"gt": 24576}}), false),
            (json!({"gpu_ram": {"lte": 24576.0}}), true),
            (json!({"gpu_ram": {"lt": 24576}}), false),
            (json!({"gpu_ram": {"gte": 20000, "lte": 30000}}), true),
            (json!({"gpu_name": {"eq": "RTX 4090"}}), true),
            (json!({"gpu_name": {"eq": "RTX_4090"}}), false),
            (json!({"gpu_name": {"neq": "RTX 3090"}}), true),
            (json!({"gpu_name": {"in": ["RTX 3090", "RTX 4090"]}}), true),
            (
                json!({"gpu_name": {"notin": ["RTX 3090", "RTX 4090"]}}),
                false,
            ),
            (json!({"verified": {"eq": true}}), true),
            (json!({"verified": {"eq": 1}}), true),
            (json!({"external": {"eq": false}}), true),
            (json!({"rented": {"eq": true}}), false),
            (json!({"label": {"eq": null}}), true),
            (json!({"label": {"in": [null, "x"]}}), true),
            (json!({"missing": {"eq": null}}), true),
            (json!({"missing": {"gt": 0}}), false),
            (json!({"gpu_name": {"gt": 3}}), false),
            // What `vastai.api.query.parse_query` sends for `gpu_ram>=24 num_gpus=1 dph<0.5`.
            (
                json!({"gpu_ram": {"gte": 24000.0}, "num_gpus": {"eq": "1"}}),
                true,
            ),
            (json!({"gpu_ram": {"lt": "24576.5"}}), true),
            (json!({"gpu_ram": {"eq": "24576"}}), true),
        ];
        for (body, want) in cases {
            assert_eq!(search(body.clone()).matches(&r), want, "{body}");
        }
    }

    #[test]
    fn search_params_are_not_filters() {
        let q = search(
            json!({"type": "on-demand", "allocated_storage": 5.0, "limit": 3,
                              "disable_bundling": true, "order": [["dph_total", "asc"]]}),
        );
        assert!(q.matches(&row(json!({"id": 1}))));
        assert_eq!(q.limit(), Some(3));
    }

    #[test]
    fn bad_queries() {
        let bad = [
            json!({"gpu_ram": {"like": 3}}),
            json!({"gpu_name": {"in": "RTX 4090"}}),
            json!({"order": [["dph_total", "up"]]}),
            json!({"order": "dph_total"}),
            json!({"limit": -1}),
        ];
        for body in bad {
            assert!(Query::from_search(&row(body.clone())).is_err(), "{body}");
        }
    }

    #[test]
    fn order_with_nulls_last_and_ties_by_id() {
        let mut rows: Vec<Row> = [
            json!({"id": 4, "dph_total": 0.3}),
            json!({"id": 2, "dph_total": null}),
            json!({"id": 3, "dph_total": 0.1}),
            json!({"id": 1, "dph_total": 0.3}),
        ]
        .into_iter()
        .map(row)
        .collect();
        let ids = |rows: &[Row]| {
            rows.iter()
                .map(|r| r["id"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        search(json!({"order": [["dph_total", "asc"]]})).sort(&mut rows);
        assert_eq!(ids(&rows), [3, 1, 4, 2]);
        search(json!({"order": [["dph_total", "desc"]]})).sort(&mut rows);
        assert_eq!(ids(&rows), [1, 4, 3, 2]);
        let q = Query::from_select(&Row::new(), Some(&json!([{"col": "id", "dir": "desc"}])));
        q.unwrap().sort(&mut rows);
        assert_eq!(ids(&rows), [4, 3, 2, 1]);
    }
}
