"""A/B of two `ferry-worker` builds (e.g. before and after a change) in front of the same
`ferry sim-model`, UNSECURED: wrk at 8 and 64 connections for 5 s, rounds interleaved; prints
req/s and the worker's CPU microseconds per request, each with its median. Loopback only,
bounded. Needs wrk (scripts/test.sh installs it).

    python3 bench/ab_worker.py OLD_FERRY_WORKER NEW_FERRY_WORKER FERRY_FOR_THE_SIM [ROUNDS]
"""
import os, re, socket, subprocess, sys, time, json

old, new, sim_bin = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def wait(p):
    for _ in range(200):
        try: socket.create_connection(("127.0.0.1", p)).close(); return
        except OSError: time.sleep(0.02)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
mp = free()
sim = subprocess.Popen([sim_bin, "sim-model", "--listen", f"127.0.0.1:{mp}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wait(mp)
lua = "/tmp/ab.lua"
open(lua, "w").write("""
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"auth_data":{"cost":16,"endpoint":"bench","reqnum":%d,"request_idx":%d,"signature":"x","url":""},"session_id":null,"payload":{"model":"m","prompt":"hello world","max_tokens":16}}', counter, counter)
  return wrk.format("POST", "/v1/completions", {["Content-Type"] = "application/json"}, body)
end
""")
res = {}
for r in range(rounds):
    for name, b in (("old", old), ("new", new)):
        wp = free()
        env = dict(os.environ, WORKER_PORT=str(wp), REPORT_ADDR="http://127.0.0.1:9", CONTAINER_ID="1",
                   UNSECURED="true", MODEL_SERVER_URL=f"http://127.0.0.1:{mp}", FERRY_LISTEN_HOST="127.0.0.1",
                   PUBLIC_IPADDR="127.0.0.1", FERRY_LOG="error", FERRY_NO_SIDE_LISTENER="true")
        w = subprocess.Popen([b, "--assume-loaded-perf", "1000000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(wp)
        for c in (8, 64):
            c0 = cpu(w.pid)
            out = subprocess.run(["wrk", "-t1", f"-c{c}", "-d5s", "-s", lua, f"http://127.0.0.1:{wp}/v1/completions"], capture_output=True, text=True).stdout
            c1 = cpu(w.pid)
            reqs = int(re.search(r"(\d+) requests in", out).group(1))
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            res.setdefault((name, c), []).append((rps, (c1 - c0) / max(reqs, 1) * 1e6, int(non2xx.group(1)) if non2xx else 0))
        w.terminate(); w.wait()
sim.terminate(); sim.wait()
for c in (8, 64):
    for name in ("old", "new"):
        xs = res[(name, c)]
        rps = sorted(x[0] for x in xs); us = sorted(x[1] for x in xs)
        print(f"c={c:<3} {name}: req/s {rps} median {rps[len(rps)//2]:.0f}; CPU us/req {[round(u,1) for u in us]} median {us[len(us)//2]:.1f}; non-2xx {[x[2] for x in xs]}")
