# Sourced by the scripts that start throwaway servers for tests (scripts/pg-cluster.sh,
# scripts/nginx.sh). Each server lives in a directory "${TMPDIR:-/tmp}/<prefix>*" holding an
# `owner` file: the pid of the process that started it.

# sweep_orphans PREFIX LABEL REMOVE: runs `REMOVE DIR` for every such directory whose owner is
# gone, so a test run killed before its clean-up ran leaves no server behind for long.
sweep_orphans() {
    local prefix=$1 label=$2 remove=$3 d owner
    for d in "${TMPDIR:-/tmp}/$prefix"*/; do
        [ -f "$d/owner" ] || continue
        owner=$(cat "$d/owner")
        if ! kill -0 "$owner" 2>/dev/null; then
            echo "$label: removing ${d%/}, left by process $owner" >&2
            "$remove" "${d%/}"
        fi
    done
}
