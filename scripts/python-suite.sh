#!/usr/bin/env bash
# The runner scripts/peer-tests.sh and scripts/fault-tests.sh share: builds target/debug/ferry
# when needed, loads the peers' environment (running scripts/setup-peers.sh when it is missing),
# runs one Python suite with the peer venv's python, and makes sure the last line of output is
# `N passed, M failed` with a matching exit status.
#
#   scripts/python-suite.sh NAME TESTS_FILE COUNT_REGEX [--build] [suite args]...
#
# NAME prefixes this runner's own messages; COUNT_REGEX (grep -c) counts the suite's tests, for
# the summary line when the suite cannot run at all. See the callers for the knobs (FERRY_BIN,
# FERRY_PEERS_ENV).
#
# The binary a suite drives is `ferry` (package and binary of the same name), found through
# FERRY_BIN; a caller names another with SUITE_BINARY (e.g. ferry-vast-emu) and the variable
# that points at it with SUITE_BIN_VAR (e.g. FERRY_VAST_EMU_BIN).
set -uo pipefail

NAME=$1 TESTS=$2 COUNT_REGEX=$3
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
N_TESTS=$(grep -c "$COUNT_REGEX" "$TESTS" 2>/dev/null || echo 1)

fail() {
    echo "$NAME: ERROR: $*"
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

BINARY=${SUITE_BINARY:-ferry}
BIN_VAR=${SUITE_BIN_VAR:-FERRY_BIN}
BIN=${!BIN_VAR:-$ROOT/target/debug/$BINARY}
export "$BIN_VAR=$BIN"
if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
    echo "$NAME: cargo build -p $BINARY"
    cargo build -p "$BINARY" || fail "cargo build -p $BINARY failed"
    [ -x "$BIN" ] || fail "$BIN missing after the build"
fi

PEERS_ENV=${FERRY_PEERS_ENV:-$HOME/.cache/ferry/peers.env}
if [ ! -f "$PEERS_ENV" ]; then
    echo "$NAME: $PEERS_ENV missing; running scripts/setup-peers.sh"
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

OUT=$(mktemp "${TMPDIR:-/tmp}/ferry-$NAME.XXXXXX")
trap 'rm -f "$OUT"' EXIT
# The suites stop every `ferry control` they start (and sweep for leftover processes); if this
# script is interrupted, the python process gets the signal too (same process group) and its
# control planes follow it through PR_SET_PDEATHSIG.
"$FERRY_PY" -u "$TESTS" "${ARGS[@]}" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
last=$(tail -n 1 "$OUT")
if ! [[ "$last" =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    echo "$NAME: ERROR: the test process ended without a summary (exit $rc)"
    echo "0 passed, ${N_TESTS} failed"
    exit 1
fi
if [ "$rc" -eq 0 ] && ! [[ "$last" =~ ^[0-9]+\ passed,\ 0\ failed$ ]]; then
    rc=1
fi
exit "$rc"
