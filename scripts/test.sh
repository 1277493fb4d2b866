#!/usr/bin/env bash
# The one test command. Installs what the tests need by itself, then runs the same gate CI runs:
# formatting, clippy with warnings denied, unused dependencies, docs with warnings denied, every
# Rust test, a short run of every fuzz target (scripts/fuzz.sh), the tests against real peers
# (llama.cpp's llama-server with real models, Vast's official Python client, CLI and PyWorker, the
# openai package), the Vast REST API emulator against the official `vastai` functions, the
# release tarball (scripts/dist.sh) and the Vast template kit booted from it, fault injection
# under load through the official client, control-plane replicas on PostgreSQL behind nginx
# under faults (nginx is installed first when missing, as root; without nginx or PostgreSQL
# skipped with a message, except on CI), the web console in a real browser (Debian's chromium and
# chromium-driver, installed first when missing, as root), the fleet suite (control plane and workers
# on separate network namespaces, one of them partitioned; needs root, skipped with a message
# otherwise except on CI), and the side-by-side benchmark's smoke mode.
#
# The PostgreSQL store's tests run inside `cargo test --workspace`, each on a throwaway cluster
# (scripts/pg-cluster.sh): PostgreSQL is installed first when missing (apt-get, as root), with
# the package's own cluster stopped and kept from starting. Without it they are skipped with a
# message, except on CI, where that fails.
#
# Real peers are installed by scripts/setup-peers.sh into ~/.cache/ferry (keyed by version and
# CPU): the first run builds llama-server (about 10 minutes on 2 cores), later runs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "cargo fmt --all --check"
cargo fmt --all --check

step "install the real peers (scripts/setup-peers.sh)"
bash scripts/setup-peers.sh
set -a
# shellcheck disable=SC1091
. "${FERRY_CACHE:-$HOME/.cache/ferry}/peers.env"
set +a

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unused dependencies (cargo machete)"
# Pinned; installed once into ~/.cargo/bin (about 2 minutes on 2 cores), reused afterwards.
if ! cargo machete --version 2>/dev/null | grep -q "0.9.2"; then
    cargo install cargo-machete --locked --version 0.9.2
fi
cargo machete

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "PostgreSQL for the store tests (scripts/pg-cluster.sh install)"
if [ "$(id -u)" = 0 ] || bash scripts/pg-cluster.sh find >/dev/null 2>&1; then
    bash scripts/pg-cluster.sh install
elif [ -n "${CI:-}" ]; then
    echo "PostgreSQL: CI must run the store tests: not found, and installing needs root (uid $(id -u))"
    exit 1
else
    echo "SKIPPED: PostgreSQL not found and not root to install it; its store tests will skip"
fi

step "cargo test --workspace"
cargo test --workspace --locked

step "fuzz targets, short run (scripts/fuzz.sh)"
bash scripts/fuzz.sh --seconds 15

step "local provider with real processes (ferry control launching ferry worker + sim)"
cargo build -p ferry --locked
cargo test -p ferry-control --test it --locked -- --ignored

step "the web console in a real browser: chromium + chromedriver (scripts/ui-tests.sh)"
bash scripts/ui-tests.sh

step "ferry worker in front of a real llama-server (SmolLM2-135M and a tiny random model)"
cargo test -p ferry-worker --test peers --locked -- --ignored

step "Vast's official client and PyWorker, and the openai package, against ferry control"
bash scripts/peer-tests.sh --build

step "Vast REST API emulator against Vast's official vastai functions (scripts/vast-emu-tests.sh)"
bash scripts/vast-emu-tests.sh --build

step "release tarball (scripts/dist.sh: portable build, glibc <= 2.31, smoke) and the Vast kit on it (scripts/vast-kit-tests.sh)"
# The release build's target dir and tools are cached in ~/.cache/ferry (keyed by version and
# CPU): the first run builds from scratch, later runs rebuild only what changed.
bash scripts/dist.sh
bash scripts/vast-kit-tests.sh

step "fault injection under load through the official client (scripts/fault-tests.sh)"
bash scripts/fault-tests.sh

step "control-plane replicas on PostgreSQL behind nginx, under faults (scripts/ha-tests.sh)"
if [ "$(id -u)" = 0 ] || bash scripts/nginx.sh find >/dev/null 2>&1; then
    bash scripts/nginx.sh install
fi
if bash scripts/nginx.sh find >/dev/null 2>&1 && bash scripts/pg-cluster.sh find >/dev/null 2>&1; then
    bash scripts/ha-tests.sh
elif [ -n "${CI:-}" ]; then
    echo "HA tests: CI must run them: nginx or PostgreSQL not found, and installing needs root (uid $(id -u))"
    exit 1
else
    echo "SKIPPED: the HA tests need nginx and PostgreSQL (as root scripts/nginx.sh install and scripts/pg-cluster.sh install add them); uid $(id -u)"
fi

step "hosts in network namespaces: a partitioned worker, joined workers (scripts/fleet-tests.sh)"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
    bash scripts/fleet-tests.sh
elif [ -n "${CI:-}" ]; then
    echo "fleet tests: CI must run them as root with iproute2 (ip); uid $(id -u), ip: $(command -v ip || echo missing)"
    exit 1
else
    echo "SKIPPED: the fleet tests need root and iproute2 (ip netns, veth, bridge); uid $(id -u), ip: $(command -v ip || echo missing)"
fi

step "side-by-side benchmark, smoke mode (bench/run.sh --quick)"
bash bench/run.sh --quick
