#!/usr/bin/env bash
# Routing quality of every built-in strategy against round-robin on every compare scenario, one
# run per scenario with the plain route run twice (its own run-to-run spread is the noise figure),
# then one table of TTFT percentiles across scenarios (compare --table), written to
# docs/benchmarks/strategies-table.md. Each scenario writes docs/benchmarks/NAME.md as usual.
#
#   scripts/bench-strategies.sh [SCENARIO...]     (default: all seven)
#
# About 70 minutes on the 2-core machine; run nothing else heavy meanwhile (the reports count
# simulator slips, steps that fell behind their schedule because a process was starved).
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=("$@")
if [ ${#SCENARIOS[@]} -eq 0 ]; then
    SCENARIOS=(seed prefix multi-turn lora uniform heterogeneous optimized-baseline)
fi
ROUTES=plain,plain,DEFAULT,PREFIX_CACHE,LORA_AFFINITY

cargo build --release -p inference-gateway --bin inference-gateway -p loadtest --bin compare --bin vllm-sim >&2
for scenario in "${SCENARIOS[@]}"; do
    ./target/release/compare --scenario "$scenario" --routes "$ROUTES" --disable-tqdm
done
files=()
for scenario in seed prefix multi-turn lora uniform heterogeneous optimized-baseline; do
    [ -f "docs/benchmarks/data/$scenario.json" ] && files+=("docs/benchmarks/data/$scenario.json")
done
./target/release/compare --table "${files[@]}" | tee docs/benchmarks/strategies-table.md
