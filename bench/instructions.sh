#!/usr/bin/env bash
# Instructions per request, worker vs nginx and vs the hyper floor (bench/floor), counted by
# callgrind (see bench/instructions.py).
#
#   bench/instructions.sh [--rounds 3] [--cases unsigned,signed,...] [--keep DIR]
#
# Builds the release binaries, then runs bench/instructions.py with the peers venv's Python
# (pycryptodome signs the grants, aiohttp serves bench/fake_cp.py). Needs valgrind and nginx
# (scripts/nginx.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
bash scripts/nginx.sh install >/dev/null
peers_env="${HOME}/.cache/ferry/peers.env"
[ -f "$peers_env" ] || bash scripts/setup-peers.sh
# shellcheck disable=SC1090
. "$peers_env"
cargo build --release -p ferry -p ferry-worker --quiet
# Its own invocation, so that no feature of it reaches the worker's build or the other way.
cargo build --release -p ferry-floor --quiet
exec python3 bench/instructions.py --worker target/release/ferry-worker --ferry target/release/ferry \
    --floor target/release/floor_proxy --python "$FERRY_PY" "$@"
