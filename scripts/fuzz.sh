#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted bytes (the cargo-fuzz crate in fuzz/;
# targets and what each checks in docs/fuzzing.md).
#
#   scripts/fuzz.sh                      every target for 15 s (what scripts/test.sh runs)
#   scripts/fuzz.sh --seconds 300        every target for 5 minutes
#   scripts/fuzz.sh --target auth_data   one target
#   scripts/fuzz.sh --runs 10000000 --seconds 1800   stop each at 10 million executions
#
# Installs cargo-fuzz (pinned) if missing. The pinned toolchain is stable, and cargo-fuzz passes
# a few -Z flags: RUSTC_BOOTSTRAP=1 lets stable rustc/cargo accept them, and `--sanitizer none`
# avoids ASan (whose runtime needs nightly's -Zsanitizer); Rust code is memory-safe here, so
# libFuzzer's coverage plus the targets' assertions and overflow checks is what finds bugs.
#
# Build artifacts and the corpus the fuzzer grows live outside the repository (under
# ${FERRY_CACHE:-~/.cache/ferry}/fuzz-target), so the seed corpora in fuzz/corpus/ never grow.
# Prints the executions each target reached; exits non-zero if any target crashed, with the
# crashing input saved in fuzz/artifacts/<target>/ (reproduce: scripts/fuzz.sh --target T
# --reproduce fuzz/artifacts/T/crash-...).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=15
only=""
runs=-1
reproduce=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --target) only="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --reproduce) reproduce="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "fuzz.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done

root="$(pwd)"
cache="${FERRY_CACHE:-$HOME/.cache/ferry}"
target_dir="${FERRY_FUZZ_TARGET_DIR:-$cache/fuzz-target}"
work="$target_dir/fuzz-work"
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$triple/release"

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

targets=()
while IFS= read -r t; do targets+=("$t"); done < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^ferry-fuzz$')
if [[ -n "$only" ]]; then
    if ! printf '%s\n' "${targets[@]}" | grep -qx "$only"; then
        echo "fuzz.sh: no target $only (have: ${targets[*]})" >&2
        exit 64
    fi
    targets=("$only")
fi

export RUSTC_BOOTSTRAP=1
build_start=$SECONDS
(cd fuzz && cargo fuzz build --sanitizer none --target-dir "$target_dir" ${only:+"$only"})
echo "fuzz build: $((SECONDS - build_start)) s"

if [[ -n "$reproduce" ]]; then
    exec "$bin_dir/${targets[0]}" "$reproduce"
fi

failed=()
printf '\n%-16s %14s %10s %8s %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/logs" "fuzz/artifacts/$t"
    log="$work/logs/$t.log"
    # New inputs go to the first directory (outside the repo); the seeds are only read.
    dict=()
    [[ -f "fuzz/dict/$t.dict" ]] && dict=(-dict="$root/fuzz/dict/$t.dict")
    set +e
    RUST_BACKTRACE=0 "$bin_dir/$t" "$work/corpus/$t" "$root/fuzz/corpus/$t" "${dict[@]}" \
        -max_total_time="$seconds" -runs="$runs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$root/fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    units="$(ls "$work/corpus/$t" | wc -l)"
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
    fi
    printf '%-16s %14s %10s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$units" "$result"
    if [[ $rc -ne 0 ]]; then
        # The panic message (up to the backtrace note) and where the input was saved.
        sed -n '/panicked at/,/^note: run with\|^stack backtrace\|==[0-9]*== ERROR/p' "$log" | head -12 | sed 's/^/    /'
        grep -E 'ERROR: libFuzzer|Test unit written' "$log" | sed 's/^/    /' || true
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crashes in ${failed[*]}; inputs in fuzz/artifacts/, logs in $work/logs/" >&2
    exit 1
fi
