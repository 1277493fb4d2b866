#!/usr/bin/env bash
# Throwaway nginx load balancers for tests: the HA suite (tests/ha/test_ha.py) puts one in front
# of its `ferry control` replicas, as a team would in production.
#
#   scripts/nginx.sh install               install nginx if missing (root; apt-get), and make
#                                          sure no nginx of the package runs or starts at boot
#   scripts/nginx.sh find                  print the path of the nginx binary (exit 3: none)
#   scripts/nginx.sh start UPSTREAM_URL... new nginx in a new temporary folder (its own config,
#                                          pid file, logs and temp paths), on 127.0.0.1 and a
#                                          free port, round-robin over the upstreams; prints
#                                          shell assignments:
#                                          NGINX_DIR=... NGINX_PORT=... NGINX_URL=http://...
#   scripts/nginx.sh stop DIR              stop that nginx and delete the folder
#
# The balancer: HTTP/1.1 with keep-alive to the upstreams, no buffering either way (streams are
# relayed as they come), a 1 s connect timeout and `proxy_next_upstream error timeout`, so a
# dead upstream is skipped (a request not yet sent to it goes to the next one; nginx never
# re-sends a POST that reached an upstream) and left out for 2 s after a failure. Responses may
# take up to 120 s (a follower replica holds a request while a new owner is elected). The access
# log (DIR/access.log) names the upstream and status of every request.
#
# `start` first removes the balancers whose owner (the process that ran `start`) has died, so a
# killed test run leaves no server behind for long. As root the worker processes run as root
# (`user root;`): they write the folder's temp paths. NGINX_BIN overrides the binary. Usage in
# a Python suite:
#   eval "$(scripts/nginx.sh start http://127.0.0.1:8081 http://127.0.0.1:8082)"
#   trap 'scripts/nginx.sh stop "$NGINX_DIR"' EXIT
set -euo pipefail
# shellcheck source=scripts/lib/throwaway.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/throwaway.sh"

die() { echo "nginx: $*" >&2; exit "${2:-1}"; }

find_bin() {
    if [ -n "${NGINX_BIN:-}" ] && [ -x "$NGINX_BIN" ]; then echo "$NGINX_BIN"; return 0; fi
    local p
    if p=$(command -v nginx 2>/dev/null); then echo "$p"; return 0; fi
    # Debian puts it in /usr/sbin, off a non-root PATH.
    if [ -x /usr/sbin/nginx ]; then echo /usr/sbin/nginx; return 0; fi
    return 3
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops the nginx the Debian package may have started (its pid file is /run/nginx.pid; a test
# balancer has its own) and keeps it from starting again: its default site listens on port 80
# of every interface.
quiet_package_service() {
    if command -v systemctl >/dev/null; then
        # Without a running systemd, `disable` still removes the unit's links.
        if [ -d /run/systemd/system ]; then
            systemctl disable --now nginx >/dev/null 2>&1 || true
        else
            systemctl disable nginx >/dev/null 2>&1 || true
        fi
    fi
    if command -v update-rc.d >/dev/null && [ -e /etc/init.d/nginx ]; then
        update-rc.d nginx disable >/dev/null 2>&1 || true
    fi
    local pid
    if [ -f /run/nginx.pid ] && pid=$(cat /run/nginx.pid) && kill -0 "$pid" 2>/dev/null; then
        echo "nginx: stopping the package's nginx (pid $pid)"
        kill -QUIT "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f /run/nginx.pid
    fi
}

cmd_install() {
    local bin
    if bin=$(find_bin); then
        echo "nginx: found $bin"
    else
        [ "$(id -u)" = 0 ] || die "nginx not found and not root: install the nginx package" 3
        echo "nginx: installing nginx (apt-get install nginx-light, else nginx)"
        # Keep the package's scripts from starting its service while it installs.
        local made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        local rc=0
        apt-get update -q || rc=$?
        if [ "$rc" = 0 ]; then
            # nginx-light is the smallest build up to Debian 11; from Debian 12 on it is an
            # empty transitional package and plain nginx is the small one.
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light \
                || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx \
                || rc=$?
        fi
        [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
        [ "$rc" = 0 ] || die "apt-get install nginx failed ($rc)"
        bin=$(find_bin) || die "nginx installed but not found" 3
        echo "nginx: installed $bin ($("$bin" -v 2>&1))"
    fi
    if [ "$(id -u)" = 0 ]; then
        quiet_package_service
    fi
    # Whatever started it, no nginx may listen beyond loopback.
    if command -v ss >/dev/null; then
        local open
        open=$(ss -Hltnp 2>/dev/null | grep -E '"nginx' | awk '{print $4}' \
            | grep -vE '^(127\.[0-9.]+|\[::1\]|::1):[0-9]+$' || true)
        [ -z "$open" ] || die "an nginx listens beyond loopback: $open"
    fi
}

write_conf() {
    local dir=$1 port=$2 up
    shift 2
    {
        [ "$(id -u)" != 0 ] || echo "user root;"
        cat <<EOF
daemon on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 4096; }
http {
    log_format upstream '\$time_iso8601 \$request_method \$request_uri \$status '
                        'upstream=\$upstream_addr upstream_status=\$upstream_status '
                        'secs=\$request_time';
    access_log $dir/access.log upstream;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    client_max_body_size 64m;
    upstream ferry {
EOF
        for up in "$@"; do
            echo "        server $up max_fails=1 fail_timeout=2s;"
        done
        cat <<EOF
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://ferry;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_connect_timeout 1s;
            proxy_send_timeout 120s;
            proxy_read_timeout 120s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_timeout 10s;
        }
    }
}
EOF
    } >"$dir/nginx.conf"
}

cmd_start() {
    [ "$#" -gt 0 ] || die "start needs at least one upstream URL" 64
    local bin dir port i up ups=() hostport='^[][A-Za-z0-9.:-]+:[0-9]+$'
    bin=$(find_bin) || die "nginx not found (scripts/nginx.sh install, or set NGINX_BIN)" 3
    for up in "$@"; do
        case "$up" in
            http://*) up=${up#http://}; up=${up%%/*} ;;
            https://*) die "only http:// upstreams: $up" 64 ;;
        esac
        [[ "$up" =~ $hostport ]] || die "not an upstream URL (http://HOST:PORT): $up" 64
        ups+=("$up")
    done
    sweep_orphans ferry-nginx- nginx cmd_stop
    dir=$(mktemp -d "${TMPDIR:-/tmp}/ferry-nginx-XXXXXX")
    chmod 700 "$dir"
    # The process that asked (a suite's python, a shell) owns the balancer.
    echo "$PPID" >"$dir/owner"
    mkdir -p "$dir/tmp"
    for i in 1 2 3 4 5; do
        port=$(free_port)
        write_conf "$dir" "$port" "${ups[@]}"
        # -e: the error log before the config is read (else the compiled-in /var/log/nginx).
        if "$bin" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/start.log" 2>&1; then
            break
        fi
        if [ "$i" = 5 ] || ! grep -q "Address already in use" "$dir/start.log" "$dir/error.log" 2>/dev/null; then
            cat "$dir/start.log" >&2 || true
            tail -n 20 "$dir/error.log" >&2 2>/dev/null || true
            rm -rf "$dir"
            die "nginx did not start"
        fi
    done
    # `daemon on`: the master writes its pid file once it listens.
    for _ in $(seq 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.05; done
    [ -s "$dir/nginx.pid" ] || { cmd_stop "$dir"; die "nginx wrote no pid file"; }
    echo "NGINX_DIR=$dir"
    echo "NGINX_PORT=$port"
    echo "NGINX_URL=http://127.0.0.1:$port"
}

cmd_stop() {
    local dir="${1:?DIR}" pid
    case "$dir" in
        */ferry-nginx-*) ;;
        *) die "not a balancer folder of this script: $dir" ;;
    esac
    [ -d "$dir" ] || return 0
    if [ -s "$dir/nginx.pid" ] && pid=$(cat "$dir/nginx.pid") && kill -0 "$pid" 2>/dev/null; then
        # TERM is nginx's fast shutdown: the master stops its workers, then exits.
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$pid" 2>/dev/null; then
            # Its workers are the master's children: take them down with it.
            local kids
            kids=$(pgrep -P "$pid" 2>/dev/null || true)
            # shellcheck disable=SC2086
            kill -KILL "$pid" $kids 2>/dev/null || true
        fi
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    install) cmd_install ;;
    find) find_bin || die "nginx not found" 3 ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: $0 install|find|start UPSTREAM_URL...|stop DIR" 64 ;;
esac
