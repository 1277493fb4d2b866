"""`/route/` throughput and latency with many workers, per store and replica set, side by side in
one run.

Each row is a control plane on loopback: one `ferry control` (SQLite or PostgreSQL), or several
replicas on one PostgreSQL database behind a throwaway nginx (`scripts/nginx.sh`, round-robin,
keep-alive to the replicas). For each row the script creates an endpoint with one external
workergroup and joins N workers through `POST /join/`, spread over the replicas (they exist only
as records: each reports itself ready once, with a large benchmark, and no process stands behind
its URL). It then drives `/route/` alone with `ferry bench --direct` (closed loop, C in flight,
D seconds) at the row's front: the replica itself, or nginx. Rounds are interleaved across rows
(A B C / C B A / ...) so the host's drift spreads over every row. Prints req/s, p50 and p99 per
row and round, and the medians with their ratios to the first SQLite row. Loopback only, bounded
in time and count.

    python3 bench/route_scale.py [--ferry BIN] [--workers 1000] [--concurrency 64]
                                 [--seconds 10] [--rounds 3]
                                 [--store sqlite] [--store postgres://...]
                                 [--balanced postgres://...] [--replicated postgres://...]
                                 [--replicas 3] [--pg-cluster] [--json-out FILE]

Rows:
  --store S        one replica on S: `sqlite` (a file in a temporary state dir, the embedded
                   default) or a `postgres://` URL, passed to `ferry control --store` as it is
                   (the database must exist and be empty or Ferry's). Without any --store, the
                   one row is `sqlite`.
  --balanced S     one replica on S behind nginx: what the balancer alone costs.
  --replicated S   --replicas replicas on S (PostgreSQL) behind nginx. One replica owns the
                   endpoint and the followers forward every call to it, so with 3 replicas about
                   2/3 of the calls take one more hop; the nginx access log shows the split.
  --pg-cluster     start a throwaway PostgreSQL cluster (`scripts/pg-cluster.sh`), add the rows
                   `postgres`, `postgres, nginx` and `postgres xN, nginx` on databases of their
                   own, and remove the cluster at the end. With no --store, also `sqlite`: the
                   one command gives every row.

Needs PostgreSQL and nginx for those rows (as root: `scripts/pg-cluster.sh install`,
`scripts/nginx.sh install`) and a Ferry build (release: `cargo build --release -p ferry`; the
debug binary is used when there is no release one).

Besides req/s and latency, each run reads the CPU time the row's processes spent (the replicas,
nginx and its workers, the PostgreSQL cluster's processes) and divides it by the routes served:
CPU per route, which a host shared with other work disturbs far less than req/s.

Each row uses its own database: rows never share state. Replicas get `--replicas` (every
replica's URL), their own `--public-url`, `--listen` and `--state-dir`, and the same
`--api-key`; the script waits until exactly one is the owner, and checks after the run that the
owner and its epoch did not change.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fake workers announce the HMAC token (`ferry_mac`, docs/signing.md) like a current
# `ferry worker`; FERRY_BENCH_TOKEN=v1 keeps them on the RSA token, as an older worker.
ANNOUNCE_MAC = os.environ.get("FERRY_BENCH_TOKEN", "v2") != "v1"
KEY = "route-scale-account-key"


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


def assignments(text: str) -> dict:
    """The `NAME=value` lines a scripts/*.sh `start` prints."""
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))


def script(name: str, *args: str, timeout: int = 120) -> str:
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", name), *args],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"scripts/{name} {' '.join(args[:1])} failed: {out.stderr[-2000:]}")
    return out.stdout


class Balancer:
    """A throwaway nginx in front of the replicas (scripts/nginx.sh)."""

    def __init__(self, upstreams: list[str]):
        got = assignments(script("nginx.sh", "start", *upstreams))
        self.dir, self.url = got["NGINX_DIR"], got["NGINX_URL"]

    def upstream_counts(self) -> dict:
        """`/route/` calls per upstream address, from the access log."""
        counts: dict = {}
        try:
            with open(os.path.join(self.dir, "access.log")) as f:
                for line in f:
                    if " /route/ " in line:
                        m = re.search(r"upstream=(\S+)", line)
                        if m:
                            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        except OSError:
            pass
        return counts

    def stop(self):
        script("nginx.sh", "stop", self.dir)


class Plane:
    """One row: `replicas` x `ferry control` on one store, N joined workers, maybe behind nginx."""

    def __init__(self, ferry: str, label: str, store: str, replicas: int, balanced: bool, workers: int,
                 pg_dir=None, wrap=(), light=None, extra=()):
        """`wrap` prefixes the replicas' command (valgrind, say); with `light`, only that many
        workers report an empty queue and the others a long one (routes then go to the light
        ones, whatever the fleet's size). `extra` is appended to each replica's command line."""
        self.label, self.store, self.replicas, self.balanced = label, store, replicas, balanced
        self.wrap, self.light, self.extra = list(wrap), light, list(extra)
        self.workers: list[dict] = []
        self.pg_dir = pg_dir if store != "sqlite" else None
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.balancer = None
        self.owner = None
        self.epoch = None
        try:
            self.start(ferry, workers)
        except BaseException:
            self.stop()
            raise

    def start(self, ferry: str, workers: int):
        replicas, store, balanced = self.replicas, self.store, self.balanced
        ports = [free_port() for _ in range(replicas)]
        self.urls = [f"http://127.0.0.1:{p}" for p in ports]
        for i, port in enumerate(ports):
            d = tempfile.mkdtemp(prefix="ferry-route-scale-")
            self.dirs.append(d)
            args = self.wrap + [ferry, "control", "--listen", f"127.0.0.1:{port}", "--state-dir", d,
                    "--api-key", KEY, "--stale-after-s", "3600", "--idle-stop-after-s", "86400",
                    "--pending-ttl-s", "5", "--max-connections", "4096"]
            if store != "sqlite":
                args += ["--store", store]
            args += self.extra
            if replicas > 1:
                args += ["--replicas", ",".join(self.urls), "--public-url", self.urls[i]]
            # Nothing of the caller's Ferry settings (FERRY_STORE from pg-cluster.sh, say) leaks in.
            env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
            env["FERRY_LOG"] = "error"
            self.procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                               stderr=open(os.path.join(d, "control.err"), "wb")))
        for i, url in enumerate(self.urls):
            self.wait_health(i)
        if replicas > 1:
            self.owner, self.epoch = self.wait_owner()
        self.front = self.urls[0]
        if balanced:
            self.balancer = Balancer(self.urls)
            self.front = self.balancer.url
        self.join(workers)

    def wait_health(self, i: int) -> dict:
        deadline = time.time() + (600 if self.wrap else 60)
        while True:
            try:
                return call("GET", f"{self.urls[i]}/health", timeout=2)
            except OSError:
                if time.time() > deadline or self.procs[i].poll() is not None:
                    with open(os.path.join(self.dirs[i], "control.err"), errors="replace") as f:
                        err = f.read()[-2000:]
                    raise SystemExit(f"ferry control ({self.label}, replica {i + 1}) did not start:\n{err}")
                time.sleep(0.1)

    def roles(self) -> list[dict]:
        out = []
        for url in self.urls:
            try:
                out.append(call("GET", f"{url}/health", timeout=2))
            except OSError as e:
                out.append({"role": f"unreachable ({e})"})
        return out

    def wait_owner(self) -> tuple[str, int]:
        """Exactly one owner, and every replica names it."""
        deadline = time.time() + 60
        while True:
            hs = self.roles()
            owners = [self.urls[i] for i, h in enumerate(hs) if h.get("role") == "owner"]
            if len(owners) == 1 and all(h.get("owner") == hs[self.urls.index(owners[0])].get("owner") for h in hs) \
                    and all(h.get("role") in ("owner", "follower") for h in hs):
                return owners[0], hs[self.urls.index(owners[0])].get("epoch")
            if time.time() > deadline:
                raise SystemExit(f"{self.label}: no single owner after 60 s: {hs}")
            time.sleep(0.2)

    def join(self, workers: int):
        ep = self.endpoint_id = call("POST", f"{self.front}/api/v0/endptjobs/", {
            "endpoint_name": "scale", "max_workers": workers + 10, "cold_workers": workers,
            "inactivity_timeout": -1, "max_queue_time": 1e9, "target_queue_time": 1e9,
        }, KEY)["result"]
        self.endpoint_key = call("GET", f"{self.front}/api/v0/endptjobs/{ep}/", key=KEY)["result"]["api_key"]
        wg = call("POST", f"{self.front}/api/v0/workergroups/", {"endpoint_id": ep, "provider": "external"}, KEY)["id"]
        token = call("POST", f"{self.front}/api/v0/workergroups/{wg}/join_tokens/", {}, KEY)["token"]
        t0 = time.time()
        for i in range(workers):
            # Workers join and report through any replica: spread them over all of them.
            via = self.urls[i % len(self.urls)]
            url = f"http://127.0.{1 + i // 250}.{1 + i % 250}:3000"
            j = call("POST", f"{via}/join/", {"token": token, "url": url})
            heavy = self.light is not None and i >= self.light
            report = {
                "id": j["worker_id"], "mtoken": j["mtoken"], "loadtime": 1.0, "max_perf": 1e9,
                "cur_load": 1e12 if heavy else 0.0, "url": url, "version": "bench",
            }
            if ANNOUNCE_MAC:
                # As a current ferry worker does: its grants then carry the HMAC token.
                report["ferry_mac"] = True
            call("POST", f"{via}/worker_status/", report)
            self.workers.append(dict(report, via=via))
        self.join_s = time.time() - t0
        ready = [w for w in call("POST", f"{self.front}/get_endpoint_workers/", {"id": ep, "api_key": KEY})
                 if w["status"] == "idle"]
        if len(ready) < workers:
            raise SystemExit(f"{self.label}: only {len(ready)} of {workers} workers ready")

    def components(self) -> dict:
        """The processes that serve this row's routes, by component, for CPU per route."""
        out = {"ferry": [p.pid for p in self.procs]}
        if self.balancer:
            master = pid_file(os.path.join(self.balancer.dir, "nginx.pid"))
            out["nginx"] = tree(master) if master else []
        if self.pg_dir:
            # The whole cluster: during this row's run the other rows' databases are idle.
            master = pid_file(os.path.join(self.pg_dir, "data", "postmaster.pid"))
            out["postgres"] = tree(master) if master else []
        return out

    def measure(self, ferry: str, concurrency: int, seconds: int) -> dict:
        """One run: the bench's figures and the CPU each component spent per route (µs)."""
        before = {k: cpu_ticks(v) for k, v in self.components().items()}
        f = figures(self.bench(ferry, concurrency, seconds))
        after = {k: cpu_ticks(v) for k, v in self.components().items()}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        for k, ticks in after.items():
            spent = sum(t - before.get(k, {}).get(p, 0) for p, t in ticks.items())
            f[f"cpu_us_{k}"] = spent * tick_us / f["requests"] if f["requests"] else None
        if self.replicas > 1 and f["requests"]:
            # Per replica: what the owner spends, and what a relaying follower spends.
            f["replica_cpu_us"] = {
                url: (after["ferry"].get(p.pid, 0) - before["ferry"].get(p.pid, 0)) * tick_us / f["requests"]
                for url, p in zip(self.urls, self.procs)}
        return f

    def bench(self, ferry: str, concurrency: int, seconds: int, requests=None) -> dict:
        """`ferry bench` on `/route/` for `seconds`, or for `requests` routes."""
        payload = json.dumps({"endpoint": "scale", "api_key": self.endpoint_key, "cost": 1})
        stop = ["-n", str(requests)] if requests else ["--duration", f"{seconds}s"]
        out = subprocess.run(
            [ferry, "bench", "--direct", f"{self.front}/route/", "-p", payload, "-c", str(concurrency),
             *stop, "--json", "--progress-interval", "0"],
            capture_output=True, text=True, timeout=seconds + 120 if not requests else 3600,
        )
        if out.returncode != 0:
            raise SystemExit(f"ferry bench failed ({self.label}): {out.stderr[-2000:]}")
        return json.loads(out.stdout)

    def check_owner(self) -> str:
        """Empty when the owner and its epoch are those of the start; else what changed."""
        if self.replicas < 2:
            return ""
        hs = self.roles()
        owners = [self.urls[i] for i, h in enumerate(hs) if h.get("role") == "owner"]
        epoch = hs[self.urls.index(owners[0])].get("epoch") if len(owners) == 1 else None
        if owners == [self.owner] and epoch == self.epoch:
            return ""
        return f"owner changed during the run: {self.owner} epoch {self.epoch} -> {owners} epoch {epoch}"

    def hops(self) -> dict:
        """How nginx spread the `/route/` calls, and the share that reached the owner at once."""
        if not self.balancer:
            return {}
        counts = self.balancer.upstream_counts()
        total = sum(counts.values())
        out = {"per_upstream": counts, "total": total}
        if self.owner and total:
            out["direct_to_owner"] = counts.get(self.owner.removeprefix("http://"), 0) / total
        return out

    def stop(self):
        if self.balancer:
            try:
                self.balancer.stop()
            except (SystemExit, subprocess.SubprocessError) as e:
                print(f"{self.label}: stopping nginx: {e}", file=sys.stderr)
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


class PgCluster:
    """A throwaway PostgreSQL cluster (scripts/pg-cluster.sh), one database per row."""

    def __init__(self):
        got = assignments(script("pg-cluster.sh", "start", "route_scale_0"))
        self.dir, self.port = got["PG_CLUSTER_DIR"], got["PG_PORT"]
        self.made = 1

    def database(self) -> str:
        name = f"route_scale_{self.made}"
        script("pg-cluster.sh", "createdb", self.dir, name)
        self.made += 1
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self):
        script("pg-cluster.sh", "remove", self.dir)


def figures(report: dict) -> dict:
    lat = report.get("latency_ms") or {}
    return {"rps": float(report.get("throughput_rps", 0.0)), "p50_ms": float(lat.get("p50", 0.0)),
            "p99_ms": float(lat.get("p99", 0.0)), "errors": int(report.get("errors", 0)),
            "requests": int(report.get("ok", 0))}


def tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's workers, PostgreSQL's backends)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_ticks(pids: list[int]) -> dict:
    """utime + stime of each live pid, in clock ticks."""
    out = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return out


def pid_file(path: str):
    try:
        with open(path) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()}


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_bin = os.path.join(ROOT, "target", "release", "ferry")
    if not os.path.exists(default_bin):
        default_bin = os.path.join(ROOT, "target", "debug", "ferry")
    ap.add_argument("--ferry", default=os.environ.get("FERRY_BIN", default_bin))
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", action="append", default=[], help="a row: one replica on this store")
    ap.add_argument("--balanced", action="append", default=[], help="a row: one replica on this store behind nginx")
    ap.add_argument("--replicated", action="append", default=[],
                    help="a row: --replicas replicas on this PostgreSQL store behind nginx")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--pg-cluster", action="store_true",
                    help="start a throwaway PostgreSQL cluster and add its rows (see above)")
    ap.add_argument("--json-out", help="write every round and the medians to this file")
    a = ap.parse_args()
    if a.workers > 60000 or a.seconds > 120 or a.rounds > 10 or not 2 <= a.replicas <= 9:
        raise SystemExit("bounded: at most 60000 workers, 120 s per run, 10 rounds, 2-9 replicas")
    for st in a.replicated:
        if not st.startswith("postgres"):
            raise SystemExit(f"--replicated needs a postgres:// store: {redact(st)}")
    # SIGTERM (a CI timeout, kill) still stops every process and removes the cluster.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cluster = None
    planes: list[Plane] = []
    try:
        stores = a.store or ["sqlite"]
        if a.pg_cluster:
            cluster = PgCluster()
            print(f"PostgreSQL cluster in {cluster.dir} on 127.0.0.1:{cluster.port}", flush=True)
            stores.append(cluster.database())
            a.balanced.append(cluster.database())
            a.replicated.append(cluster.database())
        rows = [(st, 1, False) for st in stores] + [(st, 1, True) for st in a.balanced] \
            + [(st, a.replicas, True) for st in a.replicated]
        labels = unique([label(st, n, lb) for st, n, lb in rows])
        load_before = loadavg()
        for (st, n, lb), name in zip(rows, labels):
            p = Plane(a.ferry, name, st, n, lb, a.workers, cluster.dir if cluster else None)
            planes.append(p)
            extra = f"; owner {p.owner} (epoch {p.epoch})" if p.owner else ""
            print(f"{name}: {a.workers} workers joined and ready in {p.join_s:.1f} s{extra}", flush=True)
        results: dict = {p.label: [] for p in planes}
        for r in range(a.rounds):
            order = planes if r % 2 == 0 else planes[::-1]
            for p in order:
                f = p.measure(a.ferry, a.concurrency, a.seconds)
                results[p.label].append(f)
                cpu = "  ".join(f"{k[7:]} {v:.0f}" for k, v in f.items() if k.startswith("cpu_us_") and v is not None)
                print(f"round {r + 1} {p.label:>20}: {f['rps']:9.0f} routes/s  p50 {f['p50_ms']:6.2f} ms  "
                      f"p99 {f['p99_ms']:6.2f} ms  errors {f['errors']}  CPU µs/route: {cpu}", flush=True)
        load_after = loadavg()
        command = f"python3 bench/route_scale.py {redact(' '.join(sys.argv[1:]))}".strip()
        out = report(a, planes, results, command, load_before, load_after)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(out, f, indent=2)
                f.write("\n")
    finally:
        for p in planes:
            p.stop()
        if cluster:
            cluster.remove()
    return 0


def report(a, planes: list, results: dict, command: str, load_before: str, load_after: str) -> dict:
    def med(label, key):
        return statistics.median(x[key] for x in results[label])

    base = next((p.label for p in planes if p.store == "sqlite" and p.replicas == 1 and not p.balanced),
                planes[0].label)
    rows = []
    for p in planes:
        row = {
            "label": p.label, "store": "sqlite" if p.store == "sqlite" else "postgres",
            "replicas": p.replicas, "nginx": p.balanced, "join_s": round(p.join_s, 2),
            "rounds": results[p.label],
            "median": {k: med(p.label, k) for k in ("rps", "p50_ms", "p99_ms")},
            "cpu_us_per_route": {k[7:]: med(p.label, k) for k in results[p.label][0]
                                 if k.startswith("cpu_us_") and all(x.get(k) is not None for x in results[p.label])},
            "errors": sum(x["errors"] for x in results[p.label]),
        }
        row["vs_" + base] = {k: row["median"][k] / med(base, k) if med(base, k) else None
                             for k in ("rps", "p50_ms", "p99_ms")}
        if p.owner:
            row["owner"] = p.owner
            row["owner_changed"] = p.check_owner() or None
        if p.balancer:
            row["hops"] = p.hops()
        rows.append(row)

    print(f"\n/route/ with {a.workers} workers, {a.concurrency} in flight, {a.seconds} s x {a.rounds} rounds, "
          f"interleaved (medians; ratios against {base}; `{command}`)\n")
    print(f"| configuration | routes/s | p50 ms | p99 ms | routes/s vs {base} | p99 vs {base} | errors |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        m, v = row["median"], row["vs_" + base]
        print(f"| {row['label']} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
              f"{v['rps']:.2f}x | {v['p99_ms']:.2f}x | {row['errors']} |")
    print("\nCPU per route, µs (medians over rounds; postgres: the whole cluster while the row ran)\n")
    comps = [c for c in ("ferry", "nginx", "postgres") if any(c in r["cpu_us_per_route"] for r in rows)]
    print("| configuration | " + " | ".join(comps) + " | total | total vs " + base + " |")
    print("|---|" + "---|" * (len(comps) + 2))
    base_total = sum(rows[[r["label"] for r in rows].index(base)]["cpu_us_per_route"].values())
    for row in rows:
        c = row["cpu_us_per_route"]
        total = sum(c.values())
        print(f"| {row['label']} | " + " | ".join(f"{c[k]:,.0f}" if k in c else "–" for k in comps)
              + f" | {total:,.0f} | {total / base_total if base_total else 0:.2f}x |")
    print()
    for row in rows:
        lo, hi = min(x["rps"] for x in row["rounds"]), max(x["rps"] for x in row["rounds"])
        print(f"{row['label']}: routes/s over rounds {lo:,.0f}-{hi:,.0f}; "
              f"p99 {min(x['p99_ms'] for x in row['rounds']):.2f}-{max(x['p99_ms'] for x in row['rounds']):.2f} ms; "
              f"{a.workers} joins in {row['join_s']:.1f} s")
        hops = row.get("hops") or {}
        if hops.get("total"):
            spread = ", ".join(f"{u} {c / hops['total']:.0%}" for u, c in sorted(hops["per_upstream"].items()))
            owner = f"; straight to the owner {hops['direct_to_owner']:.0%}" if "direct_to_owner" in hops else ""
            print(f"  nginx spread {hops['total']:,} /route/ calls: {spread}{owner}")
        by = [x["replica_cpu_us"] for x in row["rounds"] if "replica_cpu_us" in x]
        if by:
            part = ", ".join(f"{'owner' if u == row.get('owner') else 'follower'} {u.removeprefix('http://')} "
                             f"{statistics.median(x[u] for x in by):.0f}" for u in by[0])
            print(f"  CPU µs per route (all routes) by replica, medians: {part}")
        if row.get("owner_changed"):
            print(f"  WARNING: {row['owner_changed']}")
    print(f"\nload average before {load_before}, after {load_after}")
    return {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": command,
        "args": {"ferry": a.ferry, "workers": a.workers, "concurrency": a.concurrency, "seconds": a.seconds,
                 "rounds": a.rounds, "replicas": a.replicas},
        "load_average": {"before": load_before, "after": load_after},
        "baseline": base,
        "rows": rows,
    }


def redact(text: str) -> str:
    """A password in a store URL is never printed."""
    return re.sub(r"(://[^:/@\s]+):[^@\s]*@", r"\1:***@", text)


def label(store: str, replicas: int, balanced: bool) -> str:
    name = "sqlite" if store == "sqlite" else "postgres"
    if replicas > 1:
        name += f" x{replicas}"
    return name + (", nginx" if balanced else "")


def unique(names: list[str]) -> list[str]:
    seen: dict = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} #{seen[n]}")
    return out


if __name__ == "__main__":
    sys.exit(main())
