//! Bad arguments: one clear line on stderr and exit code 64, before any request is sent.

use crate::stack::{ferry, stderr};

fn assert_usage(args: &[&str], needle: &str) {
    let out = ferry(args);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(needle), "{args:?}: {err}");
}

fn assert_one_line(args: &[&str], needle: &str) {
    assert_usage(args, needle);
    let err = stderr(&ferry(args));
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("ferry: "), "{err}");
}

#[test]
fn call_argument_errors() {
    let w = ["--worker", "http://127.0.0.1:9"];
    assert_one_line(
        &["call", "x", "/r", "{nope", w[0], w[1]],
        "payload is not valid JSON",
    );
    assert_one_line(
        &["call", "x", "/r", "@/definitely/not/here.json", w[0], w[1]],
        "payload file /definitely/not/here.json",
    );
    assert_one_line(&["call", "ep", "/r", "{}"], "no endpoint key");
    assert_one_line(
        &["call", "x", "/r", "{}", "--worker", "ftp://x"],
        "--worker \"ftp://x\": must be an http:// or https:// URL",
    );
    assert_one_line(
        &[
            "call",
            "ep",
            "/r",
            "{}",
            "--url",
            "not a url",
            "--endpoint-key",
            "k",
        ],
        "invalid client configuration",
    );
    // clap's own usage errors also exit 64.
    assert_usage(&["call", "x"], "ROUTE");
    assert_usage(&["call", "x", "/r", "--timeout", "soon"], "not a duration");
    assert_usage(&["call", "x", "/r", "--cost=-3"], "non-negative");
}

#[test]
fn bench_argument_errors() {
    let w = ["--worker", "http://127.0.0.1:9"];
    assert_one_line(&["bench", w[0], w[1]], "refusing an unbounded run");
    assert_one_line(&["bench", "-n", "10"], "nothing to load");
    assert_one_line(
        &["bench", "ep", "-n", "10", w[0], w[1]],
        "give only one of ENDPOINT, --worker URL and --direct URL",
    );
    assert_one_line(&["bench", "-n", "0", w[0], w[1]], "at least 1");
    assert_one_line(
        &["bench", "-n", "5", "--direct", "nope"],
        "--direct \"nope\"",
    );
    assert_usage(&["bench", "-n", "5", "-c", "0", w[0], w[1]], "-c");
    assert_usage(&["bench", "-n", "5", "--rate", "0", w[0], w[1]], "rate");
    assert_usage(
        &["bench", "-n", "5", "--direct", "http://x", w[0], w[1]],
        "cannot be used with",
    );
}

#[test]
fn control_store_errors_name_the_setting_not_the_password() {
    let dir = std::env::temp_dir().join(format!("ferry-args-store-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let base = ["control", "--listen", "127.0.0.1:0", "--state-dir", &d];
    for (extra, needle) in [
        (
            &["--store", "mysql://u:s3cret@h/db"][..],
            "--store: must be a postgres:// or postgresql:// URL",
        ),
        (
            &["--store", "postgres://u:s3cret@h/db", "--db", "/tmp/x.db"],
            "--store: give either --store (PostgreSQL) or --db (SQLite), not both",
        ),
        (
            &["--store", "postgres://u:s3cret@h:port/db"],
            "--store: not a valid PostgreSQL URL",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        assert_one_line(&args, needle);
        assert!(!stderr(&ferry(&args)).contains("s3cret"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
