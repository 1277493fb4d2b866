#!/usr/bin/env bash
# Runs tests/peers/test_official.py: Ferry against Vast's official Python code (the `vastai`
# Serverless client, the unmodified PyWorker from the same package) and the `openai` client.
#
#   scripts/peer-tests.sh [--build] [-k SUBSTRING]... [--keep]
#
# - Builds target/debug/ferry when it is missing (`cargo build -p ferry`); --build always runs
#   the (incremental) build first. FERRY_BIN points the tests at another binary.
# - Loads ~/.cache/ferry/peers.env (FERRY_PEERS_ENV overrides), running scripts/setup-peers.sh
#   first when it is missing; FERRY_PY there is the venv python with the pinned peers.
# - -k selects tests by name substring; --keep keeps the state dirs of passing tests too.
#
# The last line of output is always `N passed, M failed`; the exit status is non-zero when a
# test failed or a peer (venv, vastai, openai, PyWorker launcher) is missing.
exec bash "$(dirname "$0")/python-suite.sh" peer-tests tests/peers/test_official.py '^async def test_' "$@"
