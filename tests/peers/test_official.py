"""Ferry against Vast's official Python code: the `vastai` client, the unmodified PyWorker
(from the same `vastai` package) and the `openai` client.

Run with the peers venv's python (scripts/peer-tests.sh does this):

    $FERRY_PY tests/peers/test_official.py [-k SUBSTRING]... [--keep]

Plain Python + asyncio, no pytest. Each test starts its own `ferry control` on a free
127.0.0.1 port with a fresh temporary `--state-dir`, a known `--api-key` and fast timers, and
stops it at the end even on failure (SIGTERM, which stops its workers; SIGKILL after a
deadline; then any process still running in the state dir is killed and the test fails).
The last line of output is `N passed, M failed`; the exit code is non-zero if anything failed
or a peer is missing.

How the official client is kept off the network: `Serverless` downloads Vast's root
certificate (`SSL_CERT_URL`) the first time `get_ssl_context()` runs, unless `_ssl_context`
is already set; every test pre-sets `client._ssl_context = ssl.create_default_context()`
(Ferry's control plane and workers speak plain HTTP on loopback, so the context is never
used for a handshake) and points the instance's `SSL_CERT_URL` at a closed loopback port,
so a future client that ignored the pre-set context would fail loudly instead of reaching
console.vast.ai. No method is patched.

Environment: FERRY_BIN (default <repo>/target/debug/ferry), FERRY_PEER_TIMEOUT_S (per
test, default 120).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FERRY = Path(os.environ.get("FERRY_BIN") or ROOT / "target" / "debug" / "ferry")
LAUNCHER = ROOT / "scripts" / "pyworker_launcher.py"
REQUIREMENTS = ROOT / "scripts" / "peers-requirements.txt"
KEY = "ferry-peer-test-account-key"
TEST_TIMEOUT = float(os.environ.get("FERRY_PEER_TIMEOUT_S", "120"))
# What ferry control logs when an instance ignored SIGTERM for the whole stop grace.
SIGKILL_MARK = "sending SIGKILL"
PY = sys.executable

# Fast simulated model with a small per-token delay, so requests are really in flight.
SIM_DELAY_CMD = (
    "{ferry} sim-model --listen 127.0.0.1:{model_port} --log-file {model_log} "
    "--token-delay-ms %d"
)
# The official PyWorker in front of the model (scripts/pyworker_launcher.py). The local
# provider already exports WORKER_PORT, WORKER_HTTP_PORT, REPORT_ADDR, CONTAINER_ID,
# MASTER_TOKEN, PUBLIC_IPADDR, VAST_TCP_PORT_<WORKER_PORT> and MODEL_LOG; the launcher also
# needs the model port, and PYW_HEALTH avoids PyWorker's fixed 10 s sleep after the loaded line.
PYWORKER_CMD = (
    "env PYW_MODEL_PORT={model_port} PYW_HEALTH=/health "
    f"{shlex.quote(PY)} {shlex.quote(str(LAUNCHER))}"
)
# Same benchmark shape for `ferry worker` as the launcher gives PyWorker (3 x 10 of a
# 16-token completion), so both measure comparable max_perf in a mixed fleet.
FERRY_BENCH_ENV = {
    "FERRY_BENCHMARK_RUNS": "3",
    "FERRY_BENCHMARK_CONCURRENCY": "10",
    "FERRY_BENCHMARK_PAYLOAD": '{"model": "m", "prompt": "hello", "max_tokens": 16}',
    "FERRY_REPORT_TICK_MS": "200",
}

# ---------------------------------------------------------------------------------------------
# Peers


def peer_versions() -> tuple[list[str], list[str]]:
    """(lines describing each real peer, problems). A problem means the suite cannot run."""
    lines: list[str] = []
    problems: list[str] = []
    pinned: dict[str, str] = {}
    try:
        for raw in REQUIREMENTS.read_text().splitlines():
            m = re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", raw)
            if m:
                pinned[m.group(1).lower()] = m.group(2)
    except OSError as e:
        problems.append(f"cannot read {REQUIREMENTS}: {e}")
    for dist in ("vastai", "openai"):
        try:
            v = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"peer missing: python package {dist!r} is not installed in {PY}")
            continue
        want = pinned.get(dist)
        if want is not None and want != v:
            problems.append(f"peer {dist} is {v}, scripts/peers-requirements.txt pins {want}")
        lines.append(f"{dist} {v}")
    try:
        import vastai  # noqa: F401
        from vastai import Serverless  # noqa: F401
        from vastai import Worker as PyWorker

        import vastai.serverless.client.client as client_mod

        v = importlib.metadata.version("vastai")
        lines[0] = f"vastai {v}: official Serverless client ({client_mod.__file__})"
        lines.append(
            f"vastai {v}: official PyWorker {PyWorker.__module__}.{PyWorker.__name__} "
            f"({sys.modules[PyWorker.__module__].__file__}) via {LAUNCHER.relative_to(ROOT)}"
        )
    except Exception as e:  # noqa: BLE001
        problems.append(f"peer missing: cannot import the vastai client/PyWorker: {e!r}")
    try:
        import openai

        idx = next(i for i, line in enumerate(lines) if line.startswith("openai "))
        lines[idx] = f"openai {openai.__version__}: official OpenAI client ({openai.__file__})"
    except Exception as e:  # noqa: BLE001
        problems.append(f"peer missing: cannot import openai: {e!r}")
    if not LAUNCHER.is_file():
        problems.append(f"missing {LAUNCHER}")
    if not (FERRY.is_file() and os.access(FERRY, os.X_OK)):
        problems.append(f"missing ferry binary {FERRY} (cargo build -p ferry)")
    lines.append(f"python {sys.version.split()[0]} ({PY})")
    return lines, problems


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # If this test process dies (even by SIGKILL), ferry control gets SIGTERM and stops its
    # workers in order.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def procs_under(root: Path) -> dict[int, str]:
    """Live processes (ours) whose cwd or command line is inside `root`: pid -> cmdline."""
    root_s = str(root)
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        if cwd == root_s or cwd.startswith(root_s + "/") or root_s + "/" in cmd:
            found[pid] = cmd
    return found


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: unreadable)"
    return "\n".join(lines[-n:])


class Control:
    """One `ferry control` process with its own state dir."""

    def __init__(self, name: str, *extra: str):
        self.name = name
        self.extra = list(extra)
        self.dir = Path(tempfile.mkdtemp(prefix=f"ferry-peer-{name}-"))
        self.proc: subprocess.Popen | None = None
        self.url = ""
        # The address to listen on; the fleet suite sets its namespace's address.
        self.host = "127.0.0.1"
        self.port = 0
        self.starts = 0
        self.leftovers: dict[int, str] = {}
        # The log's name in the state dir; replicas sharing one state dir each name their own.
        self.log_name = "control.log"

    def _preexec(self) -> None:
        _die_with_parent()

    async def start(self) -> None:
        """First start: a free port. A later start (a restart): the same port and state dir."""
        last = ""
        # A free port can be taken between picking and binding it: try three.
        for _ in range(3 if not self.port else 1):
            port = self.port or free_port()
            self.url = f"http://{self.host}:{port}"
            args = [
                str(FERRY), "control",
                "--listen", f"{self.host}:{port}",
                "--state-dir", str(self.dir),
                "--api-key", KEY,
                "--autoscale-interval-ms", "200",
                "--stop-grace-s", "2",
                "--idle-stop-after-s", "600",
                *self.extra,
            ]  # fmt: skip
            with open(self.dir / self.log_name, "ab") as log:
                log.write(f"\n===== start #{self.starts + 1} =====\n".encode())
                log.flush()
                env = {**os.environ, "FERRY_LOG": os.environ.get("FERRY_LOG", "info")}
                self.proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, preexec_fn=self._preexec,
                )  # fmt: skip
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    status, _ = await http("GET", f"{self.url}/health", timeout=2)
                    if status == 200:
                        self.port = port
                        self.starts += 1
                        return
                except Exception as e:  # noqa: BLE001
                    last = repr(e)
                await asyncio.sleep(0.05)
            if self.proc.poll() is None:
                raise AssertionError(f"ferry control not healthy after 30 s ({last})")
        raise AssertionError(
            f"ferry control exited ({self.proc.returncode if self.proc else '?'}):\n"
            + tail(self.dir / self.log_name)
        )

    async def stop(self) -> None:
        """SIGTERM (ferry stops its workers), SIGKILL after 25 s; then kill anything left in the
        state dir and remember it (a leftover after a clean stop is a Ferry bug)."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 25
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()
                self.leftovers[p.pid] = "ferry control (did not exit within 25 s of SIGTERM)"
        # Give the last children a moment to be reaped, then sweep.
        for _ in range(20):
            left = procs_under(self.dir)
            if not left:
                break
            await asyncio.sleep(0.1)
        for pid, cmd in procs_under(self.dir).items():
            self.leftovers[pid] = cmd
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def logs(self) -> str:
        parts = [f"--- {self.dir}/{self.log_name} (tail)\n{tail(self.dir / self.log_name)}"]
        inst = self.dir / "instances"
        if inst.is_dir():
            for d in sorted(inst.iterdir()):
                for f in ("worker.out", "model.out"):
                    if (d / f).exists():
                        parts.append(f"--- {d / f} (tail)\n{tail(d / f, 15)}")
        return "\n".join(parts)

    # -- API helpers (raw HTTP, for checks the official client does not expose) --

    async def workers(self, endpoint_id: int) -> list[dict]:
        status, body = await http(
            "POST", f"{self.url}/get_endpoint_workers/", {"id": endpoint_id, "api_key": KEY}
        )
        assert status == 200, (status, body)
        assert isinstance(body, list), body
        return body

    async def wait_workers(self, endpoint_id: int, pred, what: str, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        ws: list[dict] = []
        while time.monotonic() < deadline:
            ws = await self.workers(endpoint_id)
            if pred(ws):
                return ws
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; workers: {ws}")

    def instance_dir(self, worker_id: int) -> Path:
        return self.dir / "instances" / str(worker_id)


async def http(method: str, url: str, body=None, timeout: float = 10, headers=None):
    """One plain HTTP call (aiohttp); returns (status, parsed JSON or text)."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.request(
            method, url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


def idle(n: int):
    def pred(ws: list[dict]) -> bool:
        return sum(1 for w in ws if w["status"] == "idle" and w["measured_perf"] > 0) >= n

    return pred


# ---------------------------------------------------------------------------------------------
# Official client


def vast_client(cp: Control):
    from vastai import Serverless

    c = Serverless(api_key=KEY, autoscaler_url=cp.url, webserver_url=cp.url)
    # See the module docstring: no download of Vast's root certificate.
    c._ssl_context = ssl.create_default_context()
    c.SSL_CERT_URL = "http://127.0.0.1:1/blocked-by-ferry-peer-tests"
    return c


def tokens(n: int) -> list[str]:
    return [f"tok{i}" for i in range(n)]


def completion(n: int, **extra) -> dict:
    return {"model": "m", "prompt": "hello", "max_tokens": n, **extra}


def check_completion(r: dict, n: int, url: str | None = None, session: bool = False) -> None:
    assert r["ok"] is True and r["status"] == 200, {k: r.get(k) for k in ("ok", "status", "text")}
    resp = r["response"]
    assert isinstance(resp, dict), resp
    choice = resp["choices"][0]
    assert choice["text"].split() == tokens(n), choice
    assert choice["finish_reason"] == "length", choice
    assert resp["usage"]["completion_tokens"] == n, resp
    if url is not None:
        assert r["url"] == url, (r["url"], url)
    assert r["auth_data"]["url"] == r["url"], r["auth_data"]
    if session:  # no /route/ call: the client reports request_idx 0, auth_data is the session's
        assert r["request_idx"] == 0 and r["auth_data"]["request_idx"], r
    else:
        assert r["request_idx"] and r["request_idx"] == r["auth_data"]["request_idx"], r


async def check_stream(r: dict, n: int) -> None:
    assert r["ok"] is True and r["status"] == 200, {k: r.get(k) for k in ("ok", "status", "text")}
    texts, finish = [], []
    async for chunk in r["response"]:
        c = chunk["choices"][0]
        texts.append(c["text"])
        finish.append(c.get("finish_reason"))
    assert len(texts) == n, texts  # one event per token: relayed as a stream, not one blob
    assert "".join(texts).split() == tokens(n), texts
    assert finish[-1] == "length", finish


async def new_endpoint(client, name: str, **params):
    from vastai.data.endpoint import EndpointConfig

    me = await client.create_endpoint(EndpointConfig(endpoint_name=name, **params))
    return me


class RetryLog(logging.Handler):
    """Counts the official client's re-route messages."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def retries(self) -> list[str]:
        return [
            m for m in self.records
            if "re-routing" in m or "Worker request failed" in m
        ]  # fmt: skip


def kill_instance(cp: Control, worker_id: int) -> dict[int, str]:
    """SIGKILL every process of one local instance (worker and model server)."""
    d = cp.instance_dir(worker_id)
    victims = procs_under(d)
    assert victims, f"no processes found for instance {worker_id} under {d}"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victims


# ---------------------------------------------------------------------------------------------
# Tests


async def test_official_client_requests(cp: Control) -> None:
    """Official client: create/find the endpoint, add a default workergroup (Ferry's sim),
    plain and streaming /v1/completions."""
    async with vast_client(cp) as c:
        me = await new_endpoint(c, "t1", cold_workers=1, max_workers=1)
        wg = await me.add_workergroup()  # default model: Ferry's simulated LLM
        assert isinstance(wg, int) and wg > 0, wg
        assert await c.find_workergroup_for_endpoint(me.id) == wg
        eps = await c.get_endpoints()
        assert [e.name for e in eps] == ["t1"], eps
        ep = await c.get_endpoint("t1")
        assert ep.id == me.id and ep.api_key and ep.api_key != KEY, ep.data

        # First request while the worker is still starting: the client polls /route/.
        req = ep.request("/v1/completions", completion(5), cost=5)
        r = await asyncio.wait_for(req, 60)
        check_completion(r, 5)
        assert req.status == "Complete", req.status
        ws = await cp.workers(me.id)
        assert len(ws) == 1 and ws[0]["status"] == "idle" and ws[0]["url"] == r["url"], ws

        # Concurrent plain requests, through both Endpoint.request and ManagedEndpoint.request.
        sizes = [1, 2, 3, 7, 11, 16]
        rs = await asyncio.gather(*(ep.request("/v1/completions", completion(n), cost=n) for n in sizes))
        for r2, n in zip(rs, sizes):
            check_completion(r2, n, url=r["url"])
        idxs = [r2["request_idx"] for r2 in rs]
        assert len(set(idxs)) == len(idxs), idxs  # each request has its own request_idx
        check_completion(await me.request("/v1/completions", completion(4), cost=4), 4, url=r["url"])

        # Streaming.
        rs = await ep.request("/v1/completions", completion(6, stream=True), cost=6, stream=True)
        await check_stream(rs, 6)

        # The worker accounted for the work: its report reached the control plane.
        ws = await cp.wait_workers(
            me.id, lambda ws: ws and ws[0]["reqs_working"] == 0, "the worker to drain"
        )
        assert ws[0]["measured_perf"] > 0, ws

        # A route the worker does not serve: an answer, not a retry loop (404 is final).
        r = await asyncio.wait_for(ep.request("/no/such/route", {"x": 1}, cost=1), 20)
        assert r["ok"] is False and r["status"] == 404, r

        # Deleting through the official client stops the worker's processes.
        wid = ws[0]["id"]
        assert procs_under(cp.instance_dir(wid)), "no processes for the worker before delete"
        await c.delete_workergroup(wg)
        await cp.wait_workers(me.id, lambda ws: not ws, "the workergroup's worker to go", 20)
        deadline = time.monotonic() + 20
        while procs_under(cp.instance_dir(wid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not procs_under(cp.instance_dir(wid)), procs_under(cp.instance_dir(wid))
        await c.delete_endpoint(me.id)
        assert await c.get_endpoints() == []


async def test_official_client_session(cp: Control) -> None:
    """endpoint.session(...): create, request inside it, close; the worker ends the session."""
    async with vast_client(cp) as c:
        me = await new_endpoint(c, "t2", cold_workers=1, max_workers=1)
        await me.add_workergroup(launch_args=json.dumps({"env": {"FERRY_REPORT_TICK_MS": "200"}}))
        ep = await c.get_endpoint("t2")
        ws = await cp.wait_workers(me.id, idle(1), "one idle worker")
        worker_url = ws[0]["url"]

        s = await asyncio.wait_for(ep.session(cost=10, lifetime=30), 30)
        assert s.session_id and s.url == worker_url, (s.session_id, s.url, worker_url)
        assert s.auth_data["url"] == worker_url, s.auth_data
        assert await s.is_open() is True
        same = await ep.get_session(s.session_id, s.auth_data)
        assert same.session_id == s.session_id and same.url == s.url
        r = await s.request("/v1/completions", completion(3), cost=3)
        check_completion(r, 3, url=worker_url, session=True)
        rs = await s.request("/v1/completions", completion(4, stream=True), cost=4, stream=True)
        await check_stream(rs, 4)
        auth = {"session_id": s.session_id, "session_auth": s.auth_data}
        st, body = await http("POST", f"{worker_url}/session/health", auth)
        assert (st, body) == (200, {"ok": True}), (st, body)
        # The session holds its cost on the worker while open (reported to the control plane).
        await cp.wait_workers(
            me.id, lambda ws: ws[0]["cur_load"] == 10, "the session's load to be reported", 10
        )

        await s.close()
        assert s.open is False
        await cp.wait_workers(
            me.id,
            lambda ws: ws[0]["cur_load"] == 0 and ws[0]["pending_load"] == 0,
            "the worker's load to return to 0 after the session ended",
            10,
        )
        st, body = await http("POST", f"{worker_url}/session/health", auth)
        assert (st, body) == (200, {"ok": False}), (st, body)
        st, body = await http("POST", f"{worker_url}/session/get", auth)
        assert st == 400 and body == {"error": "session does not exist"}, (st, body)
        try:
            await s.request("/v1/completions", completion(1), cost=1)
        except ValueError:
            pass
        else:
            raise AssertionError("a request on a closed session was not refused")

        # `async with` form: the session ends on exit.
        async with await ep.session(cost=5, lifetime=30) as s2:
            check_completion(await s2.request("/v1/completions", completion(2), cost=2), 2, session=True)
            auth2 = {"session_id": s2.session_id, "session_auth": s2.auth_data}
            assert (await http("POST", f"{s2.url}/session/health", auth2))[1] == {"ok": True}
        assert (await http("POST", f"{s2.url}/session/health", auth2))[1] == {"ok": False}
        # Ending it again: the worker says it is gone (PyWorker's 400/410).
        st, _ = await http("POST", f"{s2.url}/session/end", auth2)
        assert st in (400, 410), st

        # Plain requests still work after the sessions.
        check_completion(await ep.request("/v1/completions", completion(2), cost=2), 2)


async def test_retry_through_dying_worker(cp: Control) -> None:
    """Three workers; one is killed while requests are in flight, another right before a
    batch; every request still completes correctly through the official client."""
    log = RetryLog()
    lg = logging.getLogger("Serverless")
    lg.addHandler(log)
    lg.setLevel(logging.DEBUG)
    try:
        async with vast_client(cp) as c:
            me = await new_endpoint(c, "t3", cold_workers=3, max_workers=3)
            await me.add_workergroup(
                launch_args=json.dumps(
                    {"model_cmd": SIM_DELAY_CMD % 25, "env": FERRY_BENCH_ENV}
                )
            )
            ep = await c.get_endpoint("t3")
            ws = await cp.wait_workers(me.id, idle(3), "three idle workers")
            url_of = {w["id"]: w["url"] for w in ws}
            a, b, _ = sorted(url_of)

            # 1. Kill worker `a` while requests are in flight (16 x 10 tokens x 25 ms).
            n = 10
            batch = [ep.request("/v1/completions", completion(n), cost=n) for _ in range(16)]
            await asyncio.sleep(0.12)
            busy = await cp.workers(me.id)
            assert any(w["id"] == a and (w["pending_load"] > 0 or w["reqs_working"] > 0) for w in busy), busy
            killed = kill_instance(cp, a)
            rs = await asyncio.wait_for(asyncio.gather(*batch), 60)
            for r in rs:
                check_completion(r, n)
            retried = log.retries()
            assert retried, "no request was re-routed although its worker was killed mid-flight"
            served = {r["url"] for r in rs}
            assert served - {url_of[a]}, served
            print(f"    killed worker {a} ({len(killed)} processes) mid-flight: 16/16 ok, "
                  f"{len(retried)} client re-route(s), served by {sorted(served)}")

            # The control plane noticed: `a` is no longer routable.
            await cp.wait_workers(
                me.id,
                lambda ws: all(w["status"] != "idle" for w in ws if w["id"] == a),
                f"worker {a} to leave idle",
                timeout=10,
            )

            # 2. Kill worker `b` right before a batch.
            before = len(log.retries())
            kill_instance(cp, b)
            batch = [ep.request("/v1/completions", completion(3), cost=3) for _ in range(8)]
            rs = await asyncio.wait_for(asyncio.gather(*batch), 60)
            for r in rs:
                check_completion(r, 3)
                assert r["url"] not in (url_of[a], url_of[b]), r["url"]
            print(f"    killed worker {b} before a batch: 8/8 ok, "
                  f"{len(log.retries()) - before} client re-route(s)")
    finally:
        lg.removeHandler(log)


async def test_pyworker_registers(cp: Control) -> None:
    """The unmodified official PyWorker as a Ferry worker: fetches /pubkey/, reports ready
    (idle, measured_perf > 0), verifies signatures and serves routed requests."""
    async with vast_client(cp) as c:
        me = await new_endpoint(c, "t4", cold_workers=1, max_workers=1)
        wg = await me.add_workergroup(launch_args=json.dumps({"worker_cmd": PYWORKER_CMD}))
        ep = await c.get_endpoint("t4")
        t0 = time.monotonic()
        # Through the official client's own worker list.
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline:
            workers = await ep.get_workers()
            if workers and workers[0].status == "idle" and workers[0].measured_perf > 0:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"PyWorker never became idle with measured_perf > 0: {workers}")
        print(f"    PyWorker ready in {time.monotonic() - t0:.1f} s, "
              f"measured_perf {workers[0].measured_perf:.0f}")
        wid = workers[0].id
        # It really is PyWorker in that instance.
        procs = procs_under(cp.instance_dir(wid))
        assert any("pyworker_launcher.py" in cmd for cmd in procs.values()), procs
        assert not any(re.search(r"ferry\S* worker\b", cmd) for cmd in procs.values()), procs
        raw = await cp.workers(me.id)
        assert raw[0]["workergroup_id"] == wg, raw
        url = raw[0]["url"]
        ports = json.loads((cp.instance_dir(wid) / "ports.json").read_text())
        assert url == f"http://127.0.0.1:{ports['worker']}", (url, ports)

        rs = await asyncio.gather(*(ep.request("/v1/completions", completion(n), cost=n) for n in (1, 4, 9)))
        for r, n in zip(rs, (1, 4, 9)):
            check_completion(r, n, url=url)
        rs = await ep.request("/v1/completions", completion(5, stream=True), cost=5, stream=True)
        await check_stream(rs, 5)

        # PyWorker checks the route signature with the key it fetched from ferry control.
        good = rs["auth_data"]
        body = {"auth_data": good, "payload": completion(2)}
        st, resp = await http("POST", f"{url}/v1/completions", body)
        assert st == 200 and resp["choices"][0]["text"].split() == tokens(2), (st, resp)
        forged = {**good, "signature": base64.b64encode(b"\0" * 256).decode()}
        st, _ = await http("POST", f"{url}/v1/completions", {"auth_data": forged, "payload": completion(2)})
        assert st == 401, f"PyWorker accepted a forged signature ({st})"
        other = {**good, "url": "http://127.0.0.1:1"}  # a grant for another worker
        st, _ = await http("POST", f"{url}/v1/completions", {"auth_data": other, "payload": completion(2)})
        assert st == 401, f"PyWorker accepted a grant signed for another url ({st})"

        # A session through the official client and the official worker.
        s = await asyncio.wait_for(ep.session(cost=10, lifetime=30), 30)
        assert s.url == url, (s.url, url)
        check_completion(await s.request("/v1/completions", completion(3), cost=3), 3, url=url, session=True)
        auth = {"session_id": s.session_id, "session_auth": s.auth_data}
        assert await http("POST", f"{url}/session/health", auth) == (200, {"ok": True})
        await s.close()
        assert await http("POST", f"{url}/session/health", auth) == (200, {"ok": False})

        # Unknown route: PyWorker's 404 comes back as a final answer.
        r = await asyncio.wait_for(ep.request("/no/such/route", {"x": 1}, cost=1), 20)
        assert r["ok"] is False and r["status"] == 404, r

        # Its reports carry the load it served.
        await cp.wait_workers(
            me.id, lambda ws: ws[0]["status"] == "idle" and ws[0]["reqs_working"] == 0,
            "the PyWorker to report idle again",
        )


async def test_mixed_fleet(cp: Control) -> None:
    """One endpoint, a `ferry worker` group and a PyWorker group: requests land on both."""
    async with vast_client(cp) as c:
        me = await new_endpoint(c, "t5", cold_workers=2, max_workers=2)
        model = SIM_DELAY_CMD % 5
        wg_ferry = await me.add_workergroup(
            max_workers=1, launch_args=json.dumps({"model_cmd": model, "env": FERRY_BENCH_ENV})
        )
        wg_py = await me.add_workergroup(
            max_workers=1, launch_args=json.dumps({"model_cmd": model, "worker_cmd": PYWORKER_CMD})
        )
        ep = await c.get_endpoint("t5")
        ws = await cp.wait_workers(me.id, idle(2), "a ferry worker and a PyWorker to be idle")
        by_group = {w["workergroup_id"]: w for w in ws}
        assert set(by_group) == {wg_ferry, wg_py}, ws
        kind = {by_group[wg_ferry]["url"]: "ferry worker", by_group[wg_py]["url"]: "PyWorker"}
        perf = {kind[w["url"]]: round(w["measured_perf"]) for w in ws}

        counts = {"ferry worker": 0, "PyWorker": 0}
        total = 0
        for _ in range(3):  # bursts of concurrent requests until both served (normally one)
            sizes = [2 + (i % 7) for i in range(24)]
            rs = await asyncio.wait_for(
                asyncio.gather(*(ep.request("/v1/completions", completion(n), cost=n) for n in sizes)),
                60,
            )
            for r, n in zip(rs, sizes):
                check_completion(r, n)
                assert r["url"] in kind, (r["url"], kind)
                counts[kind[r["url"]]] += 1
            total += len(rs)
            if all(counts.values()):
                break
        print(f"    {total} requests: {counts}; measured_perf {perf}")
        assert all(counts.values()), f"requests did not land on both workers: {counts}"
        rs = await ep.request("/v1/completions", completion(4, stream=True), cost=4, stream=True)
        await check_stream(rs, 4)


async def test_openai_gateway(cp: Control) -> None:
    """The `openai` package against Ferry's OpenAI-compatible gateway."""
    import openai
    from openai import AsyncOpenAI

    async with vast_client(cp) as c:
        me = await new_endpoint(c, "t6", cold_workers=1, max_workers=1)
        await me.add_workergroup()
        ep = await c.get_endpoint("t6")
    oa = AsyncOpenAI(base_url=f"{cp.url}/t6/v1", api_key=ep.api_key, max_retries=0, timeout=60)
    try:
        # First call before any worker is ready: the gateway holds it until one is.
        r = await oa.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        assert r.choices[0].message.content.split() == tokens(5), r
        assert r.choices[0].finish_reason == "length", r
        assert r.usage is not None and r.usage.completion_tokens == 5, r.usage

        stream = await oa.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True
        )
        parts, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        assert "".join(parts).split() == tokens(6), parts
        assert sum(1 for p in parts if p.strip()) == 6, parts
        assert finish == "length", finish

        models = await oa.models.list()
        assert [m.id for m in models.data] == ["t6"], models

        r = await oa.completions.create(model="m", prompt="hello", max_tokens=7)
        assert r.choices[0].text.split() == tokens(7), r
        assert r.usage is not None and r.usage.completion_tokens == 7, r.usage

        stream = await oa.completions.create(model="m", prompt="hello", max_tokens=3, stream=True)
        texts = [ch.choices[0].text async for ch in stream if ch.choices]
        assert "".join(texts).split() == tokens(3), texts

        rs = await asyncio.gather(
            *(oa.completions.create(model="m", prompt="hi", max_tokens=n) for n in range(1, 9))
        )
        for n, r in enumerate(rs, start=1):
            assert r.choices[0].text.split() == tokens(n), (n, r)

        bad = AsyncOpenAI(base_url=f"{cp.url}/t6/v1", api_key="wrong", max_retries=0)
        try:
            await bad.completions.create(model="m", prompt="x", max_tokens=1)
        except openai.AuthenticationError:
            pass
        else:
            raise AssertionError("the gateway accepted a wrong api key")
        finally:
            await bad.close()
    finally:
        await oa.close()


async def test_official_cli(cp: Control) -> None:
    """Vast's own `vastai` CLI against ferry control: `get endpt-logs`, `get wrkgrp-logs` and
    `update workers` (a rolling update that replaces both workers), and a refused call that
    prints its reason instead of `None`."""
    vastai = Path(sys.executable).parent / "vastai"
    assert vastai.exists(), f"vastai CLI not in the peer venv: {vastai}"

    def cli(*args: str, key: str = KEY) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(vastai), "--url", cp.url, "--api-key", key, *args],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    status, body = await http(
        "POST", f"{cp.url}/api/v0/endptjobs/",
        {"endpoint_name": "t7", "cold_workers": 2, "max_workers": 3, "cold_mult": 1.0},
        headers={"Authorization": f"Bearer {KEY}"},
    )  # fmt: skip
    assert status == 200, (status, body)
    ep = body["result"]
    status, body = await http(
        "POST", f"{cp.url}/api/v0/workergroups/", {"endpoint_id": ep},
        headers={"Authorization": f"Bearer {KEY}"},
    )  # fmt: skip
    assert status == 200, (status, body)
    wg = body["id"]
    before = {w["id"] for w in await cp.wait_workers(ep, idle(2), "two idle workers")}

    r = cli("get", "endpt-logs", str(ep), "--level", "1")
    assert r.returncode == 0, r
    assert "autoscaler: launch 2 worker(s)" in r.stdout, r.stdout
    assert "-> idle" in r.stdout, r.stdout

    r = cli("update", "workers", str(wg))
    assert r.returncode == 0 and f"Update started for workergroup {wg} (2 workers)" in r.stdout, r
    ws = await cp.wait_workers(
        ep, lambda ws: not before & {w["id"] for w in ws} and idle(2)(ws),
        "both workers replaced by ready new ones",
    )  # fmt: skip
    print(f"    rolling update: {sorted(before)} -> {sorted(w['id'] for w in ws)}")
    deadline = time.monotonic() + 30
    while True:
        r = cli("get", "wrkgrp-logs", str(wg), "--level", "0")
        assert r.returncode == 0, r
        if "rolling update finished" in r.stdout or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert "rolling update started: 2 worker(s) to replace" in r.stdout, r.stdout
    assert r.stdout.strip().endswith("rolling update finished"), r.stdout

    # A refused call prints the control plane's reason (Vast's `msg`), not `None`.
    r = cli("show", "endpoints", key="wrong-key")
    out = r.stdout + r.stderr
    assert "Failed with error 401: Authentication failed" in out, out
    assert "Traceback" not in out, out


async def test_pyworker_joins(cp: Control) -> None:
    """An unmodified official PyWorker started by hand on "another host" joins an external
    workergroup through `ferry join` (the documented shim): registers, reports ready under the
    id it was given, verifies grants and serves requests routed by the official client."""
    async with vast_client(cp) as c:
        me = await new_endpoint(c, "t8", cold_workers=1, max_workers=1)
        await me.add_workergroup(launch_args=json.dumps({"provider": "external"}))
        groups = (await http("GET", f"{cp.url}/api/v0/workergroups/", headers={"Authorization": f"Bearer {KEY}"}))[1]
        wg = [g for g in groups["results"] if g["endpoint_id"] == me.id][0]["id"]
        st, made = await http(
            "POST", f"{cp.url}/api/v0/workergroups/{wg}/join_tokens/", {"label": "pyworker"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert st == 200, (st, made)
        # The autoscaler wants one worker and launches nothing itself.
        ws = await cp.wait_workers(me.id, lambda ws: len(ws) == 1, "a placeholder")
        assert ws[0]["status"] == "creating", ws
        placeholder = ws[0]["id"]

        host = cp.dir / "other-host"
        host.mkdir()
        model_port, worker_port = free_port(), free_port()
        url = f"http://127.0.0.1:{worker_port}"
        out = subprocess.run(
            [str(FERRY), "join", "--url", cp.url, "--token", made["token"], "--worker-url", url],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        env = dict(os.environ)
        for line in out.stdout.splitlines():
            k, v = line.removeprefix("export ").split("=", 1)
            env[k] = shlex.split(v)[0]
        assert int(env["CONTAINER_ID"]) == placeholder, (env["CONTAINER_ID"], placeholder)
        log = host / "model.log"
        env.update({
            "WORKER_PORT": str(worker_port), "PUBLIC_IPADDR": "127.0.0.1",
            f"VAST_TCP_PORT_{worker_port}": str(worker_port), "MODEL_LOG": str(log),
            "PYW_MODEL_PORT": str(model_port), "PYW_HEALTH": "/health",
            "WORKER_HTTP_PORT": str(free_port()),
        })
        procs = [
            subprocess.Popen(
                [str(FERRY), "sim-model", "--listen", f"127.0.0.1:{model_port}", "--log-file", str(log)],
                cwd=host, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [PY, str(LAUNCHER)], cwd=host, env=env,
                stdout=open(host / "pyworker.out", "wb"), stderr=subprocess.STDOUT,
            ),
        ]
        try:
            ws = await cp.wait_workers(me.id, idle(1), "the joined PyWorker to be ready", timeout=90)
            assert ws[0]["id"] == placeholder and ws[0]["url"] == url, ws
            ep = await c.get_endpoint("t8")
            rs = await asyncio.gather(*(ep.request("/v1/completions", completion(n), cost=n) for n in (2, 5)))
            for r, n in zip(rs, (2, 5)):
                check_completion(r, n, url=url)
            # It checks grants with the key it fetched from ferry control.
            forged = {**rs[0]["auth_data"], "signature": base64.b64encode(b"\0" * 256).decode()}
            st, _ = await http("POST", f"{url}/v1/completions", {"auth_data": forged, "payload": completion(2)})
            assert st == 401, f"the joined PyWorker accepted a forged signature ({st})"
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


TESTS = [
    test_official_client_requests,
    test_official_client_session,
    test_retry_through_dying_worker,
    test_pyworker_registers,
    test_mixed_fleet,
    test_openai_gateway,
    test_official_cli,
    test_pyworker_joins,
]

# ---------------------------------------------------------------------------------------------
# Runner


async def run_one(test, keep: bool) -> tuple[bool, float]:
    name = test.__name__
    t0 = time.monotonic()
    cp = Control(name.removeprefix("test_"))
    ok = False
    err = ""
    phases: list[str] = []
    stop_s = 0.0
    try:
        await cp.start()
        phases.append(f"start {time.monotonic() - t0:.1f}")
        t1 = time.monotonic()
        await asyncio.wait_for(test(cp), TEST_TIMEOUT)
        phases.append(f"test {time.monotonic() - t1:.1f}")
        ok = True
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, asyncio.TimeoutError):
            err = f"timed out after {TEST_TIMEOUT:.0f} s\n" + traceback.format_exc()
        else:
            err = traceback.format_exc()
    finally:
        t2 = time.monotonic()
        await cp.stop()
        stop_s = time.monotonic() - t2
        phases.append(f"stop {stop_s:.1f}")
    control_log = cp.dir / "control.log"
    if ok and control_log.exists() and SIGKILL_MARK in control_log.read_text(errors="ignore"):
        # Idle workers exit on SIGTERM once their last reports get through; a SIGKILL after the
        # whole --stop-grace-s means they were left retrying (a behaviour check, not a timing one).
        ok = False
        err += (
            f"`ferry control` had to SIGKILL its workers after the stop grace ({stop_s:.1f} s "
            "to stop): they did not exit on SIGTERM\n"
        )
    if cp.leftovers:
        ok = False
        err += "processes outlived `ferry control` (killed now):\n" + "\n".join(
            f"  {pid}: {cmd}" for pid, cmd in cp.leftovers.items()
        )
    dt = time.monotonic() - t0
    if ok:
        print(f"PASS {name} ({dt:.1f} s: {', '.join(phases)})", flush=True)
        if not keep:
            import shutil

            shutil.rmtree(cp.dir, ignore_errors=True)
    else:
        print(f"FAIL {name} ({dt:.1f} s: {', '.join(phases)})\n{err}\n{cp.logs()}", flush=True)
        print(f"    (state dir kept: {cp.dir})", flush=True)
    return ok, dt


async def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    pats = [argv[i + 1] for i, a in enumerate(argv) if a == "-k" and i + 1 < len(argv)]
    tests = [t for t in TESTS if not pats or any(p in t.__name__ for p in pats)]
    lines, problems = peer_versions()
    print("Real peers exercised:")
    for line in lines:
        print(f"  {line}")
    print(f"  ferry: {FERRY}")
    if problems:
        for p in problems:
            print(f"ERROR: {p}")
        print(f"0 passed, {len(tests) or 1} failed")
        return 1
    if not tests:
        print(f"ERROR: no test matches {pats}")
        print("0 passed, 1 failed")
        return 1
    t0 = time.monotonic()
    passed = failed = 0
    for t in tests:
        ok, _ = await run_one(t, keep)
        passed += ok
        failed += not ok
    print(f"total {time.monotonic() - t0:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
