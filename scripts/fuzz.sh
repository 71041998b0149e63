#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with cargo fuzz (libFuzzer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The machine's toolchain is stable; cargo fuzz needs nightly flags, which RUSTC_BOOTSTRAP=1
# allows. Crashes are saved under fuzz/artifacts/<target>/; fix them and add the input as a
# regression test next to the parser.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(openai_body metrics_page route_match yaml_config sse_usage kv_events)
fi
./scripts/setup.sh
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in "${TARGETS[@]}"; do
  echo "== $target: ${SECONDS_EACH}s" >&2
  mkdir -p "fuzz/corpus/$target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
    >"fuzz/$target.log" 2>&1 || { tail -40 "fuzz/$target.log" >&2; exit 1; }
  grep -E "^(stat::|#[0-9]+ *DONE)" "fuzz/$target.log" >&2 || true
done
