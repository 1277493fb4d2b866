//! `ferry bench` against a real worker + sim: JSON report and SVG chart.

use serde_json::Value;

use crate::stack::{ferry, scratch, stderr, stdout, Stack};

fn summary_is_ordered(s: &Value) {
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert!(f("min") <= f("p50") && f("p50") <= f("p90"), "{s}");
    assert!(f("p90") <= f("p99") && f("p99") <= f("max"), "{s}");
    assert!(f("min") > 0.0, "{s}");
}

#[test]
fn bench_worker_json_and_chart() {
    let st = Stack::start("bench");
    let chart = scratch("bench").join("latency.svg");
    let out = ferry(&[
        "bench",
        "--worker",
        &st.url,
        "-n",
        "200",
        "-c",
        "4",
        "-p",
        r#"{"prompt": "a", "max_tokens": 2}"#,
        "--json",
        "--chart",
        &chart.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["schema"], "ferry-bench/v1");
    assert_eq!(r["target_kind"], "worker");
    assert_eq!(r["mode"], "concurrency");
    assert_eq!(r["requests"], 200);
    assert_eq!(r["ok"], 200, "{r}");
    assert_eq!(r["errors"], 0);
    assert_eq!(r["errors_by_kind"], serde_json::json!({}));
    assert_eq!(r["latency_ms"]["count"], 200);
    summary_is_ordered(&r["latency_ms"]);
    assert!(r["throughput_rps"].as_f64().unwrap() > 0.0);
    assert!(r["ttft_ms"].is_null());
    assert!(r["send_lag_ms"].is_null(), "closed loop has no schedule");

    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<circle").count(), 200);
    assert!(svg.contains("<polyline"));
    // Well-formed enough: every opened group is closed.
    assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
}

#[test]
fn bench_streams_at_a_fixed_rate_and_counts_errors() {
    let st = Stack::start("bench-rate");
    let out = ferry(&[
        "bench",
        "--worker",
        &st.url,
        "--rate",
        "200",
        "-n",
        "40",
        "--stream",
        "-p",
        r#"{"prompt": "a", "max_tokens": 3}"#,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["mode"], "rate");
    assert_eq!(r["ok"], 40, "{r}");
    assert_eq!(r["tokens"], 120);
    assert_eq!(r["ttft_ms"]["count"], 40);
    assert_eq!(r["itl_ms"]["count"], 80);
    summary_is_ordered(&r["ttft_ms"]);
    assert_eq!(r["send_lag_ms"]["count"], 40);

    // A route the model server does not have: every request is an error of one kind.
    let out = ferry(&[
        "bench",
        "--direct",
        &format!("{}/no/such/route", st.sim_url),
        "-n",
        "10",
        "-c",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("0 ok, 10 errors"), "{table}");
    assert!(table.contains("http_404: 10"), "{table}");
}
