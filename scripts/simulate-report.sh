#!/usr/bin/env bash
# The numbers of docs/simulate.md: every policy on both Azure sample traces, as recorded and
# with inter-arrival gaps x10, as Markdown tables (python3 formats the JSON), and the chart
# docs/simulate-code.svg. Usage: scripts/simulate-report.sh [path/to/ferry] [extra flags...]
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
