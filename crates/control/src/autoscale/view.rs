//! What [`decide`](super::decide) sees of an endpoint, built from the components, and the
//! status line a waiting `/route/` answer carries.

use super::{EndpointView, GroupView, WorkerView};
use crate::catalog::Catalog;
use crate::queue::Queue;
use crate::registry::{Registry, WorkerRec, WorkerState, LOAD_DEADLINE_S};
use crate::stats::Stats;

/// The components a view is built from.
pub(crate) struct Sources<'a> {
    pub(crate) catalog: &'a Catalog,
    pub(crate) registry: &'a Registry,
    pub(crate) queue: &'a Queue,
    pub(crate) stats: &'a mut Stats,
}

/// One endpoint as the autoscaler sees it at monotonic second `mono`, `dt` seconds after the
/// last tick (which folds the routed load into the rate). `None` for an unknown endpoint.
pub(crate) fn endpoint_view(
    src: Sources<'_>,
    ep_id: i64,
    mono: f64,
    stale: f64,
    dt: f64,
) -> Option<EndpointView> {
    let ep = src.catalog.endpoint(ep_id)?;
    let load_rate = src.stats.tick(ep_id, dt);
    let since_last_request = src.stats.since_last_request(ep_id, mono);
    let live = |w: &&WorkerRec| w.state() != WorkerState::Destroying;
    let workers = src
        .registry
        .of_endpoint(ep_id)
        .filter(live)
        .map(|w| {
            let state = if w.state() == WorkerState::Idle
                && !w.routable(mono, stale)
                && w.silence(mono) > stale
            {
                // Silent: not usable now; counted as coming until the error deadline.
                WorkerState::Loading
            } else {
                w.state()
            };
            WorkerView {
                id: w.id(),
                state,
                max_perf: w.perf(),
                load: w.load(),
                idle_for: mono - w.last_busy(),
                in_state_for: mono - w.state_since(),
                may_return: w.unreachable() && w.silence(mono) < LOAD_DEADLINE_S,
            }
        })
        .collect();
    let groups = src
        .catalog
        .groups_of(ep_id)
        .map(|g| GroupView {
            id: g.id,
            workers: src
                .registry
                .of_group(g.id)
                .filter(|w| live(w) && !w.unreachable())
                .count() as u32,
            max_workers: g.max_workers,
        })
        .collect();
    let (queued, queued_load) = src.queue.queued_for(ep_id);
    Some(EndpointView {
        params: ep.params.clone(),
        workers,
        groups,
        queued,
        queued_load,
        load_rate,
        since_last_request,
    })
}

/// Vast's status line for a waiting request: the endpoint's workers by state and its queue.
pub fn status_line(
    registry: &Registry,
    queue: &Queue,
    ep_id: i64,
    mono: f64,
    stale: f64,
) -> String {
    let count =
        |f: &dyn Fn(&WorkerRec) -> bool| registry.of_endpoint(ep_id).filter(|w| f(w)).count();
    let total = count(&|_| true);
    let ready = count(&|w| w.routable(mono, stale));
    let loading = count(&|w| w.state().is_coming());
    let standby = count(&|w| matches!(w.state(), WorkerState::Stopped | WorkerState::Stopping));
    let error = count(&|w| w.state() == WorkerState::Error);
    let (queued, _) = queue.queued_for(ep_id);
    format!(
        "total workers: {total}, loading workers: {loading}, standby workers: {standby}, error workers: {error}, ready workers: {ready}, queued requests: {queued}"
    )
}
