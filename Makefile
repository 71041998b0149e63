# One command for each job; each installs what it needs first (scripts/setup.sh).

.PHONY: setup build test demo validate bench-overhead soak lint

setup:
	./scripts/setup.sh

build: setup
	cargo build --release --workspace

test:
	./scripts/setup.sh prometheus
	cargo test --workspace

validate: setup
	cargo run --quiet -p inference-gateway -- --validate --config manifests/examples/local

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

demo: setup
	./scripts/demo.sh

bench-overhead: setup
	./scripts/bench-overhead.sh

soak: setup
	./scripts/soak.sh
