//! One run of an instance: wait for the previous run's processes to be gone, "boot" (the
//! boot delay, or a failing boot), run the on-start command with `sh -c` in its own process
//! group, and stop it: SIGTERM to the group, SIGKILL after the stop grace.
//!
//! A container ends when its main process does, taking every process in it along: when the
//! command exits by itself, whatever it left running in its group is killed too. The output
//! (stdout and stderr) is appended to `<state dir>/instances/<id>/onstart.log`, which is also
//! the process's working directory.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};
use tokio::process::{Child, Command};

use crate::cloud::BootOrder;
use crate::knobs::BootFailure;
use crate::server::Emu;

/// How long to wait for a killed process group's last members to go.
const GROUP_GONE_WAIT: Duration = Duration::from_secs(2);
const GROUP_POLL: Duration = Duration::from_millis(10);

/// Runs one boot of an instance to its end (see the module docs).
pub(crate) async fn run(emu: Emu, order: BootOrder) {
    let BootOrder {
        id,
        gen,
        token,
        slot,
        command,
        env,
        dir,
    } = order;
    // The previous run of this instance (if it is still stopping) holds its ports.
    let _slot = tokio::select! {
        guard = slot.lock_owned() => guard,
        () = token.cancelled() => {
            emu.cloud().run_stopped(id, gen);
            return;
        }
    };
    let delay = emu.knobs().boot_delay();
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = token.cancelled() => {
            emu.cloud().run_stopped(id, gen);
            return;
        }
    }
    if let Some(mode) = emu.knobs().take_boot_failure() {
        tracing::info!(instance = id, ?mode, "emulated boot failure");
        emu.cloud().run_boot_failed(id, gen, mode, None);
        if mode == BootFailure::Hang {
            token.cancelled().await;
            emu.cloud().run_stopped(id, gen);
        }
        return;
    }
    let Some(command) = command else {
        emu.cloud().run_running_idle(id, gen);
        token.cancelled().await;
        emu.cloud().run_stopped(id, gen);
        return;
    };
    let mut child = match spawn(&command, &env, &dir, gen).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(instance = id, error = %e, "cannot start the on-start command");
            let why = format!("failed to start the on-start command: {e}");
            emu.cloud()
                .run_boot_failed(id, gen, BootFailure::Exit, Some(why));
            return;
        }
    };
    let Some(pid) = child.id() else {
        // Reaped already: it cannot have run.
        emu.cloud()
            .run_exited(id, gen, "exited before it could be watched".into());
        return;
    };
    let pgid = i32::try_from(pid).ok().and_then(Pid::from_raw);
    emu.cloud().run_started(id, gen, pid);
    tracing::info!(instance = id, pid, "on-start command running");
    tokio::select! {
        status = child.wait() => {
            // The container's main process is gone: so is everything it left behind.
            kill_group(pgid).await;
            let how = exit_text(status);
            tracing::info!(instance = id, pid, %how, "on-start command exited");
            emu.cloud().run_exited(id, gen, how);
        }
        () = token.cancelled() => {
            terminate(&mut child, pgid, emu.stop_grace()).await;
            tracing::info!(instance = id, pid, "on-start command stopped");
            emu.cloud().run_stopped(id, gen);
        }
    }
    emu.cloud().run_process_gone(id, gen);
}

async fn spawn(
    command: &str,
    env: &[(String, String)],
    dir: &std::path::Path,
    gen: u64,
) -> std::io::Result<Child> {
    tokio::fs::create_dir_all(dir).await?;
    let log_path = dir.join("onstart.log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    {
        use std::io::Write;
        writeln!(log, "===== boot {gen}: sh -c {command:?} =====")?;
    }
    let err = log.try_clone()?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
}

/// SIGTERM to the group; SIGKILL to it after `grace` (or at once once the leader is gone,
/// for what it left behind).
async fn terminate(child: &mut Child, pgid: Option<Pid>, grace: Duration) {
    if let Some(pg) = pgid {
        let _ = kill_process_group(pg, Signal::TERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "on-start process group still up after SIGTERM and the grace; sending SIGKILL"
        );
    }
    kill_group(pgid).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// SIGKILL to the group, then waits (bounded) until none of it is left.
async fn kill_group(pgid: Option<Pid>) {
    let Some(pg) = pgid else {
        return;
    };
    let _ = kill_process_group(pg, Signal::KILL);
    let deadline = tokio::time::Instant::now() + GROUP_GONE_WAIT;
    while test_kill_process_group(pg).is_ok() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                pgid = pg.as_raw_nonzero().get(),
                "process group still has members"
            );
            return;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// SIGKILL to a group without waiting: the last resort when the emulator is dropped without
/// a shutdown.
pub(crate) fn kill_group_now(pid: u32) {
    if let Some(pg) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pg, Signal::KILL);
    }
}

fn exit_text(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("container exited with status {code}"),
            (None, Some(sig)) => format!("container killed by signal {sig}"),
            (None, None) => "container exited".to_owned(),
        },
        Err(e) => format!("container exit unknown: {e}"),
    }
}
