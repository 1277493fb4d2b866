//! The orchestrator on paused time: a [`Control`] over an in-memory store and a provider that
//! only records, driven by synthetic reports and `tokio::time::advance`, so idle scale-down,
//! stale workers and queue expiry are tested at their real settings without waiting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_protocol::{SigningKey, WorkerStatus};
use futures_util::future::BoxFuture;

use crate::Provider;

use super::*;
use crate::autoscale::Action;
use crate::endpoint::{EndpointPatch, EndpointRef, WorkergroupPatch};
use crate::provider::recorder::Recorder;
use crate::provider::{EventSink, LaunchSpec, ProviderError};
use crate::store::memory::MemoryStore;

fn key_pem() -> String {
    static K: OnceLock<String> = OnceLock::new();
    K.get_or_init(|| SigningKey::generate(2048).unwrap().to_pem().unwrap())
        .clone()
}

struct Fixture {
    control: Control,
    provider: Arc<Recorder>,
    key: String,
}

/// A control plane with one endpoint `e` (parameters from `patch`) and one workergroup, at
/// the default settings (stale after 30 s, idle stop after 60 s, queue TTL 120 s).
async fn fixture(patch: EndpointPatch) -> Fixture {
    let mut s = Settings::for_url("http://127.0.0.1:9");
    s.signing_key_pem = Some(key_pem());
    s.api_key = Some("acct".into());
    let provider = Arc::new(Recorder::default());
    let store = Arc::new(MemoryStore::default());
    let control = Control::with_store(s, provider.clone(), store, Loaded::default())
        .await
        .unwrap();
    let patch = EndpointPatch {
        endpoint_name: Some("e".into()),
        ..patch
    };
    let ep = control.create_endpoint(&patch).await.unwrap();
    let group = WorkergroupPatch {
        endpoint: Some(EndpointRef::Id(ep)),
        ..WorkergroupPatch::default()
    };
    control.create_workergroup(&group).await.unwrap();
    let key = control.endpoint_key("e").unwrap();
    Fixture {
        control,
        provider,
        key,
    }
}

impl Fixture {
    /// Lets the background tasks of a tick run.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    fn report(&self, spec: &LaunchSpec, cur_load: f64) {
        let s = WorkerStatus {
            id: spec.worker_id,
            mtoken: spec.mtoken.clone(),
            loadtime: 1.0,
            max_perf: 100.0,
            cur_load,
            url: format!("http://127.0.0.1:{}", 20000 + spec.worker_id),
            ..WorkerStatus::default()
        };
        self.control.worker_status(&s).unwrap();
    }

    /// Ticks until one worker is launched; starts it and reports it ready.
    async fn one_ready_worker(&self) -> LaunchSpec {
        self.control.autoscale_tick();
        self.settle().await;
        let spec = self.provider.launched.lock().unwrap()[0].clone();
        self.control.provider_event(ProviderEvent::Started {
            worker_id: spec.worker_id,
        });
        self.report(&spec, 0.0);
        assert_eq!(self.state(spec.worker_id), WorkerState::Idle);
        spec
    }

    fn state(&self, id: i64) -> WorkerState {
        self.control.worker_info(id).unwrap().status
    }

    fn route(&self, idx: u64) -> RouteOutcome {
        self.control
            .route("e", Some(&self.key), 10.0, idx, &[])
            .unwrap()
    }
}

fn stops(ds: &[crate::autoscale::Decision]) -> usize {
    ds.iter()
        .filter(|d| matches!(d.action, Action::Stop { .. }))
        .count()
}

#[tokio::test(start_paused = true)]
async fn an_idle_worker_is_stopped_after_the_idle_limit_and_not_before() {
    let f = fixture(EndpointPatch {
        cold_workers: Some(1),
        cold_mult: Some(1.0),
        ..EndpointPatch::default()
    })
    .await;
    let spec = f.one_ready_worker().await;
    // 59 s idle (reporting all along): kept.
    for _ in 0..59 {
        tokio::time::advance(Duration::from_secs(1)).await;
        f.report(&spec, 0.0);
        assert_eq!(stops(&f.control.autoscale_tick()), 0);
    }
    // Past the 60 s idle limit: stopped, and kept cold (resumable).
    tokio::time::advance(Duration::from_secs(2)).await;
    f.report(&spec, 0.0);
    assert_eq!(stops(&f.control.autoscale_tick()), 1);
    f.settle().await;
    assert_eq!(*f.provider.stopped.lock().unwrap(), vec![spec.worker_id]);
    assert_eq!(f.state(spec.worker_id), WorkerState::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_busy_worker_is_not_idle() {
    let f = fixture(EndpointPatch {
        cold_workers: Some(1),
        cold_mult: Some(1.0),
        ..EndpointPatch::default()
    })
    .await;
    let spec = f.one_ready_worker().await;
    for _ in 0..120 {
        tokio::time::advance(Duration::from_secs(1)).await;
        f.report(&spec, 5.0);
        assert_eq!(stops(&f.control.autoscale_tick()), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_worker_is_not_routed_then_fails() {
    let f = fixture(EndpointPatch {
        cold_workers: Some(1),
        ..EndpointPatch::default()
    })
    .await;
    let spec = f.one_ready_worker().await;
    assert!(matches!(f.route(0), RouteOutcome::Ready(_)));
    // 31 s without a report: past the 30 s stale limit, no longer routed.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(matches!(f.route(0), RouteOutcome::Waiting(_)));
    f.control.autoscale_tick();
    assert_eq!(f.state(spec.worker_id), WorkerState::Idle);
    // Silent for more than twice the limit: failed ("stopped reporting").
    tokio::time::advance(Duration::from_secs(30)).await;
    f.control.autoscale_tick();
    let info = f.control.worker_info(spec.worker_id).unwrap();
    assert_eq!(
        (info.status, info.error_msg.as_str()),
        (WorkerState::Error, "stopped reporting")
    );
}

#[tokio::test(start_paused = true)]
async fn an_unpolled_request_leaves_the_queue_after_its_ttl() {
    // No worker will come (max_workers 0): requests can only wait.
    let f = fixture(EndpointPatch {
        cold_workers: Some(0),
        max_workers: Some(0),
        ..EndpointPatch::default()
    })
    .await;
    let RouteOutcome::Waiting(w) = f.route(0) else {
        panic!("no worker, yet routed")
    };
    let RouteOutcome::Waiting(_) = f.route(0) else {
        panic!()
    };
    assert_eq!(f.control.queue_len(), 2);
    // The first is polled at 100 s; the second is not.
    tokio::time::advance(Duration::from_secs(100)).await;
    let RouteOutcome::Waiting(again) = f.route(w.request_idx) else {
        panic!()
    };
    assert_eq!(again.request_idx, w.request_idx);
    tokio::time::advance(Duration::from_secs(19)).await;
    f.control.autoscale_tick();
    assert_eq!(f.control.queue_len(), 2);
    // 120 s unpolled: the second is dropped; the polled one stays until 120 s after its poll.
    tokio::time::advance(Duration::from_secs(1)).await;
    f.control.autoscale_tick();
    assert_eq!(f.control.queue_len(), 1);
    tokio::time::advance(Duration::from_secs(100)).await;
    f.control.autoscale_tick();
    assert_eq!(f.control.queue_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn routed_load_counts_until_acknowledged_or_expired() {
    let f = fixture(EndpointPatch {
        cold_workers: Some(1),
        ..EndpointPatch::default()
    })
    .await;
    let spec = f.one_ready_worker().await;
    let RouteOutcome::Ready(g) = f.route(0) else {
        panic!()
    };
    let pending = |f: &Fixture| f.control.worker_info(spec.worker_id).unwrap().pending_load;
    assert_eq!(pending(&f), 10.0);
    // A retry of the delivered request releases it and routes it again: counted once.
    let RouteOutcome::Ready(again) = f.route(g.request_idx) else {
        panic!()
    };
    assert_eq!(again.request_idx, g.request_idx);
    assert_eq!(pending(&f), 10.0);
    // Never acknowledged: forgotten after the 60 s pending TTL.
    tokio::time::advance(Duration::from_secs(59)).await;
    f.report(&spec, 0.0);
    f.control.autoscale_tick();
    assert_eq!(pending(&f), 10.0);
    tokio::time::advance(Duration::from_secs(2)).await;
    f.report(&spec, 0.0);
    f.control.autoscale_tick();
    assert_eq!(pending(&f), 0.0);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_joined_worker_is_replaced_kept_and_readmitted() {
    let f = fixture(EndpointPatch {
        cold_workers: Some(1),
        cold_mult: Some(1.0),
        ..EndpointPatch::default()
    })
    .await;
    let group = f.control.workergroups()[0].id;
    let external = WorkergroupPatch {
        provider: Some(crate::config::ProviderKind::External),
        ..WorkergroupPatch::default()
    };
    f.control
        .update_workergroup(group, &external)
        .await
        .unwrap();
    // The autoscaler wants one worker: a placeholder, nothing launched.
    f.control.autoscale_tick();
    f.settle().await;
    assert!(f.provider.launched.lock().unwrap().is_empty());
    let s = f.control.group_scale(group).unwrap();
    assert_eq!((s.desired_workers, s.waiting_to_join), (1, 1));
    let (_, token) = f
        .control
        .create_join_token(group, String::new())
        .await
        .unwrap();
    let joined = f
        .control
        .join(&token, "http://127.0.0.1:20001")
        .await
        .unwrap();
    let spec = LaunchSpec {
        worker_id: joined.worker_id,
        mtoken: joined.mtoken.clone(),
        control_url: String::new(),
        endpoint: "e".into(),
        workergroup_id: group,
        model_cmd: None,
        worker_cmd: None,
        backend: None,
        env: Default::default(),
        vast: Default::default(),
    };
    f.report(&spec, 0.0);
    assert_eq!(f.state(spec.worker_id), WorkerState::Idle);
    assert_eq!(f.control.group_scale(group).unwrap().ready, 1);

    // Cut off: not routed after the stale limit, "unreachable" after twice that.
    tokio::time::advance(Duration::from_secs(61)).await;
    f.control.autoscale_tick();
    let info = f.control.worker_info(spec.worker_id).unwrap();
    assert_eq!(info.status, WorkerState::Error);
    assert!(
        info.error_msg.starts_with("unreachable"),
        "{}",
        info.error_msg
    );
    // Past the error hold it is kept, not destroyed, and its capacity is wanted again at once.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let ds = f.control.autoscale_tick();
        assert!(
            !ds.iter().any(|d| d.action
                == Action::Destroy {
                    worker_id: spec.worker_id
                }),
            "{ds:?}"
        );
    }
    let s = f.control.group_scale(group).unwrap();
    assert_eq!(
        (s.unreachable, s.waiting_to_join, s.ready),
        (1, 1, 0),
        "{s:?}"
    );

    // Back: its next report re-admits it under the same id, without joining again.
    f.report(&spec, 0.0);
    assert_eq!(f.state(spec.worker_id), WorkerState::Idle);
    assert!(matches!(f.route(0), RouteOutcome::Ready(_)));
}

/// A provider of another kind that refuses groups without an `image`.
struct Picky;

impl Provider for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }
    fn kind(&self) -> crate::config::ProviderKind {
        crate::config::ProviderKind::Vast
    }
    fn check_group(
        &self,
        vast: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), ProviderError> {
        if vast.contains_key("image") {
            Ok(())
        } else {
            Err(ProviderError("needs an image".into()))
        }
    }
    fn subscribe(&self, _: EventSink) {}
    fn launch(&self, _: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn stop(&self, _: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn resume(&self, _: LaunchSpec) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn destroy(&self, _: i64) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
    fn shutdown(&self) -> BoxFuture<'_, Vec<i64>> {
        Box::pin(async { Vec::new() })
    }
}

#[tokio::test]
async fn a_group_its_provider_could_never_launch_is_refused_with_the_reason() {
    let mut s = Settings::for_url("http://127.0.0.1:9");
    s.signing_key_pem = Some(key_pem());
    let providers = Providers::new([
        Arc::new(Recorder::default()) as Arc<dyn Provider>,
        Arc::new(Picky),
    ]);
    let control = Control::with_store(
        s,
        providers,
        Arc::new(MemoryStore::default()),
        Loaded::default(),
    )
    .await
    .unwrap();
    let ep = control
        .create_endpoint(&EndpointPatch {
            endpoint_name: Some("e".into()),
            ..EndpointPatch::default()
        })
        .await
        .unwrap();
    let vast = WorkergroupPatch {
        endpoint: Some(EndpointRef::Id(ep)),
        provider: Some(crate::config::ProviderKind::Vast),
        ..WorkergroupPatch::default()
    };
    let e = control.create_workergroup(&vast).await.unwrap_err();
    assert_eq!(e.to_string(), "vast workergroup: needs an image");
    let mut with_image = vast.clone();
    with_image.vast.insert("image".into(), "x".into());
    let id = control.create_workergroup(&with_image).await.unwrap();
    // An update is checked against the merged fields: the image is still there.
    let rename = WorkergroupPatch {
        backend: Some("tgi".into()),
        ..WorkergroupPatch::default()
    };
    control.update_workergroup(id, &rename).await.unwrap();
    // Moving a local group to the provider without what it needs is refused too.
    let local = control
        .create_workergroup(&WorkergroupPatch {
            endpoint: Some(EndpointRef::Id(ep)),
            ..WorkergroupPatch::default()
        })
        .await
        .unwrap();
    let to_vast = WorkergroupPatch {
        provider: Some(crate::config::ProviderKind::Vast),
        ..WorkergroupPatch::default()
    };
    assert!(control.update_workergroup(local, &to_vast).await.is_err());
}

/// The token each grant carries follows what the worker's reports say it checks: a v2
/// `ferry_mac` under the key derived from its own master token if it announces `ferry_mac`, else
/// (an older Ferry worker, or before its first announcement) a v1 RSA `ferry_sig`; never both.
#[tokio::test(start_paused = true)]
async fn grants_carry_the_token_the_worker_announces() {
    use ferry_protocol::{PublicKey, TokenKey};
    let f = fixture(EndpointPatch {
        cold_workers: Some(1),
        ..EndpointPatch::default()
    })
    .await;
    let spec = f.one_ready_worker().await;
    let public = PublicKey::from_pem(f.control.pubkey_pem()).unwrap();
    let mine = TokenKey::derive(&spec.mtoken).unwrap();
    let now = crate::control::unix_now() as u64;
    let report = |mac: bool| {
        let answer = f
            .control
            .worker_status(&WorkerStatus {
                id: spec.worker_id,
                mtoken: spec.mtoken.clone(),
                loadtime: 1.0,
                max_perf: 100.0,
                url: format!("http://127.0.0.1:{}", 20000 + spec.worker_id),
                ferry_mac: mac,
                ..WorkerStatus::default()
            })
            .unwrap();
        // Every answer offers v2 tokens.
        assert!(answer.ferry_mac);
    };
    let grant = |idx: u64| match f.route(idx) {
        RouteOutcome::Ready(g) => g.into_auth_data(),
        RouteOutcome::Waiting(w) => panic!("waiting: {w:?}"),
    };

    // Not announced (an older worker): v1, which such a worker checks.
    let g = grant(0);
    assert!(g.ferry_mac.is_none());
    public.verify_ferry(&g, now).unwrap();

    // Announced: v2 under this worker's key only.
    report(true);
    let g = grant(0);
    assert!(g.ferry_sig.is_none());
    mine.verify(&g, now).unwrap();
    let other = TokenKey::derive("someone-else").unwrap();
    assert!(other.verify(&g, now).is_err());
    assert_eq!(
        public.verify_ferry(&g, now),
        Err(ferry_protocol::TokenError::Missing)
    );

    // The worker was replaced by an older binary (its reports stop announcing): v1 again.
    report(false);
    let g = grant(0);
    assert!(g.ferry_mac.is_none());
    public.verify_ferry(&g, now).unwrap();
}
