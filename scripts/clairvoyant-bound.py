#!/usr/bin/env python3
"""The cheapest clairvoyant schedule of resumes and stops for a trace (docs/simulate.md).

Knowing every future arrival, what is the least an endpoint could pay while no request waits
longer than `--max-queue-s` (give Vast's p99 queue time)? The schedule is a set of hot
periods of one worker. A period serving the consecutive requests i..j starts at i's deadline
(its arrival plus the allowed wait: starting later breaks i's bound, earlier only adds idle
time), runs every request as soon as both it and the worker are there, and ends when the last
of them is done; each period but the first (the worker is prewarmed, as with `--prewarm 1`)
pays a resume, and each pays a stop, hot. A dynamic programme over i..j finds the cheapest
partition. Between periods the worker is stopped, at the stopped price.

What is relaxed, so that no schedule under the simulator's rules is cheaper: one worker
serves any number of requests at once, each at the per-request speed (perf / concurrency),
with no router, no `max_queue_time`, no tick. What is stricter than the target: every request
waits at most `--max-queue-s`, where the target asks it of 99% of them; the 1% left free is
not exploited, so the bound is not a strict lower bound on that side (the 88 requests it
frees could at most save their own periods).

Usage: scripts/clairvoyant-bound.py TRACE.csv [--stretch-gaps 10] [--max-queue-s 20.01]
"""
import argparse
import csv
import datetime


def read(path, stretch):
    ts, tok = [], []
    with open(path) as f:
        r = csv.reader(f)
        next(r)
        for row in r:
            t = datetime.datetime.fromisoformat(row[0].strip()[:26]).timestamp()
            ts.append(t)
            tok.append(float(row[2]))
    order = sorted(range(len(ts)), key=lambda i: ts[i])
    ts = [ts[i] for i in order]
    tok = [tok[i] for i in order]
    out, prev_in, prev_out = [], ts[0], 0.0
    for t in ts:
        prev_out += (t - prev_in) * stretch
        prev_in = t
        out.append(prev_out)
    return out, tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--stretch-gaps", type=float, default=1.0)
    ap.add_argument("--max-queue-s", type=float, default=20.01)
    ap.add_argument("--perf", type=float, default=400.0)
    ap.add_argument("--concurrency", type=float, default=8.0)
    ap.add_argument("--resume-s", type=float, default=20.0)
    ap.add_argument("--stop-s", type=float, default=2.0)
    ap.add_argument("--price-hot-per-hour", type=float, default=1.2)
    ap.add_argument("--price-stopped-per-hour", type=float, default=0.02)
    ap.add_argument("--window-s", type=float, default=3600.0,
                    help="longest period considered (arrival span), seconds")
    a = ap.parse_args()
    at, tok = read(a.trace, a.stretch_gaps)
    n = len(at)
    speed = a.perf / a.concurrency
    s = [t / speed for t in tok]
    d = a.max_queue_s
    inf = float("inf")
    f = [0.0] + [inf] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        m_as, m_s = -inf, -inf
        i = j
        while i >= 1 and at[j - 1] - at[i - 1] <= a.window_s:
            k = i - 1
            m_as = max(m_as, at[k] + s[k])
            m_s = max(m_s, s[k])
            start = at[k] + d
            # The first period starts with the prewarmed worker, at time 0.
            if i == 1:
                start = 0.0
            end = max(m_as, start + m_s) if i > 1 else max(m_as, m_s)
            cost = (end - start) + a.stop_s + (a.resume_s if i > 1 else 0.0)
            if f[i - 1] + cost < f[j]:
                f[j] = f[i - 1] + cost
                back[j] = i
            i -= 1
    periods = 0
    j = n
    while j > 0:
        periods += 1
        j = back[j] - 1
    hot = f[n]
    span = at[-1] + d + max(s)
    stopped = max(span - hot, 0.0)
    cost = hot * a.price_hot_per_hour / 3600 + stopped * a.price_stopped_per_hour / 3600
    print("requests %d, span %.0f s, max queue %.2f s" % (n, span, d))
    print("clairvoyant: %d hot periods (%d resumes), hot %.0f GPU-s, stopped %.0f GPU-s, cost $%.2f"
          % (periods, periods - 1, hot, stopped, cost))


if __name__ == "__main__":
    main()
