#!/usr/bin/env bash
# Runs tests/fault/test_faults.py: fault injection under load through Vast's official Python
# client (`vastai` Serverless) against `ferry control` with the local provider. Scenarios:
# SIGKILL a worker, SIGKILL a model server, SIGSTOP a worker, the model dropping or stalling
# streams mid-way, a clean control-plane restart, SIGKILL of the control plane (x3, with the
# orphan check), and slowloris on every listener under a low open-file limit.
#
#   scripts/fault-tests.sh [--build] [-k SUBSTRING]... [--keep]
#
# - Builds target/debug/ferry when it is missing (`cargo build -p ferry`); --build always runs
#   the (incremental) build first. FERRY_BIN points the tests at another binary.
# - Loads ~/.cache/ferry/peers.env (FERRY_PEERS_ENV overrides), running scripts/setup-peers.sh
#   first when it is missing; FERRY_PY there is the venv python with the pinned peers.
# - -k selects scenarios by name substring; --keep keeps the state dirs of passing scenarios
#   too (failing ones are always kept, and their paths printed).
# - Prints one line of figures per scenario (sent, completed, failed, bad, hung, executed
#   twice, leftover processes) and writes them as JSON to $FERRY_FAULT_JSON (default
#   $TMPDIR/ferry-fault-results.json). FERRY_FAULT_SCALE multiplies the request counts.
#
# The last line of output is always `N passed, M failed`; the exit status is non-zero when a
# scenario failed or a peer (venv, vastai) is missing.
exec bash "$(dirname "$0")/python-suite.sh" fault-tests tests/fault/test_faults.py '^    ("[a-z0-9_]*", sc_' "$@"
