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
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
TESTS=tests/fault/test_faults.py
N_TESTS=$(grep -c '^    ("[a-z0-9_]*", sc_' "$TESTS" 2>/dev/null || echo 1)

fail() {
    echo "fault-tests: ERROR: $*"
    echo "0 passed, ${N_TESTS} failed"
    exit 1
}

BUILD=0
ARGS=()
for a in "$@"; do
    case "$a" in
        --build) BUILD=1 ;;
        *) ARGS+=("$a") ;;
    esac
done

FERRY_BIN=${FERRY_BIN:-$ROOT/target/debug/ferry}
export FERRY_BIN
if [ "$BUILD" = 1 ] || [ ! -x "$FERRY_BIN" ]; then
    echo "fault-tests: cargo build -p ferry"
    cargo build -p ferry || fail "cargo build -p ferry failed"
    [ -x "$FERRY_BIN" ] || fail "$FERRY_BIN missing after the build"
fi

PEERS_ENV=${FERRY_PEERS_ENV:-$HOME/.cache/ferry/peers.env}
if [ ! -f "$PEERS_ENV" ]; then
    echo "fault-tests: $PEERS_ENV missing; running scripts/setup-peers.sh"
    [ -f scripts/setup-peers.sh ] || fail "scripts/setup-peers.sh not found"
    bash scripts/setup-peers.sh || fail "scripts/setup-peers.sh failed"
    [ -f "$PEERS_ENV" ] || fail "$PEERS_ENV still missing after scripts/setup-peers.sh"
fi
set -a
# shellcheck disable=SC1090
. "$PEERS_ENV" || fail "cannot load $PEERS_ENV"
set +a
[ -n "${FERRY_PY:-}" ] || fail "FERRY_PY is not set in $PEERS_ENV"
[ -x "$FERRY_PY" ] || fail "FERRY_PY=$FERRY_PY is not an executable python (peer venv missing; rerun scripts/setup-peers.sh)"

OUT=$(mktemp "${TMPDIR:-/tmp}/ferry-fault-tests.XXXXXX")
trap 'rm -f "$OUT"' EXIT
# Each scenario stops every `ferry control` it starts (and sweeps the state dir for leftover
# processes); if this script is interrupted, the python process gets the signal too (same
# process group) and its control planes follow it through PR_SET_PDEATHSIG.
"$FERRY_PY" -u "$TESTS" "${ARGS[@]}" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
last=$(tail -n 1 "$OUT")
if ! [[ "$last" =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    echo "fault-tests: ERROR: the test process ended without a summary (exit $rc)"
    echo "0 passed, ${N_TESTS} failed"
    exit 1
fi
if [ "$rc" -eq 0 ] && ! [[ "$last" =~ ^[0-9]+\ passed,\ 0\ failed$ ]]; then
    rc=1
fi
exit "$rc"
