"""Per-function instructions per request from two callgrind outputs of the same binary and
case at two batch sizes (bench/instructions.py --keep DIR leaves `callgrind.CASE.N` for each):

    python3 bench/callgrind_diff.py DIR/callgrind.floor.100 DIR/callgrind.floor.1100 [--top 30] [--self]

Each function's inclusive (or, with --self, exclusive) Ir, from `callgrind_annotate`, as
(Ir(hi) - Ir(lo)) / (n_hi - n_lo), the batch sizes taken from the file names; start-up and
shut-down cancel out as in bench/callgrind.py. Inclusive figures overlap (a caller includes its
callees), so they do not add up to the total. With fat LTO callgrind_annotate lists a function
once per source file inlined into it: exclusive counts are summed over those, inclusive ones
take the largest (the inclusive cost of the function itself).
"""
import argparse
import re
import subprocess


def per_function(path, inclusive):
    ann = subprocess.run(["callgrind_annotate", "--auto=no", f"--inclusive={'yes' if inclusive else 'no'}",
                          "--threshold=100", path], capture_output=True, text=True, check=True).stdout
    out = {}
    for line in ann.splitlines():
        m = re.match(r"^\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)$", line)
        if not m or m.group(2).startswith(("=>", "<")):
            continue  # call-tree lines
        # "file:function": code inlined from several files counts once, under its function.
        name = re.sub(r"\s*\[[^\]]*\]\s*$", "", m.group(2)).split(":", 1)[-1]
        if inclusive:
            out[name] = max(out.get(name, 0), int(m.group(1).replace(",", "")))
        else:
            out[name] = out.get(name, 0) + int(m.group(1).replace(",", ""))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lo")
    ap.add_argument("hi")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--self", action="store_true", help="exclusive instead of inclusive Ir")
    a = ap.parse_args()
    n_lo, n_hi = (int(p.rsplit(".", 1)[1]) for p in (a.lo, a.hi))
    lo, hi = per_function(a.lo, not a.self), per_function(a.hi, not a.self)
    rows = sorted(((hi[f] - lo.get(f, 0)) / (n_hi - n_lo), f) for f in hi)
    for ir, f in reversed(rows[-a.top:]):
        print(f"{ir:>10,.0f}  {f[:150]}")


if __name__ == "__main__":
    main()
