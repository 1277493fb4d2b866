//! The worker's TOML config file (`--config` / `FERRY_WORKER_CONFIG`): settings plus the custom
//! preset tables of docs/custom-workers.md, through the same path as `ferry worker`
//! (`WorkerArgs::merge_toml`, `PresetFile::take_from`, `WorkerArgs::validate`).
//!
//! Checks:
//! - a refused file gives one line naming the setting (the CLI prints it and exits 64);
//! - accepted settings hold what the request path relies on: every route path starts with `/`
//!   and is declared once, every `max_queue_time` is a non-negative number, the benchmark route
//!   exists, and every route's workload formula counts every benchmark payload as a finite,
//!   non-negative number.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{ArgMatches, Args, FromArgMatches};
use ferry_worker::config::ConfigError;
use ferry_worker::WorkerArgs;
use libfuzzer_sys::fuzz_target;

/// The defaults of `ferry worker` with no flags, parsed once.
static BASE: LazyLock<(WorkerArgs, ArgMatches)> = LazyLock::new(|| {
    let matches = WorkerArgs::augment_args(clap::Command::new("worker"))
        .try_get_matches_from(["worker"])
        .expect("no flags parse");
    let args = WorkerArgs::from_arg_matches(&matches).expect("defaults");
    (args, matches)
});

fn one_line(e: &ConfigError) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "multi-line config error: {text:?}");
    assert!(!e.setting.is_empty());
}

fuzz_target!(|data: &[u8]| {
    // The worker reads the file with `read_to_string`: not UTF-8 is an I/O error before this.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (base, matches) = &*BASE;
    let merged = base
        .clone()
        .merge_toml(matches, PathBuf::from("fuzz.toml"), text);
    let (args, file) = match merged {
        Ok(x) => x,
        Err(e) => return one_line(&e),
    };
    let settings = match args.validate(&file) {
        Ok(s) => s,
        Err(e) => return one_line(&e),
    };

    let preset = &settings.preset;
    let mut paths = Vec::new();
    for r in preset.routes.iter().chain(preset.passthrough.as_ref()) {
        if let Some(q) = r.max_queue_time {
            assert!(
                q.is_finite() && q >= 0.0,
                "route {}: max_queue_time {q}",
                r.path
            );
        }
    }
    for r in &preset.routes {
        assert!(r.path.starts_with('/'), "route path {:?}", r.path);
        assert!(!paths.contains(&&r.path), "route {} twice", r.path);
        paths.push(&r.path);
    }
    assert!(preset.route_for(&preset.benchmark.route).is_some());
    for payload in &preset.benchmark.payloads {
        for r in preset.routes.iter().chain(preset.passthrough.as_ref()) {
            let w = r.workload.count(payload);
            assert!(w.is_finite() && w >= 0.0, "route {}: workload {w}", r.path);
        }
    }
});
