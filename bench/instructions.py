"""Instructions per request in the worker process, against a bare nginx reverse proxy in front of
the same model server: callgrind counts (see bench/callgrind.py for the method), so the figures
repeat for the same binaries whatever else the machine does.

    python3 bench/instructions.py --worker target/release/ferry-worker --ferry target/release/ferry \
        [--python PY_WITH_PYCRYPTODOME_AND_AIOHTTP] [--rounds 3] [--cases a,b,...] [--keep DIR] \
        [--floor target/release/floor_proxy [--floor-threads 1]]

Cases (warm; one keep-alive connection; the worker with BACKEND=openai in front of
`ferry sim-model`, answers of 4 tokens unless said):

    signed     a small JSON request with Vast's url signature (RSA, verified once, then cached),
               the key served by bench/fake_cp.py
    unsigned   the same request, UNSECURED=true
    sse        a streamed answer: Ir per request at 4 and at 20 tokens; their difference / 16
               is the cost of one relayed SSE event
    refused    a signed request with a wrong signature: 401 (the RSA check runs every time)
    nginx-*    the same through nginx 1 worker process, master off, `proxy_pass` to the sim over a
               keep-alive upstream, unbuffered both ways, no access log (a plain reverse proxy);
               nginx-refused answers 401 from a `return` (no upstream)
    floor, floor-sse
               the same through `--floor BIN` (bench/floor: the smallest
               hyper 1.x reverse proxy, hyper-util's pooled client upstream), the nginx payloads
    floor-conn, floor-conn-sse
               the same with its bare `hyper::client::conn::http1` connection list upstream
               (the floor cases run by default when `--floor` is given)

The stream cases use a 1 ms token delay so that each SSE event reaches the proxy as its own read
(at zero delay how many events share one read depends on timing). `--keep DIR` leaves the last
callgrind outputs of each case in DIR (`callgrind.CASE.N`, N requests) for `callgrind_annotate`
or bench/callgrind_diff.py (per function, per request).
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind as cg  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N = {"json": (100, 1100), "sse": (40, 240)}
STREAM_TOKENS = (4, 20)


def payload(tokens, stream):
    return {"model": "m", "prompt": "hello world", "max_tokens": tokens, "stream": stream}


def envelope(i, url, sig, tokens, stream):
    return json.dumps({"auth_data": {"cost": 4, "endpoint": "bench", "reqnum": i, "request_idx": i,
                                     "signature": sig, "url": url},
                       "session_id": None, "payload": payload(tokens, stream)})


def poster(path, body_of, status):
    def request(c, i):
        c.request("POST", path, body_of(i), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        assert r.status == status, (r.status, data[:200])
        return data
    return request


class Bench:
    def __init__(self, args, tmp):
        self.a, self.tmp = args, Path(tmp)
        self.keep = Path(args.keep) if args.keep else None
        py = args.python
        subprocess.run([py, "-c", (
            "from Crypto.PublicKey import RSA; k = RSA.generate(2048); "
            f"open('{tmp}/key.pem','wb').write(k.export_key()); "
            f"open('{tmp}/pub.pem','wb').write(k.publickey().export_key())")], check=True)
        self.procs = []
        self.cp_port = cg.free_port()
        self.procs.append(subprocess.Popen([py, str(ROOT / "bench/fake_cp.py"), str(self.cp_port),
                                            f"{tmp}/pub.pem"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        self.sim = {}
        for name, delay in (("fast", 0), ("stream", 1)):
            port = cg.free_port()
            self.procs.append(subprocess.Popen(
                [args.ferry, "sim-model", "--listen", f"127.0.0.1:{port}", "--token-delay-ms", str(delay)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.sim[name] = port
        for p in [self.cp_port, *self.sim.values()]:
            cg.wait_port(p)

    def close(self):
        for p in self.procs:
            p.terminate()
            p.wait()

    def sign(self, url):
        code = ("import json,base64,sys\nfrom Crypto.PublicKey import RSA\n"
                "from Crypto.Signature import pkcs1_15\nfrom Crypto.Hash import SHA256\n"
                f"k = RSA.import_key(open('{self.tmp}/key.pem').read())\n"
                "m = json.dumps({'url': sys.argv[1]}, indent=4, sort_keys=True).encode()\n"
                "print(base64.b64encode(pkcs1_15.new(k).sign(SHA256.new(m))).decode())\n")
        return subprocess.run([self.a.python, "-c", code, url], check=True, capture_output=True,
                              text=True).stdout.strip()

    def out(self, case, n):
        d = self.keep or self.tmp
        return str(d / f"callgrind.{case}.{n}")

    # --- the worker ---------------------------------------------------------------------------

    def worker(self, case, n, sim, tokens, stream, status=200, secured=False, wrong_sig=False):
        port = cg.free_port()
        url = f"http://127.0.0.1:{port}"
        extra = {"BACKEND": "openai", f"VAST_TCP_PORT_{port}": port}
        if secured:
            extra.update(UNSECURED="false", REPORT_ADDR=f"http://127.0.0.1:{self.cp_port}")
            # Signed for another worker: a well-formed signature that fails the RSA check.
            sig = self.sign(url + "/other" if wrong_sig else url)
            good = self.sign(url)
        else:
            sig = good = "x"
        env = cg.worker_env(port, self.sim[sim], **extra)

        def ready(p):
            # Secured: the key arrives from the fake control plane shortly after start.
            if not secured:
                return
            for _ in range(600):
                c = http.client.HTTPConnection("127.0.0.1", p, timeout=60)
                c.request("POST", "/v1/completions", envelope(0, url, good, 1, False))
                r = c.getresponse(); r.read(); c.close()
                if r.status == 200:
                    return
                time.sleep(0.25)
            raise SystemExit("the worker never loaded the key")

        req = poster("/v1/completions", lambda i: envelope(i, url, sig, tokens, stream), status)
        cmd = [self.a.worker, "--assume-loaded-perf", "1000000"]
        return cg.count(cmd, env, port, n, req, self.out(case, n), ready=ready)

    # --- nginx ----------------------------------------------------------------------------------

    def nginx(self, case, n, sim, tokens, stream, status=200):
        port = cg.free_port()
        d = Path(tempfile.mkdtemp(prefix="ferry-nginx-cg-", dir=self.tmp))
        (d / "tmp").mkdir()
        user = "user root;\n" if os.getuid() == 0 else ""
        (d / "nginx.conf").write_text(f"""{user}daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    upstream model {{
        server 127.0.0.1:{self.sim[sim]};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /refused {{
            default_type application/json;
            return 401 '{{"error":"signature verification failed","code":"bad_signature"}}';
        }}
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        path = "/refused" if status == 401 else "/v1/completions"
        req = poster(path, lambda i: json.dumps(payload(tokens, stream)), status)
        import signal
        # QUIT: graceful exit, so callgrind writes its counts.
        return cg.count([nginx, "-p", str(d), "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf"],
                        dict(os.environ), port, n, req, self.out(case, n), stop=signal.SIGQUIT)

    # --- the hyper floor ---------------------------------------------------------------------

    def floor(self, case, n, sim, tokens, stream, status=200, mode="pooled"):
        port = cg.free_port()
        # The worker's environment (its malloc setting above all); the proxy reads only its flags.
        env = cg.worker_env(port, self.sim[sim])
        cmd = [self.a.floor, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{self.sim[sim]}",
               "--mode", mode, "--threads", str(self.a.floor_threads)]
        req = poster("/v1/completions", lambda i: json.dumps(payload(tokens, stream)), status)
        return cg.count(cmd, env, port, n, req, self.out(case, n))

    def floor_conn(self, *args, **kw):
        return self.floor(*args, mode="conn", **kw)

    # --- cases ----------------------------------------------------------------------------------

    def case(self, name):
        """Ir per request (and, for streams, per event) of one case."""
        stream = name.endswith("sse")
        lo, hi = N["sse" if stream else "json"]
        target = (self.nginx if name.startswith("nginx") else self.floor_conn
                  if name.startswith("floor-conn") else self.floor if name.startswith("floor")
                  else self.worker)

        def one(tokens, n, label):
            sim = "stream" if stream else "fast"
            kw = {}
            if name.endswith("refused"):
                kw["status"] = 401
            if target == self.worker:
                kw["secured"] = name in ("signed", "refused")
                kw["wrong_sig"] = name == "refused"
            return target(label, n, sim=sim, tokens=tokens, stream=stream, **kw)

        if not stream:
            ir, sample = cg.per_request(lambda n: one(4, n, name), lo, hi)
            return {"per_request": ir}, sample
        (t1, t2) = STREAM_TOKENS
        r1, _ = cg.per_request(lambda n: one(t1, n, f"{name}-{t1}"), lo, hi)
        r2, sample = cg.per_request(lambda n: one(t2, n, f"{name}-{t2}"), lo, hi)
        return {"per_request": r1, f"per_request_{t2}": r2, "per_event": (r2 - r1) / (t2 - t1)}, sample


ALL = ["unsigned", "signed", "refused", "sse", "nginx", "nginx-refused", "nginx-sse"]
FLOOR = ["floor", "floor-sse", "floor-conn", "floor-conn-sse"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", required=True)
    ap.add_argument("--ferry", required=True, help="a `ferry` binary, for `ferry sim-model`")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cases", help=f"default: {','.join(ALL)} (and {','.join(FLOOR)} with --floor)")
    ap.add_argument("--floor", help="the hyper floor proxy (bench/floor)")
    ap.add_argument("--floor-threads", type=int, default=1,
                    help="its runtime threads, as the worker's FERRY_WORKER_THREADS (default 1)")
    ap.add_argument("--keep", help="folder for the callgrind outputs (callgrind_annotate)")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    a.worker, a.ferry = str(Path(a.worker).resolve()), str(Path(a.ferry).resolve())
    if a.floor:
        a.floor = str(Path(a.floor).resolve())
    cases = (a.cases or ",".join(ALL + (FLOOR if a.floor else []))).split(",")
    if any(c.startswith("floor") for c in cases) and not a.floor:
        ap.error("the floor cases need --floor BIN")
    if a.keep:
        Path(a.keep).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferry-cg-") as tmp:
        b = Bench(a, tmp)
        try:
            res = {}
            for _ in range(a.rounds):
                for c in cases:
                    r, sample = b.case(c)
                    for k, v in r.items():
                        res.setdefault(c, {}).setdefault(k, []).append(v)
                    print(f"  {c:<14} {', '.join(f'{k} {v:,.0f}' for k, v in r.items())}"
                          f"  answer: {sample[:40]!r}", flush=True)
        finally:
            b.close()
    med = {c: {k: cg.median(v) for k, v in r.items()} for c, r in res.items()}
    print("\ncase            Ir/request   Ir/SSE event   vs nginx")
    for c in cases:
        m = med[c]
        ref = None if c.startswith("nginx") else med.get(
            "nginx-refused" if c == "refused" else "nginx-sse" if c.endswith("sse") else "nginx")
        ratio = f"{m['per_request'] / ref['per_request']:.2f}x" if ref else ""
        if ref and "per_event" in m:
            ratio += f" (event {m['per_event'] / ref['per_event']:.2f}x)"
        ev = f"{m['per_event']:>12,.0f}" if "per_event" in m else " " * 12
        print(f"{c:<14} {m['per_request']:>12,.0f}   {ev}   {ratio}")
    for c in cases:
        worker = med.get("sse" if c.endswith("sse") else "unsigned")
        if c.startswith("floor") and worker:
            share = f"{med[c]['per_request'] / worker['per_request']:.0%} of the worker's request"
            if "per_event" in med[c]:
                share += f", {med[c]['per_event'] / worker['per_event']:.0%} of its SSE event"
            print(f"{c}: {share}")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(med, indent=1))


if __name__ == "__main__":
    main()
