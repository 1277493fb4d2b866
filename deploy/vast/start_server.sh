#!/bin/bash
# Ferry's start script for Vast Serverless templates: the drop-in for PyWorker's start_server.sh.
# Where a template runs Vast's script (`... start_server.sh | bash`), run this one instead; it
# starts Ferry's worker (`ferry-worker`) where Vast's starts `python3 -m worker`, with the same
# environment, logs and error reports. The whole story: docs/vast.md.
#
# Which worker binary, first match wins:
#   FERRY_RELEASE_URL     a Ferry release tarball (ferry-<version>-x86_64-linux-gnu.tar.gz),
#                         downloaded once and checked against FERRY_RELEASE_SHA256 (required
#                         with a URL: the tarball's sha256, 64 hex digits), installed under
#                         $WORKSPACE_DIR/ferry/<sha256>/ so later boots of the instance reuse it
#   FERRY_WORKER_BIN      a ferry-worker already in the image (deploy/vast/Dockerfile puts one at
#                         /usr/local/bin/ferry-worker)
#   ferry-worker on PATH
#
# As Vast's script does: everything it prints is appended to $WORKSPACE_DIR/debug.log and the
# worker's output also to $WORKSPACE_DIR/pyworker.log (what Vast's log viewer shows);
# ROTATE_MODEL_LOG=true moves $MODEL_LOG's old lines to $MODEL_LOG.old; the environment is
# written to /etc/environment once (for SSH sessions); USE_SSL=true (the default, as in Vast's
# script) makes a key and a CSR and has Vast sign the certificate the worker serves TLS with; a
# failure is reported as `error_msg` to every REPORT_ADDR (POST /worker_status/ {id, mtoken,
# version, error_msg, url}) and exits 1. The worker then replaces this script (exec).
#
# Settings besides Vast's own (WORKSPACE_DIR, REPORT_ADDR, WORKER_PORT, USE_SSL, CONTAINER_ID,
# MASTER_TOKEN, MODEL_LOG, ...), for tests and unusual images:
#   FERRY_INSTALL_DIR      where releases go (default $WORKSPACE_DIR/ferry)
#   FERRY_SIGN_CERT_URL    certificate signer (default https://console.vast.ai/api/v0/sign_cert/)
#   FERRY_CERT_DIR         where instance.key/.csr/.crt and openssl-san.cnf go (default /etc)
#   FERRY_ETC_ENVIRONMENT  the environment file (default /etc/environment)
#   FERRY_FORCE_UPDATE_FILE  the worker's force-update flag (default /.force_update): when it
#                          exists, the release is downloaded again and the flag removed
set -eu -o pipefail

WORKSPACE_DIR="${WORKSPACE_DIR:-/workspace}"
DEBUG_LOG="$WORKSPACE_DIR/debug.log"
PYWORKER_LOG="$WORKSPACE_DIR/pyworker.log"
FERRY_INSTALL_DIR="${FERRY_INSTALL_DIR:-$WORKSPACE_DIR/ferry}"
FERRY_SIGN_CERT_URL="${FERRY_SIGN_CERT_URL:-https://console.vast.ai/api/v0/sign_cert/}"
FERRY_CERT_DIR="${FERRY_CERT_DIR:-/etc}"
FERRY_ETC_ENVIRONMENT="${FERRY_ETC_ENVIRONMENT:-/etc/environment}"
FORCE_UPDATE_FILE="${FERRY_FORCE_UPDATE_FILE:-/.force_update}"

REPORT_ADDR="${REPORT_ADDR:-https://run.vast.ai}"
USE_SSL="${USE_SSL:-true}"
WORKER_PORT="${WORKER_PORT:-3000}"
UNSECURED="${UNSECURED:-false}"

# JSON string contents: backslash, quote and control characters escaped.
json_escape() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    printf '%s' "$s"
}

# As Vast's: POST {id, mtoken, version, error_msg, url} to each REPORT_ADDR's /worker_status/,
# then exit 1. The id is the worker's (FERRY_WORKER_ID, as ferry-worker reads it, else
# CONTAINER_ID).
report_error_and_exit() {
    local error_msg=$1 id addr body
    echo "ERROR: $error_msg"
    id="${FERRY_WORKER_ID:-${CONTAINER_ID:-0}}"
    [[ "$id" =~ ^[0-9]+$ ]] || id=0
    body=$(printf '{"id": %s, "mtoken": "%s", "version": "%s", "error_msg": "%s", "url": "%s"}' \
        "$id" "$(json_escape "${MASTER_TOKEN:-}")" \
        "$(json_escape "${FERRY_REPORT_VERSION:-${PYWORKER_VERSION:-0}}")" \
        "$(json_escape "$error_msg")" "$(json_escape "${URL:-}")")
    IFS=',' read -r -a addrs <<<"$REPORT_ADDR"
    for addr in "${addrs[@]}"; do
        curl -sS --max-time 10 -X POST -H 'Content-Type: application/json' -d "$body" \
            "${addr%/}/worker_status/" >/dev/null || true
    done
    exit 1
}

# Any command that fails outside an explicit check still gets reported.
trap 'report_error_and_exit "start_server.sh: command failed at line $LINENO (exit $?)"' ERR

mkdir -p "$WORKSPACE_DIR" || report_error_and_exit "cannot create WORKSPACE_DIR $WORKSPACE_DIR"
cd "$WORKSPACE_DIR"
# As Vast's: everything from here on is appended to debug.log too. The tee ignores SIGTERM (the
# whole process group gets one when the instance stops) so the worker's last lines still land.
exec &> >(
    trap '' TERM INT
    exec tee -a "$DEBUG_LOG"
)

echo_var() { echo "$1: ${!1:-}"; }

echo "start_server.sh (Ferry)"
date
[ -n "${CONTAINER_ID:-}" ] || report_error_and_exit "CONTAINER_ID must be set!"
command -v curl >/dev/null || report_error_and_exit "curl is missing from the image"
for v in BACKEND REPORT_ADDR WORKER_PORT WORKSPACE_DIR FERRY_INSTALL_DIR DEBUG_LOG PYWORKER_LOG \
    MODEL_LOG MODEL_SERVER_URL USE_SSL FERRY_RELEASE_URL FERRY_WORKER_BIN; do
    echo_var "$v"
done

if [ "${ROTATE_MODEL_LOG:-false}" = true ] && [ -n "${MODEL_LOG:-}" ] && [ -e "$MODEL_LOG" ]; then
    echo "Rotating model log at $MODEL_LOG to $MODEL_LOG.old"
    cat "$MODEL_LOG" >>"$MODEL_LOG.old" || report_error_and_exit "Failed to rotate model log"
    : >"$MODEL_LOG" || report_error_and_exit "Failed to truncate model log"
fi

# The instance's environment for SSH sessions, once (as Vast's).
if [ -w "$FERRY_ETC_ENVIRONMENT" ] || [ -w "$(dirname "$FERRY_ETC_ENVIRONMENT")" ]; then
    if ! grep -qs VAST "$FERRY_ETC_ENVIRONMENT"; then
        env -0 | grep -zEv '^(HOME=|SHLVL=)|CONDA' | while IFS= read -r -d '' line; do
            printf '%s="%s"\n' "${line%%=*}" "${line#*=}"
        done >"$FERRY_ETC_ENVIRONMENT" || echo "WARNING: cannot write $FERRY_ETC_ENVIRONMENT, continuing anyway"
    fi
fi

# --- the worker binary --------------------------------------------------------------------------
FORCE_UPDATE=false
if [ -f "$FORCE_UPDATE_FILE" ]; then
    echo "Force update flag found at $FORCE_UPDATE_FILE"
    FORCE_UPDATE=true
fi

install_release() {
    local url=$1 sha=$2 dest tmp got
    dest="$FERRY_INSTALL_DIR/$sha"
    if [ "$FORCE_UPDATE" = true ]; then
        rm -rf "$dest"
    fi
    if [ -f "$dest/.installed" ] && [ -x "$dest/bin/ferry-worker" ]; then
        echo "Reusing the Ferry release installed in $dest"
        WORKER_BIN="$dest/bin/ferry-worker"
        return
    fi
    mkdir -p "$FERRY_INSTALL_DIR" || report_error_and_exit "cannot create $FERRY_INSTALL_DIR"
    tmp=$(mktemp -d "$FERRY_INSTALL_DIR/.download.XXXXXX") || report_error_and_exit "cannot create a directory in $FERRY_INSTALL_DIR"
    echo "Downloading the Ferry release from $url"
    curl -fsSL --retry 3 --retry-delay 2 --connect-timeout 15 --max-time 900 -o "$tmp/release.tar.gz" "$url" ||
        { rm -rf "$tmp"; report_error_and_exit "Failed to download the Ferry release from $url"; }
    got=$(sha256sum "$tmp/release.tar.gz" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
        rm -rf "$tmp"
        report_error_and_exit "Ferry release checksum mismatch: FERRY_RELEASE_SHA256 is $sha but $url has sha256 $got; refusing to run it"
    fi
    mkdir "$tmp/x"
    tar -xzf "$tmp/release.tar.gz" -C "$tmp/x" ||
        { rm -rf "$tmp"; report_error_and_exit "Failed to unpack the Ferry release from $url"; }
    local top
    top=$(find "$tmp/x" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    if [ -z "$top" ] || [ ! -x "$top/bin/ferry-worker" ]; then
        rm -rf "$tmp"
        report_error_and_exit "The Ferry release from $url has no bin/ferry-worker"
    fi
    rm -rf "$dest"
    if ! { mv "$top" "$dest" && touch "$dest/.installed"; }; then
        rm -rf "$tmp"
        report_error_and_exit "Failed to install the Ferry release into $dest"
    fi
    rm -rf "$tmp"
    echo "Installed the Ferry release into $dest"
    WORKER_BIN="$dest/bin/ferry-worker"
}

WORKER_BIN=
if [ -n "${FERRY_RELEASE_URL:-}" ]; then
    sha="${FERRY_RELEASE_SHA256:-}"
    sha="${sha%% *}"
    sha="$(printf '%s' "$sha" | tr 'A-F' 'a-f')"
    [ -n "$sha" ] || report_error_and_exit "FERRY_RELEASE_SHA256 must be set when FERRY_RELEASE_URL is (the sha256 of the tarball, from its .sha256 file)"
    [[ "$sha" =~ ^[0-9a-f]{64}$ ]] || report_error_and_exit "FERRY_RELEASE_SHA256 is not a sha256 (64 hex digits): ${FERRY_RELEASE_SHA256}"
    install_release "$FERRY_RELEASE_URL" "$sha"
elif [ -n "${FERRY_WORKER_BIN:-}" ]; then
    [ -x "$FERRY_WORKER_BIN" ] || report_error_and_exit "FERRY_WORKER_BIN=$FERRY_WORKER_BIN is not an executable file"
    WORKER_BIN=$FERRY_WORKER_BIN
elif command -v ferry-worker >/dev/null; then
    WORKER_BIN=$(command -v ferry-worker)
else
    report_error_and_exit "No Ferry worker: set FERRY_RELEASE_URL and FERRY_RELEASE_SHA256 in the template's environment, or FERRY_WORKER_BIN (or put ferry-worker on PATH in the image)"
fi
if [ "$FORCE_UPDATE" = true ]; then
    rm -f "$FORCE_UPDATE_FILE"
fi
if ! version=$("$WORKER_BIN" --version 2>&1); then
    report_error_and_exit "$WORKER_BIN cannot run on this image: $(printf '%s' "$version" | head -c 300)"
fi
echo "Worker: $WORKER_BIN ($version)"

# --- TLS, as Vast's: a key and CSR here, the certificate signed by Vast ---------------------------
if [ "$USE_SSL" = true ]; then
    command -v openssl >/dev/null || report_error_and_exit "USE_SSL=true needs openssl in the image"
    mkdir -p "$FERRY_CERT_DIR" || report_error_and_exit "cannot create $FERRY_CERT_DIR"
    cat >"$FERRY_CERT_DIR/openssl-san.cnf" <<'EOF' || report_error_and_exit "Failed to write OpenSSL config"
[req]
default_bits       = 2048
distinguished_name = req_distinguished_name
req_extensions     = v3_req

[req_distinguished_name]
countryName         = US
stateOrProvinceName = CA
organizationName    = Vast.ai Inc.
commonName          = vast.ai

[v3_req]
basicConstraints = CA:FALSE
keyUsage         = nonRepudiation, digitalSignature, keyEncipherment
subjectAltName   = @alt_names

[alt_names]
IP.1   = 0.0.0.0
EOF
    openssl req -newkey rsa:2048 -subj "/C=US/ST=CA/CN=pyworker.vast.ai/" -nodes -sha256 \
        -keyout "$FERRY_CERT_DIR/instance.key" -out "$FERRY_CERT_DIR/instance.csr" \
        -config "$FERRY_CERT_DIR/openssl-san.cnf" 2>&1 ||
        report_error_and_exit "Failed to generate SSL certificate request"
    delay=2
    for attempt in 1 2 3 4 5; do
        code=$(curl -sS -o "$FERRY_CERT_DIR/instance.crt" -w '%{http_code}' --max-time 30 \
            -H 'Content-Type: application/octet-stream' --data-binary "@$FERRY_CERT_DIR/instance.csr" \
            -X POST "$FERRY_SIGN_CERT_URL?instance_id=$CONTAINER_ID") || code=000
        if [ "$code" -ge 200 ] && [ "$code" -lt 300 ]; then
            break
        fi
        echo "SSL cert signing attempt $attempt/5 failed (HTTP $code)"
        [ "$attempt" -lt 5 ] || report_error_and_exit "Failed to sign SSL certificate after 5 attempts (HTTP $code)"
        sleep "$delay"
        delay=$((delay * 2))
    done
    export FERRY_TLS_CERT="$FERRY_CERT_DIR/instance.crt" FERRY_TLS_KEY="$FERRY_CERT_DIR/instance.key"
fi

export REPORT_ADDR WORKER_PORT USE_SSL UNSECURED
echo "launching Ferry worker: $WORKER_BIN"
trap - ERR
# The worker's output also goes to pyworker.log (and on to debug.log).
exec > >(
    trap '' TERM INT
    exec tee -a "$PYWORKER_LOG"
) 2>&1
exec "$WORKER_BIN" "$@"
