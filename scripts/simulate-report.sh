#!/usr/bin/env bash
# The numbers of docs/simulate.md: every policy on both Azure sample traces, as recorded and
# with inter-arrival gaps x10, as Markdown tables (python3 formats the JSON), and the chart
# docs/simulate-code.svg, the online capacity model's runs (a worker whose real throughput is
# not its benchmark) and the clairvoyant bound on the code trace with gaps x10.
# Usage: scripts/simulate-report.sh [path/to/ferry] [extra flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY="${1:-target/release/ferry}"
shift || true
D=data/azure-llm-inference-2023
table() {
    python3 -c '
import json, sys
os = json.load(sys.stdin)
best = min(os, key=lambda o: o["cost"])
rows = [
    ("cost $ (ratio to lower bound)", lambda o: "%.2f (%.1fx)" % (o["cost"], o["cost_ratio"])),
    ("hot GPU-s", lambda o: "%.0f" % o["hot_s"]),
    ("stopped GPU-s", lambda o: "%.0f" % o["stopped_s"]),
    ("launches / resumes", lambda o: "%d / %d" % (o["launches"], o["resumes"])),
    ("requests hit by a cold start", lambda o: "%d" % o["cold_start_requests"]),
    ("queue p50 / p99 s", lambda o: "%.2f / %.2f" % (o["queue_time"]["p50"], o["queue_time"]["p99"])),
    ("latency p99 s", lambda o: "%.2f" % o["latency"]["p99"]),
    ("rejected", lambda o: "%d" % o["rejected"]),
]
print("| | " + " | ".join(o["policy"] for o in os) + " |")
print("|---|" + "---|" * len(os))
for name, f in rows:
    print("| " + name + " | " + " | ".join(f(o) for o in os) + " |")
print()
print("Lower bound: %.0f GPU-s ($%.2f); %d requests." % (os[0]["lower_bound_s"], os[0]["lower_bound_cost"], os[0]["requests"]))
'
}
for trace in code conv; do
    warm=1
    [ "$trace" = conv ] && warm=4
    for stretch in 1 10; do
        args=("$D/AzureLLMInferenceTrace_$trace.csv" --compare --format json --stretch-gaps "$stretch" "$@")
        echo "### $trace, gaps x$stretch, --prewarm $warm"
        echo
        echo '```'
        echo "ferry simulate ${args[*]} --prewarm $warm"
        echo '```'
        echo
        "$FERRY" simulate "${args[@]}" --prewarm "$warm" | table
        echo
        echo "Same, from an empty fleet (\`--prewarm 0\`):"
        echo
        "$FERRY" simulate "${args[@]}" | table
        echo
    done
done
"$FERRY" simulate "$D/AzureLLMInferenceTrace_code.csv" --compare --prewarm 1 --svg docs/simulate-code.svg "$@" >/dev/null
# The online capacity model: benchmark 400 tokens/s, real 250 (benchmark over-states) and 600
# (under-states), conv trace, 8 workers prewarmed so the first launches' 120 s do not set the
# p99 (see docs/simulate.md), with and without learning.
echo "### Capacity model: conv, --prewarm 8, benchmark 400"
echo
echo "| policy | real tokens/s, fleet cap | learning | cost \$ | hot GPU-s | launches / resumes | hit by a cold start | queue p90 / p99 s | latency p90 / p99 s | rejected |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for policy in vast ferry; do
    for run in 250:20 600:20 250:8; do
        real=${run%:*}
        cap=${run#*:}
        for learn in on off; do
            flag=()
            [ "$learn" = off ] && flag=(--no-learn-capacity)
            "$FERRY" simulate "$D/AzureLLMInferenceTrace_conv.csv" --policy "$policy" --format json \
                --prewarm 8 --real-perf "$real" --max-workers "$cap" "${flag[@]}" "$@" | python3 -c '
import json, sys
o = json.load(sys.stdin)
o = o[0] if isinstance(o, list) else o
q, l = o["queue_time"], o["latency"]
print("| %s | %s | %s | %.2f | %.0f | %d / %d | %d | %.2f / %.2f | %.2f / %.2f | %d |" % (
    o["policy"], sys.argv[1], sys.argv[2], o["cost"], o["hot_s"], o["launches"], o["resumes"],
    o["cold_start_requests"], q["p90"], q["p99"], l["p90"], l["p99"], o["rejected"]))
' "$real, $cap" "$learn"
        done
    done
done
echo
vast_p99=$("$FERRY" simulate "$D/AzureLLMInferenceTrace_code.csv" --policy vast --format json \
    --stretch-gaps 10 --prewarm 1 "$@" |
    python3 -c 'import json, sys; o = json.load(sys.stdin); o = o[0] if isinstance(o, list) else o; print("%.2f" % o["queue_time"]["p99"])')
echo "### Clairvoyant bound: code, gaps x10, every request within Vast's p99 ($vast_p99 s)"
echo
echo '```'
echo "scripts/clairvoyant-bound.py $D/AzureLLMInferenceTrace_code.csv --stretch-gaps 10 --max-queue-s $vast_p99"
python3 scripts/clairvoyant-bound.py "$D/AzureLLMInferenceTrace_code.csv" --stretch-gaps 10 --max-queue-s "$vast_p99"
echo '```'
