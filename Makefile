# The two commands a newcomer runs (as root): `make demo` and `make test`.
# Both run the idempotent set-up first.
CARGO_BUILD_JOBS ?= 2
export CARGO_BUILD_JOBS

.PHONY: setup build demo test lint bench

setup:
	./setup.sh

build: setup
	cargo build

demo: build
	/opt/mcpwarden-dev/venv/bin/python tests/demo/demo.py

test: setup
	cargo test

# What CI checks besides the tests.
lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo +nightly clippy -p mcpwarden-ebpf --target bpfel-unknown-none \
		-Z build-std=core --target-dir target/ebpf-clippy -- -D warnings

# Numbers behind BENCHMARKS.md (root; takes about two minutes).
bench: setup
	cargo bench --bench proxy_stdio
	cargo bench --bench sandbox_spawn
