# The two commands a newcomer runs (as root): `make demo` and `make test`.
# Both run the idempotent set-up first.
CARGO_BUILD_JOBS ?= 2
export CARGO_BUILD_JOBS

.PHONY: setup build demo test lint bench fuzz train eval package

setup:
	./setup.sh

build: setup
	cargo build

demo: build
	/opt/mcpwarden-dev/venv/bin/python tests/demo/demo.py

# The end-to-end tests install the .deb and read the .rpm: built first.
test: setup package
	cargo test

# The .deb (target/debian/) and the .rpm (target/generate-rpm/) of the
# release binary, with the unit, the settings, the policies and PSI's model.
package: setup
	cargo build --release -p mcpwarden --bin mcpwarden
	cargo deb -p mcpwarden --no-build
	cargo generate-rpm -p agent

# What CI checks besides the tests.
lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo +nightly clippy -p mcpwarden-ebpf --target bpfel-unknown-none \
		-Z build-std=core --target-dir target/ebpf-clippy -- -D warnings

# Numbers behind BENCHMARKS.md (root; takes about two minutes).
bench: setup
	cargo bench --bench proxy_stdio
	cargo bench --bench proxy_http
	cargo bench --bench proxy_flood
	cargo bench --bench proxy_parts
	cargo bench --bench kernel_cost
	cargo bench --bench sandbox_spawn
	cargo bench --bench psi
	cargo bench --bench policy

# PSI: rebuild the data and retrain the weights (models/README.md), and
# the held-out evaluation.
PSI_VENV = /opt/mcpwarden-dev/psi-train
train: setup
	test -x $(PSI_VENV)/bin/python || /usr/bin/python3 -m venv $(PSI_VENV)
	$(PSI_VENV)/bin/pip install -q --disable-pip-version-check -r models/requirements-train.txt
	$(PSI_VENV)/bin/python models/build_data.py
	$(PSI_VENV)/bin/python models/augment.py
	$(PSI_VENV)/bin/python models/train.py

# test-words.jsonl: one- and two-word benign strings (FPR only);
# test-descriptions.jsonl: SDK and written gateway descriptions, clean
# and poisoned.
eval: setup
	cargo run --release -- scan --eval models/data/test.jsonl
	cargo run --release -- scan --eval models/data/test-words.jsonl
	cargo run --release -- scan --eval models/data/test-descriptions.jsonl

# Fuzz the message parser, the request tracker, the SSE decoder and the
# policy parser (documents and tool-rule conditions)
# (nightly, cargo-fuzz).
# New inputs go to target/fuzz-corpus; the checked-in seeds stay as they are.
FUZZ_SECONDS ?= 240
fuzz: setup
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
	for t in parse tracker sse policy; do \
		mkdir -p target/fuzz-corpus/$$t && \
		(cd agent/fuzz && cargo +nightly fuzz run $$t ../../target/fuzz-corpus/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done
