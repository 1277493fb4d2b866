"""Control-plane replicas under faults: three `ferry control` replicas on one PostgreSQL
database, nginx in front of them, a steady load through Vast's official Python client.

Run with the peers venv's python (scripts/ha-tests.sh does this):

    $FERRY_PY tests/ha/test_ha.py [-k SUBSTRING]... [--keep]

Each scenario starts its own PostgreSQL cluster (scripts/pg-cluster.sh), three replicas
(`ferry control --store ... --replicas A,B,C --public-url X`) on free 127.0.0.1 ports sharing
one fresh `--state-dir` (the local provider's instance dirs, so a successor adopts the
instances of a dead owner), and an nginx (scripts/nginx.sh) that balances over them. It creates
an endpoint with three local workers (the sim, as in tests/fault) and an endpoint with an
external workergroup and a join token through nginx, drives a bounded load through the
official `vastai` client pointed at nginx, injects its fault, then checks what survived.

Scenarios:
- kill_owner: SIGKILL the replica that owns the endpoints mid-load; the figure `failover` is
  the time from the kill to the first `/route/` answered with a ready grant through nginx (a
  probe polls `/route/` with the endpoint's key; the grant is then used on its worker, which must
  accept it); then the killed replica is started again and must come back as a follower.
- rolling_restart: SIGTERM each replica in turn (the owner hands over), start it again, wait for
  one owner that every replica agrees on, next; all under load.
- db_down_10s: stop the PostgreSQL server mid-load (`pg-cluster.sh stop`), 10 s, resume it.

Per scenario it counts what tests/fault counts (sent, completed, failed with a clear error, bad,
hung, twice: requests the models saw more than once, see tests/fault/test_faults.py) and:
- double: instances launched twice: a worker id with two live `ferry worker` processes at once
  (sampled every 0.2 s) or whose instance dir was created again (its inode changed);
- relaunch: a worker id whose `ferry worker` was started more than once (two pids over time, or
  two start lines in its worker.out); no instance dies in these scenarios, so any is a bug;
- lost: records lost: the endpoints and workergroups (GET /api/v0/endptjobs/ and
  /api/v0/workergroups/ through nginx) and workers (POST /get_endpoint_workers/) before the
  fault and after it must match (same ids, same fields; a worker may change status), and the
  `ferry_records` rows of kind endpoint, workergroup and join_token must all still be there.

and asserts hung == 0, bad == 0, unexplained twice == 0, double == 0, relaunch == 0, lost == 0,
completed >= a stated fraction per scenario. At the end nobody stops the instances (a replica
leaving hands them over): the suite SIGTERMs the replicas, kills the processes of the state dir
itself, stops nginx and removes the cluster. The last lines are the table and
`N passed, M failed`; the figures are also written as JSON to $FERRY_HA_JSON (default
$TMPDIR/ferry-ha-results.json).

Environment: FERRY_BIN, FERRY_FAULT_SCALE, FERRY_FAULT_REQ_TIMEOUT_S (as tests/fault),
FERRY_HA_LEASE_TTL_S (the replicas' --lease-ttl-s, default 3), FERRY_HA_JSON.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fault"))
sys.path.insert(0, str(ROOT / "tests" / "peers"))

import test_faults as faults  # noqa: E402  (the load, its figures and checks)
from test_faults import (  # noqa: E402
    REQ_TIMEOUT,
    SIM_CMD,
    Check,
    FaultControl,
    Figures,
    Load,
    all_procs_of,
    count_twice,
    kill_pid,
    print_figures,
    setup,
    tally,
)
from test_official import KEY, free_port, http, procs_under, tail  # noqa: E402

LEASE_TTL_S = os.environ.get("FERRY_HA_LEASE_TTL_S", "3")
SCENARIO_TIMEOUT = 220.0
PG = ROOT / "scripts" / "pg-cluster.sh"
NGINX = ROOT / "scripts" / "nginx.sh"
STATE_PREFIX = "ferry-fault-ha-"
# The record kinds that must never go missing from the database.
KEPT_KINDS = ("endpoint", "workergroup", "join_token")


def script(path: Path, *args: str, timeout: float = 90) -> str:
    """Runs one of the repo's shell helpers; its stdout, or an error with its stderr."""
    p = subprocess.run(["bash", str(path), *args], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{path.name} {' '.join(args)} failed ({p.returncode}): "
                             f"{p.stderr.strip()[-1500:]}")  # fmt: skip
    return p.stdout


def assignments(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# ---------------------------------------------------------------------------------------------
# The cluster: PostgreSQL, three replicas on one state dir, nginx in front


class Replica(FaultControl):
    """One `ferry control` replica: its own port and log, the cluster's state dir."""

    def __init__(self, i: int, state_dir: Path, urls: list[str], store: str):
        super().__init__(
            f"r{i}", "--store", store, "--replicas", ",".join(urls), "--public-url", urls[i],
            "--lease-ttl-s", LEASE_TTL_S, "--stale-after-s", "5",
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = state_dir
        self.port = int(urls[i].rsplit(":", 1)[1])
        self.url = urls[i]
        self.log_name = f"control-r{i}.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def health(self) -> dict | None:
        if not self.alive():
            return None
        try:
            status, body = await http("GET", f"{self.url}/health", timeout=3)
        except Exception:  # noqa: BLE001
            return None
        return body if status == 200 and isinstance(body, dict) else None


class Cluster:
    """A scenario's world. `front` is the state dir seen through nginx: the official client,
    `setup`, `count_twice` and the worker listings of tests/fault use it like a control plane."""

    def __init__(self, name: str):
        self.name = name
        self.pg: dict[str, str] = {}
        self.nginx: dict[str, str] = {}
        self.front = FaultControl(f"ha-{name}")
        self.dir = self.front.dir
        (self.dir / "owner").write_text(str(os.getpid()))
        self.replicas: list[Replica] = []
        self.pg_bin = ""
        self.ext_group = 0
        self.acked: list[int] = []  # join tokens created since the first snapshot

    async def start(self) -> None:
        self.pg_bin = script(PG, "find").strip()
        self.pg = assignments(await asyncio.to_thread(script, PG, "start"))
        ports: list[int] = []
        while len(ports) < 3:
            p = free_port()
            if p not in ports:
                ports.append(p)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        self.replicas = [Replica(i, self.dir, urls, self.pg["FERRY_STORE"]) for i in range(3)]
        for r in self.replicas:
            await r.start()
        self.nginx = assignments(await asyncio.to_thread(script, NGINX, "start", *urls))
        self.front.url = self.nginx["NGINX_URL"]
        self.front.port = int(self.nginx["NGINX_PORT"])
        await self.stable_owner()

    async def roles(self) -> dict[str, dict | None]:
        hs = await asyncio.gather(*(r.health() for r in self.replicas))
        return {r.url: h for r, h in zip(self.replicas, hs)}

    async def stable_owner(self, timeout: float = 45, avoid: Replica | None = None) -> Replica:
        """The owner, once every live replica names the same one and it says it owns."""
        deadline = time.monotonic() + timeout
        seen = {}
        while time.monotonic() < deadline:
            seen = await self.roles()
            live = {u: h for u, h in seen.items() if h is not None}
            owners = {h.get("owner") for h in live.values()}
            if len(owners) == 1 and None not in owners:
                (o,) = owners
                h = live.get(o)
                r = next((r for r in self.replicas if r.url == o), None)
                if h and h.get("role") == "owner" and r is not None and r is not avoid:
                    return r
            await asyncio.sleep(0.1)
        raise AssertionError(f"no stable owner within {timeout:.0f} s: {seen}")

    async def api(self, method: str, path: str, body=None):
        return await http(method, f"{self.front.url}{path}", body,
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip

    def sql(self, query: str) -> str:
        p = subprocess.run(
            [f"{self.pg_bin}/psql", "-h", "127.0.0.1", "-p", self.pg["PG_PORT"], "-U", "postgres",
             "-d", "ferry", "-AtX", "-c", query],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if p.returncode != 0:
            raise AssertionError(f"psql failed: {p.stderr.strip()}")
        return p.stdout

    async def close(self, fig: Figures) -> None:
        """SIGTERM the followers, then the owner; kill what is left of the state dir (the
        instances, which a leaving replica hands over rather than stops); nginx; PostgreSQL."""
        order = sorted(self.replicas, key=lambda r: 0 if r.alive() else 1)
        with contextlib.suppress(Exception):
            owner = await self.stable_owner(timeout=3)
            order = [r for r in order if r is not owner] + [owner]
        for r in order:
            if r.alive():
                try:
                    await r.sigterm()
                except AssertionError as e:
                    fig.failures.append(f"replica {r.url}: {e}")
        for _ in range(3):
            found = procs_under(self.dir)
            for r in self.replicas:
                found.update(all_procs_of(r))
            for pid in found:
                kill_pid(pid)
            if not found:
                break
            await asyncio.sleep(0.3)
        if self.nginx.get("NGINX_DIR"):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(script, NGINX, "stop", self.nginx["NGINX_DIR"])
        if self.pg.get("PG_CLUSTER_DIR"):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(script, PG, "remove", self.pg["PG_CLUSTER_DIR"])

    def logs(self) -> str:
        parts = [f"--- {self.dir}/{r.log_name} (tail)\n{tail(self.dir / r.log_name, 30)}"
                 for r in self.replicas]  # fmt: skip
        for d in self.front.instances():
            parts.append(f"--- {d / 'worker.out'} (tail)\n{tail(d / 'worker.out', 10)}")
        return "\n".join(parts)


def sweep_stale_runs() -> None:
    """State dirs of earlier runs whose suite died: their instances still run; kill them."""
    for d in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        try:
            owner = int((d / "owner").read_text())
            os.kill(owner, 0)
            continue
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        for pid in procs_under(d):
            kill_pid(pid)
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# What the scenarios count beyond tests/fault


@dataclass
class HaFigures(Figures):
    double: int = 0
    relaunched: int = 0
    lost: int = 0
    failover_s: float | None = None
    records: dict = field(default_factory=dict)

    def row(self) -> str:
        pct = 100.0 * self.completed / self.sent if self.sent else 0.0
        fo = f"{self.failover_s:.2f}" if self.failover_s is not None else "-"
        return (
            f"{self.name:<16} {self.sent:>5} {self.completed:>5} ({pct:5.1f}%) {self.failed:>6} "
            f"{self.bad:>4} {self.hung:>5} {self.twice:>5} ({self.twice_unexplained}) "
            f"{self.double:>6} {self.relaunched:>8} {self.lost:>4} {fo:>9} {self.seconds:>6.1f}  "
            f"{'PASS' if self.ok else 'FAIL'}"
        )


HEADER = (
    f"{'scenario':<16} {'sent':>5} {'completed':>14} {'failed':>6} {'bad':>4} {'hung':>5} "
    f"{'twice (unexpl.)':>15} {'double':>6} {'relaunch':>8} {'lost':>4} {'failover':>9} "
    f"{'secs':>6}  verdict"
)


class LaunchWatch:
    """Samples the state dir every 0.2 s: which `ferry worker` processes run for which worker
    id (by their cwd, the instance dir), and each instance dir's inode."""

    def __init__(self, state_dir: Path):
        self.root = state_dir / "instances"
        self.pids: dict[int, set[int]] = {}  # worker id -> every worker pid seen
        self.double: dict[int, list[int]] = {}  # worker id -> two pids seen alive together
        self.inode: dict[int, int] = {}
        self.recreated: set[int] = set()
        self.samples = 0
        self._task: asyncio.Task | None = None

    def _sample(self) -> None:
        live: dict[int, set[int]] = {}
        root = str(self.root) + "/"
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                if not cwd.startswith(root):
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            except (OSError, IndexError):
                continue
            if len(argv) > 1 and os.path.basename(argv[0]).startswith(b"ferry") \
                    and argv[1] == b"worker":
                with contextlib.suppress(ValueError):
                    live.setdefault(int(cwd[len(root):].split("/")[0]), set()).add(pid)
        for wid, ps in live.items():
            self.pids.setdefault(wid, set()).update(ps)
            if len(ps) > 1:
                self.double.setdefault(wid, sorted(ps))
        with contextlib.suppress(OSError):
            for d in os.scandir(self.root):
                with contextlib.suppress(OSError, ValueError):
                    wid, ino = int(d.name), d.inode()
                    if self.inode.setdefault(wid, ino) != ino:
                        self.recreated.add(wid)
                        self.inode[wid] = ino
        self.samples += 1

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self._sample)
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._sample()

    def starts_logged(self) -> dict[int, int]:
        """worker id -> `ferry worker serving` lines in its worker.out (one per start)."""
        out = {}
        with contextlib.suppress(OSError):
            for d in os.scandir(self.root):
                with contextlib.suppress(OSError, ValueError), \
                        open(Path(d.path) / "worker.out", errors="replace") as f:
                    out[int(d.name)] = sum(1 for line in f if "ferry worker serving" in line)
        return out

    def figures(self, fig: HaFigures) -> None:
        starts = self.starts_logged()
        fig.double = len(set(self.double) | self.recreated)
        again = {w for w, ps in self.pids.items() if len(ps) > 1}
        again |= {w for w, n in starts.items() if n > 1}
        fig.relaunched = len(again)
        fig.notes.append(f"launch watch: {self.samples} samples, {len(self.pids)} worker ids, "
                         f"{sum(len(p) for p in self.pids.values())} worker pids")  # fmt: skip
        for w, ps in self.double.items():
            fig.notes.append(f"worker {w}: two live `ferry worker` processes at once: {ps}")
        for w in sorted(self.recreated):
            fig.notes.append(f"worker {w}: instance dir created again")
        for w in sorted(again):
            fig.notes.append(f"worker {w}: started again (pids {sorted(self.pids.get(w, ()))}, "
                             f"{starts.get(w, 0)} starts logged)")


async def snapshot(cl: Cluster, endpoint_ids: list[int]) -> dict:
    """The records a client can see through nginx (endpoints, workergroups, the join tokens of
    the external group, workers), and the database's rows per kind."""
    snap: dict = {}
    status, body = await cl.api("GET", f"/api/v0/workergroups/{cl.ext_group}/join_tokens/")
    assert status == 200 and isinstance(body, dict), (status, body)
    snap["tokens"] = {t["id"]: t for t in body["results"]}
    for what, path in (("endpoints", "/api/v0/endptjobs/"), ("groups", "/api/v0/workergroups/")):
        status, body = await cl.api("GET", path)
        assert status == 200 and isinstance(body, dict), (path, status, body)
        snap[what] = {r["id"]: r for r in body["results"]}
    snap["workers"] = {}
    for eid in endpoint_ids:
        status, body = await http("POST", f"{cl.front.url}/get_endpoint_workers/",
                                  {"id": eid, "api_key": KEY})  # fmt: skip
        assert status == 200 and isinstance(body, list), (status, body)
        snap["workers"][eid] = {w["id"]: w for w in body}
    rows = await asyncio.to_thread(cl.sql, "SELECT kind, count(*) FROM ferry_records GROUP BY kind")
    snap["rows"] = {k: int(n) for k, n in (line.split("|") for line in rows.split())}
    return snap


def upstream_tally(cl: Cluster) -> str:
    """Requests per upstream and status in nginx's access log (its `upstream` format)."""
    n: collections.Counter = collections.Counter()
    with contextlib.suppress(OSError), open(Path(cl.nginx["NGINX_DIR"]) / "access.log") as f:
        for line in f:
            m = re.search(r"upstream=(\S.*?) upstream_status=(.*?) secs=", line)
            if m:
                n[f"{m.group(1)}: {m.group(2)}"] += 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(n.items())) or "(no access log)"


def same(a, b) -> bool:
    """Equal, floats within a relative 1e-12 (a time stamp read back from the database may
    differ from the one the creating replica held in its last bit)."""
    nums = (int, float)
    if isinstance(a, nums) and isinstance(b, nums) and float in (type(a), type(b)):
        return math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def compare(before: dict, after: dict, acked: list[int], fig: HaFigures) -> None:
    """Records lost between the snapshots; `acked`: join tokens created (answered 200) in
    between, which must be there too."""
    lost: list[str] = []
    for what in ("endpoints", "groups"):
        for rid, rec in before[what].items():
            now = after[what].get(rid)
            if now is None:
                lost.append(f"{what[:-1]} {rid} is gone")
                continue
            diff = {k: (rec.get(k), now.get(k)) for k in rec.keys() | now.keys()
                    if not same(rec.get(k), now.get(k))}  # fmt: skip
            if diff:
                lost.append(f"{what[:-1]} {rid} changed: {diff}")
            elif now != rec:
                fig.notes.append(f"{what[:-1]} {rid}: a float field differs in its last bits: "
                                 + str({k: (rec.get(k), now.get(k)) for k in rec
                                        if rec.get(k) != now.get(k)}))  # fmt: skip
    for tid in before["tokens"]:
        if tid not in after["tokens"]:
            lost.append(f"join token {tid} is gone")
    for tid in acked:
        if tid not in after["tokens"]:
            lost.append(f"join token {tid}, acknowledged during the scenario, is gone")
    for eid, ws in before["workers"].items():
        for wid, w in ws.items():
            now = after["workers"].get(eid, {}).get(wid)
            if now is None:
                lost.append(f"worker {wid} of endpoint {eid} is gone")
            elif now.get("url") != w.get("url"):
                lost.append(f"worker {wid} changed its url: {w.get('url')} -> {now.get('url')}")
    for kind in KEPT_KINDS:
        b, a = before["rows"].get(kind, 0), after["rows"].get(kind, 0)
        want = b + (len(acked) if kind == "join_token" else 0)
        if a < want:
            lost.append(f"{want - a} {kind} rows missing from ferry_records (before {b}, "
                        f"acknowledged since {want - b}, after {a})")
    fig.lost = len(lost)
    fig.records = {"before": before["rows"], "after": after["rows"]}
    fig.notes.append(f"ferry_records rows before {before['rows']}, after {after['rows']}; "
                     f"{len(before['endpoints'])} endpoints, {len(before['groups'])} "
                     f"workergroups, {len(before['tokens'])} + {len(acked)} join tokens, "
                     f"{sum(len(w) for w in before['workers'].values())} workers compared")
    fig.notes += [f"LOST: {x}" for x in lost[:10]]


async def route_probe(cl: Cluster, ep, since: float,
                      timeout: float = 60) -> tuple[float, dict, int]:
    """Polls /route/ through nginx until a ready grant (a body with `url`) comes back for a
    call started after `since`; (seconds from `since` to that answer, the grant, calls)."""
    body = {"endpoint": ep.name, "api_key": ep.api_key, "cost": 1, "request_idx": 0,
            "replay_timeout": 60.0}  # fmt: skip
    headers = {"Authorization": f"Bearer {ep.api_key}"}
    calls, last = 0, None
    while time.monotonic() - since < timeout:
        calls += 1
        try:
            last = await http("POST", f"{cl.front.url}/route/", body, timeout=20, headers=headers)
        except Exception as e:  # noqa: BLE001
            last = repr(e)
        t = time.monotonic()
        if isinstance(last, tuple) and last[0] == 200 and isinstance(last[1], dict) \
                and last[1].get("url"):
            return t - since, last[1], calls
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ready /route/ grant within {timeout:.0f} s of the kill: {last}")


async def use_grant(grant: dict) -> tuple[bool, str]:
    """Sends one small request to the granted worker with the grant, as the client does."""
    payload = {"model": "m", "prompt": "ha-probe hello", "max_tokens": 2}
    try:
        status, body = await http("POST", f"{grant['url']}/v1/completions",
                                  {"auth_data": grant, "session_id": None, "payload": payload},
                                  timeout=20)  # fmt: skip
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    ok = status == 200 and isinstance(body, dict) and \
        body.get("choices", [{}])[0].get("text", "").split() == ["tok0", "tok1"]
    return ok, f"HTTP {status}: {str(body)[:200]}"


def report_addrs(watch: LaunchWatch) -> dict[int, str]:
    """worker pid -> REPORT_ADDR in its environment, for the live `ferry worker` processes."""
    out = {}
    for ps in watch.pids.values():
        for pid in ps:
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                out[pid] = env.get(b"REPORT_ADDR", b"").decode(errors="replace")
    return out


async def ha_setup(cl: Cluster, tag: str):
    """The loaded endpoint (3 local sim workers, tests/fault's `setup`), and an endpoint with
    an external workergroup and a join token (records that must survive too)."""
    c, me, ep, ws = await setup(cl.front, tag, 3, SIM_CMD % 10)
    ext = await faults.new_endpoint(c, f"{tag}-ext", cold_workers=0, max_workers=2)
    group = await ext.add_workergroup(launch_args=json.dumps({"provider": "external"}))
    cl.ext_group = group
    await write_token(cl, tag)
    return c, me, ep, [me.id, ext.id]


async def write_token(cl: Cluster, label: str) -> int:
    """Creates a join token on the external group (a write the API acknowledges); its id."""
    status, body = await cl.api("POST", f"/api/v0/workergroups/{cl.ext_group}/join_tokens/",
                                {"label": label})  # fmt: skip
    assert status == 200 and isinstance(body, dict) and body.get("success"), (status, body)
    cl.acked.append(int(body["id"]))
    return int(body["id"])


async def finish(cl: Cluster, fig: HaFigures, c, load: Load, watch: LaunchWatch, before: dict,
                 ids: list[int], min_completed: float) -> None:
    await c.__aexit__(None, None, None)
    owner = await cl.stable_owner()
    fig.notes.append(f"owner at the end: {owner.url}")
    await watch.stop()
    watch.figures(fig)
    compare(before, await snapshot(cl, ids), cl.acked, fig)
    fig.notes.append("through nginx (upstream status: requests): " + upstream_tally(cl))
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cl.front, load, set())
    fig.notes += ex
    chk = Check(fig)
    want = ",".join(r.url for r in cl.replicas)
    addrs = report_addrs(watch)
    fig.notes.append(f"REPORT_ADDR of the live workers: {sorted(set(addrs.values()))}")
    chk.that(bool(addrs) and all(a == want for a in addrs.values()),
             f"every worker reports to every replica (REPORT_ADDR {want}; got {addrs})")
    chk.that(fig.double == 0, f"no instance launched twice (got {fig.double})")
    chk.that(fig.relaunched == 0, f"no instance started again (got {fig.relaunched})")
    chk.that(fig.lost == 0, f"no record lost (got {fig.lost})")
    chk.bounds(min_completed=min_completed, max_explained_twice=0)


async def begin(cl: Cluster, tag: str):
    c, me, ep, ids = await ha_setup(cl, tag)
    watch = LaunchWatch(cl.dir)
    watch.start()
    before = await snapshot(cl, ids)
    cl.acked.clear()
    return c, me, ep, ids, watch, before


# ---------------------------------------------------------------------------------------------
# Scenarios


async def sc_kill_owner(cl: Cluster, fig: HaFigures) -> None:
    """SIGKILL the owner mid-load. Expected: requests whose /route/ was inside the dead owner
    fail with the client's clear "Failed to route endpoint" (at most one per load lane); a
    follower takes the lease after --lease-ttl-s, adopts the instances and serves /route/
    (followers hold what arrives meanwhile); the killed replica comes back as a follower."""
    c, me, ep, ids, watch, before = await begin(cl, "ko")
    load = Load(ep, "ko", 600, 8, gap=0.1)
    runner = asyncio.create_task(load.run())
    try:
        await load.wait_sent(0.3)
        owner = await cl.stable_owner()
        epoch = (await owner.health() or {}).get("epoch")
        # Acknowledged the moment before the owner dies: it must survive.
        await write_token(cl, "before-kill")
        owner.sigkill()
        t_kill = time.monotonic()
        sent_at_kill = load.sent
        fig.failover_s, grant, calls = await route_probe(cl, ep, t_kill)
        ok, said = await use_grant(grant)
        Check(fig).that(ok, f"the successor's first grant is accepted by its worker ({said})")
        succ = await cl.stable_owner(avoid=owner)
        h = await succ.health() or {}
        fig.notes.append(f"SIGKILL owner {owner.url} (epoch {epoch}) at {sent_at_kill} sent; "
                         f"first ready /route/ through nginx {fig.failover_s:.2f} s later "
                         f"({calls} probe calls); new owner {succ.url} epoch {h.get('epoch')}")
        Check(fig).that(isinstance(epoch, int) and isinstance(h.get("epoch"), int)
                        and h["epoch"] > epoch,
                        f"the successor's epoch is higher ({epoch} -> {h.get('epoch')})")
        idx = grant.get("request_idx")
        Check(fig).that(isinstance(idx, int) and idx >> 32 == h.get("epoch"),
                        f"the successor's request indexes start at epoch << 32 (request_idx "
                        f"{idx}, epoch {h.get('epoch')})")
        fig.notes.append(f"the successor counts {h.get('workers')} workers")
        await owner.start()
        back = await cl.stable_owner()
        role = (await owner.health() or {}).get("role")
        fig.notes.append(f"{owner.url} restarted: role {role}, owner {back.url}")
        Check(fig).that(role == "follower" and back is succ,
                        f"the restarted replica is a follower of {succ.url} (role {role}, "
                        f"owner {back.url})")
        await runner
    finally:
        runner.cancel()
    await finish(cl, fig, c, load, watch, before, ids, min_completed=0.95)


async def sc_rolling_restart(cl: Cluster, fig: HaFigures) -> None:
    """SIGTERM each replica in turn (an owner hands over: it releases the lease and leaves its
    instances running), start it again, wait until every replica names the same owner; the
    restarts at 20%, 45% and 70% of the load. >= 97% of the requests complete."""
    c, me, ep, ids, watch, before = await begin(cl, "rr")
    load = Load(ep, "rr", 700, 8, gap=0.1)
    runner = asyncio.create_task(load.run())
    try:
        for r, frac in zip(cl.replicas, (0.2, 0.45, 0.7)):
            await load.wait_sent(frac)
            role = (await r.health() or {}).get("role")
            await write_token(cl, f"before-sigterm-{r.port}")
            t0 = time.monotonic()
            down = await r.sigterm()
            # Served by the other two while it is down: one of them owns.
            interim = await cl.stable_owner(avoid=r)
            t_owner = time.monotonic() - t0
            await r.start()
            owner = await cl.stable_owner()
            fig.notes.append(f"SIGTERM {r.url} ({role}) at {load.sent} sent: exited in "
                             f"{down:.2f} s; {interim.url} owner {t_owner:.2f} s after the "
                             f"signal; restarted, and all agree on {owner.url} "
                             f"{time.monotonic() - t0:.1f} s after the signal")
        spans = load.sent < load.total and not runner.done()
        fig.notes.append(f"all restarted at {load.sent}/{load.total} sent")
        Check(fig).that(spans, f"the load spans every restart ({load.sent}/{load.total} sent "
                               "when the last replica was back)")
        await runner
    finally:
        runner.cancel()
    await finish(cl, fig, c, load, watch, before, ids, min_completed=0.97)


async def sc_db_down_10s(cl: Cluster, fig: HaFigures) -> None:
    """Stop the PostgreSQL server for 10 s mid-load, then resume it. The owner routes from
    memory (the store writes behind and retries), so >= 95% of the requests complete; none
    hangs or runs twice, no instance is launched twice, no record is lost, and the owner is
    still the one owner after the resume."""
    c, me, ep, ids, watch, before = await begin(cl, "dd")
    load = Load(ep, "dd", 900, 8, gap=0.15)
    runner = asyncio.create_task(load.run())
    try:
        await load.wait_sent(0.2)
        sent0 = load.sent
        await asyncio.to_thread(script, PG, "stop", cl.pg["PG_CLUSTER_DIR"])
        t0 = time.monotonic()
        await asyncio.sleep(3)
        # A write while the database is down: acknowledged (then it must survive) or refused
        # with a clear error, within its deadline.
        t_w = time.monotonic()
        try:
            tid = await write_token(cl, "db-down")
            wrote = f"acknowledged (join token {tid})"
        except AssertionError as e:
            wrote = f"refused: {str(e)[:200]}"
            st = e.args[0][0] if e.args and isinstance(e.args[0], tuple) else None
            Check(fig).that(isinstance(st, int) and st >= 400,
                            f"a write refused while the database is down has an error status "
                            f"({wrote})")
        fig.notes.append(f"a join token created 3 s into the outage: {wrote} in "
                         f"{time.monotonic() - t_w:.1f} s")
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - t0)))
        roles = {u: (h or {}).get("role") for u, h in (await cl.roles()).items()}
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - t0)))
        during = [o for o in load.outcomes if o.t0 >= t0]
        await asyncio.to_thread(script, PG, "resume", cl.pg["PG_CLUSTER_DIR"])
        t1 = time.monotonic()
        owner = await cl.stable_owner()
        fig.notes.append(f"database stopped at {sent0} sent, for {t1 - t0:.1f} s; roles 5 s "
                         f"in: {roles}; {load.sent - sent0} requests sent meanwhile, of those "
                         f"finished by then {sum(o.kind == 'completed' for o in during)} "
                         f"completed, {sum(o.kind == 'failed' for o in during)} failed; owner "
                         f"{owner.url} {time.monotonic() - t1:.1f} s after the resume")
        Check(fig).that(load.sent < load.total and not runner.done(),
                        f"the load spans the outage ({load.sent}/{load.total} sent at resume)")
        await runner
    finally:
        runner.cancel()
    await finish(cl, fig, c, load, watch, before, ids, min_completed=0.95)


SCENARIOS = [
    ("kill_owner", sc_kill_owner, {}),
    ("rolling_restart", sc_rolling_restart, {}),
    ("db_down_10s", sc_db_down_10s, {}),
]

# ---------------------------------------------------------------------------------------------
# Runner


async def run_one(name, fn, opts, keep: bool) -> HaFigures:
    fig = HaFigures(name)
    cl = Cluster(name)

    def summary() -> str:
        fo = f"{fig.failover_s:.2f} s" if fig.failover_s is not None else "-"
        return (f"double launches {fig.double}, relaunched {fig.relaunched}, "
                f"records lost {fig.lost}, failover {fo}")  # fmt: skip

    await faults.run_scenario(fig, cl.start, lambda: fn(cl, fig), lambda: cl.close(fig), summary,
                              keep, cl.dir, cl.logs)  # fmt: skip
    return fig


async def main(argv: list[str]) -> int:
    sweep_stale_runs()
    return await faults.run_suite(
        argv, title="Control-plane replicas under faults, through nginx and the official client:",
        scenarios=SCENARIOS, run=run_one, header=HEADER, json_env="FERRY_HA_JSON",
        json_name="ferry-ha-results.json",
        extra_lines=(f"3 replicas, --lease-ttl-s {LEASE_TTL_S}, PostgreSQL "
                     f"({PG.relative_to(ROOT)}), nginx ({NGINX.relative_to(ROOT)})",),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
