#!/usr/bin/env bash
# Builds Ferry's release tarball for x86_64 Linux, portable to every image Vast's templates are
# built on (Ubuntu 20.04+, Debian 11+: glibc 2.31), and checks it.
#
#   scripts/dist.sh [--from DIR]
#
# Output in dist/ (gitignored):
#   ferry-<version>-x86_64-linux-gnu.tar.gz          ferry-<version>/bin/{ferry,ferry-worker},
#                                                    README.md, LICENSE, THIRD_PARTY_LICENSES
#   ferry-<version>-x86_64-linux-gnu.tar.gz.sha256   sha256sum format
#
# How: `cargo zigbuild --release -p ferry -p ferry-worker --target x86_64-unknown-linux-gnu.2.31`,
# Zig as the linker against glibc 2.31's symbol versions. cargo-zigbuild and Zig come from PyPI
# (the `cargo-zigbuild` and `ziglang` packages, pinned below) in a venv under
# ~/.cache/ferry/zigbuild-<versions>/; the build's target dir is
# ~/.cache/ferry/dist-target-<version>-<cpu key>/, outside the clone, so later runs (and CI's
# next cold checkout) rebuild incrementally. FERRY_CACHE moves ~/.cache/ferry.
#
# Checks, each fatal: the highest GLIBC_x.y symbol version each binary needs (printed; at most
# 2.31, FERRY_DIST_MAX_GLIBC overrides), `ferry-worker --help`, and a smoke run from the
# unpacked tarball on 127.0.0.1: `ferry sim-model` + `ferry-worker` with the environment a Vast
# instance gets, until the worker is ready, then one request through it.
#
# --from DIR packages and checks the binaries already in DIR instead of building (e.g.
# target/debug, for trying the scripts; such binaries need the build host's glibc, so set
# FERRY_DIST_MAX_GLIBC too).
#
# Output is short: the build's own output goes to a log under ~/.cache/ferry/logs/. The last
# line is `dist: OK <tarball> (glibc <= x.y)` or `dist: FAILED: <why>`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ZIGBUILD_VERSION=0.24.1
ZIG_VERSION=0.14.1
RUST_TARGET=x86_64-unknown-linux-gnu
GLIBC=2.31
MAX_GLIBC=${FERRY_DIST_MAX_GLIBC:-$GLIBC}
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
SMOKE_TIMEOUT_S=${FERRY_DIST_SMOKE_TIMEOUT_S:-60}

say() { echo "dist: $*"; }
die() {
    echo "dist: FAILED: $*"
    exit 1
}

FROM=
while [ $# -gt 0 ]; do
    case "$1" in
        --from) FROM=${2:?--from needs a directory}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

command -v python3 >/dev/null || die "python3 is needed (cargo metadata parsing, the tool venv)"
if ! command -v objdump >/dev/null; then
    say "installing binutils (objdump) with apt-get"
    { apt-get update -qq && apt-get install -y -qq binutils; } >/dev/null 2>&1 ||
        die "objdump missing and apt-get install binutils failed"
fi

VERSION=$(cargo metadata --no-deps --format-version 1 --locked |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferry"))') ||
    die "cannot read ferry's version from cargo metadata"
NAME=ferry-$VERSION
TARBALL=$NAME-x86_64-linux-gnu.tar.gz
mkdir -p "$CACHE/logs" dist
LOG=$CACHE/logs/dist-$VERSION.log
: >"$LOG"

# --- 1. the binaries ----------------------------------------------------------------------------
if [ -n "$FROM" ]; then
    BIN_DIR=$(cd "$FROM" && pwd)
    say "packaging the prebuilt binaries in $BIN_DIR (no build)"
else
    hash12() { sha256sum | cut -c1-12; }
    CPU_FLAGS=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | sort -u | tr '\n' ' ')
    CPU_KEY=$(uname -m)-$(printf '%s' "$CPU_FLAGS" | hash12)
    TARGET_DIR=$CACHE/dist-target-$VERSION-$CPU_KEY
    TOOLS=$CACHE/zigbuild-$ZIGBUILD_VERSION-zig-$ZIG_VERSION
    if [ ! -x "$TOOLS/bin/cargo-zigbuild" ]; then
        say "installing cargo-zigbuild $ZIGBUILD_VERSION and ziglang $ZIG_VERSION from PyPI into $TOOLS"
        # A venv's scripts name its own path: built in place, removed again if the install fails.
        rm -rf "$TOOLS"
        {
            python3 -m venv "$TOOLS" &&
                "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check \
                    "cargo-zigbuild==$ZIGBUILD_VERSION" "ziglang==$ZIG_VERSION"
        } >>"$LOG" 2>&1 || { rm -rf "$TOOLS"; die "installing the build tools failed (log: $LOG)"; }
    fi
    # cargo-zigbuild runs the `zig` on PATH: the venv's bin gets one, the ziglang package's.
    if [ ! -x "$TOOLS/bin/zig" ]; then
        ZIG=$("$TOOLS/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
        ln -sf "$ZIG" "$TOOLS/bin/zig"
    fi
    rustup target list --installed 2>/dev/null | grep -qx "$RUST_TARGET" ||
        rustup target add "$RUST_TARGET" >>"$LOG" 2>&1 || die "rustup target add $RUST_TARGET failed"
    say "building $NAME for $RUST_TARGET.$GLIBC (cargo zigbuild --release; target dir $TARGET_DIR; log: $LOG)"
    start=$(date +%s)
    PATH=$TOOLS/bin:$PATH cargo zigbuild --release --locked -p ferry -p ferry-worker \
        --target "$RUST_TARGET.$GLIBC" --target-dir "$TARGET_DIR" >>"$LOG" 2>&1 ||
        { tail -n 20 "$LOG"; die "cargo zigbuild failed (log: $LOG)"; }
    say "built in $(($(date +%s) - start)) s"
    BIN_DIR=$TARGET_DIR/$RUST_TARGET/release
fi
for b in ferry ferry-worker; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing"
done

# --- 2. the tarball -------------------------------------------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/ferry-dist.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$STAGE"
}
trap cleanup EXIT
PKG=$STAGE/pkg/$NAME
mkdir -p "$PKG/bin"
cp "$BIN_DIR/ferry" "$BIN_DIR/ferry-worker" "$PKG/bin/"
cp LICENSE "$PKG/LICENSE"
python3 scripts/third_party_licenses.py --target "$RUST_TARGET" ferry ferry-worker \
    >"$PKG/THIRD_PARTY_LICENSES" 2>>"$LOG" || die "THIRD_PARTY_LICENSES: scripts/third_party_licenses.py failed (log: $LOG)"
sed "s/@VERSION@/$VERSION/g" deploy/vast/RELEASE-README.md >"$PKG/README.md"
# Reproducible-ish: fixed owner, order and mtime (the commit's time).
MTIME=$(git log -1 --format=%cI 2>/dev/null || date -u +%FT%TZ)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$MTIME" \
    -C "$STAGE/pkg" -cf - "$NAME" | gzip -n -9 >"dist/$TARBALL.tmp"
mv "dist/$TARBALL.tmp" "dist/$TARBALL"
(cd dist && sha256sum "$TARBALL" >"$TARBALL.sha256")
say "dist/$TARBALL ($(du -h "dist/$TARBALL" | cut -f1)), sha256 $(cut -c1-16 "dist/$TARBALL.sha256")..."

# --- 3. checks on what the tarball holds --------------------------------------------------------
X=$STAGE/x
mkdir -p "$X"
tar -xzf "dist/$TARBALL" -C "$X"
XB=$X/$NAME/bin
for f in README.md LICENSE THIRD_PARTY_LICENSES bin/ferry bin/ferry-worker; do
    [ -s "$X/$NAME/$f" ] || die "the tarball lacks $NAME/$f"
done

ver_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]; }
for b in ferry ferry-worker; do
    need=$(objdump -T "$XB/$b" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    [ -n "$need" ] || die "$b: no GLIBC symbol versions found (objdump -T)"
    say "glibc: $b needs GLIBC_$need (limit $MAX_GLIBC)"
    ver_le "$need" "$MAX_GLIBC" || die "$b needs GLIBC_$need, above $MAX_GLIBC: it would not start on Ubuntu 20.04 / Debian 11"
done

"$XB/ferry-worker" --help >/dev/null 2>>"$LOG" || die "ferry-worker --help failed"
"$XB/ferry" --version >/dev/null 2>>"$LOG" || die "ferry --version failed"

# Smoke: the model server and the worker from the tarball, with a Vast instance's environment.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MP=$(free_port) WP=$(free_port) AP=$(free_port) RP=$(free_port)
S=$STAGE/smoke
mkdir -p "$S"
"$XB/ferry" sim-model --listen "127.0.0.1:$MP" --log-file "$S/model.log" >"$S/sim.out" 2>&1 &
PIDS+=($!)
# REPORT_ADDR points at a closed port: the smoke run checks serving, not reporting (the kit
# suite, scripts/vast-kit-tests.sh, checks reports against a control plane).
env WORKER_PORT="$WP" "VAST_TCP_PORT_$WP=$WP" PUBLIC_IPADDR=127.0.0.1 CONTAINER_ID=1 \
    REPORT_ADDR="http://127.0.0.1:$RP" MASTER_TOKEN=smoke USE_SSL=false UNSECURED=true \
    BACKEND=vllm MODEL_LOG="$S/model.log" MODEL_SERVER_URL="http://127.0.0.1:$MP" \
    FERRY_LISTEN_HOST=127.0.0.1 WORKER_HTTP_PORT=0 FERRY_ADMIN_ADDR="127.0.0.1:$AP" \
    FERRY_BENCHMARK_RUNS=1 FERRY_BENCHMARK_CACHE="$S/.has_benchmark" \
    "$XB/ferry-worker" >"$S/worker.out" 2>&1 &
PIDS+=($!)
smoke_fail() {
    {
        echo "--- worker output (tail)"
        tail -n 15 "$S/worker.out"
        echo "--- model output (tail)"
        tail -n 5 "$S/sim.out"
    } | tee -a "$LOG"
    die "smoke: $*"
}
deadline=$(($(date +%s) + SMOKE_TIMEOUT_S))
until curl -fsS -o /dev/null "http://127.0.0.1:$AP/ready" 2>/dev/null; do
    kill -0 "${PIDS[1]}" 2>/dev/null || smoke_fail "ferry-worker exited before it was ready"
    [ "$(date +%s)" -lt "$deadline" ] || smoke_fail "ferry-worker not ready within ${SMOKE_TIMEOUT_S}s"
    sleep 0.2
done
BODY='{"auth_data": {"cost": 8, "endpoint": "smoke", "reqnum": 1, "request_idx": 1,
       "signature": "", "url": "http://127.0.0.1:'"$WP"'", "__request_id": "smoke-1"},
       "payload": {"model": "sim", "prompt": "hello", "max_tokens": 8}}'
ANSWER=$(curl -sS --max-time 20 -H 'Content-Type: application/json' -d "$BODY" \
    "http://127.0.0.1:$WP/v1/completions") || smoke_fail "the request failed"
printf '%s' "$ANSWER" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["choices"][0]["text"], r' \
    2>>"$LOG" || smoke_fail "unexpected answer: $(printf '%s' "$ANSWER" | head -c 300)"
say "smoke: ferry-worker from the tarball ready and served /v1/completions on 127.0.0.1"

say "OK dist/$TARBALL (glibc <= $MAX_GLIBC)"
