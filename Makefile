# One command for each job; each installs what it needs first (scripts/setup.sh).

.PHONY: setup build test demo kube-demo validate bench-overhead bench-epp bench-strategies soak lint

setup:
	./scripts/setup.sh

build: setup
	cargo build --release --workspace

# The real-server tests (gateway/tests/kube_cluster.rs, testkit/tests/cluster.rs) run etcd,
# kube-apiserver and kubectl built from tools/k8s with Go (scripts/build-k8s.sh; once per pin).
test:
	./scripts/setup.sh prometheus
	IGW_K8S_BIN="$$(./scripts/build-k8s.sh)" cargo test --workspace

validate: setup
	cargo run --quiet -p inference-gateway -- --validate --config manifests/examples/local

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

demo: setup
	./scripts/demo.sh

# The seed's YAML in a real API server, the gateway reading it with --source kube (needs Go).
kube-demo: setup
	./scripts/kube-demo.sh

bench-overhead: setup
	./scripts/bench-overhead.sh

# An external endpoint picker (the Inference Extension's EPP, and this gateway's --epp-pool) against
# the built-in strategy on one route (needs Go for tools/epp).
bench-epp: setup
	./scripts/bench-epp.sh

# Every built-in strategy against round-robin on every compare scenario (about 70 minutes):
# docs/benchmarks/NAME.md per scenario and docs/benchmarks/strategies-table.md.
bench-strategies: setup
	./scripts/bench-strategies.sh

soak: setup
	./scripts/soak.sh
