//! `ferry simulate` as a process on the shipped code trace: every policy side by side as
//! JSON, the same numbers twice, the chart, and bad flags refused with exit code 64.

use std::process::Command;

fn simulate(args: &[&str]) -> std::process::Output {
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv"
    );
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("simulate")
        .arg(trace)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn compares_every_policy_deterministically_with_a_chart() {
    let svg = std::env::temp_dir().join(format!("ferry-sim-{}.svg", std::process::id()));
    let args = [
        "--duration-s",
        "600",
        "--compare",
        "--format",
        "json",
        "--svg",
        svg.to_str().unwrap(),
    ];
    let a = simulate(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let runs = v.as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|o| o["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["vast", "kpa", "ray", "ferry"]);
    for o in runs {
        let n = o["requests"].as_u64().unwrap();
        assert!(n > 1000);
        assert_eq!(
            o["served"].as_u64().unwrap() + o["rejected"].as_u64().unwrap(),
            n
        );
        assert!(o["hot_s"].as_f64().unwrap() >= o["lower_bound_s"].as_f64().unwrap());
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("ferry: workers by state"));
    let _ = std::fs::remove_file(&svg);
    let b = simulate(&args);
    assert_eq!(a.stdout, b.stdout, "same seed, same numbers");
}

#[test]
fn bad_flags_exit_64() {
    let out = simulate(&["--speed", "0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--speed"));
}
