//! Replicas (`ferry control --replicas URL,URL,... --store postgres://...`): several control
//! planes on one PostgreSQL database, one of which owns every endpoint at a time.
//!
//! - **Lease.** One row in PostgreSQL ([`LeaseConn`]): holder, URL, term (`epoch`) and a
//!   renewal counter. The owner renews it every third of `--lease-ttl-s`. A follower polls it
//!   five times per lease time and takes it over (a compare-and-set on what it saw) when it
//!   is free or when it has seen the counter unchanged for a whole lease time on its own
//!   clock (`Observer`); a failed read restarts that count, so a database outage never
//!   makes a lease look expired the moment the database is back.
//! - **Owner.** Taking the lease opens the store *after* the take (so it reads everything the
//!   previous owner committed), fenced by the term: every write-behind commit checks the term
//!   under a share lock, so a deposed owner's writes never land ([`crate::store::Fence`]).
//!   Request indexes of term `t` start at `t << 32`: unique across replicas and terms without
//!   a round trip per index. Then it starts a [`Control`] on that state (taking back the
//!   running instances through the providers, as after a restart) and the autoscaler: the
//!   owner alone scales, so no instance is launched twice.
//! - **Followers** hand every request (but `/health` and `/metrics`) to the owner over HTTP
//!   (`forward.rs`), streams relayed as they come. While no owner is known, a request waits
//!   for one up to `--handoff-wait-s`, then gets a 503 that says so.
//! - **Hand-over** (SIGTERM to the owner): requests wait; the autoscaler stops; every change
//!   is made durable; the lease is released (a follower takes a free lease within a poll); the
//!   process exits without stopping the instances, which the next owner takes back.
//! - **Deposed** (another replica took the lease: this one was cut off from the database
//!   longer than the lease): the process exits with an error at once and its pending writes
//!   are dropped; a supervisor restarts it as a follower.

mod forward;

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ReplicaSettings, Settings};
use crate::control::{random_hex, Control};
use crate::error::RunError;
use crate::provider::Providers;
use crate::store::{Fence, LeaseConn, LeaseRow, PgOptions, PostgresStore};
use crate::telemetry;

/// What this replica is doing, as requests see it.
#[derive(Clone)]
pub(crate) enum Role {
    /// Another replica owns the endpoints (`None`: none known, a failover under way).
    Follower(Option<String>),
    /// This replica took the lease and is loading the state.
    Starting,
    /// This replica serves.
    Owner {
        /// The control plane's router.
        app: Router,
        /// The control plane.
        control: Control,
    },
    /// This replica is handing over (or stopping).
    Leaving,
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Follower(_) => "follower",
            Role::Starting => "starting",
            Role::Owner { .. } => "owner",
            Role::Leaving => "leaving",
        }
    }
}

/// One replica: who it is, its role, and the client it hands requests over with.
pub(crate) struct Node {
    /// This replica's base URL (`--public-url`).
    me: String,
    /// Its identity in the lease: the URL and a per-process nonce.
    holder: String,
    settings: ReplicaSettings,
    role: watch::Sender<Role>,
    /// The lease term last seen (for `/health`).
    epoch: AtomicI64,
    client: reqwest::Client,
    max_body: usize,
}

impl Node {
    fn set(&self, role: Role) {
        telemetry::replica_role(role.name());
        self.role.send_replace(role);
    }

    /// Updates the known owner, waking waiting requests only when it changed.
    fn follow(&self, owner: Option<String>) {
        self.role.send_if_modified(|r| match r {
            Role::Follower(o) if *o == owner => false,
            _ => {
                *r = Role::Follower(owner.clone());
                true
            }
        });
        telemetry::replica_role("follower");
    }
}

/// How a follower judges the owner's lease: the lease has run out when the renewal counter
/// (with the term and holder) has been seen unchanged for the whole lease time, counted on
/// this replica's monotonic clock from the first read that saw it. A failed read forgets what
/// was seen: the count starts again at the next successful read.
#[derive(Debug, Default)]
pub(crate) struct Observer {
    /// What was seen and since when.
    seen: Option<(Seen, Instant)>,
}

/// The parts of the lease a renewal or a take-over changes: term, counter, holder.
type Seen = (i64, i64, Option<String>);

impl Observer {
    /// A successful read at `now`.
    pub(crate) fn saw(&mut self, row: &LeaseRow, now: Instant) {
        let key = (row.epoch, row.renewals, row.holder.clone());
        match &self.seen {
            Some((k, _)) if *k == key => {}
            _ => self.seen = Some((key, now)),
        }
    }

    /// A failed read.
    pub(crate) fn lost(&mut self) {
        self.seen = None;
    }

    /// Whether the lease seen may be taken at `now`: free, or unchanged for `ttl`.
    pub(crate) fn may_take(&self, row: &LeaseRow, now: Instant, ttl: Duration) -> bool {
        row.holder.is_none()
            || self
                .seen
                .as_ref()
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= ttl)
    }
}

/// Serves as one replica until `shutdown`: follows, takes the lease when it runs out, owns,
/// hands over at shutdown. `providers` builds the providers when this replica becomes the
/// owner. Returns an error when the replica was deposed (or could not start as the owner):
/// the caller exits, and a supervisor starts it again as a follower.
pub async fn run(
    listener: tokio::net::TcpListener,
    settings: Settings,
    providers: impl Fn(&Settings) -> Result<Providers, RunError>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (Some(r), Some(target)) = (settings.replica.clone(), settings.postgres.clone()) else {
        return Err(RunError::Store(
            "replicas need --replicas and --store postgres://".into(),
        ));
    };
    let node = Arc::new(Node {
        me: settings.public_url.clone(),
        holder: format!("{}#{}", settings.public_url, random_hex(6)),
        settings: r.clone(),
        role: watch::channel(Role::Follower(None)).0,
        epoch: AtomicI64::new(0),
        client: reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RunError::Store(format!("HTTP client: {e}")))?,
        max_body: settings.gateway.max_body_bytes,
    });
    telemetry::replica_role("follower");
    let stop = CancellationToken::new();
    let mut server = tokio::spawn(ferry_serve::serve(
        listener,
        forward::app(node.clone()),
        settings.connections.clone(),
        stop.clone().cancelled_owned(),
    ));
    tracing::info!(
        url = %node.me,
        replicas = ?r.urls,
        lease_ttl = ?r.lease_ttl,
        database = target.shown(),
        "ferry control replica serving"
    );
    // Lease operations must answer well within the lease time.
    let mut lease = LeaseConn::new(target, (r.lease_ttl / 2).max(Duration::from_millis(500)));
    let down = CancellationToken::new();
    let waiter = TaskTracker::new();
    {
        let down = down.clone();
        waiter.spawn(async move {
            shutdown.await;
            down.cancel();
        });
    }
    waiter.close();
    let result = match follow(&node, &mut lease, &down, true).await {
        Some(row) => own(&node, &mut lease, row, &settings, &providers, &down).await,
        None => Ok(()),
    };
    // Requests still held (and those on open connections) go to the next owner as soon as
    // the lease names it; the listener stops taking new connections meanwhile.
    node.follow(None);
    stop.cancel();
    let never = CancellationToken::new();
    tokio::select! {
        _ = follow(&node, &mut lease, &never, false) => {}
        _ = tokio::time::sleep(crate::DRAIN) => {}
        r = &mut server => {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "listener ended with an error");
            }
        }
    }
    if !server.is_finished() {
        tracing::warn!("drain deadline passed; closing open connections");
        server.abort();
    }
    result
}

/// Follows the owner until this replica takes the lease (`Some`, the new row; only when
/// `take`) or `down`.
async fn follow(
    node: &Node,
    lease: &mut LeaseConn,
    down: &CancellationToken,
    take: bool,
) -> Option<LeaseRow> {
    let ttl = node.settings.lease_ttl;
    let poll = (ttl / 5).max(Duration::from_millis(100));
    let mut obs = Observer::default();
    let mut failing: Option<Instant> = None;
    loop {
        match lease.read().await {
            Ok(row) => {
                if let Some(since) = failing.take() {
                    tracing::info!(down_for = ?since.elapsed(), "lease readable again");
                }
                let now = Instant::now();
                obs.saw(&row, now);
                node.epoch.store(row.epoch, Ordering::Relaxed);
                node.follow(row.url.clone().filter(|_| row.holder.is_some()));
                // A dead earlier process of this same replica (same URL, another nonce) is
                // replaced at once: nobody else answers at its URL.
                let mine_before = row.holder.as_deref().is_some_and(|h| {
                    h != node.holder
                        && h.strip_prefix(node.me.as_str())
                            .is_some_and(|t| t.starts_with('#'))
                });
                if take && (mine_before || obs.may_take(&row, now, ttl)) {
                    match lease.take(&row, &node.holder, &node.me).await {
                        Ok(Some(new)) => {
                            tracing::info!(
                                epoch = new.epoch,
                                previous = row.holder.as_deref().unwrap_or("none"),
                                "took the lease"
                            );
                            return Some(new);
                        }
                        Ok(None) => tracing::debug!("the lease changed before the take"),
                        Err(e) => {
                            obs.lost();
                            tracing::warn!(error = %e, "taking the lease failed");
                        }
                    }
                }
            }
            Err(e) => {
                obs.lost();
                if failing.is_none() {
                    failing = Some(Instant::now());
                    tracing::warn!(error = %e, "cannot read the lease; still following");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = down.cancelled() => return None,
        }
    }
}

/// One term as the owner: loads the state and starts the control plane, renewing the lease
/// all along; hands over at `down`. An error when deposed or when the start failed.
async fn own(
    node: &Node,
    lease: &mut LeaseConn,
    row: LeaseRow,
    settings: &Settings,
    providers: &impl Fn(&Settings) -> Result<Providers, RunError>,
    down: &CancellationToken,
) -> Result<(), RunError> {
    let epoch = row.epoch;
    let took = Instant::now();
    node.epoch.store(epoch, Ordering::Relaxed);
    node.set(Role::Starting);
    telemetry::lease_taken();
    let deposed = CancellationToken::new();
    let mut renew = Renewal::new(epoch, node.settings.lease_ttl, deposed.clone());
    let start = start_control(settings, epoch, deposed.clone(), providers);
    tokio::pin!(start);
    let control = loop {
        tokio::select! {
            r = &mut start => match r {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "could not start as the owner; giving the lease up");
                    let _ = lease.release(epoch, &node.holder).await;
                    return Err(e);
                }
            },
            _ = renew.tick() => renew.once(lease, &node.holder).await,
            _ = deposed.cancelled() => return Err(renew.deposed()),
            _ = down.cancelled() => {
                let _ = lease.release(epoch, &node.holder).await;
                return Ok(());
            }
        }
    };
    crate::announce_key(&control, settings);
    node.set(Role::Owner {
        app: crate::build_app(control.clone()),
        control: control.clone(),
    });
    tracing::info!(epoch, ready_after = ?took.elapsed(), "serving as the owner");
    loop {
        tokio::select! {
            _ = renew.tick() => renew.once(lease, &node.holder).await,
            _ = deposed.cancelled() => {
                let e = renew.deposed();
                // Stop acting, and let the instances run on: the new owner has them now.
                node.set(Role::Leaving);
                control.hand_over().await;
                return Err(e);
            }
            _ = down.cancelled() => break,
        }
    }
    tracing::info!(
        epoch,
        "handing over: stopping the autoscaler, flushing the store"
    );
    node.set(Role::Leaving);
    control.hand_over().await;
    match lease.release(epoch, &node.holder).await {
        Ok(true) => tracing::info!(epoch, "lease released"),
        Ok(false) => tracing::warn!(epoch, "the lease was no longer ours at release"),
        Err(e) => tracing::warn!(
            epoch,
            error = %e,
            "could not release the lease; another replica takes it when it runs out"
        ),
    }
    Ok(())
}

/// Opens the store fenced by the term, numbers requests from the term's floor, and starts
/// the control plane and its autoscaler on that state.
async fn start_control(
    settings: &Settings,
    epoch: i64,
    deposed: CancellationToken,
    providers: &impl Fn(&Settings) -> Result<Providers, RunError>,
) -> Result<Control, RunError> {
    let Some(target) = settings.postgres.clone() else {
        return Err(RunError::Store("replicas need --store postgres://".into()));
    };
    let opts = PgOptions {
        fence: Some(Fence { epoch, deposed }),
        ..PgOptions::default()
    };
    let (store, mut loaded) =
        tokio::task::spawn_blocking(move || PostgresStore::open_with(target, opts))
            .await
            .map_err(|e| RunError::Store(e.to_string()))?
            .map_err(RunError::Store)?;
    crate::queue::raise_idx_floor(&mut loaded, u64::try_from(epoch).unwrap_or(0) << 32);
    let control = Control::with_store(
        settings.clone(),
        providers(settings)?,
        Arc::new(store),
        loaded,
    )
    .await?;
    control
        .tasks()
        .spawn(crate::autoscale::run(control.clone()));
    Ok(control)
}

/// The owner's renewals: every third of the lease time; a renewal the database refuses (the
/// lease is another's) deposes this replica; one that fails is tried again at the next tick.
struct Renewal {
    epoch: i64,
    every: tokio::time::Interval,
    deposed: CancellationToken,
    failing: Option<Instant>,
    refused: bool,
}

impl Renewal {
    fn new(epoch: i64, ttl: Duration, deposed: CancellationToken) -> Renewal {
        let mut every = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Renewal {
            epoch,
            every,
            deposed,
            failing: None,
            refused: false,
        }
    }

    async fn tick(&mut self) {
        self.every.tick().await;
    }

    async fn once(&mut self, lease: &mut LeaseConn, holder: &str) {
        match lease.renew(self.epoch, holder).await {
            Ok(true) => {
                if let Some(since) = self.failing.take() {
                    tracing::info!(epoch = self.epoch, down_for = ?since.elapsed(), "lease renewed again");
                }
            }
            Ok(false) => {
                self.refused = true;
                self.deposed.cancel();
            }
            Err(e) => {
                if self.failing.is_none() {
                    self.failing = Some(Instant::now());
                    tracing::warn!(
                        epoch = self.epoch,
                        error = %e,
                        "cannot renew the lease; serving on (no other replica can take it \
                         while the database is unreachable)"
                    );
                }
            }
        }
    }

    fn deposed(&self) -> RunError {
        let how = if self.refused {
            "the database refused the renewal"
        } else {
            "a write found another term"
        };
        tracing::error!(
            epoch = self.epoch,
            how,
            "another replica owns the endpoints now; exiting"
        );
        RunError::Deposed(format!(
            "lease term {} ended: {how}; another replica owns the endpoints",
            self.epoch
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(epoch: i64, renewals: i64, holder: Option<&str>) -> LeaseRow {
        LeaseRow {
            holder: holder.map(str::to_owned),
            url: holder.map(str::to_owned),
            epoch,
            renewals,
        }
    }

    /// The lease runs out only after a whole lease time of seeing the same renewal; a renewal
    /// seen restarts the count; a free lease may be taken at once.
    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_after_a_whole_ttl_unchanged() {
        let ttl = Duration::from_secs(3);
        let mut o = Observer::default();
        let t0 = Instant::now();
        o.saw(&row(1, 5, Some("a")), t0);
        assert!(!o.may_take(&row(1, 5, Some("a")), t0 + ttl / 2, ttl));
        o.saw(&row(1, 6, Some("a")), t0 + ttl / 2);
        assert!(!o.may_take(&row(1, 6, Some("a")), t0 + ttl, ttl));
        assert!(o.may_take(&row(1, 6, Some("a")), t0 + ttl / 2 + ttl, ttl));
        assert!(Observer::default().may_take(&row(2, 0, None), t0, ttl));
    }

    /// After a failed read (the database down) nothing counts as expired until a whole lease
    /// time of successful reads has seen it unchanged: the owner gets its chance to renew.
    #[tokio::test(start_paused = true)]
    async fn a_failed_read_restarts_the_count() {
        let ttl = Duration::from_secs(3);
        let mut o = Observer::default();
        let t0 = Instant::now();
        let r = row(1, 5, Some("a"));
        o.saw(&r, t0);
        o.lost();
        let back = t0 + Duration::from_secs(10);
        assert!(!o.may_take(&r, back, ttl));
        o.saw(&r, back);
        assert!(!o.may_take(&r, back + ttl / 2, ttl));
        assert!(o.may_take(&r, back + ttl, ttl));
    }
}
