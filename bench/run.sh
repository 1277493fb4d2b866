#!/usr/bin/env bash
# Side-by-side benchmark: model server direct vs Ferry worker vs Vast's official PyWorker.
#
#   bench/run.sh                 full run; writes bench/results.json and prints the tables
#   bench/run.sh --quick         smoke mode (seconds; used by scripts/test.sh so this cannot rot)
#   bench/run.sh --md-out F ...  any bench/run.py option
#
# Needs: wrk (installed from Debian if missing), the peers venv (scripts/setup-peers.sh makes it:
# vastai 1.9.1 + pycryptodome), and a Ferry build (release for real runs, debug for --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for a in "$@"; do [ "$a" = "--quick" ] && quick=1; done

if ! command -v wrk >/dev/null 2>&1; then
  echo "== installing wrk (Debian)"
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
fi

peers_env="${HOME}/.cache/ferry/peers.env"
if [ ! -f "$peers_env" ]; then
  bash scripts/setup-peers.sh
fi
# shellcheck disable=SC1090
. "$peers_env"

if [ "$quick" = 1 ]; then
  cargo build -p ferry -p ferry-worker --quiet
  ferry_bin=target/debug/ferry; worker_bin=target/debug/ferry-worker
else
  cargo build -p ferry -p ferry-worker --release --quiet
  ferry_bin=target/release/ferry; worker_bin=target/release/ferry-worker
fi

exec "$FERRY_PY" bench/run.py --ferry "$ferry_bin" --worker-bin "$worker_bin" --python "$FERRY_PY" "$@"
