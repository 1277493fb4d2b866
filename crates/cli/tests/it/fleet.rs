//! `ferry control join-token ...` and `ferry join` against a real `ferry control` process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::stack::{ferry, free_port, scratch, stderr, stdout, Proc, FERRY};

async fn post(url: &str, key: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test]
async fn join_tokens_from_the_command_line() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = scratch("fleet");
    let _cp = Proc(
        Command::new(FERRY)
            .args(["control", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--state-dir",
                &dir.display().to_string(),
                "--api-key",
                "acct",
            ])
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{url}/health")).await.is_err() {
        assert!(Instant::now() < deadline, "ferry control did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ep = post(
        &format!("{url}/api/v0/endptjobs/"),
        "acct",
        json!({"endpoint_name": "e", "cold_workers": 0}),
    )
    .await["result"]
        .as_i64()
        .unwrap();
    let group = post(
        &format!("{url}/api/v0/workergroups/"),
        "acct",
        json!({"endpoint_id": ep, "provider": "external"}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let g = group.to_string();
    let conn = ["--url", url.as_str(), "--api-key", "acct"];

    let out = ferry(
        &[
            &[
                "control",
                "join-token",
                "create",
                "--workergroup",
                &g,
                "--label",
                "rack-7",
            ][..],
            &conn,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("fjt_"), "{token}");

    let out = ferry(
        &[
            &["control", "join-token", "list", "--workergroup", &g][..],
            &conn,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("rack-7"), "{}", stdout(&out));
    assert!(!stdout(&out).contains(&token), "the secret is never listed");

    // The key comes from the state dir when not given.
    let out = Command::new(FERRY)
        .args([
            "control",
            "join-token",
            "list",
            "--workergroup",
            &g,
            "--url",
            &url,
        ])
        .env("FERRY_STATE_DIR", &dir)
        .env_remove("FERRY_API_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // `ferry join` registers and prints what an unmodified PyWorker needs.
    let join = [
        "join",
        "--url",
        url.as_str(),
        "--token",
        token.as_str(),
        "--worker-url",
        "http://127.0.0.1:9",
    ];
    let out = ferry(&join);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = stdout(&out);
    assert!(env.contains("export CONTAINER_ID="), "{env}");
    assert!(env.contains("export MASTER_TOKEN='"), "{env}");
    assert!(
        env.contains(&format!("export REPORT_ADDR='{url}'")),
        "{env}"
    );

    // Revoked: joining fails with the control plane's reason.
    let id = token.split('_').nth(1).unwrap();
    let out = ferry(&[&["control", "join-token", "revoke", id][..], &conn].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry(&join);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid or revoked join token"),
        "{}",
        stderr(&out)
    );

    // A local workergroup takes no tokens; the error says why.
    let local = post(
        &format!("{url}/api/v0/workergroups/"),
        "acct",
        json!({"endpoint_id": ep}),
    )
    .await["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let out = ferry(
        &[
            &["control", "join-token", "create", "--workergroup", &local][..],
            &conn,
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("takes no joined workers"),
        "{}",
        stderr(&out)
    );
}
