"""Fault injection under load, through Vast's official Python client, against `ferry control`
with the local provider (`ferry worker` + `ferry sim-model` processes on this host).

Run with the peers venv's python (scripts/fault-tests.sh does this):

    $FERRY_PY tests/fault/test_faults.py [-k SUBSTRING]... [--keep]

Each scenario starts its own `ferry control` on a free 127.0.0.1 port with a fresh temporary
`--state-dir`, drives a bounded load through the official `vastai` client (every request with
a unique prompt and a per-request deadline) while it injects its faults, then stops the control
plane cleanly and sweeps the state dir for processes that outlived it.

Per scenario it counts:

- sent: requests started;
- completed: an HTTP 200 whose body is exactly the sim's deterministic output
  (`tok0 tok1 ...`, `finish_reason` `length`; for streams every chunk);
- failed: ended with a clear error, i.e. an exception with a message or a non-2xx answer with
  a status (the distinct messages are listed, numbers normalized);
- bad: neither, i.e. a 200 with a wrong or silently truncated body, or an error with no message;
- hung: no answer within the per-request deadline (FERRY_FAULT_REQ_TIMEOUT_S, default 30 s);
- twice: requests the model saw more than once: every sim writes each model request it gets
  to `<instance>/requests.log` (`ferry sim-model --request-log`), and the unique prompts are
  counted over all instances. A re-execution is "explained" when every earlier copy went to
  an instance this scenario injected a fault into (the official client re-routes a request
  whose worker died; for a non-idempotent request that legitimately runs it again) and
  "unexplained" otherwise;
- left: processes of the state dir still alive after the final clean stop (orphans).

and asserts per-scenario bounds on them: hung == 0, bad == 0, unexplained twice == 0, explained
twice <= the load's concurrency per fault, completed >= a stated fraction, left == 0.

The last lines are a table of the figures (one line per scenario) and `N passed, M failed`;
the figures are also written as JSON to $FERRY_FAULT_JSON (default
$TMPDIR/ferry-fault-results.json). Failing scenarios keep their state dirs (logs, instance
dirs, request logs); --keep keeps them all.

Environment: FERRY_BIN (default <repo>/target/debug/ferry), FERRY_FAULT_SCALE (multiplies
request counts, default 1), FERRY_FAULT_REQ_TIMEOUT_S, FERRY_FAULT_JSON.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "peers"))

import test_official as peers  # noqa: E402  (shared helpers: processes, HTTP, official client)
from test_official import (  # noqa: E402
    FERRY,
    _die_with_parent,
    new_endpoint,
    procs_under,
    vast_client,
)

REQ_TIMEOUT = float(os.environ.get("FERRY_FAULT_REQ_TIMEOUT_S", "30"))
SCALE = float(os.environ.get("FERRY_FAULT_SCALE", "1"))
SCENARIO_TIMEOUT = 240.0

# The sim with a per-token delay (requests are really in flight when a fault hits) and the
# request log the `twice` count reads.
SIM_CMD = (
    "{ferry} sim-model --listen 127.0.0.1:{model_port} --log-file {model_log} "
    "--request-log {dir}/requests.log --token-delay-ms %d"
)
# Fast timers for the workers: reports every 200 ms, a heartbeat every second (so a short
# --stale-after-s does not make idle workers stale), a small benchmark.
WORKER_ENV = {
    **peers.FERRY_BENCH_ENV,
    "FERRY_HEARTBEAT_S": "1",
    "FERRY_REPORT_RETRY_MS": "500",
}
RID = re.compile(r"fx-[a-z0-9]+-\d+")

# ---------------------------------------------------------------------------------------------
# Control plane that can be killed and restarted on the same state dir and port


class FaultControl(peers.Control):
    def __init__(self, name: str, *extra: str, nofile: int | None = None):
        super().__init__(name, *extra)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"ferry-fault-{name}-"))
        self.nofile = nofile

    def _preexec(self) -> None:
        _die_with_parent()
        if self.nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def sigkill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "ferry control is not running"
        self.proc.kill()
        self.proc.wait()

    async def sigterm(self, timeout: float = 25) -> float:
        """Clean stop of the control plane only (its instances go with it); seconds taken."""
        p = self.proc
        assert p is not None and p.poll() is None, "ferry control is not running"
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        while p.poll() is None and time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.05)
        if p.poll() is None:
            p.kill()
            p.wait()
            raise AssertionError(f"ferry control did not exit within {timeout} s of SIGTERM")
        return time.monotonic() - t0

    def instances(self) -> list[Path]:
        d = self.dir / "instances"
        return sorted(d.iterdir(), key=lambda p: int(p.name)) if d.is_dir() else []

    def proc_of(self, worker_id: int, kind: str) -> int:
        """pid of the instance's `ferry worker` (kind "worker") or `ferry sim-model` ("model")."""
        sub = "worker" if kind == "worker" else "sim-model"
        procs = procs_under(self.instance_dir(worker_id))
        for pid, cmd in procs.items():
            argv = cmd.split()
            if len(argv) > 1 and Path(argv[0]).name.startswith("ferry") and argv[1] == sub:
                return pid
        raise AssertionError(f"no {kind} process for instance {worker_id}: {procs}")


def all_procs_of(cp: FaultControl) -> dict[int, str]:
    """Processes that belong to the state dir: by cwd/command line (procs_under) or by an
    environment naming the control port (REPORT_ADDR) or the state dir."""
    found = procs_under(cp.dir)
    needles = [str(cp.dir).encode()]
    if cp.port:
        needles.append(f"127.0.0.1:{cp.port}".encode())
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in found or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
            if not any(n in env for n in needles):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[pid] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports `pid` listens on (from its socket inodes and /proc/net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------------------------------------
# Load and its figures


def tokens(n: int) -> list[str]:
    return [f"tok{i}" for i in range(n)]


def normalize(msg: str) -> str:
    msg = re.sub(r"\s+", " ", msg).strip()
    msg = re.sub(r"fx-[a-z0-9]+-\d+", "fx-ID", msg)
    msg = re.sub(r"\d+(\.\d+)?", "N", msg)
    return msg[:180]


@dataclass
class Outcome:
    rid: str
    t0: float
    t1: float = 0.0
    kind: str = ""  # completed | failed | bad | hung
    msg: str = ""
    url: str = ""


@dataclass
class Figures:
    name: str
    sent: int = 0
    completed: int = 0
    failed: int = 0
    bad: int = 0
    hung: int = 0
    twice: int = 0
    twice_unexplained: int = 0
    left: int = 0
    seconds: float = 0.0
    errors: dict = field(default_factory=dict)  # normalized message -> count
    bad_examples: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    ok: bool = False
    failures: list = field(default_factory=list)

    def row(self) -> str:
        pct = 100.0 * self.completed / self.sent if self.sent else 0.0
        return (
            f"{self.name:<22} {self.sent:>5} {self.completed:>5} ({pct:5.1f}%) {self.failed:>6} "
            f"{self.bad:>4} {self.hung:>5} {self.twice:>5} ({self.twice_unexplained}) "
            f"{self.left:>4} {self.seconds:>6.1f}  {'PASS' if self.ok else 'FAIL'}"
        )


HEADER = (
    f"{'scenario':<22} {'sent':>5} {'completed':>14} {'failed':>6} {'bad':>4} {'hung':>5} "
    f"{'twice (unexpl.)':>15} {'left':>4} {'secs':>6}  verdict"
)


class Load:
    """A bounded closed-loop load through the official client: `lanes` concurrent senders,
    `total` requests at most, each with a unique prompt and a `REQ_TIMEOUT` deadline."""

    def __init__(self, ep, tag: str, total: int, lanes: int, *, stream_share: float = 0.0,
                 sizes: tuple[int, int] = (3, 10), gap: float = 0.02, fail_pause: float = 0.3,
                 shaper=None, worker_timeout: float | None = None):
        self.ep = ep
        self.tag = tag
        self.total = max(1, int(total * SCALE))
        self.lanes = lanes
        self.stream_share = stream_share
        self.sizes = sizes
        self.gap = gap
        self.fail_pause = fail_pause
        self.shaper = shaper  # (i, payload) -> (payload, expectation) for injected faults
        # The official client's limit on one call to a worker (its `worker_timeout`, 600 s by
        # default and not exposed by `Endpoint.request`); None keeps the default.
        self.worker_timeout = worker_timeout
        self.outcomes: list[Outcome] = []
        self.injected: dict[str, str] = {}  # rid -> what was injected into it
        self._next = 0
        self.rng = random.Random(zlib.crc32(tag.encode()))

    @property
    def sent(self) -> int:
        return self._next

    async def _one(self, i: int) -> Outcome:
        rid = f"fx-{self.tag}-{i}"
        n = self.rng.randint(*self.sizes)
        stream = self.rng.random() < self.stream_share
        payload = {"model": "m", "prompt": f"{rid} hello", "max_tokens": n}
        if stream:
            payload["stream"] = True
        if self.shaper is not None:
            payload, what = self.shaper(i, payload)
            if what:
                self.injected[rid] = what
                stream = bool(payload.get("stream"))
        o = Outcome(rid, time.monotonic())

        async def call():
            # The official client's own total timeout ends its retry loop with a clear error.
            if self.worker_timeout is None:
                r = await self.ep.request(
                    "/v1/completions", payload, cost=n, stream=stream, timeout=REQ_TIMEOUT - 8
                )
            else:
                # What `Endpoint.request` calls, with the one argument it does not pass on.
                r = await self.ep.client.queue_endpoint_request(
                    endpoint=self.ep, worker_route="/v1/completions", worker_payload=payload,
                    cost=n, stream=stream, timeout=REQ_TIMEOUT - 8,
                    worker_timeout=self.worker_timeout,
                )  # fmt: skip
            o.url = r.get("url") or ""
            if not r.get("ok"):
                text = r.get("text") or json.dumps(r.get("response"))
                return "failed" if r.get("status") and text else "bad", (
                    f"HTTP {r.get('status')}: {text}"
                )
            if stream:
                texts, finish = [], []
                async for chunk in r["response"]:
                    if not isinstance(chunk, dict) or not chunk.get("choices"):
                        raise RuntimeError(f"error event in the stream: {str(chunk)[:200]}")
                    c = chunk["choices"][0]
                    texts.append(c["text"])
                    finish.append(c.get("finish_reason"))
                if "".join(texts).split() == tokens(n) and finish and finish[-1] == "length":
                    return "completed", ""
                return "bad", f"stream ended without error but incomplete: {len(texts)}/{n} " \
                              f"chunks, finish {finish[-1:]}"
            resp = r.get("response")
            try:
                ch = resp["choices"][0]
                good = ch["text"].split() == tokens(n) and ch["finish_reason"] == "length"
            except (TypeError, KeyError, IndexError):
                good = False
            return ("completed", "") if good else ("bad", f"wrong body: {str(resp)[:200]}")

        # Not asyncio.wait_for: the client's own TimeoutError (with a message) is a clear
        # failure, only our deadline passing is a hang.
        task = asyncio.ensure_future(call())
        done, _ = await asyncio.wait({task}, timeout=REQ_TIMEOUT)
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            o.kind, o.msg = "hung", f"no answer within {REQ_TIMEOUT:.0f} s"
        elif task.exception() is not None:
            e = task.exception()
            text = str(e).strip()
            o.kind = "failed" if text else "bad"
            o.msg = f"{type(e).__name__}: {text or '(no message)'}"
        else:
            o.kind, o.msg = task.result()
        o.t1 = time.monotonic()
        return o

    async def _lane(self, deadline: float) -> None:
        while self._next < self.total and time.monotonic() < deadline:
            i = self._next
            self._next += 1
            o = await self._one(i)
            self.outcomes.append(o)
            await asyncio.sleep(self.fail_pause if o.kind != "completed" else self.gap)

    async def run(self, max_seconds: float = 150) -> None:
        deadline = time.monotonic() + max_seconds
        await asyncio.gather(*(self._lane(deadline) for _ in range(self.lanes)))

    async def wait_sent(self, fraction: float, timeout: float = 120) -> None:
        """Until `fraction` of the requests have been sent (faults are placed by progress,
        not by time, so a slow machine sees the same shape)."""
        t0 = time.monotonic()
        while self._next < fraction * self.total:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"load stuck at {self._next}/{self.total} requests")
            await asyncio.sleep(0.02)


def count_twice(cp: FaultControl, load: Load, victims: set[int]) -> tuple[int, int, list[str]]:
    """(requests the models saw more than once, of those not explained by a fault, examples)."""
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for inst in cp.instances():
        for log in (inst / "requests.log", inst / "requests.log.prev"):
            with contextlib.suppress(OSError), open(log, errors="replace") as f:
                for line in f:
                    for rid in set(RID.findall(line)):
                        if rid.startswith(f"fx-{load.tag}-"):
                            seen[rid].append(int(inst.name))
    twice = {rid: ids for rid, ids in seen.items() if len(ids) > 1}
    # Arrival order across files is unknown; a copy is explained when all but one of its
    # instances were fault victims.
    unexplained = {rid: ids for rid, ids in twice.items()
                   if sum(1 for i in ids if i not in victims) > 1}  # fmt: skip
    examples = [f"{rid} on instances {ids}" for rid, ids in list(unexplained.items())[:5]]
    examples += [f"{rid} on instances {ids} (explained)" for rid, ids in list(twice.items())[:3]]
    return len(twice), len(unexplained), examples


def tally(fig: Figures, load: Load) -> None:
    fig.sent = len(load.outcomes)
    for o in load.outcomes:
        if o.kind == "completed":
            fig.completed += 1
        elif o.kind == "failed":
            fig.failed += 1
            k = normalize(o.msg)
            fig.errors[k] = fig.errors.get(k, 0) + 1
        elif o.kind == "hung":
            fig.hung += 1
        else:
            fig.bad += 1
            if len(fig.bad_examples) < 5:
                fig.bad_examples.append(f"{o.rid}: {o.msg[:300]}")


class Check:
    def __init__(self, fig: Figures):
        self.fig = fig

    def that(self, cond: bool, what: str) -> None:
        if not cond:
            self.fig.failures.append(what)

    def bounds(self, *, min_completed: float, max_explained_twice: int) -> None:
        f = self.fig
        self.that(f.sent > 0, "no request was sent")
        self.that(f.hung == 0, f"hung == 0 (got {f.hung})")
        self.that(f.bad == 0, f"bad == 0: no wrong/truncated body or message-less error "
                              f"(got {f.bad}: {f.bad_examples})")
        self.that(f.twice_unexplained == 0,
                  f"no unexplained double execution (got {f.twice_unexplained})")
        self.that(f.twice - f.twice_unexplained <= max_explained_twice,
                  f"re-executions after faults <= {max_explained_twice} "
                  f"(got {f.twice - f.twice_unexplained})")
        need = min_completed * f.sent
        self.that(f.completed >= need, f"completed >= {min_completed:.0%} of sent "
                                       f"(got {f.completed}/{f.sent})")


async def setup(cp: FaultControl, name: str, workers: int, model_cmd: str, env=None) -> tuple:
    c = vast_client(cp)
    await c.__aenter__()
    me = await new_endpoint(c, name, cold_workers=workers, max_workers=workers)
    await me.add_workergroup(
        launch_args=json.dumps({"model_cmd": model_cmd, "env": {**WORKER_ENV, **(env or {})}})
    )
    ep = await c.get_endpoint(name)
    ws = await cp.wait_workers(me.id, peers.idle(workers), f"{workers} idle workers", timeout=90)
    return c, me, ep, ws


def kill_pid(pid: int, sig=signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def busy_worker(cp: FaultControl, endpoint_id: int, avoid: set[int] = frozenset()) -> dict:
    """An idle-state worker with requests on it right now (else any routable one)."""
    for _ in range(50):
        ws = [w for w in await cp.workers(endpoint_id)
              if w["status"] == "idle" and w["id"] not in avoid]  # fmt: skip
        loaded = [w for w in ws if w["reqs_working"] > 0 or w["pending_load"] > 0]
        if loaded:
            return loaded[0]
        if ws and _ >= 25:
            return ws[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no routable worker to hit: {await cp.workers(endpoint_id)}")


# ---------------------------------------------------------------------------------------------
# Scenarios: each returns nothing and fills `fig` (figures, notes, failed bounds)


async def sc_kill_worker(cp: FaultControl, fig: Figures) -> None:
    """SIGKILL a `ferry worker` process mid-load, and another one later. The official client
    re-routes what was in flight; the provider sees the exit, stops the instance's model and
    the autoscaler replaces it."""
    c, me, ep, _ = await setup(cp, "kw", 3, SIM_CMD % 10)
    load = Load(ep, "kw", 600, 8)
    victims: set[int] = set()
    runner = asyncio.create_task(load.run())
    try:
        for frac in (0.25, 0.5, 0.75):
            await load.wait_sent(frac)
            w = await busy_worker(cp, me.id, victims)
            kill_pid(cp.proc_of(w["id"], "worker"))
            victims.add(w["id"])
            fig.notes.append(f"SIGKILL worker of instance {w['id']} at {load.sent} sent "
                             f"(reqs_working {w['reqs_working']})")
        await runner
    finally:
        runner.cancel()
        await c.__aexit__(None, None, None)
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, victims)
    fig.notes += ex
    Check(fig).bounds(min_completed=0.97, max_explained_twice=3 * load.lanes)


async def sc_kill_model(cp: FaultControl, fig: Figures) -> None:
    """SIGKILL a `ferry sim-model` process mid-load: its worker answers what was in flight
    with an error (502/stream cut), the client retries elsewhere; the instance is replaced."""
    c, me, ep, _ = await setup(cp, "km", 3, SIM_CMD % 10)
    load = Load(ep, "km", 600, 8, stream_share=0.25)
    victims: set[int] = set()
    runner = asyncio.create_task(load.run())
    try:
        for frac in (0.25, 0.5, 0.75):
            await load.wait_sent(frac)
            w = await busy_worker(cp, me.id, victims)
            kill_pid(cp.proc_of(w["id"], "model"))
            victims.add(w["id"])
            fig.notes.append(f"SIGKILL model of instance {w['id']} at {load.sent} sent")
        await runner
    finally:
        runner.cancel()
        await c.__aexit__(None, None, None)
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, victims)
    fig.notes += ex
    # A stream cut by the model's death is not retried (its 200 is already out): it fails
    # with a clear error. Non-streams are retried by the client.
    Check(fig).bounds(min_completed=0.93, max_explained_twice=3 * load.lanes)


async def sc_sigstop_worker(cp: FaultControl, fig: Figures) -> None:
    """SIGSTOP a worker for 5 s, then SIGCONT. With --stale-after-s 2 the control plane stops
    routing to it once its reports stop; what was already on it waits and completes after
    SIGCONT. No request may hang."""
    c, me, ep, ws = await setup(cp, "ss", 3, SIM_CMD % 10)
    load = Load(ep, "ss", 500, 8)
    stale = 2.0
    victims: set[int] = set()
    runner = asyncio.create_task(load.run())
    try:
        await load.wait_sent(0.25)
        w = await busy_worker(cp, me.id)
        pid = cp.proc_of(w["id"], "worker")
        victim_url = w["url"]
        kill_pid(pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        fig.notes.append(f"SIGSTOP worker of instance {w['id']} at {load.sent} sent")
        try:
            await asyncio.sleep(stale + 1.5)
            states = {x["id"]: x["status"] for x in await cp.workers(me.id)}
            fig.notes.append(f"{stale + 1.5:.1f} s after SIGSTOP the registry says "
                             f"{states.get(w['id'])!r} for it")
            await asyncio.sleep(5 - (time.monotonic() - t_stop))
        finally:
            kill_pid(pid, signal.SIGCONT)
        t_cont = time.monotonic()
        await runner
    finally:
        runner.cancel()
        await c.__aexit__(None, None, None)
    tally(fig, load)
    # Whether it was killed by the control plane meanwhile (errored after 2 x stale).
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        victims.add(w["id"])
        fig.notes.append("the stopped worker was destroyed by the control plane meanwhile")
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, victims)
    fig.notes += ex
    late = [o for o in load.outcomes
            if t_stop + stale + 1.5 <= o.t0 < t_cont and o.url == victim_url]  # fmt: skip
    window = [o for o in load.outcomes if t_stop + stale + 1.5 <= o.t0 < t_cont]
    fig.notes.append(f"{len(window)} requests started while it was stale; "
                     f"{len(late)} of them were served by it")
    chk = Check(fig)
    chk.that(bool(window) and not late,
             f"the control plane stops routing to a silent worker (requests started while it "
             f"was stale: {len(window)}, routed to it: {len(late)})")
    chk.bounds(min_completed=0.98, max_explained_twice=load.lanes)


async def sc_model_drops_streams(cp: FaultControl, fig: Figures) -> None:
    """The model drops its connection mid-stream (sim `disconnect_after`, per request) or
    stalls mid-stream (a token delay far beyond the worker's FERRY_IDLE_TIMEOUT_S): such
    streams must end with a clear error, every other request must complete."""
    c, me, ep, _ = await setup(
        cp, "ds", 2, SIM_CMD % 10,
        env={"FERRY_IDLE_TIMEOUT_S": "3", "FERRY_FIRST_BYTE_TIMEOUT_S": "10"},
    )

    def shaper(i: int, payload: dict):
        n = payload["max_tokens"]
        if i % 5 == 1:
            payload = {**payload, "stream": True, "sim": {"disconnect_after": max(1, n // 2)}}
            return payload, "cut"
        if i % 25 == 3:
            # Headers go out at once, then nothing for 60 s.
            payload = {**payload, "stream": True, "sim": {"token_delay_ms": 60000}}
            return payload, "stall"
        return payload, ""

    load = Load(ep, "ds", 400, 8, stream_share=0.5, shaper=shaper)
    try:
        await load.run()
    finally:
        await c.__aexit__(None, None, None)
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, set())
    fig.notes += ex
    by = collections.Counter()
    for o in load.outcomes:
        by[(load.injected.get(o.rid, "clean"), o.kind)] += 1
    fig.notes.append("outcomes by injection: " + ", ".join(f"{a}/{b}={n}" for (a, b), n in sorted(by.items())))
    chk = Check(fig)
    injected = sum(1 for o in load.outcomes if o.rid in load.injected)
    chk.that(by[("cut", "completed")] == 0 and by[("stall", "completed")] == 0,
             "a cut or stalled stream never passes for complete")
    chk.that(by[("cut", "failed")] + by[("stall", "failed")] == injected,
             f"every cut/stalled stream fails with a clear error ({by[('cut', 'failed')]} + "
             f"{by[('stall', 'failed')]} of {injected})")
    clean = fig.sent - injected
    chk.that(by[("clean", "completed")] == clean,
             f"every clean request completes ({by[('clean', 'completed')]}/{clean})")
    chk.bounds(min_completed=(clean / fig.sent) if fig.sent else 1, max_explained_twice=0)


async def sc_restart_control(cp: FaultControl, fig: Figures) -> None:
    """Clean restart of the control plane (SIGTERM, then start again on the same state dir and
    port) mid-load: it stops its instances on the way down and resumes them (cold, benchmark
    cached) on the way up. Requests that need /route/ while it is down fail with the client's
    "Failed to route endpoint"; the rest complete."""
    c, me, ep, _ = await setup(cp, "rs", 3, SIM_CMD % 10)
    load = Load(ep, "rs", 500, 8)
    runner = asyncio.create_task(load.run())
    try:
        await load.wait_sent(0.35)
        down = await cp.sigterm()
        t0 = time.monotonic()
        await cp.start()
        fig.notes.append(f"SIGTERM at {load.sent} sent: stopped in {down:.1f} s, "
                         f"serving again {time.monotonic() - t0:.1f} s later")
        await cp.wait_workers(me.id, peers.idle(1), "a worker after the restart", timeout=60)
        await runner
    finally:
        runner.cancel()
        await c.__aexit__(None, None, None)
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, set())
    fig.notes += ex
    Check(fig).bounds(min_completed=0.85, max_explained_twice=0)


async def sc_kill_control(cp: FaultControl, fig: Figures) -> None:
    """SIGKILL the control plane mid-load three times, restarting it on the same state dir and
    port each time. Intended behaviour: every worker/model process of the state dir is either
    adopted by the new control plane (its final clean stop stops it) or died with the old one;
    none is left behind after the final stop."""
    c, me, ep, _ = await setup(cp, "kc", 3, SIM_CMD % 10)
    load = Load(ep, "kc", 600, 8)
    runner = asyncio.create_task(load.run())
    try:
        for frac in (0.2, 0.45, 0.7):
            await load.wait_sent(frac)
            before = len(all_procs_of(cp))
            cp.sigkill()
            t0 = time.monotonic()
            await asyncio.sleep(0.3)
            await cp.start()
            fig.notes.append(f"SIGKILL at {load.sent} sent ({before} processes of the state dir "
                             f"alive); serving again after {time.monotonic() - t0:.1f} s; "
                             f"{len(all_procs_of(cp))} processes of the state dir now")
            await cp.wait_workers(me.id, peers.idle(1), "a worker after the restart", timeout=60)
        await runner
    finally:
        runner.cancel()
        await c.__aexit__(None, None, None)
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, set())
    fig.notes += ex
    fig.notes.append(f"processes of the state dir before the final stop: {len(all_procs_of(cp))}")
    Check(fig).bounds(min_completed=0.80, max_explained_twice=0)
    # The orphan check itself runs after the final stop (run_one: `left` must be 0).


async def sc_slowloris(cp: FaultControl, fig: Figures) -> None:
    """Slowloris on every listener: ferry control and its workers run under RLIMIT_NOFILE
    256; 900 sockets trickle request headers one byte at a time (a new socket replaces one the
    server closes) for 27 s against the control plane's port and each worker's main, side and
    admin ports, while the official client sends normal requests: >= 95% must be served."""
    c, me, ep, ws = await setup(cp, "sl", 2, SIM_CMD % 5,
                                env={"FERRY_ADMIN_ADDR": "127.0.0.1:0"})
    targets: list[tuple[str, int, int]] = [("control", cp.port, 300)]
    for w in ws:
        pid = cp.proc_of(w["id"], "worker")
        ports = json.loads((cp.instance_dir(w["id"]) / "ports.json").read_text())
        listen = listening_ports(pid)
        main, side = ports["worker"], ports["http"]
        admin = sorted(listen - {main, side})
        fig.notes.append(f"worker {w['id']} (pid {pid}) listens on {sorted(listen)}: main {main}, "
                         f"side {side}, admin {admin}")
        targets.append((f"w{w['id']}-main", main, 150))
        if side in listen:
            targets.append((f"w{w['id']}-side", side, 75))
        for p in admin:
            targets.append((f"w{w['id']}-admin", p, 75))
    # The attacker runs in its own process (its own event loop and file limit), so the
    # official client's requests here are not slowed down by the attack's own bookkeeping.
    attacker = subprocess.Popen(
        [sys.executable, __file__, "--loris", json.dumps({"targets": targets, "seconds": 27})],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )  # fmt: skip
    load = Load(ep, "sl", 120, 6, stream_share=0.25, gap=0.1)
    after = Load(ep, "sla", 20, 4)
    try:
        await asyncio.sleep(4)  # let the sockets pile up first
        with contextlib.suppress(OSError):
            n = len(os.listdir(f"/proc/{cp.proc.pid}/fd"))
            fig.notes.append(f"ferry control has {n} fds open 4 s into the attack (limit 256)")
        await load.run(max_seconds=21)
        try:
            out, _ = await asyncio.wait_for(asyncio.to_thread(attacker.communicate), 45)
        except asyncio.TimeoutError:
            attacker.kill()
            out, _ = attacker.communicate()
        # Once the attack is over, service must be back at once.
        await after.run(max_seconds=60)
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        await c.__aexit__(None, None, None)
    try:
        stats = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        stats = {}
        fig.failures.append(f"the slowloris attacker printed no stats: {out[-2000:]!r}")
    for name, st in stats.items():
        fig.notes.append(f"attack on {name}: {st}")
    tally(fig, load)
    fig.twice, fig.twice_unexplained, ex = count_twice(cp, load, set())
    fig.notes += ex
    done_after = sum(1 for o in after.outcomes if o.kind == "completed")
    fig.notes.append(f"after the attack: {done_after}/{len(after.outcomes)} requests completed")
    Check(fig).that(done_after == len(after.outcomes),
                    f"every request after the attack completes ({done_after}/{len(after.outcomes)})")
    Check(fig).bounds(min_completed=0.95, max_explained_twice=0)


def loris_main(spec: dict) -> None:
    """The slowloris attacker (a separate process): per target, `n` sockets that each send a
    request line and then header bytes one at a time, every 2 s; a socket the server closes
    (or answers) is replaced after 0.2 s. Prints per-target counters as one JSON line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = sum(n for _, _, n in spec["targets"]) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    stats = {name: collections.Counter() for name, _, _ in spec["targets"]}

    async def loris(name: str, port: int, slot: int, stop: asyncio.Event) -> None:
        st = stats[name]
        await asyncio.sleep(slot * 0.005)  # spread the connects over a second or two
        while not stop.is_set():
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
            except (OSError, asyncio.TimeoutError):
                st["connect_failed"] += 1
                await asyncio.sleep(0.5)
                continue
            st["opened"] += 1
            head = f"POST /route/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-a: ".encode()
            head += b"b" * 4000
            try:
                for b in head:
                    if stop.is_set():
                        break
                    w.write(bytes([b]))
                    await w.drain()
                    try:
                        data = await asyncio.wait_for(r.read(1024), 2)
                    except asyncio.TimeoutError:
                        continue
                    st["answered" if data else "closed_by_server"] += 1
                    break
            except OSError:
                st["closed_by_server"] += 1
            finally:
                w.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 1)
            if not stop.is_set():
                await asyncio.sleep(0.2)

    async def run() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(loris(name, port, i, stop))
                 for name, port, n in spec["targets"] for i in range(n)]  # fmt: skip
        await asyncio.sleep(spec["seconds"])
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    print(json.dumps({name: dict(st) for name, st in stats.items()}), flush=True)


SCENARIOS = [
    ("kill_worker", sc_kill_worker, {}),
    ("kill_model", sc_kill_model, {}),
    ("sigstop_worker", sc_sigstop_worker, {"extra": ("--stale-after-s", "2")}),
    ("model_drops_streams", sc_model_drops_streams, {}),
    ("restart_control", sc_restart_control, {}),
    ("kill_control_x3", sc_kill_control, {}),
    ("slowloris_nofile256", sc_slowloris, {"nofile": 256}),
]

# ---------------------------------------------------------------------------------------------
# Runner


def print_figures(fig: Figures, extra: str = "") -> None:
    """A scenario's verdict line with its figures, then its notes, errors and failed checks."""
    status = "PASS" if fig.ok else "FAIL"
    print(f"{status} {fig.name} ({fig.seconds:.1f} s): sent {fig.sent}, completed {fig.completed}, "
          f"failed {fig.failed}, bad {fig.bad}, hung {fig.hung}, twice {fig.twice} "
          f"({fig.twice_unexplained} unexplained){', ' + extra if extra else ''}", flush=True)
    for n in fig.notes:
        print(f"    {n}")
    for m, k in sorted(fig.errors.items(), key=lambda kv: -kv[1]):
        print(f"    error x{k}: {m}")
    for f in fig.failures:
        print(f"    ASSERTION FAILED: {f}")


async def run_scenario(fig, start, body, close, summary, keep: bool, state_dir, logs) -> None:
    """One scenario's frame, shared with the HA suite: `start()`, then `body()` within
    SCENARIO_TIMEOUT, then `close()` whatever happened; any error becomes a failure of `fig`,
    whose row `summary()` prints. The state dir is removed after a pass unless `keep`; after a
    failure `logs()` is printed and the dir kept."""
    t0 = time.monotonic()
    err = ""
    try:
        await start()
        await asyncio.wait_for(body(), SCENARIO_TIMEOUT)
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, asyncio.TimeoutError):
            err = f"scenario timed out after {SCENARIO_TIMEOUT:.0f} s\n"
        err += traceback.format_exc()
    finally:
        await close()
    fig.seconds = time.monotonic() - t0
    if err:
        fig.failures.append("error: " + err)
    fig.ok = not fig.failures
    print_figures(fig, summary())
    if fig.ok and not keep:
        shutil.rmtree(state_dir, ignore_errors=True)
    else:
        if not fig.ok:
            print(logs())
        print(f"    (state dir kept: {state_dir})", flush=True)


async def run_one(name, fn, opts, keep: bool) -> Figures:
    fig = Figures(name)
    cp = FaultControl(name, *opts.get("extra", ("--stale-after-s", "5")), nofile=opts.get("nofile"))

    async def close():
        # The final clean stop; then every process of the state dir must be gone.
        extra_scan = {}
        with contextlib.suppress(Exception):
            await cp.stop()
            await asyncio.sleep(0.3)
            extra_scan = all_procs_of(cp)
        for pid, cmd in extra_scan.items():
            cp.leftovers.setdefault(pid, cmd)
            kill_pid(pid)
        fig.left = len(cp.leftovers)
        if cp.leftovers:
            fig.failures.append(
                f"no process of the state dir outlives the final clean stop (left {fig.left}, "
                "killed now):\n" + "\n".join(f"      {pid}: {cmd[:200]}" for pid, cmd in cp.leftovers.items())
            )

    await run_scenario(fig, cp.start, lambda: fn(cp, fig), close, lambda: f"left {fig.left}",
                       keep, cp.dir, cp.logs)  # fmt: skip
    return fig


async def run_suite(argv: list[str], *, title: str, scenarios: list, run, header: str,
                    json_env: str, json_name: str, extra_lines: tuple = ()) -> int:
    """The suite's front: `-k`/`--keep` from argv, the peers' versions, each chosen scenario
    through `run(name, fn, opts, keep) -> Figures`, the table, the JSON figures
    ($`json_env`, default $TMPDIR/`json_name`) and the last line `N passed, M failed`."""
    keep = "--keep" in argv
    pats = [argv[i + 1] for i, a in enumerate(argv) if a == "-k" and i + 1 < len(argv)]
    chosen = [s for s in scenarios if not pats or any(p in s[0] for p in pats)]
    lines, problems = peers.peer_versions()
    print(title)
    for line in lines:
        print(f"  {line}")
    print(f"  ferry: {FERRY}")
    print(f"  per-request deadline {REQ_TIMEOUT:.0f} s, load scale {SCALE}")
    for line in extra_lines:
        print(f"  {line}")
    if problems:
        for p in problems:
            print(f"ERROR: {p}")
        print(f"0 passed, {len(chosen) or 1} failed")
        return 1
    if not chosen:
        print(f"ERROR: no scenario matches {pats}")
        print("0 passed, 1 failed")
        return 1
    # The client's re-route messages are warnings on the `Serverless` logger; keep them quiet.
    logging.getLogger("Serverless").setLevel(logging.CRITICAL)
    t0 = time.monotonic()
    figs = []
    for name, fn, opts in chosen:
        figs.append(await run(name, fn, opts, keep))
    total = time.monotonic() - t0
    print(f"\n{header}")
    for f in figs:
        print(f.row())
    out = os.environ.get(json_env) or os.path.join(tempfile.gettempdir(), json_name)
    with contextlib.suppress(OSError), open(out, "w") as fh:
        json.dump({"total_seconds": round(total, 1), "request_timeout_s": REQ_TIMEOUT,
                   "scenarios": [{k: v for k, v in vars(f).items()} for f in figs]},
                  fh, indent=2)  # fmt: skip
    print(f"figures as JSON: {out}; total {total:.1f} s")
    passed = sum(f.ok for f in figs)
    print(f"{passed} passed, {len(figs) - passed} failed")
    return 0 if passed == len(figs) else 1


async def main(argv: list[str]) -> int:
    return await run_suite(
        argv, title="Fault injection through the official client:", scenarios=SCENARIOS,
        run=run_one, header=HEADER, json_env="FERRY_FAULT_JSON",
        json_name="ferry-fault-results.json",
    )  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loris"]:
        loris_main(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit(asyncio.run(main(sys.argv[1:])))
