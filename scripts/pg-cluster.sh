#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for tests: the Rust tests (crates/control/tests/it/pg.rs) and
# Python suites use this one script, so there is one way to find, run and remove a server.
#
#   scripts/pg-cluster.sh install          install PostgreSQL if missing (root; apt-get), and
#                                          make sure no cluster of the package stays running
#   scripts/pg-cluster.sh find             print the folder of initdb/pg_ctl (exit 3: none)
#   scripts/pg-cluster.sh start [DB]       new cluster in a new temporary folder, a server on
#                                          127.0.0.1 and a free port, database DB (default
#                                          ferry) created; prints shell assignments:
#                                          PG_CLUSTER_DIR=... PG_PORT=... FERRY_STORE=postgres://...
#   scripts/pg-cluster.sh stop DIR         stop the server (fast), keep the data (an outage)
#   scripts/pg-cluster.sh resume DIR       start it again on the same port
#   scripts/pg-cluster.sh createdb DIR DB  create another database
#   scripts/pg-cluster.sh remove DIR       stop the server (immediate) and delete the folder
#
# `start` first removes the clusters whose owner (the process that ran `start`) has died, so a
# killed test run leaves no server behind for long.
# The server never runs as root (PostgreSQL refuses to): as root, initdb and pg_ctl run as the
# `postgres` user (`runuser`), which owns the folder. It listens on 127.0.0.1 only (TCP) and
# on a socket inside the folder; authentication is `trust`, for the local tests only.
# PG_BIN overrides where the binaries are. Usage in a Python suite:
#   eval "$(scripts/pg-cluster.sh start)"; trap 'scripts/pg-cluster.sh remove "$PG_CLUSTER_DIR"' EXIT
set -euo pipefail
# shellcheck source=scripts/lib/throwaway.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/throwaway.sh"

die() { echo "pg-cluster: $*" >&2; exit "${2:-1}"; }

find_bin() {
    if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then echo "$PG_BIN"; return 0; fi
    local p
    if p=$(command -v initdb 2>/dev/null) && [ -x "$(dirname "$(readlink -f "$p")")/pg_ctl" ]; then
        dirname "$(readlink -f "$p")"
        return 0
    fi
    # Debian keeps them off PATH, one folder per major version: take the newest.
    p=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$p" ] && [ -x "$p/initdb" ] && [ -x "$p/pg_ctl" ]; then echo "$p"; return 0; fi
    return 3
}

# Runs a server binary as the cluster's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops every cluster the Debian package set up and keeps it from starting again: tests run
# their own servers, and a system service must not stay bound to anything.
quiet_package_clusters() {
    command -v pg_lsclusters >/dev/null || return 0
    pg_lsclusters --no-header 2>/dev/null | while read -r ver name _port status _rest; do
        if [ "$status" = online ] || [ "${status#online}" != "$status" ]; then
            echo "pg-cluster: stopping the package's cluster $ver/$name"
            pg_ctlcluster "$ver" "$name" stop || true
        fi
        if [ -f "/etc/postgresql/$ver/$name/start.conf" ]; then
            echo manual >"/etc/postgresql/$ver/$name/start.conf"
        fi
    done
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
}

cmd_install() {
    if bin=$(find_bin); then
        echo "pg-cluster: PostgreSQL found in $bin"
    else
        [ "$(id -u)" = 0 ] || die "PostgreSQL not found and not root: install the postgresql package" 3
        echo "pg-cluster: installing PostgreSQL (apt-get install postgresql)"
        # Keep the package's scripts from starting its service while it installs.
        local made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        local rc=0
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } || rc=$?
        [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
        [ "$rc" = 0 ] || die "apt-get install postgresql failed ($rc)"
        bin=$(find_bin) || die "PostgreSQL installed but initdb not found" 3
        echo "pg-cluster: PostgreSQL installed in $bin"
    fi
    if [ "$(id -u)" = 0 ]; then
        quiet_package_clusters
        id -u postgres >/dev/null 2>&1 || die "no postgres user to run the server as (the package creates it)"
    fi
    # Whatever started it, nothing of PostgreSQL may listen beyond loopback.
    if command -v ss >/dev/null; then
        local open
        open=$(ss -Hltnp 2>/dev/null | grep -E '"postgres' | awk '{print $4}' \
            | grep -vE '^(127\.[0-9.]+|\[::1\]|::1):[0-9]+$' || true)
        [ -z "$open" ] || die "a PostgreSQL server listens beyond loopback: $open"
    fi
}

cmd_start() {
    local db="${1:-ferry}" bin dir port i
    bin=$(find_bin) || die "PostgreSQL not found (scripts/pg-cluster.sh install, or set PG_BIN)" 3
    sweep_orphans ferry-pg- pg-cluster cmd_remove
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-pg-XXXXXX")
    chmod 700 "$dir"
    # The process that asked (a test binary, a suite's shell) owns the cluster.
    echo "$PPID" >"$dir/owner"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    if ! as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        die "initdb failed"
    fi
    for i in 1 2 3 4 5; do
        port=$(free_port)
        echo "$port" >"$dir/port"
        if start_server "$bin" "$dir" "$port"; then
            break
        fi
        if [ "$i" = 5 ]; then
            cat "$dir/server.log" >&2 || true
            rm -rf "$dir"
            die "the server did not start"
        fi
    done
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" >&2 \
        || { cmd_remove "$dir"; die "createdb $db failed"; }
    echo "PG_CLUSTER_DIR=$dir"
    echo "PG_PORT=$port"
    echo "FERRY_STORE=postgres://postgres@127.0.0.1:$port/$db"
}

start_server() {
    local bin=$1 dir=$2 port=$3
    # fsync off: throwaway data; a clean stop (`stop`) still writes everything out.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -h 127.0.0.1 -p $port -c fsync=off -c full_page_writes=off" start >/dev/null
}

cmd_stop() {
    local dir="${1:?DIR}" bin
    bin=$(find_bin) || die "PostgreSQL not found" 3
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
}

cmd_resume() {
    local dir="${1:?DIR}" bin
    bin=$(find_bin) || die "PostgreSQL not found" 3
    start_server "$bin" "$dir" "$(cat "$dir/port")" \
        || { tail -n 20 "$dir/server.log" >&2; die "the server did not start again"; }
}

cmd_createdb() {
    local dir="${1:?DIR}" db="${2:?DB}" bin
    bin=$(find_bin) || die "PostgreSQL not found" 3
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$(cat "$dir/port")" -U postgres "$db"
}

cmd_remove() {
    local dir="${1:?DIR}" bin
    case "$dir" in
        */ferry-pg-*) ;;
        *) die "not a cluster folder of this script: $dir" ;;
    esac
    [ -d "$dir" ] || return 0
    if bin=$(find_bin) && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    install) cmd_install ;;
    find) find_bin || die "PostgreSQL not found" 3 ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    resume) shift; cmd_resume "$@" ;;
    createdb) shift; cmd_createdb "$@" ;;
    remove) shift; cmd_remove "$@" ;;
    *) die "usage: $0 install|find|start [DB]|stop DIR|resume DIR|createdb DIR DB|remove DIR" 64 ;;
esac
