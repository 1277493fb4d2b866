"""The Vast template kit (deploy/vast/start_server.sh and the release tarball) run as Vast would
run it: the Vast REST API emulator (`ferry-vast-emu`) boots instances whose on-start command
starts the model server in the background, as a template does, then runs
`deploy/vast/start_server.sh` unchanged, with the environment a Vast instance gets
(CONTAINER_ID, PUBLIC_IPADDR, VAST_TCP_PORT_*, REPORT_ADDR, MASTER_TOKEN, ...). The tarball
is served from a local HTTP server on 127.0.0.1.

Run through scripts/vast-kit-tests.sh, or directly:

    python3 tests/vast_kit/test_vast_kit.py --tarball dist/ferry-<v>-x86_64-linux-gnu.tar.gz \
        [-k SUBSTRING]... [--keep]

Plain Python (standard library only), no pytest. Each test gets its own emulator, file server,
state directory and, where it needs one, `ferry control`; all on loopback, each bounded by
FERRY_KIT_TIMEOUT_S (default 120). The last line of output is `N passed, M failed`.

Two artefacts of the emulator, not of the kit: it does no NAT, so the on-start sets WORKER_PORT
to the public port ($VAST_TCP_PORT_3000) the way a process behind Vast's port mapping would
not need to; and /workspace is the instance's own directory ($PWD/workspace), since instances
here are processes on one host. USE_SSL=false except in the USE_SSL test, whose certificate
signer is a local CA behind FERRY_SIGN_CERT_URL (Vast's is console.vast.ai).

Environment: FERRY_BIN (the `ferry` for the control plane and the model server, default
target/debug/ferry), FERRY_VAST_EMU_BIN (default target/debug/ferry-vast-emu).
"""

from __future__ import annotations

import argparse
import hashlib
import http.server as hs
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FERRY = Path(os.environ.get("FERRY_BIN") or ROOT / "target" / "debug" / "ferry")
EMU = Path(os.environ.get("FERRY_VAST_EMU_BIN") or ROOT / "target" / "debug" / "ferry-vast-emu")
START_SERVER = ROOT / "deploy" / "vast" / "start_server.sh"
TIMEOUT = float(os.environ.get("FERRY_KIT_TIMEOUT_S", "120"))
EMU_KEY = "kit-emu-key"
ACCT_KEY = "kit-account-key"

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, key: str | None = None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def until(what: str, pred, timeout: float = 60, every: float = 0.1, show=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{show()}")


def tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return f"--- {path} (last {n} lines)\n" + "\n".join(lines[-n:])


class Recorder(hs.ThreadingHTTPServer):
    """Serves files from `root` (GET, counted per path) and records POSTs (the fake REPORT_ADDR:
    /worker_status/ and /delete_requests/ answered 200 {})."""

    daemon_threads = True

    def __init__(self, root: Path | None = None, signer=None):
        self.root = root
        # POST /sign_cert/?instance_id=N with a CSR: signer(csr bytes) -> certificate PEM.
        self.signer = signer
        self.gets: dict[str, int] = {}
        self.posts: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def statuses(self) -> list[dict]:
        with self.lock:
            return [b for p, b in self.posts if p == "/worker_status/"]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(hs.BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *a) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        with self.server.lock:
            self.server.gets[self.path] = self.server.gets.get(self.path, 0) + 1
        f = (self.server.root / self.path.lstrip("/")) if self.server.root else None
        if f is None or not f.is_file():
            self.send_response(404)
            self.end_headers()
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.server.signer and self.path.startswith("/sign_cert/"):
            with self.server.lock:
                self.server.posts.append((self.path, {"csr": raw.decode(errors="replace")}))
            out = self.server.signer(raw)
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        with self.server.lock:
            self.server.posts.append((self.path, body))
        out = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_proc(p: subprocess.Popen | None, grace: float = 10) -> None:
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Emu:
    """A `ferry-vast-emu` process with its state dir under the test's dir."""

    def __init__(self, d: Path):
        self.dir = d / "emu"
        self.dir.mkdir()
        self.log = open(d / "emu.log", "wb")
        self.proc = subprocess.Popen(
            [str(EMU), "--api-key", EMU_KEY, "--state-dir", str(self.dir),
             "--boot-delay-ms", "100", "--stop-grace-ms", "3000"],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        line = self.proc.stdout.readline().decode().strip() if self.proc.stdout else ""
        if not line.startswith("http://"):
            raise AssertionError(f"ferry-vast-emu did not print its URL: {line!r}\n{tail(d / 'emu.log')}")
        self.url = line

    def api(self, method: str, path: str, body=None):
        return http(method, f"{self.url}{path}", body, key=EMU_KEY)

    def create(self, env: dict, onstart: str) -> int:
        status, r = self.api("POST", "/api/v0/bundles/", {"limit": 1, "order": [["dph_total", "asc"]]})
        assert status == 200 and r["offers"], (status, r)
        offer = r["offers"][0]["id"]
        env = {**env, "-p 3000:3000": "1", "-p 18000:18000": "1"}
        status, r = self.api("PUT", f"/api/v0/asks/{offer}/",
                             {"image": "ferry/kit:test", "env": env, "onstart": onstart,
                              "runtype": "ssh", "disk": 10})  # fmt: skip
        assert status == 200 and r.get("success"), (status, r)
        return int(r["new_contract"])

    def instance(self, iid: int) -> dict:
        status, r = self.api("GET", f"/api/v0/instances/{iid}/")
        assert status == 200, (status, r)
        return r["instances"] or {}

    def instance_dir(self, iid: int) -> Path:
        return self.dir / "instances" / str(iid)

    def ledger(self) -> dict:
        return http("GET", f"{self.url}/_emu/ledger")[1]

    def destroy_all(self) -> None:
        for i in self.ledger().get("instances", []):
            self.api("DELETE", f"/api/v0/instances/{i['id']}/")

    def stop(self) -> dict:
        self.destroy_all()
        until("no instance process left", lambda: not self.ledger().get("processes"), timeout=20)
        ledger = self.ledger()
        stop_proc(self.proc)
        self.log.close()
        return ledger


def onstart() -> str:
    """What a template's on-start does: the model server in the background, then Ferry's start
    script. The exports are the emulator's stand-ins (see the module docs)."""
    return f"""set -e
export WORKSPACE_DIR="$PWD/workspace" FERRY_ETC_ENVIRONMENT="$PWD/environment"
export FERRY_FORCE_UPDATE_FILE="$PWD/.force_update" MODEL_LOG="$PWD/model.log"
export WORKER_PORT="$VAST_TCP_PORT_3000" FERRY_LISTEN_HOST=127.0.0.1 WORKER_HTTP_PORT=0
export MODEL_SERVER_URL="http://127.0.0.1:$VAST_TCP_PORT_18000"
export FERRY_BENCHMARK_CACHE="$WORKSPACE_DIR/.has_benchmark"
{shlex.quote(str(FERRY))} sim-model --listen "127.0.0.1:$VAST_TCP_PORT_18000" >> model.out 2>&1 &
exec bash {shlex.quote(str(START_SERVER))}"""


def kit_env(release_url: str | None, sha: str | None, report_addr: str | None = None) -> dict:
    env = {"USE_SSL": "false", "BACKEND": "vllm", "FERRY_BENCHMARK_RUNS": "1",
           "FERRY_REPORT_TICK_MS": "100", "FERRY_HEARTBEAT_S": "1", "FERRY_SHUTDOWN_GRACE_S": "1",
           "PATH": "/usr/local/bin:/usr/bin:/bin"}  # fmt: skip
    if release_url is not None:
        env["FERRY_RELEASE_URL"] = release_url
    if sha is not None:
        env["FERRY_RELEASE_SHA256"] = sha
    if report_addr is not None:
        # What Vast's engine gives an instance; the control plane's provider sets these itself.
        env.update({"REPORT_ADDR": report_addr, "MASTER_TOKEN": "kit-mtoken", "UNSECURED": "true"})
    return env


class Ctx:
    def __init__(self, d: Path, tarball: Path):
        self.dir = d
        self.tarball = tarball
        self.sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
        files = d / "files"
        files.mkdir()
        shutil.copy(tarball, files / tarball.name)
        self.files = Recorder(files)
        self.reports = Recorder()
        self.release_url = f"{self.files.url}/{tarball.name}"
        self.emu = Emu(d)
        self.control: subprocess.Popen | None = None
        self.cp_url = ""

    def logs(self) -> str:
        out = [tail(self.dir / "emu.log", 10)]
        for d in sorted((self.emu.dir / "instances").glob("*")):
            out += [tail(d / "onstart.log"), tail(d / "workspace" / "pyworker.log", 10)]
        if self.control:
            out.append(tail(self.dir / "control.log"))
        return "\n".join(out)

    def start_control(self) -> None:
        port = free_port()
        self.cp_url = f"http://127.0.0.1:{port}"
        log = open(self.dir / "control.log", "wb")
        self.control = subprocess.Popen(
            [str(FERRY), "control", "--listen", f"127.0.0.1:{port}", "--public-url", self.cp_url,
             "--state-dir", str(self.dir / "control"), "--api-key", ACCT_KEY,
             "--autoscale-interval-ms", "200", "--stop-grace-s", "2", "--idle-stop-after-s", "600",
             "--vast-api-url", self.emu.url, "--vast-poll-interval-ms", "200",
             "--vast-load-deadline-s", "60"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "VAST_API_KEY": EMU_KEY, "FERRY_LOG": "info"},
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        until("ferry control healthy",
              lambda: self.control.poll() is None and _ok(f"{self.cp_url}/health"),
              timeout=30, show=lambda: tail(self.dir / "control.log"))  # fmt: skip

    def cp(self, method: str, path: str, body=None):
        status, r = http(method, f"{self.cp_url}{path}", body, key=ACCT_KEY)
        assert status == 200, (path, status, r)
        return r

    def close(self) -> dict:
        # A stopped control plane leaves its Vast instances running: the emulator's stop
        # destroys them.
        stop_proc(self.control)
        ledger = self.emu.stop()
        self.files.stop()
        self.reports.stop()
        return ledger


def _ok(url: str) -> bool:
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


def worker_url(ctx: Ctx, iid: int) -> str:
    inst = ctx.emu.instance(iid)
    port = inst["ports"]["3000/tcp"][0]["HostPort"]
    return f"http://127.0.0.1:{port}"


def completion(url: str, auth: dict | None = None) -> dict:
    auth = auth or {"cost": 8, "endpoint": "kit", "reqnum": 1, "request_idx": 1, "signature": "",
                    "url": url, "__request_id": "kit-1"}  # fmt: skip
    status, r = http("POST", f"{url}/v1/completions",
                     {"auth_data": auth, "payload": {"model": "sim", "prompt": "hi", "max_tokens": 4}},
                     timeout=30)  # fmt: skip
    assert status == 200, (status, r)
    assert r["choices"][0]["text"], r
    return r


def exited(ctx: Ctx, iid: int):
    i = ctx.emu.instance(iid)
    return i if i.get("actual_status") == "exited" else None


def error_reports(ctx: Ctx) -> list[dict]:
    return [b for b in ctx.reports.statuses() if b.get("error_msg")]


# --- the tests ----------------------------------------------------------------------------------


def test_good_tarball_serves_through_control_plane(ctx: Ctx) -> None:
    """A `ferry control` with the Vast provider rents an instance from the emulator; its
    on-start runs the start script, which fetches and checks the release, installs it and
    execs the worker; the worker reports to the control plane and a routed request goes
    through it."""
    ctx.start_control()
    ep = ctx.cp("POST", "/api/v0/endptjobs/",
                {"endpoint_name": "kit", "min_load": 1e9, "max_workers": 1, "cold_workers": 0,
                 "cold_mult": 1.0})["result"]  # fmt: skip
    ctx.cp("POST", "/api/v0/workergroups/", {
        "endpoint_id": ep, "provider": "vast", "image": "ferry/kit:test", "onstart": onstart(),
        "ports": [18000], "max_dph": 100.0, "backend": "openai",
        "env": kit_env(ctx.release_url, ctx.sha),
    })  # fmt: skip

    def idle():
        ws = http("POST", f"{ctx.cp_url}/get_endpoint_workers/", {"id": ep, "api_key": ACCT_KEY})[1]
        return ws if isinstance(ws, list) and any(w.get("status") == "idle" for w in ws) else None

    until("the worker ready in the control plane", idle, timeout=90, show=ctx.logs)
    key = _endpoint_key(ctx, "kit")
    status, grant = http("POST", f"{ctx.cp_url}/route/", {"endpoint": "kit", "cost": 4}, key=key)
    assert status == 200 and grant.get("url"), (status, grant)
    completion(grant["url"], grant)
    (inst,) = ctx.emu.ledger()["instances"]
    ws = ctx.emu.instance_dir(inst["id"]) / "workspace"
    debug = (ws / "debug.log").read_text()
    assert "Installed the Ferry release into" in debug, debug
    assert "launching Ferry worker" in debug, debug
    assert (ws / "pyworker.log").stat().st_size > 0
    assert (ws / "ferry" / ctx.sha / "bin" / "ferry-worker").is_file()
    assert ctx.files.gets.get(f"/{ctx.tarball.name}") == 1, ctx.files.gets


def _endpoint_key(ctx: Ctx, name: str) -> str:
    status, r = http("GET", f"{ctx.cp_url}/api/v0/endptjobs/", key=ACCT_KEY)
    assert status == 200, (status, r)
    for e in r.get("results", []):
        if e.get("endpoint_name") == name:
            return e["api_key"]
    raise AssertionError(f"endpoint {name} not listed: {r}")


def test_wrong_checksum_refused_and_reported(ctx: Ctx) -> None:
    wrong = hashlib.sha256(b"not the tarball").hexdigest()
    iid = ctx.emu.create(kit_env(ctx.release_url, wrong, ctx.reports.url), onstart())
    inst = until("the instance exited", lambda: exited(ctx, iid), timeout=60, show=ctx.logs)
    assert "status 1" in inst.get("status_msg", ""), inst
    errs = until("the error reported to REPORT_ADDR", lambda: error_reports(ctx), timeout=10)
    (e,) = errs
    assert "checksum mismatch" in e["error_msg"] and wrong in e["error_msg"] and ctx.sha in e["error_msg"], e
    assert e["id"] == iid and e["mtoken"] == "kit-mtoken" and set(e) == {"id", "mtoken", "version", "error_msg", "url"}, e
    ws = ctx.emu.instance_dir(iid) / "workspace"
    assert not (ws / "ferry" / wrong).exists() and not list((ws / "ferry").glob(".download.*"))
    assert "checksum mismatch" in (ws / "debug.log").read_text()
    assert not (ws / "pyworker.log").exists(), "no worker may have started"


def test_missing_url_and_no_binary_reported(ctx: Ctx) -> None:
    iid = ctx.emu.create(kit_env(None, None, ctx.reports.url), onstart())
    until("the instance exited", lambda: exited(ctx, iid), timeout=60, show=ctx.logs)
    (e,) = until("the error reported to REPORT_ADDR", lambda: error_reports(ctx), timeout=10)
    assert e["error_msg"].startswith("No Ferry worker: set FERRY_RELEASE_URL and FERRY_RELEASE_SHA256"), e
    assert ctx.files.gets == {}, ctx.files.gets


def test_url_without_checksum_reported(ctx: Ctx) -> None:
    iid = ctx.emu.create(kit_env(ctx.release_url, None, ctx.reports.url), onstart())
    until("the instance exited", lambda: exited(ctx, iid), timeout=60, show=ctx.logs)
    (e,) = until("the error reported to REPORT_ADDR", lambda: error_reports(ctx), timeout=10)
    assert "FERRY_RELEASE_SHA256 must be set" in e["error_msg"], e
    assert ctx.files.gets == {}, "nothing may be downloaded without a checksum"


def test_second_boot_reuses_install(ctx: Ctx) -> None:
    """Stop and start the instance (Vast's cold tier keeps the disk): the second boot runs the
    installed release without downloading it again."""
    iid = ctx.emu.create(kit_env(ctx.release_url, ctx.sha, ctx.reports.url), onstart())
    until("the worker serving", lambda: _served(ctx, iid), timeout=60, show=ctx.logs)
    # The worker reported to the fake REPORT_ADDR (UNSECURED: it needs no key from it).
    until("a worker_status report", lambda: ctx.reports.statuses(), timeout=20)
    assert ctx.files.gets.get(f"/{ctx.tarball.name}") == 1, ctx.files.gets
    assert ctx.emu.api("PUT", f"/api/v0/instances/{iid}/", {"state": "stopped"})[0] == 200
    until("the instance stopped", lambda: ctx.emu.instance(iid).get("actual_status") == "stopped",
          timeout=30, show=ctx.logs)  # fmt: skip
    assert ctx.emu.api("PUT", f"/api/v0/instances/{iid}/", {"state": "running"})[0] == 200
    debug = ctx.emu.instance_dir(iid) / "workspace" / "debug.log"
    until("the second boot reusing the install",
          lambda: "Reusing the Ferry release installed in" in debug.read_text(), timeout=30,
          show=ctx.logs)  # fmt: skip
    until("the worker serving again", lambda: _served(ctx, iid), timeout=60, show=ctx.logs)
    assert ctx.files.gets.get(f"/{ctx.tarball.name}") == 1, ctx.files.gets
    assert debug.read_text().count("start_server.sh (Ferry)") == 2
    # The stop's own report is the only error: the worker's SIGTERM edge, sent through the kit.
    assert {e["error_msg"] for e in error_reports(ctx)} == {"Worker shutting down"}, error_reports(ctx)


def test_use_ssl_certificate_signed_and_served(ctx: Ctx) -> None:
    """USE_SSL=true: the script posts a CSR for this instance to the signer (Vast's
    /api/v0/sign_cert/, here a local CA behind FERRY_SIGN_CERT_URL) and the worker serves TLS
    with the certificate it got back."""
    ca = ctx.dir / "ca"
    ca.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=kit-ca", "-keyout", str(ca / "ca.key"), "-out", str(ca / "ca.crt")],
                   check=True, capture_output=True)  # fmt: skip

    def sign(csr: bytes) -> bytes:
        (ca / "req.csr").write_bytes(csr)
        subprocess.run(["openssl", "x509", "-req", "-in", str(ca / "req.csr"), "-CA", str(ca / "ca.crt"),
                        "-CAkey", str(ca / "ca.key"), "-CAcreateserial", "-days", "1", "-copy_extensions", "copyall",
                        "-out", str(ca / "signed.crt")], check=True, capture_output=True)  # fmt: skip
        return (ca / "signed.crt").read_bytes()

    signer = Recorder(signer=sign)
    try:
        env = {**kit_env(ctx.release_url, ctx.sha, ctx.reports.url), "USE_SSL": "true",
               "FERRY_SIGN_CERT_URL": f"{signer.url}/sign_cert/"}  # fmt: skip
        iid = ctx.emu.create(env, onstart().replace("set -e\n", 'set -e\nexport FERRY_CERT_DIR="$PWD/certs"\n'))
        certs = ctx.emu.instance_dir(iid) / "certs"
        port = int(worker_url(ctx, iid).rsplit(":", 1)[1])

        def served_cert():
            try:
                return ssl.get_server_certificate(("127.0.0.1", port), timeout=2)
            except (OSError, ssl.SSLError):
                return None

        pem = until("the worker serving TLS", served_cert, timeout=60, show=ctx.logs)
        issued = (certs / "instance.crt").read_text()
        assert ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(issued), "not the signed certificate"
        ((path, body),) = [(p, b) for p, b in signer.posts if p.startswith("/sign_cert/")]
        assert path == f"/sign_cert/?instance_id={iid}", path
        assert "BEGIN CERTIFICATE REQUEST" in body["csr"], body
        assert (certs / "instance.key").is_file()
        # Its reports name an https URL, as PyWorker's do under USE_SSL.
        until("an https url in a report",
              lambda: any(str(b.get("url", "")).startswith("https://") for b in ctx.reports.statuses()),
              timeout=20)  # fmt: skip
    finally:
        signer.stop()


def _served(ctx: Ctx, iid: int) -> bool:
    try:
        url = worker_url(ctx, iid)
        completion(url)
        return True
    except (AssertionError, OSError, KeyError, IndexError, TypeError):
        return False


TESTS = [v for k, v in sorted(globals().items()) if k.startswith("test_")]


def run_one(test, tarball: Path, keep: bool) -> bool:
    d = Path(tempfile.mkdtemp(prefix=f"ferry-kit-{test.__name__[5:]}-"))
    ctx = None
    ok = False
    t0 = time.monotonic()
    result: list[BaseException] = []

    def body() -> None:
        try:
            test(ctx)
        except BaseException as e:  # noqa: BLE001
            result.append(e)

    try:
        ctx = Ctx(d, tarball)
        th = threading.Thread(target=body, daemon=True)
        th.start()
        th.join(TIMEOUT)
        if th.is_alive():
            raise AssertionError(f"test still running after {TIMEOUT:.0f} s\n{ctx.logs()}")
        if result:
            raise result[0]
        ledger = ctx.close()
        ctx = None
        assert ledger["created"] == ledger["destroyed"], ledger
        ok = True
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        if ctx is not None:
            try:
                ctx.close()
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
    print(f"{'PASS' if ok else 'FAIL'} {test.__name__} ({time.monotonic() - t0:.1f} s)"
          + ("" if ok or keep else f"  [state: {d}]"), flush=True)  # fmt: skip
    if ok and not keep:
        shutil.rmtree(d, ignore_errors=True)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tarball", required=True, type=Path)
    ap.add_argument("-k", action="append", default=[])
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    tests = [t for t in TESTS if not a.k or any(k in t.__name__ for k in a.k)]
    missing = [str(p) for p in (FERRY, EMU, a.tarball, START_SERVER) if not p.exists()]
    if missing:
        print(f"missing: {', '.join(missing)}")
        print(f"0 passed, {len(tests)} failed")
        return 1
    passed = sum(run_one(t, a.tarball.resolve(), a.keep) for t in tests)
    print(f"{passed} passed, {len(tests) - passed} failed")
    return 0 if passed == len(tests) else 1


if __name__ == "__main__":
    sys.exit(main())
