#!/usr/bin/env bash
# Separate "hosts" on one machine: network namespaces joined by a bridge, for tests that need
# a real network between the control plane and its workers (partitions, unreachable hosts).
#
#   scripts/netns.sh up [--hosts N] [--owner PID]   create a run; prints its variables (for eval)
#   scripts/netns.sh run [--hosts N] -- CMD...      up, run CMD with the variables exported,
#                                                   down on exit (also on a signal)
#   scripts/netns.sh down PREFIX                    remove one run (its processes first)
#   scripts/netns.sh down --stale                   remove runs whose owner has died
#   scripts/netns.sh exec PREFIX HOST CMD...        run CMD on a host (cp, h1, h2, ...)
#   scripts/netns.sh cut PREFIX HOST                partition a host: its cable is unplugged
#   scripts/netns.sh heal PREFIX HOST               plug it back
#   scripts/netns.sh list                           runs present, and whether their owner lives
#
# One run is a prefix `ferry-<owner pid>-<4 hex>` and these namespaces:
#
#   <prefix>-sw   the switch: a bridge `br0` and one port per host (`cp`, `h1`, ...); no address
#   <prefix>-cp   the control plane's host (and the load client's): 10.213.X.1 on `eth0`
#   <prefix>-hK   worker host K: 10.213.X.(10+K) on `eth0`
#
# Each veth pair is created directly inside its two namespaces, so nothing of a run ever
# appears in the machine's own namespace, and nothing in a run can reach it (there is no route
# out of 10.213.X.0/24): servers started inside can only bind to loopback or to their host's
# address. Two runs never share a link, so their subnets may even overlap; X is still taken
# from the prefix so logs of concurrent runs are easy to tell apart.
#
# `cut` sets the switch's port of the host down: the host's eth0 loses carrier, and packets
# between it and the rest are dropped, not refused. Every host also gets permanent neighbour
# entries for every other host, so a cut host never becomes "no route to host" (ARP failure,
# EHOSTUNREACH, which a client sees at once like a refusal): it stays a silent black hole, as a
# machine behind a broken link on the internet is. `heal` sets the port up again; connections
# that were not given up resume.
#
# The owner of a run is a process (default: the caller); `down --stale` removes every run whose
# owner is gone (or was never recorded), after killing the processes still inside its
# namespaces. Runs are recorded under /run/ferry-netns/<prefix>/ (owner pid and start time, so
# a reused pid is not mistaken for the owner).
set -euo pipefail

STATE=/run/ferry-netns
NAME_RE='^ferry-[0-9]+-[0-9a-f]{4}$'

die() {
    echo "netns.sh: $*" >&2
    exit 1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
    command -v ip >/dev/null || die "needs iproute2 (ip)"
}

starttime() { # pid -> its start time in clock ticks (field 22 of /proc/pid/stat), or empty
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo "${20}"
}

owner_alive() { # prefix -> 0 when its recorded owner still runs
    local f=$STATE/$1/owner pid st
    [ -f "$f" ] || return 1
    read -r pid st <"$f" || return 1
    [ -n "$pid" ] && [ "$(starttime "$pid")" = "$st" ]
}

subnet_of() { # prefix -> 10.213.X
    local h
    h=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
    echo "10.213.$((h % 250 + 1))"
}

hosts_of() { # prefix -> host names present (cp h1 h2 ...)
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$1-\(cp\|h[0-9]*\)\$/\1/p" | sort -V
}

runs() { # every prefix with a namespace or a record
    {
        ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^\(ferry-[0-9]*-[0-9a-f]\{4\}\)-[a-z0-9]*$/\1/p'
        [ -d "$STATE" ] && ls "$STATE"
    } | sort -u | grep -E "$NAME_RE" || true
}

ns_exists() { [ -e "/run/netns/$1" ]; }

cmd_up() {
    local n=3 owner=$PPID
    while [ $# -gt 0 ]; do
        case "$1" in
            --hosts) n=$2; shift 2 ;;
            --owner) owner=$2; shift 2 ;;
            *) die "up: unknown argument $1" ;;
        esac
    done
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up: --hosts must be 1..200"
    local st
    st=$(starttime "$owner")
    [ -n "$st" ] || die "up: owner pid $owner is not running"
    local prefix
    for _ in 1 2 3 4 5; do
        prefix=ferry-$owner-$(od -An -N2 -tx2 /dev/urandom | tr -d ' \n')
        ns_exists "$prefix-sw" || break
    done
    mkdir -p "$STATE/$prefix"
    echo "$owner $st" >"$STATE/$prefix/owner"
    # A failure half-way leaves a record whose namespaces `down` removes.
    trap 'cmd_down "$prefix" >/dev/null 2>&1 || true' ERR
    local net sw=$prefix-sw
    net=$(subnet_of "$prefix")
    ip netns add "$sw"
    ip -n "$sw" link set lo up
    ip -n "$sw" link add br0 type bridge
    # No STP, no forwarding delay: a port is forwarding as soon as it has carrier.
    ip -n "$sw" link set br0 type bridge stp_state 0 forward_delay 0
    ip -n "$sw" link set br0 up
    local hosts=(cp) i
    for ((i = 1; i <= n; i++)); do hosts+=("h$i"); done
    local -a addrs macs
    for i in "${!hosts[@]}"; do
        local h=${hosts[$i]} ns=$prefix-${hosts[$i]}
        local octet=$((i == 0 ? 1 : 10 + i))
        addrs[i]=$net.$octet
        macs[i]=$(printf '02:fe:00:00:%02x:%02x' $((octet / 256)) $((octet % 256)))
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add eth0 netns "$ns" address "${macs[i]}" type veth peer name "$h" netns "$sw"
        ip -n "$sw" link set "$h" master br0
        ip -n "$sw" link set "$h" up
        ip -n "$ns" addr add "${addrs[i]}/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    for i in "${!hosts[@]}"; do
        local j
        for j in "${!hosts[@]}"; do
            [ "$i" = "$j" ] && continue
            ip -n "$prefix-${hosts[$i]}" neigh replace "${addrs[j]}" lladdr "${macs[j]}" \
                dev eth0 nud permanent
        done
    done
    trap - ERR
    echo "FERRY_NETNS_PREFIX=$prefix"
    echo "FERRY_NETNS_HOSTS='${hosts[*]}'"
    for i in "${!hosts[@]}"; do
        local up
        up=$(echo "${hosts[$i]}" | tr '[:lower:]' '[:upper:]')
        echo "FERRY_NETNS_${up}_NS=$prefix-${hosts[$i]}"
        echo "FERRY_NETNS_${up}_ADDR=${addrs[i]}"
    done
}

kill_inside() { # namespace -> SIGKILL its processes, wait until they are gone (5 s at most)
    local ns=$1 pids
    ns_exists "$ns" || return 0
    for _ in $(seq 50); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] || return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.1
    done
    echo "netns.sh: processes still in $ns: $pids" >&2
}

cmd_down() {
    local prefix=${1:-}
    [ -n "$prefix" ] || die "down: PREFIX or --stale"
    if [ "$prefix" = --stale ]; then
        local p removed=0
        for p in $(runs); do
            if ! owner_alive "$p"; then
                cmd_down "$p"
                removed=$((removed + 1))
            fi
        done
        echo "netns.sh: removed $removed stale run(s)"
        return 0
    fi
    [[ "$prefix" =~ $NAME_RE ]] || die "down: $prefix is not a run prefix (ferry-PID-XXXX)"
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-[a-z0-9]+\$" || true); do
        kill_inside "$ns"
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "${STATE:?}/$prefix"
}

host_ns() { # prefix host -> namespace, checked
    [[ "$1" =~ $NAME_RE ]] || die "$1 is not a run prefix (ferry-PID-XXXX)"
    [[ "$2" =~ ^(cp|h[0-9]+)$ ]] || die "$2 is not a host (cp, h1, h2, ...)"
    ns_exists "$1-$2" || die "no namespace $1-$2"
    echo "$1-$2"
}

cmd_link() { # up|down prefix host
    local state=$1
    host_ns "$2" "$3" >/dev/null
    ip -n "$2-sw" link set "$3" "$state"
}

cmd_list() {
    local p
    for p in $(runs); do
        local alive=dead
        owner_alive "$p" && alive=alive
        echo "$p owner=$alive hosts=$(hosts_of "$p" | tr '\n' ' ')"
    done
}

cmd_run() {
    local up_args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        up_args+=("$1")
        shift
    done
    [ "${1:-}" = -- ] || die "run: expected -- CMD..."
    shift
    [ $# -gt 0 ] || die "run: no command"
    local vars
    vars=$(cmd_up "${up_args[@]}" --owner $$)
    # Global: the EXIT trap runs after this function has returned.
    RUN_PREFIX=$(echo "$vars" | sed -n 's/^FERRY_NETNS_PREFIX=//p')
    trap 'cmd_down "$RUN_PREFIX"' EXIT
    local line
    while IFS= read -r line; do eval "export $line"; done <<<"$vars"
    # In the background so that a signal is handled at once (bash runs traps only between
    # foreground commands); stdin passed on explicitly (a background job would get /dev/null).
    "$@" <&0 &
    RUN_CHILD=$!
    trap 'kill -TERM "$RUN_CHILD" 2>/dev/null; exit 130' INT TERM HUP
    local rc=0
    wait "$RUN_CHILD" || rc=$?
    return "$rc"
}

need_root
case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    run) shift; cmd_run "$@" ;;
    exec)
        shift
        [ $# -ge 3 ] || die "exec PREFIX HOST CMD..."
        ns=$(host_ns "$1" "$2")
        shift 2
        exec ip netns exec "$ns" "$@"
        ;;
    cut) shift; [ $# = 2 ] || die "cut PREFIX HOST"; cmd_link down "$@" ;;
    heal) shift; [ $# = 2 ] || die "heal PREFIX HOST"; cmd_link up "$@" ;;
    list) cmd_list ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 64
        ;;
esac
