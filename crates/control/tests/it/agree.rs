//! Is the simulator honest? The same short trace through a real control plane with real
//! workers in front of simulated model servers (real time), and through `simulate::run`
//! (simulated time, with the cold start the real run measured): the launches agree exactly
//! and every request's queue time within a stated tolerance.

use std::sync::Arc;
use std::time::Duration;

use ferry_control::endpoint::EndpointParams;
use ferry_control::simulate::{self, Request, SimConfig, Trace, WorkerModel};
use ferry_sim::SimConfig as ModelConfig;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::harness::{Cp, Opts};
use crate::inproc::InProc;

/// Two bursts of five requests, 6 s apart: the first scales from zero, the worker is
/// destroyed in the quiet (idle limit 2 s, no cold pool), the second scales from zero again.
const ARRIVALS: [f64; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 6.0, 6.1, 6.2, 6.3, 6.4];
const COST: f64 = 10.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_and_simulated_runs_agree() {
    let model = ModelConfig {
        load_time: Duration::from_millis(1500),
        ..ModelConfig::default()
    };
    let opts = Opts {
        idle_stop_after: Duration::from_secs(2),
        ..Opts::default()
    };
    let cp = Arc::new(Cp::start(InProc::new(model, false), opts).await);
    let (_, key, _) = cp
        .endpoint(
            "agree",
            json!({"cold_workers": 0, "cold_mult": 1.0, "max_workers": 2}),
        )
        .await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for at in ARRIVALS {
        let (cp, key) = (cp.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
            let arrived = Instant::now();
            let mut idx = 0;
            let grant = loop {
                let r = cp.route("agree", &key, COST, idx).await;
                idx = r["request_idx"].as_u64().unwrap_or(idx);
                if r.get("url").is_some() {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let waited = arrived.elapsed().as_secs_f64();
            let url = format!("{}/v1/completions", grant["url"].as_str().unwrap());
            let payload = json!({"model": "m", "prompt": "hi", "max_tokens": COST as u64});
            let res = cp
                .http
                .post(url)
                .json(&json!({"auth_data": grant, "session_id": null, "payload": payload}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            waited
        }));
    }
    let mut real_waits = Vec::new();
    for t in tasks {
        real_waits.push(t.await.unwrap());
    }
    // What the real run measured of its workers: launch to ready, and the benchmark.
    let launched: Vec<i64> = cp.provider.launches.lock().unwrap().clone();
    let mut cold = Vec::new();
    let mut perf = 0.0f64;
    for id in &launched {
        let w: Value = cp.control.worker(*id).unwrap_or(Value::Null);
        if w.is_null() {
            continue;
        }
        let (created, loaded) = (
            w["created_at"].as_f64().unwrap(),
            w["loaded_at"].as_f64().unwrap(),
        );
        if loaded > 0.0 {
            cold.push(loaded - created);
        }
        perf = perf.max(w["measured_perf"].as_f64().unwrap());
    }
    // Destroyed workers are gone from the registry: the surviving one carries the numbers.
    assert!(!cold.is_empty() && perf > 0.0, "no worker record left");
    let cold_start = cold.iter().sum::<f64>() / cold.len() as f64;

    let trace = Trace {
        requests: ARRIVALS
            .iter()
            .map(|&at| Request { at, cost: COST })
            .collect(),
    };
    let cfg = SimConfig {
        params: EndpointParams {
            cold_workers: 0,
            cold_mult: 1.0,
            max_workers: 2,
            ..EndpointParams::default()
        },
        worker: WorkerModel {
            cold_start_s: cold_start,
            resume_s: cold_start,
            stop_s: 0.1,
            benchmark_perf: perf,
            // The simulated model server answers at once.
            real_perf: 1e9,
            concurrency: 64,
        },
        tick_s: 0.1,
        report_s: 0.05,
        idle_stop_after_s: 2.0,
        stale_after_s: 3.0,
        ..SimConfig::default()
    };
    let sim = simulate::run(&trace, &cfg).unwrap();
    assert_eq!(
        sim.launches as usize,
        launched.len(),
        "launches: real {launched:?}, simulated {sim:?}"
    );
    // Tolerance: the client's 20 ms poll, the worker's 50 ms report tick and the 100 ms
    // autoscaler tick on the real side, plus a quarter of the cold start for its spread.
    let tolerance = 0.5 + 0.25 * cold_start;
    // The simulator reports nearest-rank percentiles; the real waits are ranked the same way.
    let mut real_pcts: Vec<f64> = Vec::new();
    let mut real_sorted = real_waits.clone();
    real_sorted.sort_by(f64::total_cmp);
    for q in [0.5, 0.9, 1.0] {
        let rank = ((q * real_sorted.len() as f64).ceil() as usize).clamp(1, real_sorted.len());
        real_pcts.push(real_sorted[rank - 1]);
    }
    let simulated = [sim.queue_time.p50, sim.queue_time.p90, sim.queue_time.max];
    eprintln!(
        "agreement: launches {} real / {} simulated; cold start {cold_start:.2} s; queue time \
         p50/p90/max real {real_pcts:.2?} simulated {simulated:.2?}; tolerance {tolerance:.2} s",
        launched.len(),
        sim.launches
    );
    for (real, simulated) in real_pcts.iter().zip(simulated) {
        assert!(
            (real - simulated).abs() <= tolerance,
            "queue time: real {real:.2} s, simulated {simulated:.2} s, tolerance {tolerance:.2} s \
             (cold start {cold_start:.2} s; real waits {real_waits:?})"
        );
    }
}
