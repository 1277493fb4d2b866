//! `ferry demo` end to end: control plane, autoscaled local workers from zero, a burst of plain
//! and streaming requests through the route flow, clean shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn demo_scales_from_zero_serves_the_burst_and_shuts_down() {
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "demo",
            "--requests",
            "8",
            "--concurrency",
            "4",
            "--max-tokens",
            "8",
        ])
        .env("FERRY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ferry demo");
    // The demo's state folder is `ferry-demo-<its pid>`; its instances run inside it.
    let state_dir = std::env::temp_dir().join(format!("ferry-demo-{}", child.id()));
    let out = child.wait_with_output().expect("run ferry demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("summary: 8 ok, 0 failed"), "{stdout}");
    // Workers were started by the autoscaler (none existed) and answered, streams included.
    assert!(stdout.contains("workers: "), "{stdout}");
    assert!(stdout.contains("stream (first token"), "{stdout}");
    assert!(stdout.contains("via http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("shutting down"), "{stdout}");
    // The web console's address and the key to sign in with.
    assert!(
        stdout.contains("web console: http://127.0.0.1:")
            && stdout.contains("/ui/ (sign in with the account key ferry-demo-account-key)"),
        "{stdout}"
    );
    // No worker or model process of this demo outlives it: none runs inside its state folder
    // (other demos and tests may run meanwhile, in folders of their own).
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&state_dir))
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(leftover.is_empty(), "processes left behind: {leftover:?}");
}

#[test]
fn demo_rejects_bad_arguments_with_exit_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["demo", "--requests", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--requests"), "{stderr}");
}
