"""`/route/` throughput and latency with many workers, per store, side by side in one run.

For each store named, starts `ferry control` on loopback, creates an endpoint with one external
workergroup, joins N workers through `POST /join/` (they exist only as records: each reports
itself ready once, with a large benchmark, and no process stands behind its URL), then drives
`/route/` alone with `ferry bench --direct` (closed loop, C in flight, D seconds). Rounds are
interleaved across stores. Prints req/s, p50 and p99 per store and round, and the medians.
Loopback only, bounded in time and count.

    python3 bench/route_scale.py [--ferry BIN] [--workers 1000] [--concurrency 64]
                                 [--seconds 10] [--rounds 3] [--store sqlite] [--store postgres://...]

`sqlite` is the embedded default (a file in a temporary state dir); a `postgres://` URL is
passed to `ferry control --store` as it is (the database must exist and be empty or Ferry's).
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(method: str, url: str, body=None, key=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


class Plane:
    """One `ferry control` with N joined workers."""

    def __init__(self, ferry: str, store: str, workers: int):
        self.store = store
        self.dir = tempfile.mkdtemp(prefix="ferry-route-scale-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = "route-scale-account-key"
        args = [ferry, "control", "--listen", f"127.0.0.1:{self.port}", "--state-dir", self.dir,
                "--api-key", self.key, "--stale-after-s", "3600", "--idle-stop-after-s", "86400",
                "--pending-ttl-s", "5", "--max-connections", "4096"]
        if store != "sqlite":
            args += ["--store", store]
        env = dict(os.environ, FERRY_LOG="error")
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "control.err"), "wb"))
        deadline = time.time() + 60
        while True:
            try:
                call("GET", f"{self.url}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"ferry control ({store}) did not start; see {self.dir}/control.err")
                time.sleep(0.1)
        ep = call("POST", f"{self.url}/api/v0/endptjobs/", {
            "endpoint_name": "scale", "max_workers": workers + 10, "cold_workers": workers,
            "inactivity_timeout": -1, "max_queue_time": 1e9, "target_queue_time": 1e9,
        }, self.key)["result"]
        self.endpoint_key = call("GET", f"{self.url}/api/v0/endptjobs/{ep}/", key=self.key)["result"]["api_key"]
        wg = call("POST", f"{self.url}/api/v0/workergroups/", {"endpoint_id": ep, "provider": "external"}, self.key)["id"]
        token = call("POST", f"{self.url}/api/v0/workergroups/{wg}/join_tokens/", {}, self.key)["token"]
        t0 = time.time()
        for i in range(workers):
            url = f"http://127.0.{1 + i // 250}.{1 + i % 250}:3000"
            j = call("POST", f"{self.url}/join/", {"token": token, "url": url})
            call("POST", f"{self.url}/worker_status/", {
                "id": j["worker_id"], "mtoken": j["mtoken"], "loadtime": 1.0, "max_perf": 1e9,
                "cur_load": 0.0, "url": url, "version": "bench",
            })
        self.join_s = time.time() - t0
        ready = [w for w in call("POST", f"{self.url}/get_endpoint_workers/", {"id": ep, "api_key": self.key})
                 if w["status"] == "idle"]
        if len(ready) < workers:
            raise SystemExit(f"{store}: only {len(ready)} of {workers} workers ready")

    def bench(self, ferry: str, concurrency: int, seconds: int) -> dict:
        payload = json.dumps({"endpoint": "scale", "api_key": self.endpoint_key, "cost": 1})
        out = subprocess.run(
            [ferry, "bench", "--direct", f"{self.url}/route/", "-p", payload, "-c", str(concurrency),
             "--duration", f"{seconds}s", "--json", "--progress-interval", "0"],
            capture_output=True, text=True, timeout=seconds + 120,
        )
        if out.returncode != 0:
            raise SystemExit(f"ferry bench failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def figures(report: dict) -> tuple[float, float, float, int]:
    lat = report.get("latency_ms") or {}
    return (float(report.get("throughput_rps", 0.0)), float(lat.get("p50", 0.0)),
            float(lat.get("p99", 0.0)), int(report.get("errors", 0)))


def main() -> int:
    ap = argparse.ArgumentParser()
    default_bin = os.path.join(ROOT, "target", "release", "ferry")
    if not os.path.exists(default_bin):
        default_bin = os.path.join(ROOT, "target", "debug", "ferry")
    ap.add_argument("--ferry", default=os.environ.get("FERRY_BIN", default_bin))
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", action="append", default=[])
    a = ap.parse_args()
    stores = a.store or ["sqlite"]
    if a.workers > 60000 or a.seconds > 120 or a.rounds > 10:
        raise SystemExit("bounded: at most 60000 workers, 120 s per run, 10 rounds")
    planes = {}
    try:
        for st in stores:
            planes[st] = Plane(a.ferry, st, a.workers)
            print(f"{label(st)}: {a.workers} workers joined and ready in {planes[st].join_s:.1f} s", flush=True)
        rows = {st: [] for st in stores}
        for r in range(a.rounds):
            for st in stores:
                rep = planes[st].bench(a.ferry, a.concurrency, a.seconds)
                rows[st].append(figures(rep))
                rps, p50, p99, err = rows[st][-1]
                print(f"round {r + 1} {label(st):>10}: {rps:9.0f} routes/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  errors {err}", flush=True)
        print(f"\n/route/ with {a.workers} workers, {a.concurrency} in flight, {a.seconds} s x {a.rounds} rounds "
              f"(medians; `python3 bench/route_scale.py {redact(' '.join(sys.argv[1:]))}`)\n")
        print("| store | routes/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
        for st in stores:
            med = [statistics.median(x[i] for x in rows[st]) for i in range(3)]
            errs = sum(x[3] for x in rows[st])
            print(f"| {label(st)} | {med[0]:,.0f} | {med[1]:.2f} | {med[2]:.2f} | {errs} |")
    finally:
        for p in planes.values():
            p.stop()
    return 0


def redact(text: str) -> str:
    """A password in a store URL is never printed."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1:***@", text)


def label(store: str) -> str:
    return "sqlite" if store == "sqlite" else "postgres"


if __name__ == "__main__":
    sys.exit(main())
