"""What Ferry's per-request token costs: instructions (callgrind) and CPU time per operation for
the v1 token (RSA-2048 PKCS#1 v1.5 `ferry_sig`, signed by the control plane for every grant and
checked by the worker) and the v2 token (HMAC-SHA256 `ferry_mac` under a per-worker key).

Each operation runs in `token_bench` (crates/protocol/examples/token_bench.rs, release build)
N_LO and then N_HI times; the figure is (X(N_HI) - X(N_LO)) / (N_HI - N_LO), so start-up and the
fixed RSA key (FERRY_BENCH_KEY, generated once per run of this script) cancel out. Instruction
counts are repeatable to a few instructions; CPU times (user+sys of the child, medians of
ROUNDS) move with the machine's load and are shown for scale.

    cargo build --release -p ferry-protocol --example token_bench
    python3 bench/token_callgrind.py [target/release/examples/token_bench] [ROUNDS]
"""
import os, re, resource, statistics, subprocess, sys, tempfile

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/examples/token_bench"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
OPS = ["rsa-sign", "rsa-verify", "mac-sign", "mac-verify", "mac-derive"]
# Callgrind is ~50x slower than native: fewer RSA signatures under it.
CG = {"rsa-sign": (10, 60), "rsa-verify": (100, 600)}
CG_DEFAULT = (1000, 11000)
NATIVE = {"rsa-sign": (200, 2200), "rsa-verify": (2000, 22000)}
NATIVE_DEFAULT = (20000, 220000)

tmp = tempfile.mkdtemp(prefix="ferry-token-bench-")
key = os.path.join(tmp, "key.pem")
with open(key, "w") as f:
    f.write(subprocess.run([binary, "print-key", "0"], capture_output=True, text=True, check=True).stdout)
env = dict(os.environ, FERRY_BENCH_KEY=key)


def instructions(op, n):
    out = os.path.join(tmp, f"cg.{op}.{n}")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary, op, str(n)],
                   env=env, check=True, capture_output=True)
    with open(out) as f:
        for line in f:
            m = re.match(r"summary:\s+(\d+)", line) or re.match(r"totals:\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no totals in {out}")


def cpu(op, n):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([binary, op, str(n)], env=env, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


rows = []
for op in OPS:
    lo, hi = CG.get(op, CG_DEFAULT)
    ir = (instructions(op, hi) - instructions(op, lo)) / (hi - lo)
    lo, hi = NATIVE.get(op, NATIVE_DEFAULT)
    us = []
    for _ in range(rounds):
        us.append((cpu(op, hi) - cpu(op, lo)) / (hi - lo) * 1e6)
    rows.append((op, ir, statistics.median(us), us))
    print(f"{op:11s} {ir:12,.0f} instructions/op   {statistics.median(us):9.2f} µs CPU/op  "
          f"(rounds: {', '.join(f'{u:.2f}' for u in us)})", flush=True)

by = {r[0]: r for r in rows}
print()
print("| operation | v1 (RSA-2048) instructions | v2 (HMAC-SHA256) instructions | ratio | v1 µs CPU | v2 µs CPU |")
print("|---|---|---|---|---|---|")
for name, a, b in [("control plane: make the token", "rsa-sign", "mac-sign"),
                   ("worker: check the token", "rsa-verify", "mac-verify")]:
    print(f"| {name} | {by[a][1]:,.0f} | {by[b][1]:,.0f} | {by[a][1] / by[b][1]:,.0f}x | "
          f"{by[a][2]:.1f} | {by[b][2]:.2f} |")
print(f"| once per worker: derive its key (+ one MAC) | – | {by['mac-derive'][1]:,.0f} | – | – | "
      f"{by['mac-derive'][2]:.2f} |")
