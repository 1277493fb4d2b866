//! Prometheus metrics: names defined once, bounded labels, and one helper per outcome so the
//! log line and the counter cannot drift apart.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `ferry_control_routes_total` | counter | `outcome` = ready, waiting, bad_request, unauthorized |
//! | `ferry_control_reroutes_total` | counter | |
//! | `ferry_control_queue_length` | gauge | |
//! | `ferry_control_workers` | gauge | `state` (Vast's worker states) |
//! | `ferry_control_scaling_actions_total` | counter | `action` = launch, resume, stop, destroy; `reason` |
//! | `ferry_control_desired_workers` | gauge | `workergroup` (id): workers the autoscaler wants, warm or cold |
//! | `ferry_control_responses_total` | counter | `surface` = console, run, worker, gateway, ops; `code` (`ok` or the error code); `source` = none, client, worker, internal |
//! | `ferry_control_vast_api_calls_total` | counter | `call` = search, create, list, state, label, destroy; `outcome` = ok or the error code (after retries) |
//! | `ferry_control_vast_api_retries_total` | counter | `call`; `reason` = rate_limited, unreachable, failed |
//! | `ferry_control_vast_doomed_instances` | gauge | | Vast instances waiting for a confirmed destroy (stuck above 0: the API refuses destroys) |
//! | `ferry_control_store_pending_writes` | gauge | | writes queued for PostgreSQL and not yet committed (grows while it is down) |
//! | `ferry_control_store_retries_total` | counter | `reason` = unreachable, failed, timeout, fatal: failed database attempts, each retried |
//! | `ferry_control_store_flush_behind_total` | counter | `code` = store_behind, store_closed: flushes answered before the database confirmed |
//! | `ferry_control_store_lost_writes_total` | counter | `reason` = refused (a NUL character), abandoned (database still down at exit) |
//! | `ferry_control_replica_role` | gauge | `role` = follower, starting, owner, leaving: 1 for this replica's role, 0 for the others |
//! | `ferry_control_lease_taken_total` | counter | | lease terms this replica started |
//! | `ferry_control_forwarded_total` | counter | `outcome` = answered, again, failed, not_owner, no_owner: requests a follower handed to the owner |

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{counter, gauge, Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::autoscale::{Action, Decision};
use crate::registry::WorkerState;
use crate::store::{StoreError, Write};

/// Routes by outcome.
pub const ROUTES: &str = "ferry_control_routes_total";
/// Re-routes of a known request.
pub const REROUTES: &str = "ferry_control_reroutes_total";
/// Global queue length.
pub const QUEUE_LENGTH: &str = "ferry_control_queue_length";
/// Workers by state.
pub const WORKERS: &str = "ferry_control_workers";
/// Scaling actions.
pub const SCALING: &str = "ferry_control_scaling_actions_total";
/// Desired workers per workergroup.
pub const DESIRED_WORKERS: &str = "ferry_control_desired_workers";
/// Every HTTP answer, by surface and outcome (see `api::outcome`).
pub const RESPONSES: &str = "ferry_control_responses_total";
/// Vast API operations by outcome.
pub const VAST_API_CALLS: &str = "ferry_control_vast_api_calls_total";
/// Vast API requests retried, by why.
pub const VAST_API_RETRIES: &str = "ferry_control_vast_api_retries_total";
/// Vast instances waiting for a confirmed destroy.
pub const VAST_DOOMED: &str = "ferry_control_vast_doomed_instances";
/// Writes queued for the database and not yet committed.
pub const STORE_PENDING: &str = "ferry_control_store_pending_writes";
/// Failed database attempts (each retried), by why.
pub const STORE_RETRIES: &str = "ferry_control_store_retries_total";
/// Flushes answered before the database confirmed.
pub const STORE_FLUSH_BEHIND: &str = "ferry_control_store_flush_behind_total";
/// Writes never persisted, by why.
pub const STORE_LOST: &str = "ferry_control_store_lost_writes_total";

/// A replica's role, one gauge per role.
pub const REPLICA_ROLE: &str = "ferry_control_replica_role";
/// Lease terms started.
pub const LEASE_TAKEN: &str = "ferry_control_lease_taken_total";
/// Requests handed to the owner, by outcome.
pub const FORWARDED: &str = "ferry_control_forwarded_total";

/// The process-wide Prometheus recorder (installed on first use; `None` if another recorder
/// was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => {
                let _ = HOT.set(Hot::register());
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// The surfaces of [`RESPONSES`], in the order of [`Hot::ok`].
const SURFACES: [&str; 5] = ["console", "run", "worker", "gateway", "ops"];

/// Handles of the series every request touches, registered once when the recorder is
/// installed. A macro call with labels builds, hashes and looks up its key on every call (about
/// 1,500 instructions for three labels, most of a report's metrics cost); a handle is one
/// atomic add. Until [`handle`] installs the recorder (tests that serve `build_app` alone) the
/// helpers fall back to the macros.
struct Hot {
    /// `RESPONSES{surface, code="ok", source="none"}`, by [`SURFACES`].
    ok: [Counter; 5],
    /// `ROUTES{outcome="ready"}` and `ROUTES{outcome="waiting"}`.
    ready: Counter,
    waiting: Counter,
    queue_length: Gauge,
}

static HOT: OnceLock<Hot> = OnceLock::new();

impl Hot {
    fn register() -> Hot {
        Hot {
            ok: SURFACES
                .map(|s| counter!(RESPONSES, "surface" => s, "code" => "ok", "source" => "none")),
            ready: counter!(ROUTES, "outcome" => "ready"),
            waiting: counter!(ROUTES, "outcome" => "waiting"),
            queue_length: gauge!(QUEUE_LENGTH),
        }
    }
}

/// A `/route/` answer.
pub fn route_outcome(outcome: &'static str) {
    match (HOT.get(), outcome) {
        (Some(h), "ready") => h.ready.increment(1),
        (Some(h), "waiting") => h.waiting.increment(1),
        _ => counter!(ROUTES, "outcome" => outcome).increment(1),
    }
}

/// A known request routed again.
pub fn reroute() {
    counter!(REROUTES).increment(1);
}

/// Queue length now.
pub fn queue_length(n: usize) {
    match HOT.get() {
        Some(h) => h.queue_length.set(n as f64),
        None => gauge!(QUEUE_LENGTH).set(n as f64),
    }
}

/// Workers by state now.
pub fn workers_by_state(states: impl Iterator<Item = WorkerState>) {
    let mut counts: HashMap<WorkerState, usize> = HashMap::new();
    for s in states {
        *counts.entry(s).or_default() += 1;
    }
    for s in WorkerState::ALL {
        gauge!(WORKERS, "state" => s.as_str()).set(counts.get(&s).copied().unwrap_or(0) as f64);
    }
}

/// A Vast API operation's outcome (after its retries).
pub fn vast_api_call(call: &'static str, outcome: &'static str) {
    counter!(VAST_API_CALLS, "call" => call, "outcome" => outcome).increment(1);
}

/// A Vast API request about to be retried: logged and counted together.
pub fn vast_api_retry(call: &'static str, reason: &'static str, detail: &str, wait_ms: u64) {
    tracing::debug!(call, reason, detail, wait_ms, "Vast API request retried");
    counter!(VAST_API_RETRIES, "call" => call, "reason" => reason).increment(1);
}

/// Vast instances waiting for a confirmed destroy now.
pub fn vast_doomed(n: usize) {
    gauge!(VAST_DOOMED).set(n as f64);
}

/// A scaling decision: logged and counted together.
pub fn scaling(endpoint_id: i64, d: &Decision) {
    match &d.action {
        Action::Launch {
            workergroup_id,
            count,
        } => tracing::info!(
            endpoint = endpoint_id,
            action = "launch",
            workergroup = workergroup_id,
            count,
            reason = d.reason,
            "scaling decision"
        ),
        Action::Resume { worker_id }
        | Action::Stop { worker_id }
        | Action::Destroy { worker_id } => {
            tracing::info!(
                endpoint = endpoint_id,
                action = d.action.kind(),
                worker = worker_id,
                reason = d.reason,
                "scaling decision"
            )
        }
    }
    let n = match d.action {
        Action::Launch { count, .. } => u64::from(count),
        _ => 1,
    };
    counter!(SCALING, "action" => d.action.kind(), "reason" => d.reason).increment(n);
}

/// An HTTP answer (counted once, in `api::outcome`).
pub fn response(surface: &'static str, code: &'static str, source: &'static str) {
    if let (Some(h), "ok", "none") = (HOT.get(), code, source) {
        if let Some(i) = SURFACES.iter().position(|s| *s == surface) {
            h.ok[i].increment(1);
            return;
        }
    }
    counter!(RESPONSES, "surface" => surface, "code" => code, "source" => source).increment(1);
}

/// A workergroup's desired size now.
pub fn desired_workers(workergroup_id: i64, n: u32) {
    gauge!(DESIRED_WORKERS, "workergroup" => workergroup_id.to_string()).set(f64::from(n));
}

/// Writes queued for the database now.
pub fn store_pending(n: usize) {
    gauge!(STORE_PENDING).set(n as f64);
}

/// A failed database attempt, about to be retried: a warning when `loud` (the first of an
/// outage, then one per interval), debug otherwise; counted either way.
pub fn store_retry(
    database: &str,
    reason: &'static str,
    error: &str,
    pending: usize,
    down_for: std::time::Duration,
    loud: bool,
) {
    let down_for_s = down_for.as_secs();
    if loud {
        tracing::warn!(
            database,
            reason,
            error,
            pending,
            down_for_s,
            "database write failed; retrying (writes stay queued, in order)"
        );
    } else {
        tracing::debug!(database, reason, error, pending, "database write retried");
    }
    counter!(STORE_RETRIES, "reason" => reason).increment(1);
}

/// The database took the queued writes again after an outage.
pub fn store_resumed(database: &str, down_for: std::time::Duration, attempts: u32, writes: usize) {
    tracing::info!(
        database,
        down_for_ms = down_for.as_millis() as u64,
        attempts,
        writes,
        "database writes resumed"
    );
}

/// The store gave up at close with writes still pending.
pub fn store_abandoned(database: &str, pending: usize) {
    tracing::error!(
        database,
        pending,
        "database still failing at exit; these writes are not persisted"
    );
    counter!(STORE_LOST, "reason" => "abandoned").increment(pending as u64);
}

/// A write the database could never hold (a NUL character), refused.
pub fn store_refused(w: &Write) {
    match w {
        Write::Put { kind, id, .. } | Write::Delete { kind, id } => tracing::error!(
            kind = kind.as_str(),
            id,
            "record holds a NUL character, which PostgreSQL text cannot; not persisted"
        ),
        Write::Kv { key, .. } => tracing::error!(
            key,
            "value holds a NUL character, which PostgreSQL text cannot; not persisted"
        ),
    }
    counter!(STORE_LOST, "reason" => "refused").increment(1);
}

/// A flush answered before the database confirmed: what the caller did goes on, its change
/// stays queued.
pub fn store_flush_behind(what: &'static str, e: &StoreError) {
    tracing::warn!(what, code = e.code(), error = %e, "change not yet durable");
    counter!(STORE_FLUSH_BEHIND, "code" => e.code()).increment(1);
}

/// This replica's role now.
pub fn replica_role(role: &'static str) {
    for r in ["follower", "starting", "owner", "leaving"] {
        gauge!(REPLICA_ROLE, "role" => r).set(if r == role { 1.0 } else { 0.0 });
    }
}

/// This replica took the lease.
pub fn lease_taken() {
    counter!(LEASE_TAKEN).increment(1);
}

/// A request handed to the owner (or refused) by a follower.
pub fn forwarded(outcome: &'static str) {
    counter!(FORWARDED, "outcome" => outcome).increment(1);
}
