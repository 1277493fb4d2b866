"""A burst of large request bodies against `ferry worker` (UNSECURED, openai preset, in front of
`ferry sim-model`): prints the worker's resident memory before, at the peak and 3 s after, and
the statuses it answered. Bounded: N bodies, each read once, on loopback only.

    python3 bench/body_burst.py FERRY_BINARY N BODY_BYTES [PATH]
    python3 bench/body_burst.py target/debug/ferry 64 10000000 /v1/completions
"""
import json, os, socket, subprocess, sys, threading, time

ferry = sys.argv[1]
n, size = int(sys.argv[2]), int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else "/v1/completions"

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

mp, wp = free_port(), free_port()
sim = subprocess.Popen([ferry, "sim-model", "--listen", f"127.0.0.1:{mp}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
env = dict(os.environ, WORKER_PORT=str(wp), REPORT_ADDR="http://127.0.0.1:9", CONTAINER_ID="1",
           UNSECURED="true", MODEL_SERVER_URL=f"http://127.0.0.1:{mp}", FERRY_LISTEN_HOST="127.0.0.1",
           PUBLIC_IPADDR="127.0.0.1", BACKEND="openai", FERRY_LOG="error")
w = subprocess.Popen([ferry, "worker", "--assume-loaded-perf", "100", "--no-side-listener", "true"], env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", wp)).close(); break
    except OSError: time.sleep(0.05)
before = rss(w.pid)
peak = [before]
payload = b'{"auth_data": {}, "payload": {"model": "m", "prompt": "' + b"x" * size + b'", "max_tokens": 1}}'
statuses = []
def one():
    try:
        s = socket.create_connection(("127.0.0.1", wp))
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode())
        try:
            s.sendall(payload)
        except OSError:
            pass
        s.settimeout(60)
        statuses.append(s.recv(64).split(b" ")[1].decode())
        s.close()
    except Exception as e:
        statuses.append(type(e).__name__)
stop = False
def watch():
    while not stop:
        peak[0] = max(peak[0], rss(w.pid)); time.sleep(0.01)
t = threading.Thread(target=watch); t.start()
ts = [threading.Thread(target=one) for _ in range(n)]
[x.start() for x in ts]; [x.join() for x in ts]
time.sleep(3); stop = True; t.join()
after = rss(w.pid)
from collections import Counter
print(json.dumps({"path": path, "bodies": n, "body_mb": round(len(payload) / 2**20, 1), "statuses": Counter(statuses),
                  "rss_mib_before": before, "rss_mib_peak": peak[0], "rss_mib_after": after}))
w.terminate(); sim.terminate(); w.wait(); sim.wait()
