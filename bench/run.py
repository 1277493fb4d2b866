#!/usr/bin/env python3
"""Side-by-side benchmark: the model server called directly, a Ferry worker in front of it, and
Vast's official PyWorker (vastai, unmodified, via scripts/pyworker_launcher.py) in front of it.

Same machine, same model server, same load generator, same loopback, interleaved rounds
(A B C / C B A / A B C) so machine drift cancels. Run through bench/run.sh, which builds Ferry and
prepares the Python environment.

Figures (each as a ratio to direct and to PyWorker):
  - max throughput (req/s) at several concurrency levels (wrk, closed loop)
  - latency added at a fixed moderate rate (ferry bench --rate, coordinated-omission aware)
  - time to first token and inter-token delay added on SSE streams
  - CPU time per request and peak resident memory of the worker process
  - time from the model's "loaded" log line to the worker's first ready report
  - worker start-up time (spawn to port accepting)
"""

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADED_LINE = "INFO:     Application startup complete."
PAYLOAD = {"model": "m", "prompt": "hello world", "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> float:
    """Seconds until 127.0.0.1:port accepts a connection."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


def http_json(url: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_mem_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Env:
    """Processes and files of one benchmark run."""

    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
        self.procs: list[subprocess.Popen] = []
        self.ferry = str(Path(args.ferry).resolve())
        # The lean worker binary when given (what an instance image ships), else `ferry worker`.
        self.worker_cmd = ([str(Path(args.worker_bin).resolve())] if args.worker_bin
                           else [self.ferry, "worker"])
        self.py = args.python
        self.key_pem, self.pub_pem = self.make_key()
        self.cp_port = free_port()
        self.cp = f"http://127.0.0.1:{self.cp_port}"

    def make_key(self):
        subprocess.run(
            [self.py, "-c", (
                "from Crypto.PublicKey import RSA; k = RSA.generate(2048); "
                "open('{0}/key.pem','wb').write(k.export_key()); "
                "open('{0}/pub.pem','wb').write(k.publickey().export_key())"
            ).format(self.tmp)],
            check=True,
        )
        return self.tmp / "key.pem", self.tmp / "pub.pem"

    def sign(self, url: str) -> str:
        code = (
            "import json,base64,sys\n"
            "from Crypto.PublicKey import RSA\nfrom Crypto.Signature import pkcs1_15\n"
            "from Crypto.Hash import SHA256\n"
            f"k = RSA.import_key(open('{self.key_pem}').read())\n"
            "m = json.dumps({'url': sys.argv[1]}, indent=4, sort_keys=True).encode()\n"
            "print(base64.b64encode(pkcs1_15.new(k).sign(SHA256.new(m))).decode())\n"
        )
        return subprocess.run([self.py, "-c", code, url], check=True, capture_output=True,
                              text=True).stdout.strip()

    def spawn(self, cmd, env=None, log=None, cwd=None) -> subprocess.Popen:
        full_env = dict(os.environ)
        full_env.update(env or {})
        out = open(log, "wb") if log else subprocess.DEVNULL
        p = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def close(self):
        for p in reversed(self.procs):
            try:
                self.stop(p)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_cp(self):
        self.spawn([self.py, str(ROOT / "bench/fake_cp.py"), str(self.cp_port), str(self.pub_pem)],
                   log=self.tmp / "cp.log")
        wait_port(self.cp_port)

    def start_sim(self, name: str, extra=()) -> tuple[int, Path]:
        port = free_port()
        log = self.tmp / f"{name}.model.log"
        self.spawn([self.ferry, "sim-model", "--listen", f"127.0.0.1:{port}",
                    "--log-file", str(log), "--loaded-line", LOADED_LINE, *extra],
                   log=self.tmp / f"{name}.sim.out")
        wait_port(port)
        return port, log

    def start_nginx(self, model_port: int):
        """A bare nginx reverse proxy in front of the sim (keep-alive upstream, no logging), as a
        reference for what any out-of-process proxy costs here. None when nginx is not installed."""
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if not nginx:
            print("bench: nginx not found; the reference-proxy row is skipped "
                  "(apt-get install nginx-light to include it)", file=sys.stderr)
            return None
        port = free_port()
        prefix = self.tmp / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, model_port=model_port))
        p = self.spawn([nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                       log=prefix / "out.log")
        wait_port(port)
        return p, port

    def worker_env(self, port: int, secured: bool, workdir: Path) -> dict:
        workdir.mkdir(parents=True, exist_ok=True)
        return {
            "WORKER_PORT": str(port),
            f"VAST_TCP_PORT_{port}": str(port),
            "WORKER_HTTP_PORT": str(free_port()),
            "REPORT_ADDR": self.cp,
            "CONTAINER_ID": str(port),
            "PUBLIC_IPADDR": "127.0.0.1",
            "MASTER_TOKEN": "bench",
            "UNSECURED": "false" if secured else "true",
            "USE_SSL": "false",
        }

    def start_ferry(self, name, model_port, model_log, secured) -> tuple[subprocess.Popen, int]:
        port = free_port()
        work = self.tmp / name
        env = self.worker_env(port, secured, work)
        env.update({
            "MODEL_SERVER_URL": f"http://127.0.0.1:{model_port}",
            "MODEL_LOG": str(model_log),
            "BACKEND": "openai",
            "FERRY_LISTEN_HOST": "127.0.0.1",
            "FERRY_BENCHMARK_CACHE": str(work / ".has_benchmark"),
            "FERRY_BENCHMARK_RUNS": "3",
            "FERRY_BENCHMARK_CONCURRENCY": "10",
            "FERRY_BENCHMARK_PAYLOAD": json.dumps(PAYLOAD),
            "FERRY_LOG": "warn",
        })
        p = self.spawn(self.worker_cmd, env=env, log=work / "worker.log", cwd=work)
        return p, port

    def start_pyworker(self, name, model_port, model_log, secured) -> tuple[subprocess.Popen, int]:
        port = free_port()
        work = self.tmp / name
        env = self.worker_env(port, secured, work)
        env.update({
            "PYW_MODEL_PORT": str(model_port),
            "MODEL_LOG": str(model_log),
            "PYW_LOADED_LINE": LOADED_LINE,
            "PYW_BENCH_PAYLOAD": json.dumps(PAYLOAD),
        })
        # PyWorker keeps its benchmark cache (.has_benchmark) in its working directory.
        p = self.spawn([self.py, str(ROOT / "scripts/pyworker_launcher.py")], env=env,
                       log=work / "worker.log", cwd=work)
        return p, port

    def wait_ready(self, url: str, timeout: float = 60.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if url in http_json(f"{self.cp}/stats")["ready_at"]:
                return http_json(f"{self.cp}/stats")["ready_at"][url]
            time.sleep(0.01)
        raise RuntimeError(f"{url} did not report ready within {timeout}s")


NGINX_CONF = """
daemon off;
master_process off;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream sim {{ server 127.0.0.1:{model_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""

WRK_LUA = """
counter = 0
request = function()
  counter = counter + 1
  local body
  if "{mode}" == "direct" then
    body = '{payload}'
  else
    body = string.format('{{"auth_data":{{"cost":16,"endpoint":"bench","reqnum":%d,"request_idx":%d,"signature":"{sig}","url":"{url}"}},"session_id":null,"payload":{payload}}}', counter, counter)
  end
  return wrk.format("POST", "/v1/completions", {{["Content-Type"] = "application/json"}}, body)
end
"""


def wrk(env: Env, target: dict, conc: int, seconds: float) -> dict:
    lua = env.tmp / f"{target['name']}.lua"
    lua.write_text(WRK_LUA.format(mode=target["mode"], payload=json.dumps(PAYLOAD),
                                  sig=target.get("sig", "x"), url=target.get("url", "")))
    pid = target.get("pid")
    cpu0 = proc_cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(lua),
         f"http://127.0.0.1:{target['port']}/v1/completions"],
        check=True, capture_output=True, text=True).stdout
    cpu1 = proc_cpu_seconds(pid) if pid else 0.0
    res = {"rps": 0.0, "requests": 0, "non2xx": 0, "p50_ms": None, "p99_ms": None}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif "requests in" in line:
            res["requests"] = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            res["non2xx"] = int(parts[-1])
        elif line.strip().startswith("50%"):
            res["p50_ms"] = to_ms(parts[1])
        elif line.strip().startswith("99%"):
            res["p99_ms"] = to_ms(parts[1])
    if pid and res["requests"]:
        res["cpu_us_per_req"] = (cpu1 - cpu0) / res["requests"] * 1e6
    return res


def to_ms(v: str) -> float:
    for unit, mul in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * mul
    return float(v)


def ferry_bench(env: Env, target: dict, extra: list[str]) -> dict:
    """One `ferry bench` run against a target, JSON result."""
    out_json = env.tmp / f"fb-{target['name']}-{time.monotonic_ns()}.json"
    if target["mode"] == "direct":
        dest = ["--direct", f"http://127.0.0.1:{target['port']}/v1/completions"]
    else:
        dest = ["--worker", f"http://127.0.0.1:{target['port']}", "--route", "/v1/completions"]
        if target.get("sig") and target["sig"] != "x":
            grant = {"cost": 16, "endpoint": "bench", "reqnum": 1, "request_idx": 1,
                     "signature": target["sig"], "url": target["url"]}
            dest += ["--auth-data", json.dumps(grant)]
    cmd = [env.ferry, "bench", *dest, *extra, "--json", "--progress-interval", "0"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out_json.write_text(out.stdout)
    return json.loads(out.stdout)


def orders(names, rounds):
    fwd = list(names)
    for r in range(rounds):
        yield fwd if r % 2 == 0 else list(reversed(fwd))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ferry", default=str(ROOT / "target/release/ferry"))
    ap.add_argument("--worker-bin", help="the ferry-worker binary (default: `ferry worker`)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rate-seconds", type=float, default=10.0,
                    help="length of each fixed-rate run (p99 needs samples)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: tiny runs, checks only that it works")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--json-out")
    ap.add_argument("--md-out")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.concurrency, args.starts = 1.0, 1, "8", 1
        args.rate_seconds = 1.0

    env = Env(args)
    results: dict = {"machine": machine(), "args": vars(args), "date": time.strftime("%Y-%m-%d")}
    try:
        env.start_cp()
        sim_port, sim_log = env.start_sim("sim")

        # Start-up and readiness: fresh workers (benchmark not cached), one at a time.
        startup = {"ferry": [], "pyworker": []}
        ready = {"ferry": [], "pyworker": []}
        for i in range(args.starts):
            for kind in ("ferry", "pyworker"):
                port_model, log = env.start_sim(f"rd-{kind}-{i}")
                log.write_text("")  # the sim wrote its loaded line; start from an empty log
                starter = env.start_ferry if kind == "ferry" else env.start_pyworker
                p, port = starter(f"rd-{kind}-{i}", port_model, log, secured=True)
                startup[kind].append(wait_port(port) if p.poll() is None else None)
                time.sleep(1.5)  # let it settle into its log-tail loop before the line appears
                with open(log, "a") as f:
                    f.write(LOADED_LINE + "\n")
                written = time.time()
                url = f"http://127.0.0.1:{port}"
                ready[kind].append(env.wait_ready(url) - written)
                env.stop(p)
        results["startup_s"] = {k: median(v) for k, v in startup.items()}
        results["ready_after_loaded_line_s"] = {k: median(v) for k, v in ready.items()}

        # The measured targets, all in front of the same zero-delay sim.
        targets = [{"name": "direct", "mode": "direct", "port": sim_port}]
        ng = env.start_nginx(sim_port)
        if ng:
            targets.append({"name": "nginx", "mode": "direct", "port": ng[1], "pid": ng[0].pid})
        for kind in ("ferry", "pyworker"):
            for secured in (False, True):
                name = f"{kind}-{'sec' if secured else 'unsec'}"
                starter = env.start_ferry if kind == "ferry" else env.start_pyworker
                p, port = starter(name, sim_port, sim_log, secured)
                url = f"http://127.0.0.1:{port}"
                env.wait_ready(url)
                t = {"name": name, "mode": "worker", "port": port, "pid": p.pid, "url": url,
                     "sig": env.sign(url) if secured else "x"}
                targets.append(t)
        for t in targets:
            if t.get("pid"):
                t["rss_ready_kib"] = proc_mem_kib(t["pid"], "VmRSS")
        names = [t["name"] for t in targets]
        by_name = {t["name"]: t for t in targets}

        # Fixed-rate latency first, on fresh processes, so that their peak RSS afterwards is the
        # memory at the same offered load.
        fixed = {n: [] for n in names}
        for order in orders(names, args.rounds):
            for n in order:
                r = ferry_bench(env, by_name[n], ["--rate", str(args.rate), "--duration",
                                                  f"{args.rate_seconds:g}s", "-p", json.dumps(PAYLOAD)])
                fixed[n].append(r)
        results["fixed_rate"] = {}
        for n, rs in fixed.items():
            entry = {"p50_ms": median([latency(r, "p50") for r in rs]),
                     "p99_ms": median([latency(r, "p99") for r in rs]),
                     "errors": sum(errors(r) for r in rs)}
            if n != "direct":
                # Paired with the direct run of the same round, so drift within a round cancels.
                d50 = [latency(r, "p50") - latency(d, "p50") for r, d in zip(rs, fixed["direct"])]
                d99 = [latency(r, "p99") - latency(d, "p99") for r, d in zip(rs, fixed["direct"])]
                entry.update(added_p50_ms=median(d50), added_p99_ms=median(d99),
                             added_p99_min_ms=min(d99), added_p99_max_ms=max(d99))
            results["fixed_rate"][n] = entry
        for t in targets:
            if t.get("pid"):
                t["peak_equal_load_kib"] = proc_mem_kib(t["pid"], "VmHWM")

        throughput = {}
        for conc in [int(c) for c in args.concurrency.split(",")]:
            runs = {n: [] for n in names}
            for order in orders(names, args.rounds):
                for n in order:
                    runs[n].append(wrk(env, by_name[n], conc, args.seconds))
            throughput[conc] = {
                n: {
                    "rps": median([r["rps"] for r in rs]),
                    "p50_ms": median([r["p50_ms"] for r in rs]),
                    "p99_ms": median([r["p99_ms"] for r in rs]),
                    "cpu_us_per_req": median([r.get("cpu_us_per_req") for r in rs]),
                    "non2xx": sum(r["non2xx"] for r in rs),
                    "min_rps": min(r["rps"] for r in rs),
                    "max_rps": max(r["rps"] for r in rs),
                }
                for n, rs in runs.items()
            }
        results["throughput"] = throughput
        results["memory_kib"] = {
            t["name"]: {"rss_at_ready": t["rss_ready_kib"],
                        "peak_equal_load": t["peak_equal_load_kib"],
                        "peak": proc_mem_kib(t["pid"], "VmHWM")}
            for t in targets if t.get("pid")
        }

        stream_port, stream_log = env.start_sim("stream", ["--token-delay-ms", "5"])
        stream_targets = [{"name": "direct", "mode": "direct", "port": stream_port}]
        for kind in ("ferry", "pyworker"):
            starter = env.start_ferry if kind == "ferry" else env.start_pyworker
            p, port = starter(f"{kind}-stream", stream_port, stream_log, False)
            env.wait_ready(f"http://127.0.0.1:{port}", timeout=120)
            stream_targets.append({"name": kind, "mode": "worker", "port": port, "pid": p.pid})
        sbody = json.dumps(PAYLOAD)
        streams = {t["name"]: [] for t in stream_targets}
        for order in orders([t["name"] for t in stream_targets], args.rounds):
            for n in order:
                t = next(x for x in stream_targets if x["name"] == n)
                streams[n].append(ferry_bench(env, t, ["-c", "32", "--duration", f"{args.seconds:g}s",
                                                       "-p", sbody, "--stream"]))
        results["streams"] = {
            n: {"ttft_p50_ms": median([stream_stat(r, "ttft", "p50") for r in rs]),
                "ttft_p99_ms": median([stream_stat(r, "ttft", "p99") for r in rs]),
                "itl_p50_ms": median([stream_stat(r, "itl", "p50") for r in rs]),
                "itl_p99_ms": median([stream_stat(r, "itl", "p99") for r in rs]),
                "rps": median([r.get("throughput_rps") for r in rs])}
            for n, rs in streams.items()
        }

    finally:
        env.close()

    text = report(results)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    if args.md_out:
        Path(args.md_out).write_text(text)
    if args.quick:
        ok = all(v["non2xx"] == 0 and v["rps"] > 0 for c in results["throughput"].values()
                 for v in c.values())
        print("bench: 1 passed, 0 failed" if ok else "bench: 0 passed, 1 failed")
        sys.exit(0 if ok else 1)


def latency(r: dict, q: str):
    return r.get("latency_ms", {}).get(q)


def errors(r: dict) -> int:
    return int(r.get("errors", 0))


def stream_stat(r: dict, what: str, q: str):
    return r.get(f"{what}_ms", {}).get(q)


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": os.uname().release}


def ratio(a, b):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.2f}x"


def fmt(v, digits=1):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def report(res: dict) -> str:
    lines = [f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, "
             f"kernel {res['machine']['kernel']}; date {res['date']}.", ""]
    has_nginx = any("nginx" in row for row in res["throughput"].values())
    lines += ["### Max throughput (wrk -t1, closed loop; medians of interleaved rounds)", "",
              "| concurrency | direct req/s | Ferry unsec | PyWorker unsec | Ferry / PyWorker (unsec) | Ferry / direct (unsec) | Ferry sec | PyWorker sec | Ferry / PyWorker (sec) | Ferry / direct (sec) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for conc, row in res["throughput"].items():
        d = row["direct"]["rps"]
        fu, pu = row["ferry-unsec"]["rps"], row["pyworker-unsec"]["rps"]
        fs, ps = row["ferry-sec"]["rps"], row["pyworker-sec"]["rps"]
        lines.append(f"| {conc} | {fmt(d, 0)} | {fmt(fu, 0)} | {fmt(pu, 0)} | {ratio(fu, pu)} | "
                     f"{ratio(fu, d)} | {fmt(fs, 0)} | {fmt(ps, 0)} | {ratio(fs, ps)} | {ratio(fs, d)} |")
    if has_nginx:
        lines += ["", "Reference: a bare nginx reverse proxy (keep-alive upstream, no auth, no JSON, "
                  "no accounting) in front of the same sim.", "",
                  "| concurrency | direct req/s | nginx req/s | nginx / direct | Ferry unsec / nginx | Ferry sec / nginx |",
                  "|---|---|---|---|---|---|"]
        for conc, row in res["throughput"].items():
            d, n = row["direct"]["rps"], row["nginx"]["rps"]
            lines.append(f"| {conc} | {fmt(d, 0)} | {fmt(n, 0)} | {ratio(n, d)} | "
                         f"{ratio(row['ferry-unsec']['rps'], n)} | {ratio(row['ferry-sec']['rps'], n)} |")
    lines += ["", "### Latency and CPU (wrk; p50 / p99 in ms, process CPU µs per request)", "",
              "| concurrency | target | p50 | p99 | CPU µs/req | non-2xx |", "|---|---|---|---|---|---|"]
    for conc, row in res["throughput"].items():
        for n, v in row.items():
            lines.append(f"| {conc} | {n} | {fmt(v['p50_ms'], 2)} | {fmt(v['p99_ms'], 2)} | "
                         f"{fmt(v['cpu_us_per_req'], 0)} | {v['non2xx']} |")
    fr = res.get("fixed_rate", {})
    if fr:
        secs = res["args"].get("rate_seconds", res["args"]["seconds"])
        lines += ["", f"### Added latency at a fixed {res['args']['rate']:.0f} req/s "
                  f"(ferry bench --rate, {secs:g} s per run; ms)", "",
                  "Added = target minus the direct run of the same round, median over rounds "
                  "(min–max in brackets).", "",
                  "| target | p50 | p99 | added p50 | added p99 | errors |", "|---|---|---|---|---|---|"]
        for n, v in fr.items():
            if n == "direct":
                lines.append(f"| {n} | {fmt(v['p50_ms'], 3)} | {fmt(v['p99_ms'], 3)} | – | – | {v['errors']} |")
                continue
            spread = f" [{fmt(v['added_p99_min_ms'], 2)} – {fmt(v['added_p99_max_ms'], 2)}]"
            lines.append(f"| {n} | {fmt(v['p50_ms'], 3)} | {fmt(v['p99_ms'], 3)} | "
                         f"{fmt(v['added_p50_ms'], 3)} | {fmt(v['added_p99_ms'], 3)}{spread} | {v['errors']} |")
    st = res.get("streams", {})
    if st:
        lines += ["", "### Streams: 16 SSE tokens 5 ms apart, 32 concurrent (ms)", "",
                  "| target | TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 | req/s |", "|---|---|---|---|---|---|"]
        for n, v in st.items():
            lines.append(f"| {n} | {fmt(v['ttft_p50_ms'], 2)} | {fmt(v['ttft_p99_ms'], 2)} | "
                         f"{fmt(v['itl_p50_ms'], 2)} | {fmt(v['itl_p99_ms'], 2)} | {fmt(v['rps'], 0)} |")
    mem = res.get("memory_kib", {})
    if mem:
        lines += ["", "### Memory (KiB; VmRSS / VmHWM of the process)", "",
                  f"| process | RSS at ready | peak after the {res['args']['rate']:.0f} req/s runs "
                  "(same offered load) | peak after the max-throughput runs |", "|---|---|---|---|"]
        for n, v in mem.items():
            lines.append(f"| {n} | {v['rss_at_ready']:,} | {v['peak_equal_load']:,} | {v['peak']:,} |")
        for sec in ("unsec", "sec"):
            f, p = mem.get(f"ferry-{sec}"), mem.get(f"pyworker-{sec}")
            if f and p:
                lines.append(f"| Ferry / PyWorker ({sec}) | {ratio(f['rss_at_ready'], p['rss_at_ready'])} | "
                             f"{ratio(f['peak_equal_load'], p['peak_equal_load'])} | {ratio(f['peak'], p['peak'])} |")
    lines += ["", "### Start-up and readiness (secured, benchmark not cached; medians)", "",
              "| figure | Ferry | PyWorker | ratio |", "|---|---|---|---|"]
    su, rd = res["startup_s"], res["ready_after_loaded_line_s"]
    lines.append(f"| spawn → port accepting (s) | {fmt(su['ferry'], 3)} | {fmt(su['pyworker'], 3)} | {ratio(su['ferry'], su['pyworker'])} |")
    lines.append(f"| loaded line → ready report (s) | {fmt(rd['ferry'], 3)} | {fmt(rd['pyworker'], 3)} | {ratio(rd['ferry'], rd['pyworker'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
