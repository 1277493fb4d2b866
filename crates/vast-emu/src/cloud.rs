//! The account's view of Vast: the offers, the instances rented from them, and the ledger.
//!
//! [`Cloud`] owns every invariant between them: an offer is rented by at most one live
//! instance and is hidden from searches while it is; an instance's loopback ports are its own
//! from create to destroy (so a restart gets the same ones); each (re)start of an instance is a
//! new *run* with its own generation number and cancellation token, and only the current run
//! may change the instance's status, so a late report from a run that was stopped (or
//! replaced by a restart) changes nothing. It lives under one mutex that is never held across
//! an `.await`; the runs themselves (`boot.rs`) report back through the `run_*` methods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::create::{port_of_key, CreateRequest, Port, Proto};
use crate::error::ApiError;
use crate::knobs::{BootFailure, Knobs};
use crate::ledger::{Ledger, LedgerInstance, LedgerProcess};
use crate::offers::Offer;
use crate::query::{Query, Row};

/// Id of the first instance; later ones count up from it.
pub const FIRST_INSTANCE_ID: u64 = 20_000_001;

/// `status_msg` of an instance that was outbid ([`crate::Emulator::preempt`]).
pub const OUTBID_MSG: &str = "Instance stopped: outbid by a higher bid on this machine";

/// `status_msg` of a boot that failed with [`BootFailure::Exit`].
pub const BOOT_FAILED_MSG: &str = "Error response from daemon: failed to create task for \
                                   container: emulated boot failure";

/// Offer fields an instance row repeats (the machine it runs on).
const MACHINE_FIELDS: &[&str] = &[
    "machine_id",
    "host_id",
    "num_gpus",
    "gpu_name",
    "gpu_ram",
    "gpu_totalram",
    "gpu_arch",
    "compute_cap",
    "cuda_max_good",
    "driver_version",
    "cpu_name",
    "cpu_cores",
    "cpu_cores_effective",
    "cpu_ram",
    "cpu_arch",
    "disk_bw",
    "inet_up",
    "inet_down",
    "inet_up_cost",
    "inet_down_cost",
    "pci_gen",
    "dlperf",
    "total_flops",
    "geolocation",
    "verification",
    "hosting_type",
    "min_bid",
    "storage_cost",
    "end_date",
];

/// Why a run is being stopped, for the status it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopKind {
    User,
    Outbid,
}

/// One instance.
#[derive(Debug)]
struct Instance {
    id: u64,
    offer_id: u64,
    offer: Row,
    req: CreateRequest,
    command: Option<String>,
    ports: Vec<Port>,
    dir: PathBuf,
    created: f64,
    label: Option<String>,
    intended: &'static str,
    cur_state: &'static str,
    actual: &'static str,
    status_msg: Option<String>,
    /// Generation of the current run (0: never started).
    gen: u64,
    /// The current run's token, while it is alive.
    run: Option<CancellationToken>,
    stop_kind: Option<StopKind>,
    /// One process group per instance at a time: a restart waits until the previous run's
    /// processes are gone, so its ports are free.
    slot: Arc<tokio::sync::Mutex<()>>,
    pid: Option<u32>,
    running_since: Option<Instant>,
}

/// What a (re)start hands to `boot.rs`: one run of an instance.
#[derive(Debug)]
pub(crate) struct BootOrder {
    pub id: u64,
    pub gen: u64,
    pub token: CancellationToken,
    pub slot: Arc<tokio::sync::Mutex<()>>,
    pub command: Option<String>,
    /// Vast's container variables, then the create body's env (which wins on a clash).
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

/// A process started for an instance and not yet gone.
#[derive(Debug, Clone, Copy)]
struct Proc {
    gen: u64,
    pid: u32,
}

/// Offers, instances and counters.
#[derive(Debug)]
pub(crate) struct Cloud {
    offers: BTreeMap<u64, Offer>,
    /// offer id → the instance renting it.
    rented: BTreeMap<u64, u64>,
    instances: BTreeMap<u64, Instance>,
    next_id: u64,
    ports_in_use: BTreeSet<(Proto, u16)>,
    procs: BTreeMap<u64, Proc>,
    created: u64,
    destroyed: u64,
    processes_started: u64,
    instances_dir: PathBuf,
}

impl Cloud {
    pub fn new(offers: Vec<Offer>, state_dir: &Path) -> Cloud {
        Cloud {
            offers: offers.into_iter().map(|o| (o.id(), o)).collect(),
            rented: BTreeMap::new(),
            instances: BTreeMap::new(),
            next_id: FIRST_INSTANCE_ID,
            ports_in_use: BTreeSet::new(),
            procs: BTreeMap::new(),
            created: 0,
            destroyed: 0,
            processes_started: 0,
            instances_dir: state_dir.join("instances"),
        }
    }

    /// Offers matching `query`, rented ones left out (an offer's own `rentable: false`, from a
    /// catalogue file, is kept as it is: the default query filters it out, and a create on it
    /// answers 410). `bid` (a search of `type: "bid"`)
    /// shows each offer as an interruptible one: `is_bid: true`, priced at its `min_bid`.
    pub fn search(&self, query: &Query, bid: bool) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .offers
            .values()
            .filter(|o| !self.rented.contains_key(&o.id()))
            .map(|o| {
                let mut r = o.fields().clone();
                r.insert("rented".into(), Value::Bool(false));
                if bid {
                    r.insert("is_bid".into(), Value::Bool(true));
                    if let Some(min) = r.get("min_bid").cloned() {
                        r.insert("dph_total".into(), min);
                    }
                }
                r
            })
            .filter(|r| query.matches(r))
            .collect();
        query.sort(&mut rows);
        rows.truncate(query.limit().unwrap_or(usize::MAX));
        rows
    }

    /// Rents `offer_id`: records the instance and, unless it is created stopped, returns its
    /// first run to boot.
    pub fn create(
        &mut self,
        offer_id: u64,
        req: CreateRequest,
        knobs: &Knobs,
        run_token: CancellationToken,
    ) -> Result<(u64, Option<BootOrder>), ApiError> {
        let Some(offer) = self.offers.get(&offer_id) else {
            return Err(ApiError::NoSuchAsk(offer_id));
        };
        let unrentable = offer.get("rentable") == Some(&Value::Bool(false));
        if unrentable || self.rented.contains_key(&offer_id) || knobs.take_steal(offer_id) {
            return Err(ApiError::AskTaken(offer_id));
        }
        let offer = offer.fields().clone();
        let mut ports = Vec::new();
        for (key, _) in &req.env {
            let Some((container, proto)) = port_of_key(key) else {
                continue;
            };
            if ports
                .iter()
                .any(|p: &Port| p.container == container && p.proto == proto)
            {
                continue;
            }
            let host = self.free_port(proto).map_err(|e| {
                ApiError::BadRequest(format!("no free loopback port for {key:?}: {e}"))
            })?;
            ports.push(Port {
                container,
                proto,
                host,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.created += 1;
        self.rented.insert(offer_id, id);
        for p in &ports {
            self.ports_in_use.insert((p.proto, p.host));
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let stopped = req.start_stopped;
        let inst = Instance {
            id,
            offer_id,
            offer,
            command: req.command(),
            label: req.label.clone(),
            req,
            ports,
            dir: self.instances_dir.join(id.to_string()),
            created,
            intended: if stopped { "stopped" } else { "running" },
            cur_state: if stopped { "stopped" } else { "running" },
            actual: if stopped { "created" } else { "loading" },
            status_msg: None,
            gen: 0,
            run: None,
            stop_kind: None,
            slot: Arc::new(tokio::sync::Mutex::new(())),
            pid: None,
            running_since: None,
        };
        self.instances.insert(id, inst);
        let order = if stopped {
            None
        } else {
            self.begin_run(id, run_token)
        };
        Ok((id, order))
    }

    /// A loopback port nobody (among this emulator's instances) holds, free right now.
    fn free_port(&self, proto: Proto) -> std::io::Result<u16> {
        for _ in 0..64 {
            let port = match proto {
                Proto::Tcp => TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                    .local_addr()?
                    .port(),
                Proto::Udp => UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
                    .local_addr()?
                    .port(),
            };
            if !self.ports_in_use.contains(&(proto, port)) {
                return Ok(port);
            }
        }
        Err(std::io::Error::other(
            "the kernel kept handing out taken ports",
        ))
    }

    /// Starts a new run of `id`: a new generation, status `loading`.
    fn begin_run(&mut self, id: u64, token: CancellationToken) -> Option<BootOrder> {
        let inst = self.instances.get_mut(&id)?;
        inst.gen += 1;
        inst.intended = "running";
        inst.cur_state = "running";
        inst.actual = "loading";
        inst.status_msg = None;
        inst.stop_kind = None;
        inst.pid = None;
        inst.running_since = None;
        if let Some(old) = inst.run.replace(token.clone()) {
            old.cancel();
        }
        let mut env = vec![
            ("CONTAINER_ID".to_owned(), id.to_string()),
            ("VAST_CONTAINERLABEL".to_owned(), format!("C.{id}")),
            ("PUBLIC_IPADDR".to_owned(), "127.0.0.1".to_owned()),
        ];
        for p in &inst.ports {
            let var = match p.proto {
                Proto::Tcp => "VAST_TCP_PORT",
                Proto::Udp => "VAST_UDP_PORT",
            };
            env.push((format!("{var}_{}", p.container), p.host.to_string()));
        }
        env.extend(
            inst.req
                .env
                .iter()
                .filter(|(k, _)| !k.starts_with('-'))
                .cloned(),
        );
        Some(BootOrder {
            id,
            gen: inst.gen,
            token,
            slot: inst.slot.clone(),
            command: inst.command.clone(),
            env,
            dir: inst.dir.clone(),
        })
    }

    /// `PUT /api/v0/instances/{id}/ {"state": "running"}`: boots a stopped or exited
    /// instance again (same ports); nothing for one already loading or running.
    pub fn start(
        &mut self,
        id: u64,
        token: CancellationToken,
    ) -> Result<Option<BootOrder>, ApiError> {
        let inst = self
            .instances
            .get(&id)
            .ok_or(ApiError::NoSuchInstance(id))?;
        let live = inst.run.is_some() && inst.stop_kind.is_none();
        if inst.intended == "running" && inst.cur_state == "running" && live {
            return Ok(None);
        }
        Ok(self.begin_run(id, token))
    }

    /// `PUT /api/v0/instances/{id}/ {"state": "stopped"}`: the run is told to stop; its
    /// status turns `stopped` once its processes are gone.
    pub fn stop(&mut self, id: u64) -> Result<(), ApiError> {
        self.halt(id, StopKind::User)
    }

    /// The instance is outbid: like a stop, but it still *intends* to run, and says why.
    pub fn preempt(&mut self, id: u64) -> Result<(), ApiError> {
        self.halt(id, StopKind::Outbid)
    }

    fn halt(&mut self, id: u64, kind: StopKind) -> Result<(), ApiError> {
        let inst = self
            .instances
            .get_mut(&id)
            .ok_or(ApiError::NoSuchInstance(id))?;
        inst.intended = if kind == StopKind::Outbid {
            "running"
        } else {
            "stopped"
        };
        inst.cur_state = "stopped";
        match &inst.run {
            Some(token) => {
                inst.stop_kind = Some(kind);
                token.cancel();
            }
            None => finish_stop(inst, kind),
        }
        Ok(())
    }

    /// `PUT /api/v0/instances/{id}/ {"label": ...}`.
    pub fn set_label(&mut self, id: u64, label: Option<String>) -> Result<(), ApiError> {
        let inst = self
            .instances
            .get_mut(&id)
            .ok_or(ApiError::NoSuchInstance(id))?;
        inst.label = label;
        Ok(())
    }

    /// `DELETE /api/v0/instances/{id}/`: gone at once from the API, its offer rentable
    /// again; its run is told to stop (the ledger shows its processes until they are gone).
    pub fn destroy(&mut self, id: u64) -> Result<(), ApiError> {
        let inst = self
            .instances
            .remove(&id)
            .ok_or(ApiError::NoSuchInstance(id))?;
        if let Some(token) = &inst.run {
            token.cancel();
        }
        self.rented.remove(&inst.offer_id);
        for p in &inst.ports {
            self.ports_in_use.remove(&(p.proto, p.host));
        }
        self.destroyed += 1;
        Ok(())
    }

    fn current(&mut self, id: u64, gen: u64) -> Option<&mut Instance> {
        self.instances.get_mut(&id).filter(|i| i.gen == gen)
    }

    /// The run booted with no command: the instance runs without a process.
    pub fn run_running_idle(&mut self, id: u64, gen: u64) {
        if let Some(inst) = self.current(id, gen) {
            inst.actual = "running";
            inst.status_msg = Some(running_msg(inst));
            inst.running_since = Some(Instant::now());
        }
    }

    /// The run's boot failed as the knob said.
    pub fn run_boot_failed(&mut self, id: u64, gen: u64, mode: BootFailure, why: Option<String>) {
        if let Some(inst) = self.current(id, gen) {
            match mode {
                BootFailure::Hang => {}
                BootFailure::Exit => {
                    inst.actual = "exited";
                    inst.status_msg = Some(why.unwrap_or_else(|| BOOT_FAILED_MSG.to_owned()));
                    inst.run = None;
                }
            }
        }
    }

    /// The run's process started.
    pub fn run_started(&mut self, id: u64, gen: u64, pid: u32) {
        self.processes_started += 1;
        self.procs.insert(id, Proc { gen, pid });
        if let Some(inst) = self.current(id, gen) {
            inst.actual = "running";
            inst.status_msg = Some(running_msg(inst));
            inst.pid = Some(pid);
            inst.running_since = Some(Instant::now());
        }
    }

    /// The run's process group is gone (however it ended).
    pub fn run_process_gone(&mut self, id: u64, gen: u64) {
        if self.procs.get(&id).is_some_and(|p| p.gen == gen) {
            self.procs.remove(&id);
        }
    }

    /// The run's process exited by itself: the container stops, `exited`.
    pub fn run_exited(&mut self, id: u64, gen: u64, how: String) {
        if let Some(inst) = self.current(id, gen) {
            if inst.stop_kind.is_some() {
                // A stop raced the exit: the stop wins, as the user asked for it.
                if let Some(kind) = inst.stop_kind {
                    finish_stop(inst, kind);
                }
                return;
            }
            inst.actual = "exited";
            inst.status_msg = Some(how);
            inst.pid = None;
            inst.run = None;
            inst.running_since = None;
        }
    }

    /// The run was stopped (its processes are gone): the status the stop asked for.
    pub fn run_stopped(&mut self, id: u64, gen: u64) {
        if let Some(inst) = self.current(id, gen) {
            if let Some(kind) = inst.stop_kind {
                finish_stop(inst, kind);
            }
        }
    }

    /// Process groups still alive (for a last-resort kill when the emulator is dropped).
    pub fn live_pids(&self) -> Vec<u32> {
        self.procs.values().map(|p| p.pid).collect()
    }

    /// One instance as `GET /api/v0/instances/{id}/` shows it.
    pub fn row(&self, id: u64) -> Option<Row> {
        self.instances.get(&id).map(row)
    }

    /// Every instance, by id.
    pub fn rows(&self) -> Vec<Row> {
        self.instances.values().map(row).collect()
    }

    pub fn ledger(&self) -> Ledger {
        Ledger {
            created: self.created,
            destroyed: self.destroyed,
            processes_started: self.processes_started,
            instances: self
                .instances
                .values()
                .map(|i| LedgerInstance {
                    id: i.id,
                    offer_id: i.offer_id,
                    label: i.label.clone(),
                    actual_status: i.actual.to_owned(),
                    intended_status: i.intended.to_owned(),
                    pid: i.pid,
                    tcp_ports: i
                        .ports
                        .iter()
                        .filter(|p| p.proto == Proto::Tcp)
                        .map(|p| (p.container, p.host))
                        .collect(),
                })
                .collect(),
            processes: self
                .procs
                .iter()
                .map(|(id, p)| LedgerProcess {
                    instance_id: *id,
                    pid: p.pid,
                })
                .collect(),
        }
    }
}

fn finish_stop(inst: &mut Instance, kind: StopKind) {
    inst.actual = "stopped";
    inst.status_msg = match kind {
        StopKind::User => None,
        StopKind::Outbid => Some(OUTBID_MSG.to_owned()),
    };
    inst.pid = None;
    inst.run = None;
    inst.running_since = None;
}

fn running_msg(inst: &Instance) -> String {
    format!(
        "success, running {}",
        inst.req.image.as_deref().unwrap_or("template image")
    )
}

/// An instance as Vast shows it (the columns `vastai.data.instance.Instance` names, plus
/// the machine's columns from the offer).
fn row(i: &Instance) -> Row {
    let mut r = Map::new();
    for f in MACHINE_FIELDS {
        if let Some(v) = i.offer.get(*f) {
            r.insert((*f).to_owned(), v.clone());
        }
    }
    let offer_dph = i.offer.get("dph_total").cloned().unwrap_or(Value::Null);
    let reliability = i
        .offer
        .get("reliability2")
        .or_else(|| i.offer.get("reliability"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut ports = Map::new();
    for p in &i.ports {
        ports.insert(
            format!("{}/{}", p.container, p.proto.name()),
            json!([{"HostIp": "0.0.0.0", "HostPort": p.host.to_string()}]),
        );
    }
    let uptime = i.running_since.map(|t| t.elapsed().as_secs_f64() / 60.0);
    let extra_env: Vec<Value> = i.req.env.iter().map(|(k, v)| json!([k, v])).collect();
    let fields = json!({
        "id": i.id,
        "label": i.label,
        "actual_status": i.actual,
        "intended_status": i.intended,
        "cur_state": i.cur_state,
        "next_state": i.cur_state,
        "status_msg": i.status_msg,
        "image_uuid": i.req.image,
        "image_args": i.req.args.clone().unwrap_or_else(|| json!([])),
        "image_runtype": i.req.runtype,
        "template_hash_id": i.req.template_hash_id,
        "template_id": null,
        "template_name": null,
        "onstart": i.req.onstart,
        "extra_env": extra_env,
        "disk_space": i.req.disk.unwrap_or(10.0),
        "disk_util": 0.0,
        "disk_usage": 0.0,
        "gpu_util": 0.0,
        "gpu_temp": null,
        "cpu_util": 0.0,
        "mem_usage": 0.0,
        "mem_limit": null,
        "vmem_usage": 0.0,
        "is_bid": i.req.price.is_some(),
        "dph_total": i.req.price.map_or(offer_dph, Value::from),
        "reliability2": reliability,
        "public_ipaddr": "127.0.0.1",
        "local_ipaddrs": "127.0.0.1",
        "ports": ports,
        "direct_port_start": i.ports.iter().map(|p| p.host).min(),
        "direct_port_end": i.ports.iter().map(|p| p.host).max(),
        "ssh_host": null,
        "ssh_port": null,
        "ssh_idx": null,
        "jupyter_token": null,
        "start_date": i.created,
        "uptime_mins": uptime,
    });
    if let Value::Object(m) = fields {
        r.extend(m);
    }
    r
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Row {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn cloud() -> (Cloud, Knobs) {
        let offers = vec![
            Offer::new(1, "RTX 4090", 0.3),
            Offer::new(2, "RTX 3090", 0.2),
        ];
        (
            Cloud::new(offers, Path::new("/nonexistent")),
            Knobs::new(std::time::Duration::ZERO),
        )
    }

    #[test]
    fn renting_hides_the_offer_until_destroy() {
        let (mut c, k) = cloud();
        let all = Query::default();
        let req = || {
            CreateRequest::from_body(&body(json!({"image": "i", "env": {"-p 3000:3000": "1"}})))
                .unwrap()
        };
        let (id, order) = c.create(1, req(), &k, CancellationToken::new()).unwrap();
        assert_eq!(id, FIRST_INSTANCE_ID);
        let order = order.unwrap();
        assert!(order.env.iter().any(|(k, _)| k == "VAST_TCP_PORT_3000"));
        assert_eq!(c.search(&all, false).len(), 1);
        assert_eq!(
            c.create(1, req(), &k, CancellationToken::new())
                .unwrap_err(),
            ApiError::AskTaken(1)
        );
        assert_eq!(
            c.create(9, req(), &k, CancellationToken::new())
                .unwrap_err(),
            ApiError::NoSuchAsk(9)
        );
        c.destroy(id).unwrap();
        assert!(order.token.is_cancelled());
        assert_eq!(c.search(&all, false).len(), 2);
        assert_eq!(c.destroy(id).unwrap_err(), ApiError::NoSuchInstance(id));
        let l = c.ledger();
        assert_eq!((l.created, l.destroyed, l.alive()), (1, 1, 0));
    }

    #[test]
    fn a_late_report_from_an_old_run_changes_nothing() {
        let (mut c, k) = cloud();
        let req = CreateRequest::from_body(&body(json!({"image": "i", "onstart": "x"}))).unwrap();
        let (id, first) = c.create(2, req, &k, CancellationToken::new()).unwrap();
        let first = first.unwrap();
        c.run_started(id, first.gen, 4242);
        c.stop(id).unwrap();
        assert!(first.token.is_cancelled());
        // Still running until the run reports its processes gone.
        assert_eq!(c.row(id).unwrap()["actual_status"], "running");
        let second = c.start(id, CancellationToken::new()).unwrap().unwrap();
        assert_eq!(second.gen, first.gen + 1);
        c.run_stopped(id, first.gen);
        c.run_exited(id, first.gen, "exited with status 1".into());
        assert_eq!(c.row(id).unwrap()["actual_status"], "loading");
        c.run_process_gone(id, first.gen);
        assert_eq!(c.ledger().processes_running(), 0);
        c.run_started(id, second.gen, 4343);
        assert_eq!(c.row(id).unwrap()["actual_status"], "running");
        assert!(c.start(id, CancellationToken::new()).unwrap().is_none());
        c.preempt(id).unwrap();
        c.run_stopped(id, second.gen);
        let r = c.row(id).unwrap();
        assert_eq!(
            (&r["actual_status"], &r["intended_status"], &r["status_msg"]),
            (&json!("stopped"), &json!("running"), &json!(OUTBID_MSG))
        );
    }
}
