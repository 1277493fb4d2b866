"""Shared pieces of the callgrind benchmarks (bench/instructions.py, bench/transform_callgrind.py):
instructions one process executes per request, counted by `valgrind --tool=callgrind` as the
difference between two batch sizes on one keep-alive connection, so that start-up, the first
connection and shut-down cancel out:

    Ir/request = (Ir(n_hi requests) - Ir(n_lo requests)) / (n_hi - n_lo)

Deterministic to a few hundred instructions per request for the same binary and inputs,
whatever else the machine is doing; no wall-clock figure is taken.
"""
import http.client
import os
import re
import signal
import socket
import subprocess
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(p, limit=60):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", p)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {p} never opened")


def worker_env(port, model_port, **extra):
    """The environment of a worker under callgrind: reports to an hour's tick (background loops
    add almost nothing), no side listener, and the malloc setting the worker's own re-exec would
    make (callgrind then measures the one process)."""
    env = dict(os.environ, WORKER_PORT=str(port), REPORT_ADDR="http://127.0.0.1:9", CONTAINER_ID="1",
               UNSECURED="true", MODEL_SERVER_URL=f"http://127.0.0.1:{model_port}",
               FERRY_LISTEN_HOST="127.0.0.1", PUBLIC_IPADDR="127.0.0.1", FERRY_LOG="error",
               FERRY_NO_SIDE_LISTENER="true", FERRY_REPORT_TICK_MS="3600000", FERRY_HEARTBEAT_S="3600",
               FERRY_MALLOC_TUNED="1", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# Start-up work whose size depends on timing, left out of every count: quanta (the clock of the
# Prometheus exporter) calibrates the TSC against the OS clock at start until its estimate
# settles, which under callgrind took 5 to 14 million instructions from one run to the next and
# moved the per-request figure by up to 9,000.
EXCLUDE = ("/quanta-",)


def total_ir(path):
    """Total Ir of a callgrind output, minus the functions defined in EXCLUDE's sources."""
    text = open(path).read()
    total = int(re.search(r"^(?:totals|summary): (\d+)", text, re.M).group(1))
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    for line in ann.splitlines():
        m = re.match(r"^\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if m and any(x in m.group(2).split(":")[0] for x in EXCLUDE):
            total -= int(m.group(1).replace(",", ""))
    return total


def count(cmd, env, port, n, request, out, ready=None, stop=signal.SIGTERM):
    """Runs `cmd` under callgrind, waits for `port` (and `ready(port)`, if given), sends `n`
    requests on one keep-alive connection with `request(conn, i)` (which checks the answer and
    returns it), stops the process and returns (total Ir, first answer). The callgrind output is
    kept at `out` (for callgrind_annotate) until the next call overwrites it."""
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        if ready:
            ready(port)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        first = None
        for i in range(n):
            a = request(c, i)
            first = first if first is not None else a
        c.close()
    finally:
        p.send_signal(stop)
        p.wait()
    return total_ir(out), first


def per_request(run, n_lo, n_hi):
    """`run(n)` -> (total Ir, sample); returns (Ir per request, sample)."""
    lo, _ = run(n_lo)
    hi, sample = run(n_hi)
    return (hi - lo) / (n_hi - n_lo), sample


def median(xs):
    return sorted(xs)[len(xs) // 2]
