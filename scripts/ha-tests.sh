#!/usr/bin/env bash
# Runs tests/ha/test_ha.py: three `ferry control` replicas on one PostgreSQL database behind
# nginx, under a steady load through Vast's official Python client (`vastai` Serverless) with
# the local provider. Scenarios: SIGKILL of the owner replica (with the time until the first
# route served by its successor), a rolling restart of every replica, the database stopped for
# 10 s. See docs/ha-tests.md.
#
#   scripts/ha-tests.sh [--build] [-k SUBSTRING]... [--keep]
#
# - Needs PostgreSQL (scripts/pg-cluster.sh install) and nginx (scripts/nginx.sh install); each
#   scenario starts its own cluster and nginx on loopback ports and removes them afterwards.
# - Builds target/debug/ferry when it is missing (`cargo build -p ferry`); --build always runs
#   the (incremental) build first. FERRY_BIN points the tests at another binary.
# - Loads ~/.cache/ferry/peers.env (FERRY_PEERS_ENV overrides), running scripts/setup-peers.sh
#   first when it is missing; FERRY_PY there is the venv python with the pinned peers.
# - -k selects scenarios by name substring; --keep keeps the state dirs of passing scenarios
#   too (failing ones are always kept, and their paths printed).
# - Prints one line of figures per scenario (sent, completed, failed, bad, hung, executed
#   twice, instances launched twice or started again, records lost, failover time) and writes
#   them as JSON to $FERRY_HA_JSON (default $TMPDIR/ferry-ha-results.json).
#   FERRY_FAULT_SCALE multiplies the request counts; FERRY_HA_LEASE_TTL_S (default 3) is the
#   replicas' --lease-ttl-s.
#
# The last line of output is always `N passed, M failed`; the exit status is non-zero when a
# scenario failed or a peer (venv, vastai, PostgreSQL, nginx) is missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
N=$(grep -c '^    ("[a-z0-9_]*", sc_' tests/ha/test_ha.py 2>/dev/null || echo 1)
for dep in pg-cluster nginx; do
    if ! bash "scripts/$dep.sh" find >/dev/null 2>&1; then
        echo "ha-tests: ERROR: $dep not found (run scripts/$dep.sh install as root)"
        echo "0 passed, $N failed"
        exit 1
    fi
done
exec bash scripts/python-suite.sh ha-tests tests/ha/test_ha.py '^    ("[a-z0-9_]*", sc_' "$@"
