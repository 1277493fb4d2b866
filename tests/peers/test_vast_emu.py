"""Wire fidelity of Ferry's Vast REST API emulator (crates/vast-emu) with Vast's official
`vastai` package: its own instance and offer functions (`vastai.api.offers`,
`vastai.api.instances`), its `VastClient`, its `SyncClient`, its `VastAI` SDK class and the
`vastai` command, pointed at the emulator's URL, unchanged and unpatched.

Run with the peers venv's python (scripts/vast-emu-tests.sh does this, building the emulator
first):

    $FERRY_PY tests/peers/test_vast_emu.py [-k SUBSTRING]... [--keep]

Plain Python, no pytest. Each test starts its own `ferry-vast-emu` on a free 127.0.0.1 port
(it prints its URL as its first line) with a fresh temporary `--state-dir` and a known
`--api-key`, and stops it at the end even on failure (SIGTERM; SIGKILL after a deadline). A
test passes only if, at its end, the emulator's ledger shows every instance it created
destroyed and no process running, and no process is left in its state dir after the stop.
The last line of output is `N passed, M failed`; the exit code is non-zero if anything
failed or a peer is missing.

Environment: FERRY_VAST_EMU_BIN (default <repo>/target/debug/ferry-vast-emu),
FERRY_PEER_TIMEOUT_S (per test, default 120).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMU = Path(os.environ.get("FERRY_VAST_EMU_BIN") or ROOT / "target" / "debug" / "ferry-vast-emu")
REQUIREMENTS = ROOT / "scripts" / "peers-requirements.txt"
KEY = "ferry-vast-emu-test-key"
TEST_TIMEOUT = float(os.environ.get("FERRY_PEER_TIMEOUT_S", "120"))
PY = sys.executable

# The emulator is on loopback: never through a proxy (requests honours *_PROXY).
os.environ["NO_PROXY"] = ",".join(
    x for x in ("127.0.0.1", "localhost", os.environ.get("NO_PROXY", "")) if x
)
os.environ["no_proxy"] = os.environ["NO_PROXY"]

# Offers of the built-in catalogue (crates/vast-emu/src/catalogue.json).
RTX_3060 = 31000101
RTX_3090 = 31000108
RTX_4090 = 31000115
RTX_4090_X2 = 31000122
RTX_A6000 = 31000129
A100 = 31000136
H100 = 31000143

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
    try:
        v = importlib.metadata.version("vastai")
        if pinned.get("vastai") not in (None, v):
            problems.append(f"peer vastai is {v}, scripts/peers-requirements.txt pins {pinned['vastai']}")
        import vastai.api.instances as inst_mod
        import vastai.api.offers as offers_mod

        lines.append(f"vastai {v}: {offers_mod.__file__}, {inst_mod.__file__}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"peer missing: cannot import vastai's api modules: {e!r}")
    if not (EMU.is_file() and os.access(EMU, os.X_OK)):
        problems.append(f"missing emulator binary {EMU} (cargo build -p ferry-vast-emu)")
    lines.append(f"python {sys.version.split()[0]} ({PY})")
    return lines, problems


# ---------------------------------------------------------------------------------------------
# The emulator process


# Shared with the other peer suites: processes under a folder, log tails, die with the parent.
from test_official import _die_with_parent, procs_under, tail  # noqa: E402


class Emu:
    """One `ferry-vast-emu` process with its own state dir."""

    def __init__(self, name: str):
        self.name = name
        self.extra: list[str] = []
        self.dir = Path(tempfile.mkdtemp(prefix=f"ferry-vast-emu-{name}-"))
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.leftovers: dict[int, str] = {}
        self.final_ledger: dict | None = None

    def start(self) -> None:
        args = [
            str(EMU),
            "--listen", "127.0.0.1:0",
            "--api-key", KEY,
            "--boot-delay-ms", "200",
            "--stop-grace-ms", "2000",
            "--state-dir", str(self.dir / "state"),
            *self.extra,
        ]  # fmt: skip
        with open(self.dir / "emu.log", "ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("http://127.0.0.1:"):
            raise AssertionError(
                f"ferry-vast-emu printed no URL (got {line!r}, exit {self.proc.poll()}):\n"
                + tail(self.dir / "emu.log", 30)
            )
        self.url = line

    def stop(self) -> None:
        """SIGTERM (the emulator stops its instances' processes), SIGKILL after 20 s; then kill
        anything left in the state dir and remember it."""
        p = self.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(Exception):
                self.final_ledger = self.ledger()
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.leftovers[p.pid] = "ferry-vast-emu (did not exit within 20 s of SIGTERM)"
        for _ in range(20):
            if not procs_under(self.dir):
                break
            time.sleep(0.1)
        for pid, cmd in procs_under(self.dir).items():
            self.leftovers[pid] = cmd
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- the emulator's own routes (no key) --

    def admin(self, path: str, body: dict | None = None) -> dict:
        import requests

        r = requests.post(f"{self.url}{path}", json=body or {}, timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def ledger(self) -> dict:
        import requests

        r = requests.get(f"{self.url}/_emu/ledger", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def knobs(self) -> dict:
        import requests

        return requests.get(f"{self.url}/_emu/knobs", timeout=10).json()


# ---------------------------------------------------------------------------------------------
# Helpers


def client(emu: Emu, key: str = KEY, retry: int = 3):
    from vastai.api.client import VastClient

    return VastClient(api_key=key, server_url=emu.url, retry=retry)


def wait_for(what: str, fetch, pred, timeout: float = 20):
    """Calls `fetch()` until `pred(value)` holds; returns the value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = fetch()
        if pred(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")


def wait_status(c, iid: int, status: str) -> dict:
    from vastai.api import instances as inst_api

    return wait_for(
        f"instance {iid} {status}",
        lambda: inst_api.show_instance(c, iid),
        lambda row: row is not None and row["actual_status"] == status,
    )


def http_get(url: str, timeout: float = 2) -> str:
    import requests

    r = requests.get(url, timeout=timeout)
    r.raise_for_status()
    return r.text


def raises_http(status: int, fn, *args, **kwargs):
    """`fn(...)` must raise requests' HTTPError with `status`; returns the response."""
    import requests

    try:
        fn(*args, **kwargs)
    except requests.HTTPError as e:
        assert e.response is not None and e.response.status_code == status, (
            status,
            e.response.status_code if e.response is not None else None,
            e.response.text if e.response is not None else "",
        )
        return e.response
    raise AssertionError(f"expected HTTP {status} from {fn.__name__}, got no error")


def offer_ids(offers) -> list[int]:
    return [o["id"] if isinstance(o, dict) else o.id for o in offers]


# ---------------------------------------------------------------------------------------------
# Tests


def test_search_offers(emu: Emu) -> None:
    """search_offers / search_offers_new with query dicts, the SDK class with a query string,
    interruptible offers, and SyncClient.search with the Query/Column builders."""
    from vastai import VastAI
    from vastai.api import offers as offers_api
    from vastai.data.query import Column, Query
    from vastai.sync.client import SyncClient

    c = client(emu)
    offers = offers_api.search_offers(
        c, query={"gpu_ram": {"gte": 24000}, "num_gpus": {"eq": 1}},
        order=[["dph_total", "asc"]], limit=3,
    )  # fmt: skip
    assert offer_ids(offers) == [RTX_3090, RTX_4090, RTX_A6000], offer_ids(offers)
    assert all(o["gpu_ram"] >= 24000 and o["num_gpus"] == 1 for o in offers)
    assert all(o["verified"] and o["rentable"] and not o["rented"] for o in offers)

    # The CLI's query language, parsed by the SDK (gpu_ram in GB there, MB on the wire).
    sdk = VastAI(api_key=KEY, server_url=emu.url)
    found = sdk.search_offers("gpu_ram>=24 num_gpus=1 reliability>0.995", order="dph_total")
    assert offer_ids(found) == [RTX_4090, RTX_A6000, A100, H100], offer_ids(found)
    assert all("datacenter" in o for o in found)
    by_score = sdk.search_offers("num_gpus=2")
    assert offer_ids(by_score) == [RTX_4090_X2], offer_ids(by_score)

    new = offers_api.search_offers_new(c, query={"gpu_name": {"eq": "H100 SXM"}})
    assert offer_ids(new) == [H100], offer_ids(new)

    bids = offers_api.search_offers(c, query={"gpu_name": {"eq": "RTX 3060"}}, offer_type="interruptible")
    assert offer_ids(bids) == [RTX_3060] and bids[0]["is_bid"] is True, bids
    assert bids[0]["dph_total"] == bids[0]["min_bid"]

    sc = SyncClient(api_key=KEY, vast_server=emu.url)
    typed = sc.search(Query.search_defaults().extend(Column("gpu_name") == "RTX 4090"),
                      order=[["dph_total", "asc"]])  # fmt: skip
    assert [o.id for o in typed] == [RTX_4090, RTX_4090_X2], typed
    assert typed[0].gpu_ram == 24564 and typed[0].machine_id is not None


def test_instance_lifecycle(emu: Emu) -> None:
    """create_instance → show_instance(s) → a real process serving on $VAST_TCP_PORT_3000 →
    label → stop → start (same port) → destroy, all through vastai.api.instances."""
    from vastai.api import instances as inst_api
    from vastai.api import offers as offers_api
    from vastai.data.instance import Instance

    c = client(emu)
    offer = offers_api.search_offers(c, query={"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1}})[0]
    # The process serves its own env over HTTP on the port Vast gives it (no NAT: it listens
    # on the loopback port itself).
    onstart = (f"env > env.txt; exec {shlex.quote(PY)} -m http.server "
               "$VAST_TCP_PORT_3000 --bind 127.0.0.1")  # fmt: skip
    created = inst_api.create_instance(
        c, offer["id"], image="vastai/base-image:@vastai-automatic-tag", disk=16,
        env="-e FOO=bar -e GREETING='hello there' -p 3000:3000", label="emu-fidelity",
        onstart_cmd=onstart,
    )  # fmt: skip
    assert created["success"] is True, created
    iid = created["new_contract"]
    assert isinstance(iid, int)
    assert offer["id"] not in offer_ids(offers_api.search_offers(c, query={}))

    row = inst_api.show_instance(c, iid)
    assert row["actual_status"] == "loading", row
    row = wait_status(c, iid, "running")
    assert row["intended_status"] == "running" and row["cur_state"] == "running", row
    assert row["label"] == "emu-fidelity" and row["machine_id"] == offer["machine_id"], row
    assert row["gpu_name"] == "RTX 4090" and row["dph_total"] == offer["dph_total"], row
    assert row["extra_env"]["FOO"] == "bar" and row["extra_env"]["GREETING"] == "hello there"
    assert row["duration"] >= 0 and row["image_uuid"].startswith("vastai/base-image")
    inst = Instance.from_dict(row)
    assert inst.id == iid and inst.public_ipaddr == "127.0.0.1"
    port = int(row["ports"]["3000/tcp"][0]["HostPort"])
    env = wait_for("the on-start server", lambda: _try_get(f"http://{row['public_ipaddr']}:{port}/env.txt"),
                   lambda t: t is not None)  # fmt: skip
    for line in (f"CONTAINER_ID={iid}", f"VAST_CONTAINERLABEL=C.{iid}", "PUBLIC_IPADDR=127.0.0.1",
                 f"VAST_TCP_PORT_3000={port}", "FOO=bar", "GREETING=hello there"):  # fmt: skip
        assert line in env.splitlines(), (line, env)

    rows = inst_api.show_instances(c)
    assert [r["id"] for r in rows] == [iid], rows
    assert rows[0]["extra_env"]["FOO"] == "bar"

    assert inst_api.label_instance(c, iid, "renamed")["success"] is True
    assert inst_api.show_instance(c, iid)["label"] == "renamed"

    assert inst_api.stop_instance(c, iid) == {"success": True}
    row = inst_api.show_instance(c, iid)
    assert row["intended_status"] == "stopped", row
    wait_status(c, iid, "stopped")
    assert _try_get(f"http://127.0.0.1:{port}/env.txt") is None, "stopped, yet still serving"

    assert inst_api.start_instance(c, iid) == {"success": True}
    row = wait_status(c, iid, "running")
    assert int(row["ports"]["3000/tcp"][0]["HostPort"]) == port, "a restart keeps the port"
    wait_for("the on-start server again", lambda: _try_get(f"http://127.0.0.1:{port}/env.txt"),
             lambda t: t is not None)  # fmt: skip

    assert inst_api.destroy_instance(c, iid) == {"success": True}
    assert inst_api.show_instance(c, iid) is None
    assert inst_api.show_instances(c) == []
    assert offer["id"] in offer_ids(offers_api.search_offers(c, query={}))
    wait_for("no process left", emu.ledger, lambda l: not l["processes"])  # noqa: E741


def _try_get(url: str) -> str | None:
    try:
        return http_get(url, timeout=1)
    except Exception:  # noqa: BLE001
        return None


def test_sync_client_and_sdk(emu: Emu) -> None:
    """SyncClient: search → SyncOffer.create_instance(InstanceConfig) → SyncInstance (found
    again through show_instances) → destroy; the VastAI SDK class's instance methods."""
    from vastai import VastAI
    from vastai.data.instance import InstanceConfig
    from vastai.data.query import Column, Query
    from vastai.sync.client import SyncClient

    sc = SyncClient(api_key=KEY, vast_server=emu.url)
    offer = sc.search(Query.search_defaults().extend(Column("gpu_name") == "RTX 3090"))[0]
    inst = offer.create_instance(InstanceConfig(
        image="vastai/base-image", label="sync", onstart="exec sleep 60",
        env={"-p 8000:8000": "1"}, disk=20,
    ))  # fmt: skip
    assert inst.label == "sync" and inst.machine_id == offer.machine_id, inst
    assert inst.actual_status in ("loading", "running"), inst
    assert "8000/tcp" in inst.ports, inst
    assert [i.id for i in sc.show_instances()] == [inst.id]

    sdk = VastAI(api_key=KEY, server_url=emu.url)
    made = sdk.create_instance(RTX_A6000, image="vastai/base-image", label="sdk",
                               onstart_cmd="exec sleep 60")  # fmt: skip
    sid = made["new_contract"]
    c = client(emu)
    wait_status(c, sid, "running")
    assert sdk.show_instance(sid)["label"] == "sdk"
    assert sorted(r["id"] for r in sdk.show_instances()) == sorted([inst.id, sid])
    assert sdk.stop_instance(sid)["success"] is True
    wait_status(c, sid, "stopped")
    assert sdk.start_instance(sid)["success"] is True
    wait_status(c, sid, "running")
    assert sdk.label_instance(sid, "sdk2")["success"] is True
    assert sdk.destroy_instance(sid)["success"] is True
    inst.destroy()
    assert sc.show_instances() == []


def test_paging_bulk_and_offers_file(emu: Emu) -> None:
    """30 instances from an --offers file: show_instances follows next_token over two pages;
    stop, start and destroy them with the list forms."""
    from vastai.api import instances as inst_api
    from vastai.api import offers as offers_api

    c = client(emu)
    offers = offers_api.search_offers(c, query={}, order=[["id", "asc"]], limit=64)
    assert offer_ids(offers) == list(range(9001, 9031)), offer_ids(offers)
    ids = [inst_api.create_instance(c, o["id"], image="i", label=f"n{o['id']}")["new_contract"]
           for o in offers]  # fmt: skip
    rows = inst_api.show_instances(c)
    assert [r["id"] for r in rows] == sorted(ids), len(rows)
    page = inst_api.show_instances_v1(c, {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}],
                                          "limit": 25})  # fmt: skip
    assert len(page["instances"]) == 25 and page["next_token"] and page["total_instances"] == 30
    labelled = inst_api.show_instances(c, select_filters={"label": {"in": ["n9003", "n9007"]}},
                                       order_by=[{"col": "id", "dir": "desc"}])  # fmt: skip
    assert [r["label"] for r in labelled] == ["n9007", "n9003"], labelled
    assert offers_api.search_offers(c, query={}) == []
    assert inst_api.stop_instance(c, ids[:10])["success"] is True
    for iid in ids[:10]:
        wait_status(c, iid, "stopped")
    assert inst_api.start_instance(c, ids[:10])["success"] is True
    assert inst_api.destroy_instance(c, ids)["success"] is True
    assert inst_api.show_instances(c) == []
    assert len(offers_api.search_offers(c, query={}, limit=64)) == 30


def test_errors_and_retries(emu: Emu) -> None:
    """Vast's error answers as the client sees them (401, 404/410 no_such_ask, 429 with
    Retry-After, 503, connection resets), and VastClient's own retries riding out short ones."""
    import requests
    from vastai.api import instances as inst_api
    from vastai.api import offers as offers_api

    c = client(emu)
    raises_http(401, offers_api.search_offers, client(emu, key="wrong"))

    iid = inst_api.create_instance(c, RTX_3090, image="i")["new_contract"]
    r = raises_http(410, inst_api.create_instance, c, RTX_3090, image="i")
    body = r.json()
    assert body["success"] is False and body["error"] == "no_such_ask" and body["ask_id"] == RTX_3090, body
    assert raises_http(404, inst_api.create_instance, c, 4242, image="i").json()["error"] == "no_such_ask"

    emu.admin("/_emu/steal", {"offer_id": RTX_A6000})
    raises_http(410, inst_api.create_instance, c, RTX_A6000, image="i")
    stolen_then_free = inst_api.create_instance(c, RTX_A6000, image="i")["new_contract"]

    # Two 429s: VastClient waits out each Retry-After (1 s) and the third attempt succeeds.
    emu.admin("/_emu/rate-limit", {"next": 2})
    assert offer_ids(offers_api.search_offers(c, query={"gpu_name": {"eq": "H100 SXM"}})) == [H100]
    assert emu.knobs()["rate_limit_next"] == 0
    # More 429s than its attempts: the last one reaches the caller, with Retry-After.
    emu.admin("/_emu/rate-limit", {"next": 3})
    r = raises_http(429, offers_api.search_offers, c)
    assert r.headers["Retry-After"] == "1" and "detail" in r.json()

    # A long outage: 503 after the client's retries; a short one: ridden out.
    emu.admin("/_emu/outage", {"ms": 60000, "mode": "503"})
    raises_http(503, inst_api.show_instances, c)
    emu.admin("/_emu/outage", {"ms": 200, "mode": "503"})
    assert [r["id"] for r in inst_api.show_instances(c)] == [iid, stolen_then_free]

    emu.admin("/_emu/outage", {"ms": 60000, "mode": "reset"})
    try:
        inst_api.show_instance(c, iid)
        raise AssertionError("a reset-mode outage answered")
    except requests.ConnectionError:
        pass
    emu.admin("/_emu/outage", {"ms": 200, "mode": "reset"})
    assert inst_api.show_instance(c, iid)["id"] == iid

    raises_http(404, inst_api.stop_instance, c, 777)
    raises_http(404, inst_api.destroy_instance, c, 777)
    assert inst_api.show_instance(c, 777) is None
    inst_api.destroy_instance(c, [iid, stolen_then_free])


def test_boot_failures_and_preemption(emu: Emu) -> None:
    """What the failure knobs look like through show_instance."""
    from vastai.api import instances as inst_api

    c = client(emu)
    emu.admin("/_emu/fail-boots", {"count": 1, "mode": "exit"})
    a = inst_api.create_instance(c, RTX_3090, image="i", onstart_cmd="exec sleep 60")["new_contract"]
    row = wait_status(c, a, "exited")
    assert row["status_msg"].startswith("Error"), row
    inst_api.start_instance(c, a)
    wait_status(c, a, "running")

    emu.admin(f"/_emu/preempt/{a}")
    row = wait_status(c, a, "stopped")
    assert row["intended_status"] == "running" and "outbid" in row["status_msg"], row

    emu.admin("/_emu/fail-boots", {"count": 1, "mode": "hang"})
    b = inst_api.create_instance(c, RTX_4090, image="i", onstart_cmd="exec sleep 60",
                                 price=0.2)["new_contract"]  # fmt: skip
    time.sleep(1.0)  # five boot delays
    row = inst_api.show_instance(c, b)
    assert row["actual_status"] == "loading" and row["is_bid"] is True, row
    assert [p["instance_id"] for p in emu.ledger()["processes"]] == [], emu.ledger()
    inst_api.destroy_instance(c, [a, b])


def test_official_cli(emu: Emu) -> None:
    """The `vastai` command itself (`--url` at the emulator): search, create, show, stop,
    start, label, destroy."""
    vastai = os.environ.get("FERRY_VASTAI") or str(Path(PY).parent / "vastai")
    home = emu.dir / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}

    def cli(*args: str) -> str:
        p = subprocess.run([vastai, "--url", emu.url, "--api-key", KEY, *args], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
        return p.stdout

    offers = json.loads(cli("search", "offers", "gpu_ram>=24 num_gpus=1", "-o", "dph_total", "--raw"))
    assert offer_ids(offers)[:2] == [RTX_3090, RTX_4090], offer_ids(offers)
    made = json.loads(cli("create", "instance", str(RTX_3090), "--image", "vastai/base",
                          "--env", "-e A=1 -p 3000:3000", "--onstart-cmd", "exec sleep 60",
                          "--label", "cli", "--raw"))  # fmt: skip
    assert made["success"] is True, made
    iid = made["new_contract"]
    c = client(emu)
    wait_status(c, iid, "running")
    rows = json.loads(cli("show", "instances", "--raw"))
    assert [r["id"] for r in rows] == [iid] and rows[0]["label"] == "cli", rows
    assert rows[0]["extra_env"]["A"] == "1" and "3000/tcp" in rows[0]["ports"], rows[0]
    assert f"stopping instance {iid}" in cli("stop", "instance", str(iid))
    wait_status(c, iid, "stopped")
    assert f"starting instance {iid}" in cli("start", "instance", str(iid))
    wait_status(c, iid, "running")
    assert "set to renamed" in cli("label", "instance", str(iid), "renamed")
    assert json.loads(cli("show", "instance", str(iid), "--raw"))["label"] == "renamed"
    cli("destroy", "instance", str(iid), "-y")
    assert json.loads(cli("show", "instance", str(iid), "--raw")) == {"instances": None}


TESTS = [
    test_search_offers,
    test_instance_lifecycle,
    test_sync_client_and_sdk,
    test_paging_bulk_and_offers_file,
    test_errors_and_retries,
    test_boot_failures_and_preemption,
    test_official_cli,
]


def emu_args(test, emu_dir: Path) -> list[str]:
    if test is test_paging_bulk_and_offers_file:
        path = emu_dir / "offers.json"
        offers = [
            {"id": 9001 + i, "machine_id": 7001 + i, "gpu_name": "T4", "num_gpus": 1,
             "gpu_ram": 15360, "dph_total": 0.1 + i / 1000, "reliability": 0.99,
             "verified": True, "rentable": True, "rented": False, "external": False}
            for i in range(30)
        ]  # fmt: skip
        path.write_text(json.dumps({"offers": offers}))
        return ["--offers", str(path)]
    return []


# ---------------------------------------------------------------------------------------------
# Runner


def run_one(test, keep: bool) -> bool:
    name = test.__name__
    t0 = time.monotonic()
    emu = Emu(name.removeprefix("test_"))
    emu.extra = emu_args(test, emu.dir)
    ok = False
    err = ""
    try:
        emu.start()
        result: list[BaseException | None] = [None]

        def body() -> None:
            try:
                test(emu)
            except BaseException as e:  # noqa: BLE001
                result[0] = e

        th = threading.Thread(target=body, daemon=True)
        th.start()
        th.join(TEST_TIMEOUT)
        if th.is_alive():
            raise AssertionError(f"timed out after {TEST_TIMEOUT:.0f} s")
        if result[0] is not None:
            raise result[0]
        ledger = emu.ledger()
        assert ledger["created"] == ledger["destroyed"] and not ledger["instances"], (
            f"instances left at the end: {ledger}"
        )
        ok = True
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        err = "".join(traceback.format_exception(e))
    finally:
        emu.stop()
    if emu.final_ledger is not None and emu.final_ledger["processes"]:
        ok = False
        err += f"processes running at the end: {emu.final_ledger['processes']}\n"
    if emu.leftovers:
        ok = False
        err += "processes outlived ferry-vast-emu (killed now):\n" + "\n".join(
            f"  {pid}: {cmd}" for pid, cmd in emu.leftovers.items()
        )
    dt = time.monotonic() - t0
    if ok:
        print(f"PASS {name} ({dt:.1f} s)", flush=True)
        if not keep:
            import shutil

            shutil.rmtree(emu.dir, ignore_errors=True)
    else:
        print(f"FAIL {name} ({dt:.1f} s)\n{err}\n--- {emu.dir}/emu.log (tail)\n{tail(emu.dir / 'emu.log', 30)}",
              flush=True)  # fmt: skip
        print(f"    (state dir kept: {emu.dir})", flush=True)
    return ok


def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    pats = [argv[i + 1] for i, a in enumerate(argv) if a == "-k" and i + 1 < len(argv)]
    tests = [t for t in TESTS if not pats or any(p in t.__name__ for p in pats)]
    lines, problems = peer_versions()
    print("Real peers exercised:")
    for line in lines:
        print(f"  {line}")
    print(f"  ferry-vast-emu: {EMU}")
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
        ok = run_one(t, keep)
        passed += ok
        failed += not ok
    print(f"total {time.monotonic() - t0:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
