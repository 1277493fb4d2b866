"""What `[route.response]` costs: instructions the worker executes per request, counted by
callgrind, for a TOML route without a transform (two builds: before and after the feature) and
with one (pick the completion's text), on plain JSON answers and on SSE streams.

Each case runs the worker under `valgrind --tool=callgrind` twice (bench/callgrind.py), serving N_LO and then N_HI
requests in sequence over one keep-alive connection (UNSECURED, in front of `ferry sim-model`),
and reports (Ir(N_HI) - Ir(N_LO)) / (N_HI - N_LO): start-up and shut-down cancel out. Reports go
to a closed port with an hour's tick, so background loops add (almost) nothing. Deterministic to
a few hundred instructions per request; no wall-clock figure is taken.

    python3 bench/transform_callgrind.py BEFORE_FERRY_WORKER AFTER_FERRY_WORKER FERRY_FOR_THE_SIM [ROUNDS]

Rounds (default 3) are interleaved; each line shows every round's figure and their median.
"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import callgrind as cg  # noqa: E402

before, after, sim_bin = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
N_LO, N_HI = 100, 1100

ROUTE = """
[[route]]
path = "/v1/completions"
workload = "max_tokens"
"""
RESHAPE = """
[route.response]
pick = { text = "choices.0.text" }
"""


def body(i, stream):
    return json.dumps({"auth_data": {"cost": 4, "endpoint": "bench", "reqnum": i, "request_idx": i,
                                     "signature": "x", "url": ""}, "session_id": None,
                       "payload": {"model": "m", "prompt": "hello world", "max_tokens": 4, "stream": stream}})


def request(stream):
    def send(c, i):
        c.request("POST", "/v1/completions", body(i, stream), {"Content-Type": "application/json"})
        r = c.getresponse(); data = r.read()
        assert r.status == 200, (r.status, data)
        return data
    return send


def per_request(binary, toml, stream, mp, tmp):
    cfg = os.path.join(tmp, "w.toml"); open(cfg, "w").write(toml)

    def run(n):
        wp = cg.free_port()
        return cg.count([binary, "--config", cfg, "--assume-loaded-perf", "1000000"],
                        cg.worker_env(wp, mp), wp, n, request(stream),
                        os.path.join(tmp, f"cg.{os.getpid()}.{time.time_ns()}"))
    return cg.per_request(run, N_LO, N_HI)


mp = cg.free_port()
sim = subprocess.Popen([sim_bin, "sim-model", "--listen", f"127.0.0.1:{mp}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
cg.wait_port(mp)
try:
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(stream, name, binary, toml) for stream in (False, True)
                 for name, binary, toml in (("before, no transform", before, ROUTE),
                                            ("after, no transform", after, ROUTE),
                                            ("after, pick text", after, ROUTE + RESHAPE))]
        res, samples = {}, {}
        for _ in range(rounds):
            for stream, name, binary, toml in cases:
                ir, samples[(stream, name)] = per_request(binary, toml, stream, mp, tmp)
                res.setdefault((stream, name), []).append(ir)
        for stream, name, _, _ in cases:
            kind = "SSE stream, 4 tokens" if stream else "JSON answer, 4 tokens"
            xs = res[(stream, name)]
            med = sorted(xs)[len(xs) // 2]
            print(f"{kind:<22} {name:<22} median {med:>8,.0f} Ir/request  rounds {[round(x) for x in xs]}"
                  f"  first answer: {samples[(stream, name)][:48]!r}")
finally:
    sim.terminate(); sim.wait()
