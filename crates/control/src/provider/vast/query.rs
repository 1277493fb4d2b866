//! Vast's offer query language: a workergroup's `search_params` string (`"gpu_ram>=23
//! num_gpus=1 gpu_name in [RTX_4090,RTX_3090]"`) into the query dict `/bundles/` takes
//! (`{"gpu_ram": {"gte": 23000}, "num_gpus": {"eq": 1}, ...}`), and the search a launch makes.
//!
//! The language, as Vast's CLI reads it: `field op value` terms separated by spaces; `op` one
//! of `= == != < <= > >=` or a word (`eq neq lt lte gt gte in nin notin "not in" "not eq"`);
//! `value` a word, a `"quoted string"` or a `[list,of,words]` (for `in`/`notin`). In words `_`
//! stands for a space (`RTX_4090` is `RTX 4090`); `true`/`false`/`null` are JSON's; `any`, `?`
//! or `*` with `=` drops the field (and a default on it); a few fields have short names
//! (`dph` = `dph_total`, `cuda_vers` = `cuda_max_good`, ...) and the memory fields are given
//! in GB and sent in MB (`gpu_ram`, `cpu_ram`, `gpu_total_ram` × 1000; `duration` in days, sent
//! in seconds). Numbers are sent as JSON numbers. Fields Vast does not know are sent as
//! given (Vast ignores or refuses them).

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::api::Offer;

/// A `search_params` string Vast would not read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("search_params: {0}")]
pub struct QueryError(pub String);

/// Vast's defaults for a search: machines it has verified, rentable now, not rented.
pub fn defaults() -> Map<String, Value> {
    let mut q = Map::new();
    q.insert("verified".into(), json!({"eq": true}));
    q.insert("external".into(), json!({"eq": false}));
    q.insert("rentable".into(), json!({"eq": true}));
    q.insert("rented".into(), json!({"eq": false}));
    q
}

fn alias(field: &str) -> &str {
    match field {
        "cuda_vers" => "cuda_max_good",
        "display_active" => "gpu_display_active",
        "dlperf_usd" => "dlperf_per_dphtotal",
        "dph" => "dph_total",
        "flops_usd" => "flops_per_dphtotal",
        other => other,
    }
}

fn multiplier(field: &str) -> Option<f64> {
    match field {
        "cpu_ram" | "gpu_ram" | "gpu_total_ram" => Some(1000.0),
        "duration" => Some(86_400.0),
        _ => None,
    }
}

fn op_name(op: &str) -> Option<&'static str> {
    Some(match op {
        ">=" | "gte" => "gte",
        ">" | "gt" => "gt",
        "<=" | "lte" => "lte",
        "<" | "lt" => "lt",
        "!=" | "neq" | "noteq" | "not eq" => "neq",
        "=" | "==" | "eq" => "eq",
        "in" => "in",
        "nin" | "notin" | "not in" => "notin",
        _ => return None,
    })
}

const WORD_OPS: [&str; 12] = [
    "not in", "not eq", "notin", "noteq", "nin", "neq", "gte", "lte", "gt", "lt", "eq", "in",
];

/// Parses `search_params` onto `base` (a term replaces the operator it names, keeping the
/// field's others; a wildcard removes the field).
pub fn parse(text: &str, mut base: Map<String, Value>) -> Result<Map<String, Value>, QueryError> {
    let s = text.trim();
    let b = s.as_bytes();
    let mut i = 0;
    let skip_spaces = |i: &mut usize| {
        while *i < b.len() && b[*i] == b' ' {
            *i += 1;
        }
    };
    loop {
        skip_spaces(&mut i);
        if i >= b.len() {
            return Ok(base);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            return Err(QueryError(format!(
                "expected a field name at {:?}",
                &s[start..]
            )));
        }
        let field = alias(&s[start..i]).to_owned();
        let symbolic_at = {
            let mut j = i;
            skip_spaces(&mut j);
            j
        };
        let op = if symbolic_at < b.len() && b"=<>!".contains(&b[symbolic_at]) {
            let mut j = symbolic_at;
            while j < b.len() && b"=<>!".contains(&b[j]) {
                j += 1;
            }
            let op = &s[symbolic_at..j];
            i = j;
            op
        } else {
            // A word operator needs a space on both sides.
            let rest = &s[i..];
            let trimmed = rest.trim_start_matches(' ');
            let found = (trimmed.len() < rest.len())
                .then(|| {
                    WORD_OPS
                        .into_iter()
                        .find(|w| trimmed.starts_with(w) && trimmed[w.len()..].starts_with(' '))
                })
                .flatten();
            match found {
                Some(w) => {
                    i += rest.len() - trimmed.len() + w.len();
                    w
                }
                None => return Err(QueryError(format!("no operator after {field:?}"))),
            }
        };
        let op = op_name(op).ok_or_else(|| QueryError(format!("unknown operator {op:?}")))?;
        skip_spaces(&mut i);
        let vstart = i;
        match b.get(i) {
            Some(b'[') => match s[i..].find(']') {
                Some(end) => i += end + 1,
                None => return Err(QueryError("unclosed [".into())),
            },
            Some(b'"') => match s[i + 1..].find('"') {
                Some(end) => i += end + 2,
                None => return Err(QueryError("unclosed \"".into())),
            },
            _ => {
                while i < b.len() && b[i] != b' ' {
                    i += 1;
                }
            }
        }
        let raw = s[vstart..i].trim_matches(|c| c == ',' || c == '[' || c == ']');
        if raw.is_empty() {
            return Err(QueryError(format!("no value for {field:?}")));
        }
        if ["any", "?", "*"].contains(&raw) {
            if op != "eq" {
                return Err(QueryError(format!("{field}: a wildcard only goes with =")));
            }
            base.remove(&field);
            continue;
        }
        let value = if op == "in" || op == "notin" {
            Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| scalar(&field, x))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            scalar(&field, raw)?
        };
        let entry = base
            .entry(field.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(m) = entry {
            m.insert(op.to_owned(), value);
        }
    }
}

/// One value: scaled for the memory fields, else a bool, null, number or string.
fn scalar(field: &str, raw: &str) -> Result<Value, QueryError> {
    let word = raw.trim_matches('"');
    if let Some(m) = multiplier(field) {
        let v: f64 = word
            .parse()
            .map_err(|_| QueryError(format!("{field}: {word:?} is not a number")))?;
        return Ok(json!(v * m));
    }
    if field == "driver_version" && word.contains('.') {
        return Ok(json!(driver_version(word).ok_or_else(|| QueryError(
            format!("driver_version: {word:?} is not X.Y.Z")
        ))?));
    }
    Ok(match word {
        "true" | "True" => Value::Bool(true),
        "false" | "False" => Value::Bool(false),
        "null" | "None" => Value::Null,
        _ => match word.parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => match word.parse::<f64>() {
                Ok(f) if f.is_finite() => json!(f),
                _ => Value::String(word.replace('_', " ")),
            },
        },
    })
}

/// `535.54.03` → 535054003, Vast's numeric form of a driver version.
fn driver_version(v: &str) -> Option<u64> {
    let parts: Vec<u64> = v
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts[..] {
        [a, b, c] if b < 1000 && c < 1000 => Some(a * 1_000_000 + b * 1000 + c),
        _ => None,
    }
}

/// What a launch searches for.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// The filters: Vast's defaults, then `search_params`, then `gpu_ram` and the price cap.
    pub filters: Map<String, Value>,
    /// Interruptible (bid) rather than on-demand.
    pub interruptible: bool,
    /// Disk to allocate, GB (prices include it).
    pub disk_gb: f64,
    /// Price cap, $/h.
    pub max_dph: Option<f64>,
    /// Bid, $/h (interruptible only; `None`: each offer's `min_bid`).
    pub bid: Option<f64>,
}

/// Offers asked for per search.
const SEARCH_LIMIT: u32 = 64;

impl Search {
    /// The body of `POST /bundles/`: cheapest first.
    pub fn body(&self) -> Value {
        let mut q = self.filters.clone();
        let price = if self.interruptible {
            "min_bid"
        } else {
            "dph_total"
        };
        q.insert("order".into(), json!([[price, "asc"]]));
        q.insert(
            "type".into(),
            json!(if self.interruptible {
                "bid"
            } else {
                "on-demand"
            }),
        );
        q.insert("limit".into(), json!(SEARCH_LIMIT));
        q.insert("allocated_storage".into(), json!(self.disk_gb));
        Value::Object(q)
    }

    /// The price this search pays for `offer`, $/h: its on-demand price, or the bid (the
    /// group's, else the offer's minimum).
    pub fn price(&self, offer: &Offer) -> Option<f64> {
        if self.interruptible {
            self.bid.or(offer.min_bid)
        } else {
            offer.dph_total
        }
    }

    /// The offers worth trying, cheapest first: not on a machine that failed recently, not
    /// tried by this launch already, within the price cap, and for a bid not below the offer's
    /// minimum. Vast filtered already; this holds even if it did not.
    pub fn pick(
        &self,
        offers: Vec<Offer>,
        bad_machines: &HashSet<i64>,
        tried: &HashSet<i64>,
    ) -> Vec<Offer> {
        let mut out: Vec<Offer> = offers
            .into_iter()
            .filter(|o| !tried.contains(&o.id))
            .filter(|o| o.machine_id.is_none_or(|m| !bad_machines.contains(&m)))
            .filter(|o| match (self.price(o), self.max_dph) {
                (Some(p), Some(cap)) => p <= cap,
                (None, Some(_)) => false,
                (_, None) => true,
            })
            .filter(|o| match (self.interruptible, self.bid, o.min_bid) {
                (true, Some(bid), Some(min)) => bid >= min,
                _ => true,
            })
            .collect();
        out.sort_by(|a, b| {
            let pa = self.price(a).unwrap_or(f64::INFINITY);
            let pb = self.price(b).unwrap_or(f64::INFINITY);
            pa.total_cmp(&pb).then(a.id.cmp(&b.id))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Value {
        Value::Object(parse(s, Map::new()).unwrap())
    }

    #[test]
    fn terms_become_the_query_dict() {
        assert_eq!(
            q("gpu_ram>=23 num_gpus=1"),
            json!({"gpu_ram": {"gte": 23000.0}, "num_gpus": {"eq": 1}})
        );
        assert_eq!(
            q("gpu_name in [RTX_4090,RTX_3090] dph<0.5 reliability > 0.98"),
            json!({"gpu_name": {"in": ["RTX 4090", "RTX 3090"]}, "dph_total": {"lt": 0.5},
                   "reliability": {"gt": 0.98}})
        );
        assert_eq!(
            q("gpu_name not in [A100_SXM4] verified=false cuda_vers >= 12.1"),
            json!({"gpu_name": {"notin": ["A100 SXM4"]}, "verified": {"eq": false},
                   "cuda_max_good": {"gte": 12.1}})
        );
        assert_eq!(
            q(r#"geolocation="US" disk_space gte 50 num_gpus!=2 num_gpus<=4"#),
            json!({"geolocation": {"eq": "US"}, "disk_space": {"gte": 50},
                   "num_gpus": {"neq": 2, "lte": 4}})
        );
        assert_eq!(
            q("driver_version >= 535.54.03 duration>=7"),
            json!({"driver_version": {"gte": 535054003}, "duration": {"gte": 604800.0}})
        );
        assert_eq!(q("   "), json!({}));
    }

    #[test]
    fn terms_override_defaults_and_wildcards_drop_them() {
        let m = parse("verified=any rented=true", defaults()).unwrap();
        assert!(!m.contains_key("verified"));
        assert_eq!(m["rented"], json!({"eq": true}));
        assert_eq!(m["rentable"], json!({"eq": true}));
    }

    #[test]
    fn malformed_terms_are_refused() {
        for bad in [
            "gpu_ram",
            "gpu_ram >=",
            "gpu_name in [RTX",
            "gpu_ram>=lots",
            "num_gpus>any",
            ">=3",
            "gpu_name ~ RTX",
            "driver_version>=5.x.1",
        ] {
            assert!(parse(bad, Map::new()).is_err(), "{bad:?}");
        }
    }

    fn offer(id: i64, machine: i64, dph: f64, min_bid: f64) -> Offer {
        Offer {
            id,
            machine_id: Some(machine),
            dph_total: Some(dph),
            min_bid: Some(min_bid),
            gpu_name: None,
        }
    }

    #[test]
    fn picks_cheapest_first_within_the_cap_and_off_bad_machines() {
        let s = Search {
            filters: defaults(),
            interruptible: false,
            disk_gb: 10.0,
            max_dph: Some(1.0),
            bid: None,
        };
        let offers = vec![
            offer(1, 10, 0.9, 0.1),
            offer(2, 20, 0.3, 0.1),
            offer(3, 30, 1.5, 0.1),
            offer(4, 40, 0.2, 0.1),
            offer(5, 50, 0.25, 0.1),
        ];
        let bad = HashSet::from([40]);
        let tried = HashSet::from([5]);
        let ids: Vec<i64> = s.pick(offers, &bad, &tried).iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![2, 1]);
        let body = s.body();
        assert_eq!(body["order"], json!([["dph_total", "asc"]]));
        assert_eq!(body["type"], "on-demand");
        assert_eq!(body["rented"], json!({"eq": false}));
    }

    #[test]
    fn a_bid_is_priced_and_ordered_by_min_bid() {
        let s = Search {
            filters: Map::new(),
            interruptible: true,
            disk_gb: 10.0,
            max_dph: None,
            bid: Some(0.2),
        };
        let offers = vec![
            offer(1, 1, 0.9, 0.15),
            offer(2, 2, 0.1, 0.3),
            offer(3, 3, 0.9, 0.05),
        ];
        let ids: Vec<i64> = s
            .pick(offers.clone(), &HashSet::new(), &HashSet::new())
            .iter()
            .map(|o| o.id)
            .collect();
        // Offer 2 needs more than the bid; the rest all pay the bid, ties by id.
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(s.body()["type"], "bid");
        let own_min = Search { bid: None, ..s };
        let ids: Vec<i64> = own_min
            .pick(offers, &HashSet::new(), &HashSet::new())
            .iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ids, vec![3, 1, 2]);
        assert_eq!(own_min.price(&offer(9, 9, 1.0, 0.07)), Some(0.07));
    }
}
