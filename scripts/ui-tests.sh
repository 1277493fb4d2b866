#!/usr/bin/env bash
# The web console in a real browser (crates/cli/tests/browser.rs): Debian's chromium driven
# through chromium-driver (W3C WebDriver) against `ferry demo --keep`, everything on 127.0.0.1.
# Installs chromium and chromium-driver with apt-get when missing (as root; one `apt-get
# update`). Without them and without root: skipped with a message, except on CI, where that
# fails. About 30 s once built. Screenshots go to target/ui-screenshots (FERRY_UI_SCREENSHOTS).
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }
if ! have; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    elif [ -n "${CI:-}" ]; then
        echo "browser tests: CI must run them: chromium/chromedriver not found and installing needs root with apt-get (uid $(id -u))"
        exit 1
    else
        echo "SKIPPED: the browser tests need chromium and chromium-driver (as root: apt-get install chromium chromium-driver); uid $(id -u)"
        exit 0
    fi
fi
chromium --version 2>/dev/null || true
cargo test -p ferry --test browser --locked -- --ignored --nocapture
