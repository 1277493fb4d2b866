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
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
TESTS=tests/peers/test_official.py
N_TESTS=$(grep -c '^async def test_' "$TESTS" 2>/dev/null || echo 1)

fail() {
    echo "peer-tests: ERROR: $*"
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
    echo "peer-tests: cargo build -p ferry"
    cargo build -p ferry || fail "cargo build -p ferry failed"
    [ -x "$FERRY_BIN" ] || fail "$FERRY_BIN missing after the build"
fi

PEERS_ENV=${FERRY_PEERS_ENV:-$HOME/.cache/ferry/peers.env}
if [ ! -f "$PEERS_ENV" ]; then
    echo "peer-tests: $PEERS_ENV missing; running scripts/setup-peers.sh"
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

OUT=$(mktemp "${TMPDIR:-/tmp}/ferry-peer-tests.XXXXXX")
trap 'rm -f "$OUT"' EXIT
# The tests stop every `ferry control` they start (and their workers); if this script is
# interrupted, the python process gets the signal too (same process group) and its children
# follow it through PR_SET_PDEATHSIG.
"$FERRY_PY" -u "$TESTS" "${ARGS[@]}" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
last=$(tail -n 1 "$OUT")
if ! [[ "$last" =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    echo "peer-tests: ERROR: the test process ended without a summary (exit $rc)"
    echo "0 passed, ${N_TESTS} failed"
    exit 1
fi
if [ "$rc" -eq 0 ] && ! [[ "$last" =~ ^[0-9]+\ passed,\ 0\ failed$ ]]; then
    rc=1
fi
exit "$rc"
