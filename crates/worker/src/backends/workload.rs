//! Workload formulas: how much work a payload represents, in the units `max_perf` is measured in.

use serde_json::Value;

use super::DEFAULT_WORKLOAD;

/// The largest workload one request counts for (a trillion tokens): far beyond any real
/// request, small enough that millions of them still sum to a finite number.
pub const MAX_WORKLOAD: f64 = 1e12;

/// A workload formula over the (unwrapped) payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// The same workload for every request.
    Constant(f64),
    /// A numeric field, by dotted path (`parameters.max_new_tokens`).
    Field(Vec<String>),
    /// The product of several terms (`width * height * steps`).
    Product(Vec<Workload>),
    /// The first alternative that can be evaluated (`max_tokens | max_completion_tokens | 0`).
    FirstOf(Vec<Workload>),
    /// ComfyUI: resolution x steps x batch, normalized so a 1024x1024, 28-step image is 100.
    Comfy,
}

impl Workload {
    /// A field path such as `"parameters.max_new_tokens"`.
    pub fn field(path: &str) -> Workload {
        Workload::Field(path.split('.').map(str::to_string).collect())
    }

    /// Parses `"a.b * c * 2"`, `"max_tokens"`, `"250"`, or alternatives `"max_tokens | 0"`.
    pub fn parse(s: &str) -> Result<Workload, String> {
        if s.contains('|') {
            let alts = s
                .split('|')
                .map(Workload::parse_product)
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Workload::FirstOf(alts));
        }
        Workload::parse_product(s)
    }

    fn parse_product(s: &str) -> Result<Workload, String> {
        let terms = s
            .split('*')
            .map(|t| {
                let t = t.trim();
                if t.is_empty() {
                    return Err(format!("empty term in {s:?}"));
                }
                if let Ok(n) = t.parse::<f64>() {
                    return if n.is_finite() && n >= 0.0 {
                        Ok(Workload::Constant(n))
                    } else {
                        Err(format!("{t:?} is not a non-negative number"))
                    };
                }
                let ok = t.split('.').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                });
                if !ok {
                    return Err(format!("{t:?} is neither a number nor a field path"));
                }
                Ok(Workload::field(t))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match <[Workload; 1]>::try_from(terms) {
            Ok([one]) => one,
            Err(many) => Workload::Product(many),
        })
    }

    /// From a TOML value: a number or a formula string.
    pub fn from_toml(v: &toml::Value) -> Result<Workload, String> {
        match v {
            toml::Value::Integer(i) if *i >= 0 => Ok(Workload::Constant(*i as f64)),
            toml::Value::Float(f) if f.is_finite() && *f >= 0.0 => Ok(Workload::Constant(*f)),
            toml::Value::String(s) => Workload::parse(s),
            other => Err(format!("{other} is not a number or a formula string")),
        }
    }

    /// Evaluates the formula; `None` when a field is missing or not a finite non-negative number.
    fn eval(&self, payload: &Value) -> Option<f64> {
        match self {
            Workload::Constant(c) => Some(*c),
            Workload::Field(path) => {
                let mut v = payload;
                for key in path {
                    v = v.get(key)?;
                }
                let n = match v {
                    Value::Number(n) => n.as_f64()?,
                    // Vast's workers accept numeric strings too ("max_tokens": "16" works with int()).
                    Value::String(s) => s.trim().parse().ok()?,
                    _ => return None,
                };
                (n.is_finite() && n >= 0.0).then_some(n)
            }
            Workload::Product(terms) => terms
                .iter()
                .try_fold(1.0, |acc, t| Some(acc * t.eval(payload)?)),
            Workload::FirstOf(alts) => alts.iter().find_map(|a| a.eval(payload)),
            Workload::Comfy => comfy_workload(payload),
        }
    }

    /// The top-level payload fields the formula reads, added to `out`; `false` when it may read
    /// anywhere (ComfyUI's formula walks the workflow).
    pub fn top_fields<'a>(&'a self, out: &mut Vec<&'a str>) -> bool {
        match self {
            Workload::Constant(_) => true,
            Workload::Field(path) => {
                if let Some(first) = path.first() {
                    if !out.contains(&first.as_str()) {
                        out.push(first);
                    }
                }
                true
            }
            Workload::Product(terms) | Workload::FirstOf(terms) => {
                terms.iter().all(|t| t.top_fields(out))
            }
            Workload::Comfy => false,
        }
    }

    /// The workload of a payload, falling back to Vast's default (100) as PyWorker does when the
    /// calculator fails or yields a non-finite or negative number.
    /// The result is capped at `MAX_WORKLOAD` (10^12), so that sums of hostile values (`1e308`) stay
    /// finite in the load reports.
    pub fn count(&self, payload: &Value) -> f64 {
        self.eval(payload)
            .filter(|n| n.is_finite())
            .unwrap_or(DEFAULT_WORKLOAD)
            .min(MAX_WORKLOAD)
    }
}

/// Relative cost of one ComfyUI image: PyWorker 2024's time model,
/// `(85 + 175 * ceil(w/512) * ceil(h/512)) * (0.61 * steps + 6.57)`.
fn comfy_cost(width: f64, height: f64, steps: f64) -> f64 {
    (85.0 + 175.0 * (width / 512.0).ceil() * (height / 512.0).ceil()) * (0.61 * steps + 6.57)
}

/// Finds width, height, steps and batch in a Vast ComfyUI payload: the `modifications` of a
/// `Text2Image` request, or the nodes of a workflow (`EmptyLatentImage`, `KSampler`). `None` when
/// the resolution or steps cannot be found (the caller falls back to Vast's constant).
fn comfy_workload(payload: &Value) -> Option<f64> {
    let num = |v: Option<&Value>| -> Option<f64> {
        match v? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let input = payload.get("input").unwrap_or(payload);
    let (mut w, mut h, mut steps, mut batch) = (None, None, None, None);
    if let Some(m) = input.get("modifications") {
        w = num(m.get("width"));
        h = num(m.get("height"));
        steps = num(m.get("steps"));
        batch = num(m.get("batch_size"));
    }
    if let Some(Value::Object(nodes)) = input.get("workflow_json") {
        for node in nodes.values() {
            let inputs = node.get("inputs");
            match node.get("class_type").and_then(Value::as_str) {
                Some(c) if c.contains("EmptyLatentImage") || c.contains("EmptySD3LatentImage") => {
                    w = w.or_else(|| num(inputs.and_then(|i| i.get("width"))));
                    h = h.or_else(|| num(inputs.and_then(|i| i.get("height"))));
                    batch = batch.or_else(|| num(inputs.and_then(|i| i.get("batch_size"))));
                }
                Some(c) if c.contains("KSampler") || c.contains("Scheduler") => {
                    steps = steps.or_else(|| num(inputs.and_then(|i| i.get("steps"))));
                }
                _ => {}
            }
        }
    }
    let (w, h, steps) = (w?, h?, steps?);
    if !(w > 0.0 && h > 0.0 && steps > 0.0) {
        return None;
    }
    let batch = batch.filter(|b| *b >= 1.0).unwrap_or(1.0);
    Some(DEFAULT_WORKLOAD * batch * comfy_cost(w, h, steps) / comfy_cost(1024.0, 1024.0, 28.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_counts() {
        let w = Workload::parse("parameters.max_new_tokens").unwrap();
        assert_eq!(
            w.count(&json!({"parameters": {"max_new_tokens": 42}})),
            42.0
        );
        assert_eq!(w.count(&json!({"parameters": {}})), DEFAULT_WORKLOAD);
        let w = Workload::parse("width * height * 2").unwrap();
        assert_eq!(w.count(&json!({"width": 3, "height": "4"})), 24.0);
        assert_eq!(Workload::parse("7").unwrap().count(&json!(null)), 7.0);
        assert_eq!(
            Workload::field("max_tokens").count(&json!({"max_tokens": -1})),
            DEFAULT_WORKLOAD
        );
    }

    #[test]
    fn alternatives_take_the_first_present() {
        let w = Workload::parse("max_tokens | max_completion_tokens | 0").unwrap();
        assert_eq!(w.count(&json!({"max_completion_tokens": 9})), 9.0);
        assert_eq!(w.count(&json!({})), 0.0);
    }

    #[test]
    fn comfy_scales_with_resolution_steps_and_batch() {
        let base = json!({"input": {"modifier": "Text2Image", "modifications": {"width": 1024, "height": 1024, "steps": 28}}});
        assert!((Workload::Comfy.count(&base) - 100.0).abs() < 1e-9);
        let small = json!({"input": {"modifications": {"width": 512, "height": 512, "steps": 28}}});
        assert!(Workload::Comfy.count(&small) < 50.0);
        let batch = json!({"input": {"modifications": {"width": 1024, "height": 1024, "steps": 28, "batch_size": 2}}});
        assert!((Workload::Comfy.count(&batch) - 200.0).abs() < 1e-9);
        let wf = json!({"input": {"workflow_json": {
            "3": {"class_type": "KSampler", "inputs": {"steps": 28}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}}
        }}});
        assert!((Workload::Comfy.count(&wf) - 100.0).abs() < 1e-9);
        assert_eq!(
            Workload::Comfy.count(&json!({"input": {}})),
            DEFAULT_WORKLOAD
        );
    }

    #[test]
    fn rejects_bad_formulas() {
        assert!(Workload::parse("a * ").is_err());
        assert!(Workload::parse("a + b").is_err());
        assert!(Workload::parse("-3").is_err());
    }
}
