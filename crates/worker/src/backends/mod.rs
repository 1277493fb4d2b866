//! Backend presets: which routes a worker serves, how each request's workload is counted, which
//! model log lines mean loaded / error / info, the health endpoint, and the benchmark payload.
//!
//! Layout: `mod.rs` holds the shared types, the name → preset table and the TOML form of a custom
//! preset ([`PresetFile`]); each preset is a file of its own, with the values Vast's templates use.

mod comfyui;
mod hello;
mod llamacpp;
mod openai;
mod passthrough;
pub mod pruned;
mod tgi;
mod workload;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::readiness::LogLines;
use crate::transform::{ResponseFile, Transform};
pub use workload::Workload;

/// Vast's fallback workload when nothing better is known (`DEFAULT_WORKLOAD`).
pub const DEFAULT_WORKLOAD: f64 = 100.0;

/// One worker route and where it goes on the model server.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// Path the client posts to on the worker.
    pub path: String,
    /// Path on the model server (empty: the same path as the request).
    pub model_path: String,
    /// How a payload's workload is counted.
    pub workload: Workload,
    /// Parallel (true) or one-at-a-time strict FIFO (false).
    pub parallel: bool,
    /// 429 when the estimated wait exceeds this many seconds; `None` never rejects.
    pub max_queue_time: Option<f64>,
    /// How the model's answer is reshaped before it is relayed; `None` relays it untouched.
    pub response: Option<Arc<Transform>>,
}

/// What the benchmark sends.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkDef {
    /// The worker route whose model path and workload formula the benchmark uses.
    pub route: String,
    /// Payloads, used round-robin.
    pub payloads: Vec<Value>,
    pub runs: u32,
    pub concurrency: u32,
    pub warmup: bool,
}

/// A backend preset.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// Canonical preset name.
    pub name: &'static str,
    /// Declared routes.
    pub routes: Vec<RouteSpec>,
    /// Forward POSTs to any other path to the same path, with these settings.
    pub passthrough: Option<RouteSpec>,
    /// Health endpoint of the model server, if the preset knows one.
    pub health_endpoint: Option<String>,
    /// Unwrap `{"input": {...}}` payloads before forwarding (Vast's OpenAI workers do).
    pub unwrap_input: bool,
    /// Model log lines.
    pub lines: LogLines,
    /// Benchmark definition.
    pub benchmark: BenchmarkDef,
    /// Fill an empty `"model"` in benchmark payloads from `/v1/models` (OpenAI servers reject
    /// unknown model names).
    pub fill_model: bool,
}

impl Preset {
    /// Looks a preset up by the names Vast's templates use for BACKEND, or builds the custom one
    /// a TOML file declares.
    pub fn resolve(name: &str, file: &PresetFile) -> Result<Preset, String> {
        if let Some(custom) = file.custom()? {
            return Ok(custom);
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "openai" | "vllm" | "sglang" | "llama" => Ok(openai::preset()),
            "tgi" => Ok(tgi::preset()),
            "llamacpp" | "llama.cpp" | "llama-cpp" => Ok(llamacpp::preset()),
            "comfyui" | "comfyui-json" | "comfy" => Ok(comfyui::preset()),
            "hello" | "hello_world" => Ok(hello::preset()),
            "passthrough" | "" => Ok(passthrough::preset()),
            other => Err(format!(
                "unknown preset {other:?} (known: openai, vllm, sglang, llama, llamacpp, tgi, comfyui, hello, passthrough)"
            )),
        }
    }

    /// The route a POST to `path` is served by, if any.
    pub fn route_for(&self, path: &str) -> Option<&RouteSpec> {
        self.routes
            .iter()
            .find(|r| r.path == path)
            .or(self.passthrough.as_ref())
    }
}

/// Preset tables a worker TOML file may carry beside its settings: a custom worker with no code.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PresetFile {
    /// `[[route]]` tables; when present they define the worker's routes.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteFile>,
    /// `[readiness]`: log lines and health endpoint.
    #[serde(default)]
    pub readiness: Option<ReadinessFile>,
    /// `[benchmark]`.
    #[serde(default)]
    pub benchmark: Option<BenchmarkFile>,
}

/// One `[[route]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub path: String,
    pub model_path: Option<String>,
    /// A number, a field path, a product `a.b * c`, or alternatives `a | b | 0`.
    #[serde(default)]
    pub workload: Option<toml::Value>,
    #[serde(default = "yes")]
    pub parallel: bool,
    pub max_queue_time: Option<f64>,
    /// `[route.response]`: reshape the model's answer, map its errors to statuses.
    #[serde(default)]
    pub response: Option<ResponseFile>,
}

/// The `[readiness]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadinessFile {
    #[serde(default)]
    pub loaded: Vec<String>,
    #[serde(default)]
    pub error: Vec<String>,
    #[serde(default)]
    pub info: Vec<String>,
    pub health_endpoint: Option<String>,
}

/// The `[benchmark]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkFile {
    /// Worker route to benchmark; defaults to the first route.
    pub route: Option<String>,
    /// One payload, or several used round-robin.
    pub payload: Option<toml::Value>,
    #[serde(default)]
    pub payloads: Vec<toml::Value>,
    pub runs: Option<u32>,
    pub concurrency: Option<u32>,
    pub warmup: Option<bool>,
}

fn yes() -> bool {
    true
}

fn toml_to_json(v: &toml::Value) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

impl PresetFile {
    /// Removes the preset tables from a parsed worker TOML file, leaving only settings.
    pub fn take_from(table: &mut toml::Table) -> Result<PresetFile, String> {
        let mut preset = toml::Table::new();
        for key in ["route", "readiness", "benchmark"] {
            if let Some(v) = table.remove(key) {
                preset.insert(key.to_string(), v);
            }
        }
        preset
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())
    }

    fn custom(&self) -> Result<Option<Preset>, String> {
        if self.routes.is_empty() {
            if self.readiness.is_some() || self.benchmark.is_some() {
                return Err("[readiness] and [benchmark] need at least one [[route]]".into());
            }
            return Ok(None);
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for r in &self.routes {
            if !r.path.starts_with('/') {
                return Err(format!("route path {:?} must start with '/'", r.path));
            }
            if routes.iter().any(|x: &RouteSpec| x.path == r.path) {
                return Err(format!("route {} is declared twice", r.path));
            }
            if let Some(q) = r.max_queue_time {
                // Negative would refuse every request with 429, NaN none.
                if !(q.is_finite() && q >= 0.0) {
                    return Err(format!(
                        "route {}: max_queue_time must be a non-negative number of seconds",
                        r.path
                    ));
                }
            }
            let workload = match &r.workload {
                None => Workload::Constant(DEFAULT_WORKLOAD),
                Some(v) => Workload::from_toml(v)
                    .map_err(|e| format!("route {}: workload: {e}", r.path))?,
            };
            let response = match &r.response {
                None => None,
                Some(f) => Transform::from_file(f)
                    .map_err(|e| format!("route {}: {e}", r.path))?
                    .map(Arc::new),
            };
            routes.push(RouteSpec {
                path: r.path.clone(),
                model_path: r.model_path.clone().unwrap_or_else(|| r.path.clone()),
                workload,
                parallel: r.parallel,
                max_queue_time: r.max_queue_time,
                response,
            });
        }
        let readiness = self.readiness.clone().unwrap_or_default();
        let bench = self.benchmark.clone().unwrap_or(BenchmarkFile {
            route: None,
            payload: None,
            payloads: Vec::new(),
            runs: None,
            concurrency: None,
            warmup: None,
        });
        let route = bench
            .route
            .clone()
            .unwrap_or_else(|| routes[0].path.clone());
        if !routes.iter().any(|r| r.path == route) {
            return Err(format!(
                "[benchmark] route {route} is not a declared [[route]]"
            ));
        }
        let mut payloads = bench
            .payloads
            .iter()
            .map(toml_to_json)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(p) = &bench.payload {
            payloads.insert(0, toml_to_json(p)?);
        }
        if payloads.is_empty() {
            payloads.push(Value::Object(Default::default()));
        }
        Ok(Some(Preset {
            name: "custom",
            routes,
            passthrough: None,
            health_endpoint: readiness.health_endpoint.clone(),
            unwrap_input: false,
            lines: LogLines {
                loaded: readiness.loaded,
                error: readiness.error,
                info: readiness.info,
            },
            benchmark: BenchmarkDef {
                route,
                payloads,
                runs: bench.runs.unwrap_or(3),
                concurrency: bench.concurrency.unwrap_or(10),
                warmup: bench.warmup.unwrap_or(true),
            },
            fill_model: false,
        }))
    }
}

/// `n` words of filler text from a fixed vocabulary, varied by `seed` (benchmark prompts differ
/// from each other so prefix caches cannot make the benchmark look faster than real traffic).
pub fn filler_words(n: usize, seed: u64) -> String {
    const WORDS: &[&str] = &[
        "river", "stone", "light", "paper", "garden", "window", "signal", "orbit", "copper",
        "meadow", "engine", "harbor", "lantern", "pencil", "thunder", "valley", "marble", "shadow",
        "canvas", "forest", "silver", "bridge", "candle", "planet", "ferry",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = String::with_capacity(n * 7);
    for i in 0..n {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 29;
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vast_backend_name_resolves() {
        let f = PresetFile::default();
        for (name, preset) in [
            ("vllm", "openai"),
            ("sglang", "openai"),
            ("llama", "openai"),
            ("openai", "openai"),
            ("tgi", "tgi"),
            ("llamacpp", "llamacpp"),
            ("comfyui", "comfyui"),
            ("hello", "hello"),
            ("passthrough", "passthrough"),
        ] {
            assert_eq!(Preset::resolve(name, &f).unwrap().name, preset, "{name}");
        }
        assert!(Preset::resolve("bogus", &f).is_err());
    }

    #[test]
    fn every_preset_benchmarks_a_declared_route() {
        let f = PresetFile::default();
        for name in [
            "openai",
            "tgi",
            "llamacpp",
            "comfyui",
            "hello",
            "passthrough",
        ] {
            let p = Preset::resolve(name, &f).unwrap();
            assert!(p.route_for(&p.benchmark.route).is_some(), "{name}");
            assert!(!p.benchmark.payloads.is_empty(), "{name}");
        }
    }

    #[test]
    fn custom_preset_from_toml() {
        let mut t: toml::Table = r#"
            [[route]]
            path = "/gen"
            model_path = "/generate"
            workload = "parameters.max_new_tokens"
            parallel = false
            max_queue_time = 30.0
            [readiness]
            loaded = ["ready!"]
            health_endpoint = "/health"
            [benchmark]
            payload = { inputs = "hi", parameters = { max_new_tokens = 8 } }
            runs = 2
            concurrency = 1
        "#
        .parse()
        .unwrap();
        let f = PresetFile::take_from(&mut t).unwrap();
        assert!(t.is_empty());
        let p = Preset::resolve("passthrough", &f).unwrap();
        assert_eq!(p.name, "custom");
        let r = p.route_for("/gen").unwrap();
        assert_eq!(r.model_path, "/generate");
        assert!(!r.parallel);
        assert!(p.route_for("/other").is_none());
        assert_eq!(p.lines.loaded, vec!["ready!"]);
        assert_eq!(p.benchmark.payloads[0]["parameters"]["max_new_tokens"], 8);
        assert_eq!(r.workload.count(&p.benchmark.payloads[0]), 8.0);
    }

    #[test]
    fn custom_max_queue_time_must_be_a_duration() {
        for bad in ["-1.0", "nan", "inf"] {
            let mut t: toml::Table = format!("[[route]]\npath = \"/a\"\nmax_queue_time = {bad}\n")
                .parse()
                .unwrap();
            let f = PresetFile::take_from(&mut t).unwrap();
            let e = Preset::resolve("", &f).unwrap_err();
            assert!(e.contains("max_queue_time"), "{bad}: {e}");
        }
    }

    #[test]
    fn filler_is_deterministic_and_varied() {
        assert_eq!(filler_words(5, 1), filler_words(5, 1));
        assert_ne!(filler_words(20, 1), filler_words(20, 2));
        assert_eq!(filler_words(250, 3).split(' ').count(), 250);
    }
}
