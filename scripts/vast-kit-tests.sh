#!/usr/bin/env bash
# Runs tests/vast_kit/test_vast_kit.py: the Vast template kit (deploy/vast/start_server.sh and
# the release tarball) booted by the Vast API emulator as Vast would run it, with a real
# `ferry control` (Vast provider) or a fake REPORT_ADDR; all on 127.0.0.1.
#
#   scripts/vast-kit-tests.sh [--build] [--tarball FILE] [-k SUBSTRING]... [--keep]
#
# - The tarball: --tarball, else FERRY_KIT_TARBALL, else dist/ferry-<version>-x86_64-linux-gnu.tar.gz
#   (made by scripts/dist.sh; `scripts/dist.sh --from target/debug` packages debug binaries
#   for a quick try, with FERRY_DIST_MAX_GLIBC raised).
# - Builds target/debug/ferry and ferry-vast-emu (the control plane, the model server and the
#   emulator) when missing; --build always runs the (incremental) build. FERRY_BIN and
#   FERRY_VAST_EMU_BIN point at other binaries.
# - Python: the standard library only (python3); each test is bounded by FERRY_KIT_TIMEOUT_S
#   (default 120).
#
# The last line of output is always `N passed, M failed`; the exit status is non-zero when a
# test failed or something it needs is missing.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
TESTS=tests/vast_kit/test_vast_kit.py
N_TESTS=$(grep -c '^def test_' "$TESTS" 2>/dev/null || echo 1)

fail() {
    echo "vast-kit-tests: ERROR: $*"
    echo "0 passed, ${N_TESTS} failed"
    exit 1
}

BUILD=0 TARBALL=${FERRY_KIT_TARBALL:-}
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=1 ;;
        --tarball) TARBALL=${2:-}; shift ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done

if [ -z "$TARBALL" ]; then
    VERSION=$(cargo metadata --no-deps --format-version 1 --locked 2>/dev/null |
        python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferry"))') ||
        fail "cannot read ferry's version (cargo metadata)"
    TARBALL=dist/ferry-$VERSION-x86_64-linux-gnu.tar.gz
fi
[ -f "$TARBALL" ] || fail "$TARBALL missing: run scripts/dist.sh first (or pass --tarball)"

export FERRY_BIN=${FERRY_BIN:-$ROOT/target/debug/ferry}
export FERRY_VAST_EMU_BIN=${FERRY_VAST_EMU_BIN:-$ROOT/target/debug/ferry-vast-emu}
if [ "$BUILD" = 1 ] || [ ! -x "$FERRY_BIN" ] || [ ! -x "$FERRY_VAST_EMU_BIN" ]; then
    echo "vast-kit-tests: cargo build -p ferry -p ferry-vast-emu"
    cargo build --locked -p ferry -p ferry-vast-emu || fail "cargo build failed"
fi

OUT=$(mktemp "${TMPDIR:-/tmp}/ferry-vast-kit.XXXXXX")
trap 'rm -f "$OUT"' EXIT
python3 -u "$TESTS" --tarball "$TARBALL" "${ARGS[@]}" 2>&1 | tee "$OUT"
rc=${PIPESTATUS[0]}
last=$(tail -n 1 "$OUT")
if ! [[ "$last" =~ ^[0-9]+\ passed,\ [0-9]+\ failed$ ]]; then
    echo "vast-kit-tests: ERROR: the test process ended without a summary (exit $rc)"
    echo "0 passed, ${N_TESTS} failed"
    exit 1
fi
if [ "$rc" -eq 0 ] && ! [[ "$last" =~ ^[0-9]+\ passed,\ 0\ failed$ ]]; then
    rc=1
fi
exit "$rc"
