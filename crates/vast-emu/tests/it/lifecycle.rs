//! Create, boot, stop, start, destroy with real processes; the environment they see; the
//! ledger; nothing left after shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_vast_emu::FIRST_INSTANCE_ID;
use serde_json::{json, Value};

use crate::support::{
    alive, call, create, destroy, eventually, finish, instance_file, search_ids, set_state, show,
    start, start_with, wait_status,
};

const OFFER: u64 = 31000115;

/// Writes the environment to `env.<boot>` (one file per boot) and waits.
const ENV_AND_WAIT: &str = "n=$(cat boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > boots; \
                            env > env.$n; exec sleep 30";

fn env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn read_env(emu: &ferry_vast_emu::Emulator, id: u64, boot: u32) -> BTreeMap<String, String> {
    let path = instance_file(emu, id, &format!("env.{boot}"));
    eventually(&format!("{} written", path.display()), || async {
        std::fs::read_to_string(&path).is_ok_and(|t| t.contains("PUBLIC_IPADDR"))
    })
    .await;
    env_file(&std::fs::read_to_string(&path).unwrap())
}

fn host_port(row: &Value, key: &str) -> u16 {
    row["ports"][key][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn boot_stop_start_destroy_with_a_real_process() {
    let emu = start().await;
    let id = create(
        &emu,
        OFFER,
        json!({"client_id": "me", "image": "vastai/base-image:cuda-12", "label": "emu-test",
               "disk": 16, "runtype": "ssh_proxy", "onstart": ENV_AND_WAIT,
               "env": {"-p 3000:3000": "1", "-p 5353/udp": "1", "FOO": "bar baz"}}),
    )
    .await;
    assert_eq!(id, FIRST_INSTANCE_ID);
    let row = show(&emu, id).await;
    assert_eq!(row["actual_status"], "loading", "right after create: {row}");
    assert_eq!(row["intended_status"], "running");

    let row = wait_status(&emu, id, "running").await;
    assert_eq!(row["label"], "emu-test");
    assert_eq!(row["image_uuid"], "vastai/base-image:cuda-12");
    assert_eq!(row["image_runtype"], "ssh_proxy");
    assert_eq!(row["disk_space"], 16.0);
    assert_eq!(row["machine_id"], 41017);
    assert_eq!(row["gpu_name"], "RTX 4090");
    assert_eq!(row["dph_total"], 0.348);
    assert_eq!(row["public_ipaddr"], "127.0.0.1");
    assert_eq!(row["cur_state"], "running");
    assert!(row["status_msg"]
        .as_str()
        .unwrap()
        .contains("vastai/base-image:cuda-12"));
    assert!(row["start_date"].as_f64().unwrap() > 1.7e9);
    assert!(row["extra_env"]
        .as_array()
        .unwrap()
        .contains(&json!(["FOO", "bar baz"])));
    let tcp = host_port(&row, "3000/tcp");
    let udp = host_port(&row, "5353/udp");

    let env = read_env(&emu, id, 1).await;
    assert_eq!(env["CONTAINER_ID"], id.to_string());
    assert_eq!(env["VAST_CONTAINERLABEL"], format!("C.{id}"));
    assert_eq!(env["PUBLIC_IPADDR"], "127.0.0.1");
    assert_eq!(env["VAST_TCP_PORT_3000"], tcp.to_string());
    assert_eq!(env["VAST_UDP_PORT_5353"], udp.to_string());
    assert_eq!(env["FOO"], "bar baz");
    assert!(
        !env.keys().any(|k| k.starts_with('-')),
        "docker flags are not variables"
    );

    let ledger = emu.ledger();
    assert_eq!(
        (ledger.created, ledger.alive(), ledger.processes_running()),
        (1, 1, 1)
    );
    let pid = ledger.instances[0].pid.unwrap();
    assert!(alive(pid));
    assert_eq!(ledger.instances[0].tcp_ports[&3000], tcp);

    set_state(&emu, id, "stopped").await;
    let row = show(&emu, id).await;
    assert_eq!(
        (&row["intended_status"], &row["cur_state"]),
        (&json!("stopped"), &json!("stopped"))
    );
    wait_status(&emu, id, "stopped").await;
    assert!(!alive(pid), "stop ends the process");
    assert_eq!(emu.ledger().processes_running(), 0);

    set_state(&emu, id, "running").await;
    let row = wait_status(&emu, id, "running").await;
    assert_eq!(
        host_port(&row, "3000/tcp"),
        tcp,
        "a restart keeps the ports"
    );
    let env = read_env(&emu, id, 2).await;
    assert_eq!(env["VAST_TCP_PORT_3000"], tcp.to_string());
    let pid2 = emu.ledger().instances[0].pid.unwrap();
    assert_ne!(pid, pid2);
    // Starting a running instance changes nothing.
    set_state(&emu, id, "running").await;
    assert_eq!(emu.ledger().instances[0].pid, Some(pid2));

    destroy(&emu, id).await;
    assert_eq!(show(&emu, id).await, Value::Null);
    eventually("the destroyed instance's process is gone", || async {
        emu.ledger().processes_running() == 0
    })
    .await;
    assert!(!alive(pid2));
    assert!(search_ids(&emu, json!({})).await.contains(&OFFER));
    let ledger = emu.ledger();
    assert_eq!(
        (
            ledger.created,
            ledger.destroyed,
            ledger.alive(),
            ledger.processes_started
        ),
        (1, 1, 0, 2)
    );
    finish(emu).await;
}

#[tokio::test]
async fn the_create_env_is_applied_last() {
    let emu = start().await;
    let id = create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": ENV_AND_WAIT,
               "env": "-e CONTAINER_ID=custom -e GREETING='hello world' -p 8080:8080"}),
    )
    .await;
    let env = read_env(&emu, id, 1).await;
    assert_eq!(env["CONTAINER_ID"], "custom");
    assert_eq!(env["VAST_CONTAINERLABEL"], format!("C.{id}"));
    assert_eq!(env["GREETING"], "hello world");
    assert!(env.contains_key("VAST_TCP_PORT_8080"));
    finish(emu).await;
}

#[tokio::test]
async fn a_process_that_exits_takes_its_group_along() {
    let emu = start().await;
    let id = create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": "sleep 30 & echo $! > child.pid; echo bye; exit 3"}),
    )
    .await;
    let row = wait_status(&emu, id, "exited").await;
    assert!(
        row["status_msg"].as_str().unwrap().contains("status 3"),
        "{row}"
    );
    assert_eq!(row["intended_status"], "running");
    let child: u32 = std::fs::read_to_string(instance_file(&emu, id, "child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the left-behind child is killed", || async {
        !alive(child)
    })
    .await;
    let log = std::fs::read_to_string(emu.instance_log(id)).unwrap();
    assert!(log.contains("bye"), "{log}");
    // An exited instance starts again.
    set_state(&emu, id, "running").await;
    wait_status(&emu, id, "exited").await;
    assert_eq!(emu.ledger().processes_started, 2);
    finish(emu).await;
}

#[tokio::test]
async fn sigkill_after_the_grace_when_sigterm_is_ignored() {
    let emu = start_with(|c| c.stop_grace = Duration::from_millis(300)).await;
    let id = create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": "trap '' TERM; echo up > up; while :; do sleep 0.05; done"}),
    )
    .await;
    wait_status(&emu, id, "running").await;
    let up = instance_file(&emu, id, "up");
    eventually("the trap is set", || async { up.exists() }).await;
    let pid = emu.ledger().instances[0].pid.unwrap();
    set_state(&emu, id, "stopped").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        alive(pid),
        "SIGTERM is ignored, so it runs until the grace is over"
    );
    assert_eq!(show(&emu, id).await["actual_status"], "running");
    wait_status(&emu, id, "stopped").await;
    assert!(!alive(pid));
    finish(emu).await;
}

#[tokio::test]
async fn an_instance_without_a_command_runs_without_a_process() {
    let emu = start().await;
    let id = create(&emu, OFFER, json!({"image": "i"})).await;
    wait_status(&emu, id, "running").await;
    assert_eq!(emu.ledger().processes_running(), 0);
    set_state(&emu, id, "stopped").await;
    wait_status(&emu, id, "stopped").await;
    // Created stopped: no boot until started.
    let other = create(
        &emu,
        31000108,
        json!({"image": "i", "target_state": "stopped"}),
    )
    .await;
    let row = show(&emu, other).await;
    assert_eq!(
        (&row["actual_status"], &row["intended_status"]),
        (&json!("created"), &json!("stopped"))
    );
    set_state(&emu, other, "running").await;
    wait_status(&emu, other, "running").await;
    finish(emu).await;
}

#[tokio::test]
async fn labels_lists_and_bulk_calls() {
    let emu = start().await;
    let a = create(
        &emu,
        OFFER,
        json!({"image": "i", "label": "a", "onstart": "exec sleep 30"}),
    )
    .await;
    let b = create(&emu, 31000108, json!({"image": "i", "label": "b"})).await;
    let (status, _) = call(
        &emu,
        "PUT",
        &format!("/api/v0/instances/{b}/"),
        Some(json!({"label": "renamed"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(show(&emu, b).await["label"], "renamed");

    let (status, body) = call(&emu, "GET", "/api/v0/instances/", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["instances"].as_array().unwrap().len(), 2);

    // v1: filters, order, paging, columns.
    let q = |filters: &str, order: &str, extra: &str| {
        format!(
            "/api/v1/instances/?select_filters={}&order_by={}&limit=1{extra}",
            urlencode(filters),
            urlencode(order)
        )
    };
    let (status, page) = call(
        &emu,
        "GET",
        &q("{}", r#"[{"col":"id","dir":"desc"}]"#, ""),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total_instances"], 2);
    assert_eq!(page["instances"][0]["id"], b);
    let token = page["next_token"].as_str().unwrap().to_owned();
    let (_, page2) = call(
        &emu,
        "GET",
        &q(
            "{}",
            r#"[{"col":"id","dir":"desc"}]"#,
            &format!("&after_token={token}"),
        ),
        None,
    )
    .await;
    assert_eq!(page2["instances"][0]["id"], a);
    assert_eq!(page2["next_token"], Value::Null);
    let (_, only) = call(
        &emu,
        "GET",
        &q(
            r#"{"label":{"in":["renamed"]}}"#,
            "[]",
            r#"&select_cols=["id","label"]"#,
        ),
        None,
    )
    .await;
    assert_eq!(only["instances"], json!([{"id": b, "label": "renamed"}]));

    wait_status(&emu, a, "running").await;
    let (status, _) = call(
        &emu,
        "PUT",
        "/api/v0/instances/",
        Some(json!({"ids": [a, b], "state": "stopped"})),
    )
    .await;
    assert_eq!(status, 200);
    wait_status(&emu, a, "stopped").await;
    wait_status(&emu, b, "stopped").await;
    let (status, _) = call(
        &emu,
        "DELETE",
        "/api/v0/instances/",
        Some(json!({"instance_ids": [a, b]})),
    )
    .await;
    assert_eq!(status, 200);
    let ledger = emu.ledger();
    assert_eq!((ledger.created, ledger.destroyed), (2, 2));
    finish(emu).await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn shutdown_stops_every_process() {
    let emu = start().await;
    for offer in [OFFER, 31000108, 31000129] {
        create(
            &emu,
            offer,
            json!({"image": "i", "onstart": "exec sleep 30"}),
        )
        .await;
    }
    eventually("three processes running", || async {
        emu.ledger().processes_running() == 3
    })
    .await;
    let pids: Vec<u32> = emu.ledger().processes.iter().map(|p| p.pid).collect();
    finish(emu).await;
    for pid in pids {
        assert!(!alive(pid));
    }
}

#[tokio::test]
async fn dropping_without_shutdown_kills_the_process_groups() {
    let emu = start().await;
    create(
        &emu,
        OFFER,
        json!({"image": "i", "onstart": "sleep 30 & exec sleep 30"}),
    )
    .await;
    eventually("running", || async {
        emu.ledger().processes_running() == 1
    })
    .await;
    let dir = emu.state_dir().to_owned();
    eventually("both processes started", || async {
        crate::support::procs_in(&dir).len() == 2
    })
    .await;
    drop(emu);
    eventually("no process left", || async {
        crate::support::procs_in(&dir).is_empty()
    })
    .await;
    assert!(
        dir.join("instances").is_dir(),
        "a drop without a shutdown keeps the logs"
    );
    let _ = std::fs::remove_dir_all(dir);
}
