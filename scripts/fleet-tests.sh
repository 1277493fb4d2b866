#!/usr/bin/env bash
# Runs tests/fleet/test_fleet.py: `ferry control` and joined workers on separate "hosts"
# (network namespaces on a bridge, scripts/netns.sh), through Vast's official Python client.
# Scenarios: one worker host partitioned under load (requests lost, time until the control
# plane stops routing to it, until its capacity is replaced by a worker the harness starts on
# another host as an orchestrator would, and its re-admission with the same id once healed), and
# a worker refused for a revoked join token.
#
#   scripts/fleet-tests.sh [--build] [-k SUBSTRING]... [--keep]
#
# - Needs root and iproute2 (`ip netns`, veth, bridge); every server binds to loopback or to an
#   address inside the namespaces the suite creates, and the namespaces are removed afterwards
#   (runs left by a killed suite are removed at the next start: `scripts/netns.sh down --stale`).
# - Builds target/debug/ferry when it is missing; --build always runs the (incremental) build
#   first. FERRY_BIN points the tests at another binary.
# - Loads ~/.cache/ferry/peers.env (FERRY_PEERS_ENV overrides), running scripts/setup-peers.sh
#   first when it is missing; FERRY_PY there is the venv python with the pinned peers.
# - -k selects scenarios by name substring; --keep keeps the scenario directories of passing
#   scenarios too (failing ones are always kept, and their paths printed).
# - Prints one line of figures per scenario and writes them as JSON to $FERRY_FLEET_JSON
#   (default $TMPDIR/ferry-fleet-results.json). FERRY_FLEET_STALE_S (default 3) is the control
#   plane's --stale-after-s; FERRY_FLEET_WORKER_TIMEOUT_S (default 5) the official client's
#   worker_timeout, 0 for its default (600 s, what `Endpoint.request` uses: requests in flight
#   on the partitioned worker then hang, see docs/fleet-tests.md).
#
# The last line of output is always `N passed, M failed`; the exit status is non-zero when a
# scenario failed or a peer (venv, vastai) is missing.
exec bash "$(dirname "$0")/python-suite.sh" fleet-tests tests/fleet/test_fleet.py '^    ("[a-z0-9_]*", sc_' "$@"
