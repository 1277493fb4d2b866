#!/usr/bin/env bash
# Runs tests/peers/test_vast_emu.py: Ferry's Vast REST API emulator (crates/vast-emu, the
# `ferry-vast-emu` binary) driven by Vast's official `vastai` package, unchanged: its offer and
# instance functions, VastClient, SyncClient, the VastAI SDK class and the `vastai` command
# (search, create, show, label, stop, start, destroy; error answers; its retries through 429s,
# 503s and resets).
#
#   scripts/vast-emu-tests.sh [--build] [-k SUBSTRING]... [--keep]
#
# - Builds target/debug/ferry-vast-emu when it is missing (`cargo build -p ferry-vast-emu`);
#   --build always runs the (incremental) build first. FERRY_VAST_EMU_BIN points the tests at
#   another binary.
# - Loads ~/.cache/ferry/peers.env (FERRY_PEERS_ENV overrides), running scripts/setup-peers.sh
#   first when it is missing; FERRY_PY there is the venv python with the pinned peers.
# - -k selects tests by name substring; --keep keeps the state dirs of passing tests too.
#
# The last line of output is always `N passed, M failed`; the exit status is non-zero when a
# test failed or a peer (venv, vastai, the emulator binary) is missing.
SUITE_BINARY=ferry-vast-emu SUITE_BIN_VAR=FERRY_VAST_EMU_BIN \
    exec bash "$(dirname "$0")/python-suite.sh" vast-emu-tests tests/peers/test_vast_emu.py '^def test_' "$@"
