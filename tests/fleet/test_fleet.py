"""Fleet scenarios: `ferry control` and joined workers on separate "hosts" (network
namespaces joined by a bridge, scripts/netns.sh), with real partitions between them, driven
through Vast's official Python client.

Run as root with the peers venv's python (scripts/fleet-tests.sh does this):

    $FERRY_PY tests/fleet/test_fleet.py [-k SUBSTRING]... [--keep]

Each scenario gets its own run of namespaces (`netns.sh up`, removed afterwards even if the
scenario crashed; runs left by a killed suite are removed first with `netns.sh down --stale`):
`cp` holds `ferry control` (listening on the cp address) and the load client; `h1..hN` each
run `ferry sim-model` on 127.0.0.1 and `ferry worker` on the host's address, joined to an
external workergroup with a join token (FERRY_JOIN_TOKEN, no CONTAINER_ID/MASTER_TOKEN). The
scenario itself runs in a child process inside the cp namespace (`ip netns exec`), so that
the control plane, the official client and every HTTP check of the harness sit on the cp host;
this process only creates and removes the namespaces and prints the figures.

The harness plays the orchestrator, as KEDA and a Deployment would: it polls the workergroup's
`GET /api/v0/workergroups/{id}/scale/` and starts joined workers on hosts that are not cut
until the workers the control plane counts (ready, loading, cold) plus the ones it has started
that have not joined yet match `desired_workers`. (A Deployment counts pods; a pod on a
partitioned node stays "Running" until the node is evicted, minutes later. Counting what the
control plane counts is what replaces capacity in seconds.)

Scenarios:

- partition_one_host: 3 worker hosts, a steady load through the official client, then one
  host's link is cut (packets dropped, not refused). Measured: requests lost (must be 0: each
  one completes, possibly after the client's retry), time from the cut to the last request
  the control plane routes to the cut worker (its own `routed` log lines), to its being marked
  unreachable, and to a replacement worker (started by the orchestrator on another host) being
  ready; then the host is healed and the cut worker must report again and be routed to, with
  the same worker id and no new join.
- revoked_token: a worker started with a revoked join token is refused with a clear error
  (exit code 64, the control plane's reason in its output) and never appears in the registry.

How the official client survives a partitioned worker: `Serverless._do_request` calls the
worker with `worker_timeout` as aiohttp's total timeout (and no other), and treats a timeout
like any other failed call: it re-routes the request (same request_idx) at once. But its
default `worker_timeout` is 600 s, and `Endpoint.request` does not pass one on, so through
`Endpoint.request` a request in flight on a silently partitioned worker waits 600 s (a stream
forever: streams are opened with `ClientTimeout(total=None)`). The load here calls
`queue_endpoint_request` (what `Endpoint.request` calls) with `worker_timeout`
FERRY_FLEET_WORKER_TIMEOUT_S (default 5 s); docs/fleet-tests.md has the details.

The last lines are a table of the figures and `N passed, M failed`; the figures are also written
as JSON to $FERRY_FLEET_JSON (default $TMPDIR/ferry-fleet-results.json). Failing scenarios keep
their directories (control plane state and logs, each worker's and model's logs and request
logs); --keep keeps them all.

Environment: FERRY_BIN, FERRY_FLEET_STALE_S (default 3), FERRY_FLEET_WORKER_TIMEOUT_S,
FERRY_FLEET_JSON, FERRY_FAULT_REQ_TIMEOUT_S (per-request deadline, default 30 s).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "peers"))
sys.path.insert(0, str(ROOT / "tests" / "fault"))

import test_faults as faults  # noqa: E402  (the load and its tally)
import test_official as peers  # noqa: E402  (processes, HTTP, the official client)
from test_official import FERRY, KEY, _die_with_parent, http, new_endpoint, tail, vast_client  # noqa: E402

NETNS = ROOT / "scripts" / "netns.sh"
STALE_S = int(os.environ.get("FERRY_FLEET_STALE_S", "3"))
# The official client's limit on one call to a worker; 0 keeps the client's default (600 s,
# through `Endpoint.request` as a user would call it): see the module docstring.
WORKER_TIMEOUT = float(os.environ.get("FERRY_FLEET_WORKER_TIMEOUT_S", "5")) or None
SCENARIO_TIMEOUT = 170.0
CONTROL_PORT = 8080
FIGS_MARK = "FLEET-FIGURES "

# Fast timers, as in the fault suite: reports every 200 ms, a heartbeat every second (a ready
# worker with no work still reports well within the stale limit), a small benchmark.
WORKER_ENV = {**faults.WORKER_ENV, "FERRY_LOG": "info"}


# ---------------------------------------------------------------------------------------------
# Figures


@dataclass
class Figures:
    name: str
    sent: int = 0
    completed: int = 0
    failed: int = 0
    bad: int = 0
    hung: int = 0
    lost: int = 0
    twice: int = 0
    twice_unexplained: int = 0
    retried: int = 0  # requests that took longer than the client's worker_timeout
    max_latency_s: float = 0.0
    stop_routing_s: float | None = None
    unreachable_s: float | None = None
    replaced_s: float | None = None
    readmitted_s: float | None = None
    same_id: bool | None = None
    joins: int = 0
    left: int = 0
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)
    bad_examples: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    ok: bool = False

    def row(self) -> str:
        def s(v):
            return "-" if v is None else f"{v:.1f}"

        return (
            f"{self.name:<20} {self.sent:>5} {self.completed:>5} {self.lost:>4} {self.retried:>7} "
            f"{self.twice:>5} {s(self.stop_routing_s):>10} {s(self.unreachable_s):>11} "
            f"{s(self.replaced_s):>8} {s(self.readmitted_s):>10} "
            f"{'-' if self.same_id is None else ('yes' if self.same_id else 'NO'):>7} "
            f"{self.left:>4} {self.seconds:>6.1f}  {'PASS' if self.ok else 'FAIL'}"
        )


HEADER = (
    f"{'scenario':<20} {'sent':>5} {'done':>5} {'lost':>4} {'retried':>7} {'twice':>5} "
    f"{'stop-route':>10} {'unreachable':>11} {'replaced':>8} {'readmitted':>10} {'same id':>7} "
    f"{'left':>4} {'secs':>6}  verdict"
)


def check(fig: Figures, cond: bool, what: str) -> None:
    if not cond:
        fig.failures.append(what)


# ---------------------------------------------------------------------------------------------
# The fleet: namespaces, the control plane, joined workers (inside the cp namespace)


@dataclass
class Net:
    prefix: str
    hosts: dict  # host name -> {"ns", "addr"}

    @staticmethod
    def parse(text: str) -> "Net":
        env = {}
        for line in text.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                env[k] = " ".join(shlex.split(v))
        hosts = {}
        for h in env["FERRY_NETNS_HOSTS"].split():
            up = h.upper()
            hosts[h] = {"ns": env[f"FERRY_NETNS_{up}_NS"], "addr": env[f"FERRY_NETNS_{up}_ADDR"]}
        return Net(env["FERRY_NETNS_PREFIX"], hosts)

    def workers_hosts(self) -> list[str]:
        return [h for h in self.hosts if h != "cp"]


def netns(*args: str, check_rc: bool = True) -> str:
    p = subprocess.run(["bash", str(NETNS), *args], capture_output=True, text=True, timeout=60)
    if check_rc and p.returncode != 0:
        raise AssertionError(f"netns.sh {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


class FleetControl(peers.Control):
    """`ferry control` on the cp host's address, its state dir inside the scenario's dir; JSON
    logs with the router's `routed` lines (when the cut worker stopped getting requests)."""

    def __init__(self, base: Path, addr: str, *extra: str):
        super().__init__("fleet", *extra)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = base / "control"
        self.dir.mkdir(parents=True)
        self.host = addr
        self.port = CONTROL_PORT

    def routed(self) -> list[tuple[float, int]]:
        """(unix time, worker id) of every `routed` line in the log."""
        out = []
        with contextlib.suppress(OSError), open(self.dir / "control.log", errors="replace") as f:
            for line in f:
                if '"routed"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                fields = rec.get("fields", {})
                if fields.get("message") != "routed":
                    continue
                out.append((unix_of(rec.get("timestamp", "")), int(fields.get("worker", -1))))
        return out


def unix_of(ts: str) -> float:
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", ts)
    if not m:
        return 0.0
    frac = float(m.group(2) or 0)
    tz = m.group(3) or "Z"
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if tz == "Z" else tz))
    return base.timestamp() + frac


@dataclass
class JoinedWorker:
    """One `ferry sim-model` + `ferry worker` pair started on a host."""

    host: str
    addr: str
    port: int
    dir: Path
    model: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}"


class Fleet:
    def __init__(self, name: str, net: Net, base: Path):
        self.name = name
        self.net = net
        self.base = base
        self.cp: FleetControl | None = None
        self.workers: list[JoinedWorker] = []
        self.cut: set[str] = set()
        self.root_netns = os.environ.get("FERRY_FLEET_ROOT_NETNS", "")

    @property
    def cp_addr(self) -> str:
        return self.net.hosts["cp"]["addr"]

    async def start_control(self, *extra: str) -> FleetControl:
        os.environ["FERRY_LOG"] = "info,ferry_control::route=debug"
        os.environ["FERRY_LOG_FORMAT"] = "json"
        self.cp = FleetControl(self.base, self.cp_addr, *extra)
        await self.cp.start()
        return self.cp

    async def api(self, method: str, path: str, body=None):
        assert self.cp is not None
        return await http(method, f"{self.cp.url}{path}", body,
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip

    async def join_token(self, group: int) -> tuple[int, str]:
        status, body = await self.api("POST", f"/api/v0/workergroups/{group}/join_tokens/", {})
        assert status == 200 and body.get("success"), (status, body)
        assert str(body["token"]).startswith("fjt_"), body
        return int(body["id"]), body["token"]

    async def scale(self, group: int) -> dict:
        status, body = await self.api("GET", f"/api/v0/workergroups/{group}/scale/")
        assert status == 200 and isinstance(body, dict), (status, body)
        return body

    def start_worker(self, host: str, token: str, *, model_delay_ms: int = 10) -> JoinedWorker:
        """`ferry sim-model` on the host's loopback and a joined `ferry worker` on its address."""
        assert self.cp is not None
        slot = sum(1 for w in self.workers if w.host == host)
        port = 3000 + 10 * slot
        model_port = 18000 + 10 * slot
        addr = self.net.hosts[host]["addr"]
        d = self.base / host / f"w{port}"
        d.mkdir(parents=True)
        w = JoinedWorker(host, addr, port, d)
        ns = self.net.hosts[host]["ns"]
        with open(d / "model.out", "wb") as out:
            w.model = subprocess.Popen(
                ["ip", "netns", "exec", ns, str(FERRY), "sim-model",
                 "--listen", f"127.0.0.1:{model_port}", "--log-file", str(d / "model.log"),
                 "--request-log", str(d / "requests.log"), "--token-delay-ms", str(model_delay_ms)],
                cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **WORKER_ENV,
            "REPORT_ADDR": self.cp.url,
            "FERRY_JOIN_TOKEN": token,
            "WORKER_PORT": str(port),
            "WORKER_HTTP_PORT": str(port + 1),
            "FERRY_LISTEN_HOST": addr,
            "PUBLIC_IPADDR": addr,
            "MODEL_SERVER_URL": f"http://127.0.0.1:{model_port}",
            "MODEL_LOG": str(d / "model.log"),
            "BACKEND": "openai",
            "FERRY_BENCHMARK_CACHE": str(d / ".has_benchmark"),
            "FERRY_FORCE_UPDATE_FILE": str(d / ".force_update"),
        }
        with open(d / "worker.out", "wb") as out:
            w.worker = subprocess.Popen(
                ["ip", "netns", "exec", ns, str(FERRY), "worker"],
                cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.workers.append(w)
        return w

    def cut_host(self, host: str) -> None:
        netns("cut", self.net.prefix, host)
        self.cut.add(host)

    def heal_host(self, host: str) -> None:
        netns("heal", self.net.prefix, host)
        self.cut.discard(host)

    def our_pids(self) -> dict[int, str]:
        out = {}
        if self.cp and self.cp.proc and self.cp.proc.poll() is None:
            out[self.cp.proc.pid] = "control"
        for w in self.workers:
            for kind, p in (("model", w.model), ("worker", w.worker)):
                if p is not None and p.poll() is None:
                    out[p.pid] = f"{kind} {w.host}:{w.port}"
        return out

    def check_binds(self) -> list[str]:
        """Every process of ours is outside the machine's namespace and listens only on
        loopback or its own host's address; returns what is wrong."""
        wrong = []
        allowed = {"127.0.0.1"} | {h["addr"] for h in self.net.hosts.values()}
        for pid, what in self.our_pids().items():
            try:
                ns = os.readlink(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if self.root_netns and ns == self.root_netns:
                wrong.append(f"{what} (pid {pid}) runs in the machine's network namespace")
            for addr, port in listening(pid):
                if addr not in allowed:
                    wrong.append(f"{what} (pid {pid}) listens on {addr}:{port}")
        return wrong

    async def close(self) -> int:
        """Stops the workers (SIGTERM, SIGKILL after 10 s) and the control plane; returns how
        many had to be killed."""
        killed = 0
        procs = [p for w in self.workers for p in (w.worker, w.model) if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
                killed += 1
        if self.cp is not None:
            await self.cp.stop()
            killed += len(self.cp.leftovers)
        return killed

    def logs(self) -> str:
        parts = []
        if self.cp is not None:
            parts.append(f"--- {self.cp.dir}/control.log (tail)\n{tail(self.cp.dir / 'control.log', 15)}")
        for w in self.workers:
            parts.append(f"--- {w.dir}/worker.out (tail)\n{tail(w.dir / 'worker.out', 10)}")
        return "\n".join(parts)


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets `pid` listens on, read in its own namespace."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:
                    continue
                hexaddr, hexport = cols[1].split(":")
                if table == "tcp":
                    addr = ".".join(str(b) for b in reversed(bytes.fromhex(hexaddr)))
                else:
                    addr = "::" if int(hexaddr, 16) == 0 else hexaddr
                out.append((addr, int(hexport, 16)))
    return out


class Orchestrator:
    """KEDA + a Deployment, played by the harness: every 0.25 s, reads the group's `scale`
    and starts joined workers on the least-used hosts that are not cut until the running count
    (what the control plane counts alive, plus workers started that have not joined yet)
    matches `desired_workers`. Never stops workers (scale-down is not exercised here)."""

    def __init__(self, fleet: Fleet, endpoint_id: int, group: int, token: str):
        self.fleet = fleet
        self.endpoint_id = endpoint_id
        self.group = group
        self.token = token
        self.last: dict = {}
        self.log: list[str] = []
        self.t0 = time.monotonic()

    def _pick_host(self) -> str:
        hosts = [h for h in self.fleet.net.workers_hosts() if h not in self.fleet.cut]
        assert hosts, "every worker host is cut"
        count = collections.Counter(w.host for w in self.fleet.workers if w.worker.poll() is None)
        return min(hosts, key=lambda h: (count[h], h))

    async def step(self) -> None:
        # The registry first, then `scale`: a worker joining in between is counted twice (one
        # start too few, made up at the next step), never zero times (one too many).
        joined = {w["url"] for w in await self.fleet.cp.workers(self.endpoint_id)}
        s = await self.fleet.scale(self.group)
        self.last = s
        starting = [w for w in self.fleet.workers
                    if w.worker.poll() is None and w.url not in joined]  # fmt: skip
        running = s["ready"] + s["loading"] + s["cold"] + len(starting)
        for _ in range(s["desired_workers"] - running):
            host = self._pick_host()
            w = self.fleet.start_worker(host, self.token)
            self.log.append(f"{time.monotonic() - self.t0:6.1f} s: desired {s['desired_workers']}, "
                            f"running {running} -> started a worker on {host}:{w.port}")

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except AssertionError as e:
                self.log.append(f"orchestrator step failed: {e}")
            except Exception as e:  # noqa: BLE001  (the control plane restarting, ...)
                self.log.append(f"orchestrator step failed: {e!r}")
            await asyncio.sleep(0.25)


def by_url(ws: list[dict]) -> dict[str, dict]:
    return {w["url"]: w for w in ws}


def count_twice(fleet: Fleet, tag: str, victim_dirs: set[Path]) -> tuple[int, int, list[str]]:
    """(requests some model ran more than once, of those not explained by the cut, examples)."""
    seen: dict[str, list[Path]] = collections.defaultdict(list)
    for w in fleet.workers:
        with contextlib.suppress(OSError), open(w.dir / "requests.log", errors="replace") as f:
            for line in f:
                for rid in set(faults.RID.findall(line)):
                    if rid.startswith(f"fx-{tag}-"):
                        seen[rid].append(w.dir)
    twice = {rid: ds for rid, ds in seen.items() if len(ds) > 1}
    unexplained = {rid: ds for rid, ds in twice.items()
                   if sum(1 for d in ds if d not in victim_dirs) > 1}  # fmt: skip
    ex = [f"{rid} ran on {[str(d.relative_to(fleet.base)) for d in ds]}"
          for rid, ds in list(unexplained.items())[:5]]  # fmt: skip
    return len(twice), len(unexplained), ex


# ---------------------------------------------------------------------------------------------
# Scenarios (run inside the cp namespace)


async def setup_group(fleet: Fleet, name: str, workers: int):
    """An endpoint that wants `workers` workers, with one external workergroup and a token."""
    c = vast_client(fleet.cp)
    await c.__aenter__()
    # cold_workers keeps `workers` in existence; the long idle limit of peers.Control
    # (--idle-stop-after-s 600) keeps them all warm for the whole scenario; max_workers caps
    # growth from the load (unreachable workers do not count against it).
    me = await new_endpoint(c, name, cold_workers=workers, max_workers=workers)
    group = await me.add_workergroup(launch_args=json.dumps({"provider": "external"}))
    token_id, token = await fleet.join_token(group)
    return c, me, group, token_id, token


async def sc_partition_one_host(fleet: Fleet, fig: Figures) -> None:
    await fleet.start_control("--stale-after-s", str(STALE_S))
    cp = fleet.cp
    c, me, group, token_id, token = await setup_group(fleet, "fleet", 3)
    orch = Orchestrator(fleet, me.id, group, token)
    orch_task = asyncio.create_task(orch.run())
    load = None
    runner = None
    try:
        t0 = time.monotonic()
        ws = await cp.wait_workers(me.id, peers.idle(3), "3 joined workers ready", timeout=60)
        fig.notes.append(f"3 joined workers ready {time.monotonic() - t0:.1f} s after the "
                         f"workergroup was created: " + ", ".join(f"{w['id']}={w['url']}" for w in ws))
        wrong = fleet.check_binds()
        check(fig, not wrong, f"nothing listens outside the namespaces: {wrong}")
        fig.notes.append(f"{len(fleet.our_pids())} processes, each in its own host's namespace, "
                         "listening on loopback or its host's address only"
                         if not wrong else f"binds: {wrong}")
        ep = await c.get_endpoint("fleet")
        load = faults.Load(ep, "pt", 100000, 6, worker_timeout=WORKER_TIMEOUT)
        runner = asyncio.create_task(load.run(max_seconds=110))
        await asyncio.sleep(4)

        # The cut: the host whose worker has the most requests on it right now.
        ws = await cp.workers(me.id)
        urls = {w.url: w for w in fleet.workers}
        victim_rec = max((w for w in ws if w["url"] in urls and w["status"] == "idle"),
                         key=lambda w: (w["reqs_working"] + w["pending_load"], -w["id"]))  # fmt: skip
        victim = urls[victim_rec["url"]]
        victim_id = victim_rec["id"]
        sent_before = load.sent
        ids_at_cut = {w["id"] for w in ws}
        t_cut, wall_cut = time.monotonic(), time.time()
        fleet.cut_host(victim.host)
        fig.notes.append(f"cut {victim.host} (worker {victim_id}, {victim_rec['reqs_working']} "
                         f"requests working) after {sent_before} requests")

        # Watch the registry: unreachable, then a replacement ready.
        replacement = None
        deadline = t_cut + 60
        while time.monotonic() < deadline:
            ws = await cp.workers(me.id)
            now = time.monotonic() - t_cut
            mine = next((w for w in ws if w["id"] == victim_id), None)
            if fig.unreachable_s is None and (mine is None or mine["status"] != "idle"):
                fig.unreachable_s = now
                fig.notes.append(f"worker {victim_id} is {mine['status'] if mine else 'gone'!r} "
                                 f"({(mine or {}).get('error_msg', '')!r}) {now:.1f} s after the cut")
            new = [w for w in ws if w["id"] not in ids_at_cut
                   and w["status"] == "idle" and w["measured_perf"] > 0]  # fmt: skip
            if new:
                replacement = new[0]
                fig.replaced_s = now
                break
            await asyncio.sleep(0.1)
        check(fig, fig.unreachable_s is not None, "the cut worker is marked unreachable")
        check(fig, replacement is not None,
              f"a replacement worker is ready within 60 s of the cut; orchestrator: {orch.log[-5:]}")
        if replacement is not None:
            fig.notes.append(f"replacement: worker {replacement['id']} at {replacement['url']}, "
                             f"ready {fig.replaced_s:.1f} s after the cut")
        # The partition lasts past the per-request deadline of every request that could have
        # gone to the cut worker (routed until the stale limit at most): a request stuck on it
        # counts as hung, instead of being rescued by TCP retransmissions once the link is back.
        hold = max(0.0, t_cut + STALE_S + faults.REQ_TIMEOUT + 1 - time.monotonic())
        fig.notes.append(f"partition held {hold:.1f} s more (past the per-request deadline)")
        await asyncio.sleep(hold)

        # Heal: the cut worker must come back by itself, with its id, and get requests again.
        routed_before_heal = len(cp.routed())
        t_heal = time.monotonic()
        fleet.heal_host(victim.host)
        deadline = t_heal + 40
        back = None
        while time.monotonic() < deadline:
            ws = await cp.workers(me.id)
            mine = next((w for w in ws if w["url"] == victim.url and w["status"] == "idle"), None)
            if mine is not None:
                back = mine
                fig.readmitted_s = time.monotonic() - t_heal
                break
            await asyncio.sleep(0.1)
        check(fig, back is not None, f"the cut worker is ready again within 40 s of the heal")
        if back is not None:
            fig.same_id = back["id"] == victim_id
            check(fig, fig.same_id, f"the healed worker keeps its id {victim_id} (got {back['id']})")
            fig.notes.append(f"healed: worker {back['id']} ready again {fig.readmitted_s:.1f} s after "
                             "the heal")
            # Routed to again: a `routed` line for it after the heal, while the load runs.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if any(wid == victim_id for _, wid in cp.routed()[routed_before_heal:]):
                    break
                await asyncio.sleep(0.2)
            else:
                fig.failures.append(f"no request routed to the healed worker {victim_id} within 15 s")
        await asyncio.sleep(2)
        load.total = load.sent  # stop: each lane ends after its current request
        await runner
    finally:
        orch_task.cancel()
        with contextlib.suppress(BaseException):
            await orch_task
        if runner is not None and not runner.done():
            runner.cancel()
        await c.__aexit__(None, None, None)
    fig.notes += [f"orchestrator: {m}" for m in orch.log]

    # The figures.
    faults.tally(fig, load)
    fig.lost = fig.failed + fig.bad + fig.hung
    lat = [o.t1 - o.t0 for o in load.outcomes if o.kind == "completed"]
    fig.max_latency_s = max(lat) if lat else 0.0
    fig.retried = sum(1 for x in lat if x >= (WORKER_TIMEOUT or 600))
    fig.twice, fig.twice_unexplained, ex = count_twice(fleet, "pt", {victim.dir})
    fig.notes += ex
    # When the router stopped: its last `routed` line for the victim after the cut.
    after = [t for t, wid in cp.routed() if wid == victim_id and t >= wall_cut]
    before_heal = [t for t in after if t - wall_cut < (t_heal - t_cut)]
    fig.stop_routing_s = (max(before_heal) - wall_cut) if before_heal else 0.0
    fig.notes.append(f"{len(before_heal)} requests routed to the cut worker after the cut, the last "
                     f"{fig.stop_routing_s:.2f} s after it (stale limit {STALE_S} s)")
    fig.notes.append(f"{fig.retried} requests took longer than the client's worker_timeout "
                     f"({WORKER_TIMEOUT or 600:.0f} s: re-routed after the cut); longest "
                     f"{fig.max_latency_s:.1f} s")
    status, body = await fleet.api("GET", f"/api/v0/workergroups/{group}/join_tokens/")
    toks = body.get("results", []) if isinstance(body, dict) else []
    fig.joins = sum(int(t.get("joins", 0)) for t in toks)
    fig.notes.append(f"joins with the token: {fig.joins}; worker processes started: {len(fleet.workers)}")
    fig.notes.append(f"last scale answer: {orch.last}")

    check(fig, fig.sent > 0, "requests were sent")
    check(fig, fig.lost == 0, f"no request lost: failed {fig.failed}, bad {fig.bad} "
                              f"{fig.bad_examples}, hung {fig.hung}")
    check(fig, fig.twice_unexplained == 0,
          f"no double execution other than on the cut host (got {fig.twice_unexplained})")
    check(fig, fig.joins == len(fleet.workers),
          f"one join per worker process, none on re-admission ({fig.joins} joins, "
          f"{len(fleet.workers)} processes)")
    check(fig, fig.stop_routing_s <= STALE_S + 1.5,
          f"routing to the cut worker stops within the stale limit + 1.5 s (got {fig.stop_routing_s:.1f})")


async def sc_revoked_token(fleet: Fleet, fig: Figures) -> None:
    await fleet.start_control("--stale-after-s", str(STALE_S))
    c, me, group, token_id, token = await setup_group(fleet, "revoked", 1)
    try:
        status, body = await fleet.api("DELETE", f"/api/v0/join_tokens/{token_id}/")
        check(fig, status == 200 and body.get("success") is True, f"revoke: {status} {body}")
        w = fleet.start_worker("h1", token)
        t0 = time.monotonic()
        while w.worker.poll() is None and time.monotonic() - t0 < 20:
            await asyncio.sleep(0.1)
        rc = w.worker.poll()
        out = (w.dir / "worker.out").read_text(errors="replace")
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["(no output)"]
        fig.notes.append(f"worker with the revoked token: exit {rc} after {time.monotonic() - t0:.1f} s: "
                         f"{last[0][:300]}")
        check(fig, rc == 64, f"the worker exits with the config error code 64 (got {rc})")
        check(fig, "refused" in out and "revoked" in out.lower(),
              "its output says the control plane refused the token because it was revoked")
        check(fig, token not in out, "the token itself is not printed")
        ws = await fleet.cp.workers(me.id)
        check(fig, all(x["url"] != w.url for x in ws), f"it never appears in the registry: {ws}")
        # A fresh token still works: the refusal was about that token only.
        _, token2 = await fleet.join_token(group)
        w2 = fleet.start_worker("h1", token2)
        ws = await fleet.cp.wait_workers(me.id, peers.idle(1), "a worker with a fresh token", timeout=30)
        check(fig, any(x["url"] == w2.url for x in ws), f"a worker with a fresh token joins: {ws}")
    finally:
        await c.__aexit__(None, None, None)


SCENARIOS = [
    ("partition_one_host", sc_partition_one_host, {"hosts": 3}),
    ("revoked_token", sc_revoked_token, {"hosts": 1}),
]


# ---------------------------------------------------------------------------------------------
# Inside the cp namespace: one scenario, its figures as the last line


async def inner(name: str, net: Net, base: Path) -> None:
    fn = dict((n, f) for n, f, _ in SCENARIOS)[name]
    fig = Figures(name)
    fleet = Fleet(name, net, base)
    logging.getLogger("Serverless").setLevel(logging.CRITICAL)
    try:
        await asyncio.wait_for(fn(fleet, fig), SCENARIO_TIMEOUT - 30)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        prefix = "scenario timed out\n" if isinstance(e, asyncio.TimeoutError) else ""
        fig.failures.append("error: " + prefix + traceback.format_exc())
    finally:
        with contextlib.suppress(Exception):
            fig.left = await fleet.close()
        if fig.failures:
            fig.notes.append(fleet.logs())
    print(FIGS_MARK + json.dumps(asdict(fig)), flush=True)


# ---------------------------------------------------------------------------------------------
# Outside: namespaces, the child process, the summary


def run_one(name: str, opts: dict, keep: bool) -> Figures:
    t0 = time.monotonic()
    fig = Figures(name)
    base = Path(tempfile.mkdtemp(prefix=f"ferry-fleet-{name}-"))
    net = None
    try:
        net = Net.parse(netns("up", "--hosts", str(opts["hosts"]), "--owner", str(os.getpid())))
        env = {**os.environ, "FERRY_FLEET_ROOT_NETNS": os.readlink("/proc/self/ns/net")}
        p = subprocess.Popen(
            ["ip", "netns", "exec", net.hosts["cp"]["ns"], sys.executable, "-u", __file__,
             "--inner", name, json.dumps({"prefix": net.prefix, "hosts": net.hosts}), str(base)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_die_with_parent, text=True,
        )  # fmt: skip
        timer = threading.Timer(SCENARIO_TIMEOUT, p.kill)
        timer.start()
        other = []
        got = None
        try:
            for line in p.stdout:
                if line.startswith(FIGS_MARK):
                    got = json.loads(line[len(FIGS_MARK):])
                else:
                    other.append(line.rstrip("\n"))
            p.wait()
        finally:
            timer.cancel()
        if got is not None:
            fig = Figures(**got)
        else:
            fig.failures.append(f"the scenario process ended without figures (exit {p.returncode}):\n"
                                + "\n".join(other[-40:]))
        if other and got is not None:
            fig.notes.append("scenario output:\n" + "\n".join(other[-20:]))
        # Anything still running in the namespaces outlived the scenario's clean stop.
        for h in net.hosts.values():
            pids = subprocess.run(["ip", "netns", "pids", h["ns"]], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    fig.failures.append(f"left running in {h['ns']}: {pid} {cmd[:200]}")
                    fig.left += 1
    except Exception:  # noqa: BLE001
        fig.failures.append("error: " + traceback.format_exc())
    finally:
        if net is not None:
            with contextlib.suppress(Exception):
                netns("down", net.prefix)
    fig.seconds = time.monotonic() - t0
    fig.ok = not fig.failures
    print(f"{'PASS' if fig.ok else 'FAIL'} {name} ({fig.seconds:.1f} s): sent {fig.sent}, completed "
          f"{fig.completed}, lost {fig.lost}, retried {fig.retried}, twice {fig.twice} "
          f"({fig.twice_unexplained} unexplained), left {fig.left}", flush=True)
    for n in fig.notes:
        print(f"    {n}")
    for m, k in sorted(fig.errors.items(), key=lambda kv: -kv[1]):
        print(f"    error x{k}: {m}")
    for f in fig.failures:
        print(f"    ASSERTION FAILED: {f}")
    if fig.ok and not keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"    (scenario dir kept: {base})", flush=True)
    return fig


def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    pats = [argv[i + 1] for i, a in enumerate(argv) if a == "-k" and i + 1 < len(argv)]
    chosen = [s for s in SCENARIOS if not pats or any(p in s[0] for p in pats)]
    lines, problems = peers.peer_versions()
    print("Fleet scenarios (hosts as network namespaces) through the official client:")
    for line in lines:
        print(f"  {line}")
    print(f"  ferry: {FERRY}")
    wt = f"{WORKER_TIMEOUT:.0f} s" if WORKER_TIMEOUT else "the client's default (600 s)"
    print(f"  stale limit {STALE_S} s, client worker_timeout {wt}, "
          f"per-request deadline {faults.REQ_TIMEOUT:.0f} s")
    if os.geteuid() != 0:
        problems.append("needs root (network namespaces)")
    if shutil.which("ip") is None:
        problems.append("needs iproute2 (ip)")
    if not problems:
        out = netns("down", "--stale", check_rc=False).strip()
        if out:
            print(f"  {out}")
    if problems:
        for p in problems:
            print(f"ERROR: {p}")
        print(f"0 passed, {len(chosen) or 1} failed")
        return 1
    if not chosen:
        print(f"ERROR: no scenario matches {pats}")
        print("0 passed, 1 failed")
        return 1
    t0 = time.monotonic()
    figs = [run_one(name, opts, keep) for name, _, opts in chosen]
    total = time.monotonic() - t0
    print(f"\n{HEADER}")
    for f in figs:
        print(f.row())
    out = os.environ.get("FERRY_FLEET_JSON") or os.path.join(
        tempfile.gettempdir(), "ferry-fleet-results.json"
    )
    with contextlib.suppress(OSError), open(out, "w") as fh:
        json.dump({"total_seconds": round(total, 1), "stale_after_s": STALE_S,
                   "worker_timeout_s": WORKER_TIMEOUT,
                   "scenarios": [asdict(f) for f in figs]}, fh, indent=2)  # fmt: skip
    print(f"figures as JSON: {out}; total {total:.1f} s")
    passed = sum(f.ok for f in figs)
    print(f"{passed} passed, {len(figs) - passed} failed")
    return 0 if passed == len(figs) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner"]:
        spec = json.loads(sys.argv[3])
        asyncio.run(inner(sys.argv[2], Net(spec["prefix"], spec["hosts"]), Path(sys.argv[4])))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
