"""What the web console costs `/route/`: routes/s, p99 and the control plane's CPU per route with
the console idle (nobody signed in; its history sampler runs, as it always does) and with a real
browser page open on it, polling every 2 s.

Builds on `bench/route_scale.py` (its `Plane`: one `ferry control` on SQLite, N fake workers
joined through `POST /join/`, each reporting itself ready once, nothing behind their URLs;
routes driven by `ferry bench --direct`). The page is the endpoint page of the routed endpoint,
the console's heaviest: every refresh renders its N workers, the decisions log and four charts.
It is opened in headless Debian chromium through chromedriver, signed in with the account key.
Rounds alternate (idle, open / open, idle / ...) so the host's drift spreads over both.

A second measurement leaves `/route/` alone: the control plane's CPU per second with the page
closed and open, i.e. what one open page costs by itself.

    python3 bench/console_cost.py [--ferry BIN] [--workers 1000] [--concurrency 16]
                                  [--seconds 10] [--rounds 4] [--quiet-seconds 20]
                                  [--json-out FILE]

Needs `chromium` and `chromedriver` (apt-get install chromium chromium-driver; scripts/ui-tests.sh
installs them) and a Ferry build (release preferred). Loopback only.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import route_scale as rs  # noqa: E402

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


class Browser:
    """A headless chromium session through chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self, chromium: str, chromedriver: str):
        self.port = rs.free_port()
        self.driver = subprocess.Popen([chromedriver, f"--port={self.port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                self.call("GET", "/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("chromedriver did not start")
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"{}").get("value")

    def s(self, method: str, path: str, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def goto(self, url: str):
        self.s("POST", "/url", {"url": url})

    def js(self, script: str):
        return self.s("POST", "/execute/sync", {"script": script, "args": []})

    def sign_in(self, front: str, key: str):
        self.goto(f"{front}/ui/login")
        self.js(f"document.getElementById('api_key').value = {json.dumps(key)};"
                "document.getElementById('login').submit();")
        deadline = time.time() + 30
        while "ep-rows" not in (self.js("return document.body.innerHTML") or ""):
            if time.time() > deadline:
                raise SystemExit("could not sign in to the console")
            time.sleep(0.2)

    def open_page(self, url: str):
        """Opens `url` and waits for its first live refresh."""
        self.goto(url)
        deadline = time.time() + 60
        while not self.js("var e = document.querySelector('[data-live]');"
                          "return e && e.getAttribute('data-refreshed');"):
            if time.time() > deadline:
                raise SystemExit(f"{url}: no live refresh")
            time.sleep(0.2)

    def close_page(self):
        self.goto("about:blank")

    def stop(self):
        try:
            self.s("DELETE", "")
        except OSError:
            pass
        self.driver.terminate()
        self.driver.wait(timeout=30)


def cpu(plane) -> int:
    return sum(rs.cpu_ticks([p.pid for p in plane.procs]).values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_ferry = os.path.join(rs.ROOT, "target", "release", "ferry")
    if not os.path.exists(default_ferry):
        default_ferry = os.path.join(rs.ROOT, "target", "debug", "ferry")
    ap.add_argument("--ferry", default=default_ferry)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quiet-seconds", type=int, default=20)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="chromedriver")
    ap.add_argument("--json-out")
    a = ap.parse_args()

    plane = rs.Plane(a.ferry, "console", "sqlite", 1, False, a.workers)
    browser = None
    out: dict = {"command": " ".join(sys.argv), "machine": rs.machine(), "workers": a.workers,
                 "concurrency": a.concurrency, "seconds": a.seconds}
    try:
        plane.bench(a.ferry, 16, 0, requests=max(a.workers, 200))
        browser = Browser(a.chromium, a.chromedriver)
        browser.sign_in(plane.front, rs.KEY)
        page = f"{plane.front}/ui/endpoints/{plane.endpoint_id}"
        browser.close_page()

        # The page's own cost, no routes running.
        quiet = {}
        for mode in ("idle", "open"):
            if mode == "open":
                browser.open_page(page)
            t0, c0 = time.time(), cpu(plane)
            time.sleep(a.quiet_seconds)
            quiet[mode] = (cpu(plane) - c0) * TICK_US / 1000 / (time.time() - t0)
            browser.close_page()
            print(f"no routes, console {mode}: control plane CPU {quiet[mode]:.2f} ms/s", flush=True)
        out["quiet_cpu_ms_per_s"] = quiet

        res = {"idle": [], "open": []}
        for r in range(a.rounds):
            for mode in (("idle", "open") if r % 2 == 0 else ("open", "idle")):
                if mode == "open":
                    browser.open_page(page)
                f = plane.measure(a.ferry, a.concurrency, a.seconds)
                browser.close_page()
                res[mode].append(f)
                print(f"round {r + 1} console {mode:<4}: {f['rps']:8.0f} routes/s  p50 {f['p50_ms']:6.2f} ms  "
                      f"p99 {f['p99_ms']:6.2f} ms  CPU {f['cpu_us_ferry']:6.1f} µs/route  errors {f['errors']}",
                      flush=True)
        out["routes"] = res
        print(f"\n{a.workers} workers, {a.concurrency} clients, {a.rounds} rounds of {a.seconds} s (medians):\n")
        print("| console | routes/s | p50 ms | p99 ms | control CPU µs/route |")
        print("|---|---|---|---|---|")
        med = {}
        for mode in ("idle", "open"):
            m = {k: statistics.median(x[k] for x in res[mode]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_ferry")}
            med[mode] = m
            print(f"| {mode} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['cpu_us_ferry']:.1f} |")
        out["medians"] = med
        print(f"\nopen / idle: routes/s {med['open']['rps'] / med['idle']['rps']:.3f}, "
              f"CPU per route {med['open']['cpu_us_ferry'] / med['idle']['cpu_us_ferry']:.3f}; "
              f"page alone (no routes): {quiet['open'] - quiet['idle']:+.2f} ms CPU per second")
    finally:
        if browser:
            browser.stop()
        plane.stop()
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
