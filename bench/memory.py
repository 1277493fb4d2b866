"""Does the worker's memory come back after a saturation run?

    python3 bench/memory.py --worker target/release/ferry-worker --ferry target/release/ferry \
        [--concurrency 64] [--seconds 10] [--settle 1,5,30] [--rounds 2]

Starts `ferry sim-model` and the worker (UNSECURED, BACKEND=openai, one thread, the worker's
own malloc setting, reporting to bench/fake_cp.py), reads the worker's VmRSS once it is ready, drives `ferry bench` at the
given concurrency for the given time (saturation: no rate limit), then reads VmRSS again after
each settle time, VmHWM (the peak) and where the resident memory sits (/proc/PID/smaps: the
heap, anonymous mappings, thread stacks). `--rounds` repeats the load on the same process, so a
pool that is filled once and reused shows as a step after the first round rather than a climb.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind as cg  # noqa: E402


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def smaps(pid):
    """Resident KiB by kind of mapping."""
    out, kind = {}, None
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and not parts[0].endswith(":"):
            name = parts[5] if len(parts) > 5 else ""
            kind = ("heap" if name == "[heap]" else "stack" if name.startswith("[stack")
                    else "anon" if name == "" else "file")
        elif parts[0] == "Rss:":
            out[kind] = out.get(kind, 0) + int(parts[1])
    return out


def mib(k):
    return f"{k / 1024:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", required=True)
    ap.add_argument("--ferry", required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--settle", default="1,5,30")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--python", default=sys.executable, help="a Python with aiohttp (bench/fake_cp.py)")
    ap.add_argument("--gdb-trim", action="store_true",
                    help="diagnosis: at the end, call malloc_trim(0) in the worker through gdb and read VmRSS "
                         "again (what comes back is free memory glibc kept, not live data)")
    ap.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the worker")
    a = ap.parse_args()
    settle = [float(s) for s in a.settle.split(",")]
    mp, wp = cg.free_port(), cg.free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([a.ferry, "sim-model", "--listen", f"127.0.0.1:{mp}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cg.wait_port(mp)
        # Reports go to a fake control plane at the worker's normal pace (unsent reports would
        # pile up otherwise), and the key is not needed (UNSECURED).
        cp = cg.free_port()
        procs.append(subprocess.Popen([a.python, str(Path(__file__).resolve().parent / "fake_cp.py"), str(cp),
                                       "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cg.wait_port(cp)
        env = cg.worker_env(wp, mp, BACKEND="openai", FERRY_LOG="warn", REPORT_ADDR=f"http://127.0.0.1:{cp}")
        # The worker's own start-up: let it re-execute itself with its malloc setting.
        for k in ("FERRY_MALLOC_TUNED", "GLIBC_TUNABLES", "FERRY_REPORT_TICK_MS", "FERRY_HEARTBEAT_S"):
            env.pop(k, None)
        for kv in a.env:
            k, v = kv.split("=", 1)
            env[k] = v
        w = subprocess.Popen([a.worker, "--assume-loaded-perf", "1000000"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(w)
        cg.wait_port(wp)
        time.sleep(1)
        ready = status_kib(w.pid, "VmRSS")
        print(f"ready: VmRSS {mib(ready)} MiB  {json.dumps({k: mib(v) for k, v in smaps(w.pid).items()})}")
        rows = []
        for r in range(a.rounds):
            out = subprocess.run([a.ferry, "bench", "--worker", f"http://127.0.0.1:{wp}", "--route",
                                  "/v1/completions", "-c", str(a.concurrency), "--duration",
                                  f"{a.seconds:g}s", "-p", json.dumps({"model": "m", "prompt": "hello world",
                                                                       "max_tokens": 16}),
                                  "--json", "--progress-interval", "0"],
                                 check=True, capture_output=True, text=True)
            res = json.loads(out.stdout)
            rps = res.get("throughput_rps") or res.get("rps") or res.get("requests_per_s")
            t0 = time.monotonic()
            line = [f"round {r + 1}: {rps if rps is None else round(rps)} req/s, peak {mib(status_kib(w.pid, 'VmHWM'))} MiB"]
            for s in settle:
                time.sleep(max(0.0, t0 + s - time.monotonic()))
                rss = status_kib(w.pid, "VmRSS")
                line.append(f"after {s:g}s {mib(rss)} MiB ({rss / ready:.2f}x)")
                rows.append((r, s, rss))
            print("  ".join(line))
            print(f"  where: {json.dumps({k: mib(v) for k, v in smaps(w.pid).items()})}"
                  f"  threads {status_kib(w.pid, 'Threads')}")
        final = rows[-1][2]
        print(f"\nready {mib(ready)} MiB -> {mib(final)} MiB after the last settle: {final / ready:.2f}x")
        if a.gdb_trim:
            subprocess.run(["gdb", "-p", str(w.pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            rss = status_kib(w.pid, "VmRSS")
            print(f"after malloc_trim(0) through gdb: {mib(rss)} MiB ({rss / ready:.2f}x)  "
                  f"{json.dumps({k: mib(v) for k, v in smaps(w.pid).items()})}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
