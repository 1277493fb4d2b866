"""The control plane's hot paths against the size of the fleet: `/route/` with 10 to 10,000
routable workers, report ingestion while routes run, and instructions per route.

Builds on `bench/route_scale.py` (its `Plane`: one `ferry control` on SQLite, N fake workers
joined through `POST /join/`, each reporting itself ready once, nothing behind their URLs; routes
driven by `ferry bench --direct`). Three parts, each optional:

  routes     For every fleet size N (--workers) and every concurrency C (--concurrency):
             routes/s, p50, p99 and the control plane's CPU per route (utime+stime from /proc
             over routes served). Before measuring, every plane serves N routes at C=16 so each
             worker's URL signature is cached (the first grant to a worker signs its URL once:
             a one-off cost per worker, not a per-route one). Rounds interleave the rows.
  reports    --report-workers workers each report once a second (one thread per 250, each on
             one keep-alive connection) while routes run at C=16: CPU per report (reports alone,
             background subtracted), and routes/s, p99 and CPU per route with and without the
             reports.
  callgrind  For every N in --callgrind: the control plane under `valgrind --tool=callgrind`,
             collecting only inside `Control::route` (`--toggle-collect`), so the figure is the
             instructions the route handler itself executes, HTTP and background loops left
             out. Only 10 workers report an empty queue (the rest a long one), so the routes go
             to 10 warm workers whatever N is and N alone varies. After --callgrind-warm routes
             the counters are dumped and dropped; the next --callgrind-routes routes are
             counted. Deterministic for a given binary to a fraction of a percent.
  report-callgrind  (not in the default --parts) The control plane under callgrind, collecting
             everything, with --report-workers joined workers: --callgrind-warm reports, then 5 s
             idle, then --callgrind-reports reports in turn over one keep-alive connection, each
             window dumped. Instructions per report = (the reports' window minus the idle
             window's rate over its duration) / reports: the whole process's user-space cost of
             one report (HTTP, JSON, authentication, the record, re-keying, dispatch, metrics).
             --keep keeps the dump for `callgrind_annotate --inclusive=yes`.

    python3 bench/control_plane.py [--ferry BIN] [--parts routes,reports,callgrind]
        [--workers 10,1000,10000] [--concurrency 1,16,64] [--seconds 5] [--rounds 2]
        [--report-workers 1000] [--report-seconds 10]
        [--callgrind 10,10000] [--callgrind-warm 20] [--callgrind-routes 200]
        [--callgrind-reports 2000] [--keep] [--threads N] [--json-out FILE]

Loopback only; bounded in time and count. The machine's noise moves routes/s by tens of percent
between runs; CPU per route moves less, and instruction counts not at all.
"""
import argparse
import glob
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import route_scale as rs  # noqa: E402

ROUTE_FN = "*ferry_control::control::Control>::route"
DISPATCH_FN = "ferry_control::control::State>::dispatch"
REPORT_FN = "ferry_control::api::worker::worker_status::{{closure}}"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def control_cpu(plane) -> int:
    return sum(rs.cpu_ticks([p.pid for p in plane.procs]).values())


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- routes

def routes(a, out: dict):
    planes = {}
    try:
        for n in a.workers:
            t0 = time.time()
            p = rs.Plane(a.ferry, f"{n} workers", "sqlite", 1, False, n, extra=a.extra)
            planes[n] = p
            p.bench(a.ferry, 16, 0, requests=max(n, 200))
            print(f"{n} workers joined, ready and warm in {time.time() - t0:.0f} s", flush=True)
        rows = [(n, c) for n in a.workers for c in a.concurrency]
        res: dict = {f"{n}x{c}": [] for n, c in rows}
        for r in range(a.rounds):
            for n, c in (rows if r % 2 == 0 else rows[::-1]):
                f = planes[n].measure(a.ferry, c, a.seconds)
                res[f"{n}x{c}"].append(f)
                print(f"round {r + 1} {n:>6} workers c={c:<3}: {f['rps']:8.0f} routes/s  p50 {f['p50_ms']:6.2f} ms  "
                      f"p99 {f['p99_ms']:6.2f} ms  CPU {f['cpu_us_ferry']:7.0f} µs/route  errors {f['errors']}",
                      flush=True)
        out["routes"] = res
        print("\n| workers | clients | routes/s | p50 ms | p99 ms | control CPU µs/route |")
        print("|---|---|---|---|---|---|")
        for n, c in rows:
            xs = res[f"{n}x{c}"]
            m = {k: rs.statistics.median(x[k] for x in xs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_ferry")}
            print(f"| {n:,} | {c} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us_ferry']:,.0f} |")
    finally:
        for p in planes.values():
            p.stop()


# ---------------------------------------------------------------- reports

class Reporters:
    """Every worker reports once per `interval` s, spread evenly; one thread per 250 workers."""

    def __init__(self, plane, interval: float = 1.0):
        self.plane, self.interval = plane, interval
        self.sent = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        ws = plane.workers
        self.threads = [threading.Thread(target=self.run, args=(ws[i:i + 250],), daemon=True)
                        for i in range(0, len(ws), 250)]

    def run(self, ws: list[dict]):
        host = self.plane.urls[0].removeprefix("http://")
        conn = http.client.HTTPConnection(host, timeout=10)
        step = self.interval / len(ws)
        nxt = time.monotonic()
        i = 0
        while not self.stop_ev.is_set():
            w = ws[i % len(ws)]
            body = json.dumps({k: v for k, v in w.items() if k != "via"})
            try:
                conn.request("POST", "/worker_status/", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(host, timeout=10)
            with self.lock:
                self.sent += ok
                self.failed += not ok
            i += 1
            nxt += step
            pause = nxt - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=15)

    def count(self) -> int:
        with self.lock:
            return self.sent


def saturated_reports(plane, seconds: int, conns: int = 16) -> dict:
    """Reports back to back (wrk, closed loop, `conns` keep-alive connections, one report body
    per connection taken from the fleet), no routes: the control plane's CPU per report when it
    is busy, so that a report does not pay for waking an idle process."""
    d = tempfile.mkdtemp(prefix="ferry-reports-wrk-")
    lua = os.path.join(d, "report.lua")
    bodies = [json.dumps({k: v for k, v in w.items() if k != "via"}) for w in plane.workers[:conns]]
    with open(lua, "w") as f:
        f.write("local bodies = {" + ",".join("[[" + b + "]]" for b in bodies) + "}\n"
                "local n = 0\n"
                "function setup(thread) end\n"
                "request = function()\n"
                "  n = n + 1\n"
                "  return wrk.format('POST', '/worker_status/', {['Content-Type'] = 'application/json'},"
                " bodies[(n % #bodies) + 1])\n"
                "end\n")
    c0, t0 = control_cpu(plane), time.time()
    res = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", lua, plane.urls[0] + "/worker_status/"],
                         capture_output=True, text=True, timeout=seconds + 60)
    c1, t1 = control_cpu(plane), time.time()
    rs.shutil.rmtree(d, ignore_errors=True)
    m = re.search(r"(\d+) requests in", res.stdout)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", res.stdout)
    n = int(m.group(1)) if m else 0
    return {"reports_per_s": n / (t1 - t0), "cpu_us_per_report": (c1 - c0) * TICK_US / max(n, 1),
            "non_2xx": int(bad.group(1)) if bad else 0, "connections": conns}


def reports(a, out: dict):
    p = rs.Plane(a.ferry, "reports", "sqlite", 1, False, a.report_workers, extra=a.extra)
    try:
        p.bench(a.ferry, 16, 0, requests=max(a.report_workers, 200))
        s = a.report_seconds
        c0 = control_cpu(p)
        time.sleep(s)
        idle_per_s = (control_cpu(p) - c0) * TICK_US / s
        with Reporters(p) as rep:
            time.sleep(2)  # in step
            n0, c0, t0 = rep.count(), control_cpu(p), time.time()
            time.sleep(s)
            n1, c1, t1 = rep.count(), control_cpu(p), time.time()
            alone = {"reports_per_s": (n1 - n0) / (t1 - t0),
                     "cpu_us_per_report": ((c1 - c0) * TICK_US - idle_per_s * (t1 - t0)) / max(n1 - n0, 1)}
            n0 = rep.count()
            with_reports = p.measure(a.ferry, 16, s)
            with_reports["reports_per_s"] = (rep.count() - n0) / s
            failed = rep.failed
        without = p.measure(a.ferry, 16, s)
        saturated = saturated_reports(p, s)
        # What the reports added while routes ran: the CPU of the run with reports minus what
        # its routes would have cost at the CPU per route of the run without, per report.
        # Noisy (a difference of two wall-clock runs on a shared machine); see `saturated`.
        n_rep = with_reports["reports_per_s"] * s
        marginal = ((with_reports["cpu_us_ferry"] - without["cpu_us_ferry"]) * with_reports["requests"]
                    / max(n_rep, 1))
        out["reports"] = {"saturated": saturated, "marginal_cpu_us_per_report": marginal, "workers": a.report_workers, "idle_cpu_us_per_s": idle_per_s, "alone": alone,
                          "routes_with_reports": with_reports, "routes_without": without,
                          "failed_reports": failed}
        print(f"\n{a.report_workers} workers reporting every second: {alone['reports_per_s']:.0f} reports/s, "
              f"{alone['cpu_us_per_report']:.1f} µs CPU per report (idle {idle_per_s:.0f} µs/s subtracted); "
              f"{failed} failed")
        print(f"marginal CPU per report while routes ran: {marginal:.1f} µs (difference of two runs: noisy)")
        print(f"reports back to back (wrk, 16 connections, no routes): {saturated['reports_per_s']:,.0f} reports/s, "
              f"{saturated['cpu_us_per_report']:.1f} µs CPU per report, {saturated['non_2xx']} non-2xx")
        for name, f in (("with reports", with_reports), ("without", without)):
            extra = f", {f['reports_per_s']:.0f} reports/s" if "reports_per_s" in f else ""
            print(f"routes at c=16 {name}: {f['rps']:,.0f} routes/s, p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, "
                  f"CPU {f['cpu_us_ferry']:,.0f} µs per route (all of the process's CPU over routes){extra}")
    finally:
        p.stop()


# ---------------------------------------------------------------- callgrind

def total_ir(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return 0


def inclusive(path: str, fn: str) -> int:
    txt = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    best = 0
    for line in txt.splitlines():
        if fn in line:
            m = re.match(r"\s*([\d,]+)", line)
            if m:
                best = max(best, int(m.group(1).replace(",", "")))
    return best


def callgrind(a, out: dict):
    res = {}
    for n in a.callgrind:
        d = tempfile.mkdtemp(prefix="ferry-cg-")
        cg = os.path.join(d, "cg.out")
        wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", f"--toggle-collect={ROUTE_FN}"]
        t0 = time.time()
        p = rs.Plane(a.ferry, f"callgrind {n}", "sqlite", 1, False, n, wrap=wrap, light=min(10, n),
                     extra=a.extra)
        try:
            pid = p.procs[0].pid
            p.bench(a.ferry, 1, 0, requests=a.callgrind_warm)
            subprocess.run(["callgrind_control", "--dump=warm", str(pid)], capture_output=True, timeout=600)
            p.bench(a.ferry, 1, 0, requests=a.callgrind_routes)
            subprocess.run(["callgrind_control", "--dump=counted", str(pid)], capture_output=True, timeout=600)
        finally:
            p.stop()
        dumps = sorted(glob.glob(cg + "*"), key=os.path.getmtime)
        counted = [f for f in dumps if re.search(r"\.2$", f)] or dumps[1:2]
        if not counted:
            raise SystemExit(f"callgrind {n}: no dump of the counted routes in {dumps}")
        f = counted[0]
        ir, disp = total_ir(f), inclusive(f, DISPATCH_FN)
        res[n] = {"ir_per_route": ir / a.callgrind_routes, "dispatch_ir_per_route": disp / a.callgrind_routes}
        rs.shutil.rmtree(d, ignore_errors=True)
        print(f"callgrind {n:>6} workers: {ir / a.callgrind_routes:12,.0f} instructions per route in Control::route, "
              f"of which dispatch {disp / a.callgrind_routes:10,.0f}  ({time.time() - t0:.0f} s)", flush=True)
    out["callgrind"] = res


def send_reports(plane, n: int) -> int:
    """`n` reports in turn over one keep-alive connection, cycling through the fleet; returns
    how many were answered 200."""
    host = plane.urls[0].removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=600)
    ok = 0
    for i in range(n):
        w = plane.workers[i % len(plane.workers)]
        body = json.dumps({k: v for k, v in w.items() if k != "via"})
        conn.request("POST", "/worker_status/", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        ok += r.status == 200
    conn.close()
    return ok


def report_callgrind(a, out: dict):
    """Instructions per report in the whole control-plane process (HTTP, JSON, registry,
    dispatch, metrics), user space only: --report-workers joined and ready, then an idle
    window and a window of --callgrind-reports reports, each dumped; the idle window's
    instructions per second (housekeeping, timers) are subtracted from the reports' window."""
    d = tempfile.mkdtemp(prefix="ferry-cg-reports-")
    cg = os.path.join(d, "cg.out")
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}"]
    n, t0 = a.report_workers, time.time()
    p = rs.Plane(a.ferry, "report callgrind", "sqlite", 1, False, n, wrap=wrap, extra=a.extra)
    try:
        pid = str(p.procs[0].pid)
        send_reports(p, a.callgrind_warm)
        subprocess.run(["callgrind_control", "--dump=warm", pid], capture_output=True, timeout=600)
        ti = time.time()
        time.sleep(5)
        subprocess.run(["callgrind_control", "--dump=idle", pid], capture_output=True, timeout=600)
        ti = time.time() - ti
        tr = time.time()
        ok = send_reports(p, a.callgrind_reports)
        subprocess.run(["callgrind_control", "--dump=reports", pid], capture_output=True, timeout=600)
        tr = time.time() - tr
    finally:
        p.stop()
    dumps = sorted(glob.glob(cg + ".*"), key=lambda f: int(f.rsplit(".", 1)[1]) if f.rsplit(".", 1)[1].isdigit() else 0)
    numbered = {int(f.rsplit(".", 1)[1]): f for f in dumps if f.rsplit(".", 1)[1].isdigit()}
    if not all(k in numbered for k in (2, 3)):
        raise SystemExit(f"report callgrind: dumps missing in {dumps}")
    idle, rep = numbered[2], numbered[3]
    idle_rate = total_ir(idle) / ti
    ir = total_ir(rep)
    per = (ir - idle_rate * tr) / max(ok, 1)
    handler = inclusive(rep, REPORT_FN) / max(ok, 1)
    res = {"workers": n, "reports": ok, "ir_per_report": per, "ir_raw_per_report": ir / max(ok, 1),
           "idle_ir_per_s": idle_rate, "worker_status_ir_per_report": handler}
    if a.keep:
        res["dump"] = rep
        print(f"report callgrind: kept {rep}")
    else:
        rs.shutil.rmtree(d, ignore_errors=True)
    out["report_callgrind"] = res
    print(f"report callgrind ({n} workers, {ok} reports): {per:,.0f} instructions per report in the process "
          f"({ir / max(ok, 1):,.0f} before subtracting {idle_rate:,.0f} idle Ir/s over {tr:.1f} s), "
          f"of which Control::worker_status {handler:,.0f}  ({time.time() - t0:.0f} s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_bin = os.path.join(rs.ROOT, "target", "release", "ferry")
    ap.add_argument("--ferry", default=os.environ.get("FERRY_BIN", default_bin))
    ap.add_argument("--parts", default="routes,reports,callgrind")
    ap.add_argument("--workers", type=ints, default=[10, 1000, 10000])
    ap.add_argument("--concurrency", type=ints, default=[1, 16, 64])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--report-workers", type=int, default=1000)
    ap.add_argument("--report-seconds", type=int, default=10)
    ap.add_argument("--callgrind", type=ints, default=[10, 10000])
    ap.add_argument("--callgrind-warm", type=int, default=20)
    ap.add_argument("--callgrind-routes", type=int, default=200)
    ap.add_argument("--callgrind-reports", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the report-callgrind dump for callgrind_annotate")
    ap.add_argument("--threads", type=int, help="pass --threads N to ferry control (its runtime threads)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    a.extra = [] if a.threads is None else ["--threads", str(a.threads)]
    if max(a.workers + a.callgrind + [a.report_workers]) > 60000 or a.seconds > 120 or a.rounds > 10 \
            or a.callgrind_routes > 100000 or a.callgrind_reports > 100000:
        raise SystemExit("bounded: at most 60000 workers, 120 s per run, 10 rounds, 100000 counted routes")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: dict = {"machine": rs.machine(), "ferry": a.ferry, "load_before": rs.loadavg(),
                 "command": "python3 bench/control_plane.py " + " ".join(sys.argv[1:])}
    parts = a.parts.split(",")
    if "routes" in parts:
        routes(a, out)
    if "reports" in parts:
        reports(a, out)
    if "callgrind" in parts:
        callgrind(a, out)
    if "report-callgrind" in parts:
        report_callgrind(a, out)
    out["load_after"] = rs.loadavg()
    print(f"\nload average before {out['load_before']}, after {out['load_after']}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=2, default=str)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
