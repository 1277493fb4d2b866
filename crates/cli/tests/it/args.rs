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
