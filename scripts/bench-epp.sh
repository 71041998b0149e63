#!/usr/bin/env bash
# Endpoint-picker latency: what a request pays when its pool is routed by an external endpoint
# picker over ext_proc (a v1 pool's endpointPickerRef) instead of the gateway's built-in strategy,
# measured in one run on one gateway, one listener and the same five backends, interleaved round
# by round. Two external pickers: the Inference Extension's own EPP server (static-epp, GIE v1.5.0,
# tools/epp) and this gateway's EPP (a second inference-gateway process with --epp-pool). The
# result is written to docs/benchmarks/epp.md.
#
#   scripts/bench-epp.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Backend: nginx answering every request with a fixed 300-byte JSON completion on five loopback
# addresses (127.0.0.2-6), like five pods. Client: wrk, one thread, a 1 KiB completions body.
# The gateway runs with --threads 1 and RUST_LOG=warn; every pool uses the DEFAULT strategy.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
CONNECTIONS=${3:-8}
BACKEND_PORT=18200
GW_LLM=18281
ADMIN=127.0.0.1:18299
PICKER_ADMIN=127.0.0.1:18298
GIE_EPP=127.0.0.7
OUR_EPP=127.0.0.8
EPP_PORT=19002
OUT=docs/benchmarks/epp.md

./scripts/setup.sh nginx-light wrk
cargo build --release -p inference-gateway --bin inference-gateway >&2
tools="$(./scripts/build-epp-tools.sh)"

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_start

endpoints=""
pods=""
for i in 2 3 4 5 6; do
  endpoints+="${endpoints:+,}127.0.0.$i:$BACKEND_PORT"
  pods+="---
apiVersion: v1
kind: Pod
metadata: {name: sim-$i, labels: {app: sim}}
status: {podIP: 127.0.0.$i, conditions: [{type: Ready, status: \"True\"}]}
"
done
bench_backend_conf "$work/backend" "$BACKEND_PORT"
nginx -c "$work/backend/nginx.conf" -g 'daemon off;' & pids+=($!)

# The pools: `builtin` (no picker), `gie` and `ours` (each routed by one external picker).
pool() { # name [picker-service]
  echo "---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: $1}
spec:
  selector: {matchLabels: {app: sim}}
  targetPorts: [{number: $BACKEND_PORT}]"
  if [ -n "${2:-}" ]; then
    echo "  endpointPickerRef: {name: $2, port: {number: $EPP_PORT}, failureMode: FailClose}"
  fi
}
picker_service() { # name ip
  echo "---
apiVersion: v1
kind: Service
metadata: {name: $1}
spec: {selector: {app: $1}, ports: [{port: $EPP_PORT, targetPort: $EPP_PORT}]}
---
apiVersion: v1
kind: Pod
metadata: {name: $1-0, labels: {app: $1}}
status: {podIP: $2, conditions: [{type: Ready, status: \"True\"}]}"
}
{
  echo "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: bench}
spec: {controllerName: inference-gateway.dev/controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench}
spec:
  gatewayClassName: bench
  listeners: [{name: llm, protocol: HTTP, port: $GW_LLM}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench}
spec:
  parentRefs: [{name: bench}]
  rules:"
  for name in builtin gie ours; do
    echo "  - matches: [{path: {type: PathPrefix, value: /$name}}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: $name}]"
  done
  pool builtin
  pool gie gie-epp
  pool ours ours-epp
  picker_service gie-epp "$GIE_EPP"
  picker_service ours-epp "$OUR_EPP"
  echo "$pods"
} > "$work/gateway.yaml"
# This gateway's picker: the same pool, no Gateway (so no listeners), --epp-pool.
{ pool ours; echo "$pods"; } > "$work/picker.yaml"

"$tools/static-epp" --address "$GIE_EPP" --port "$EPP_PORT" --health-port $((EPP_PORT + 1)) \
  --endpoints "$endpoints" --x-epp-test "" >"$work/static-epp.log" 2>&1 & pids+=($!)
RUST_LOG=warn ./target/release/inference-gateway --config "$work/picker.yaml" --threads 1 \
  --admin-addr "$PICKER_ADMIN" --epp-pool default/ours --epp-addr "$OUR_EPP:$EPP_PORT" \
  --epp-health-addr "$OUR_EPP:$((EPP_PORT + 1))" >"$work/picker.log" 2>&1 & pids+=($!)
RUST_LOG=warn ./target/release/inference-gateway --config "$work/gateway.yaml" --threads 1 \
  --admin-addr "$ADMIN" --listen-host 127.0.0.1 --picker-timeout 5s >"$work/gw.log" 2>&1 & pids+=($!)

targets=(builtin gie ours)
for target in "${targets[@]}"; do
  for _ in $(seq 1 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
      --data-binary @"$body_file" "http://127.0.0.1:$GW_LLM/$target/v1/completions" || true)
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  [ "$code" = 200 ] || { echo "/$target answered $code"; cat "$work"/*.log; exit 1; } >&2
done

run() { # connections seconds target -> "rps p50 p99 errors"
  local out
  out=$(wrk -t1 -c"$1" -d"$2s" --latency -s "$work/post.lua" "http://127.0.0.1:$GW_LLM/$3/v1/completions")
  echo "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") $(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")") $(awk '/Non-2xx|Socket errors/ {n++} END {print n + 0}' <<<"$out")"
}
for target in "${targets[@]}"; do run "$CONNECTIONS" 2 "$target" >/dev/null; done # warm-up
idle="$work/idle.tsv"; loaded="$work/loaded.tsv"
: > "$idle"; : > "$loaded"
for round in $(seq 1 "$ROUNDS"); do
  for target in "${targets[@]}"; do
    echo -e "$target\t$round\t$(run 1 5 "$target" | tr ' ' '\t')" | tee -a "$idle" >&2
  done
  for target in "${targets[@]}"; do
    echo -e "$target\t$round\t$(run "$CONNECTIONS" "$SECONDS_PER_RUN" "$target" | tr ' ' '\t')" | tee -a "$loaded" >&2
  done
done
picker_calls=$(curl -s "http://$ADMIN/metrics" | awk '/^gateway_endpoint_picker_requests_total/ {print}' | tr '\n' ' ')

python3 - "$idle" "$loaded" "$OUT" "$ROUNDS" "$SECONDS_PER_RUN" "$CONNECTIONS" "$picker_calls" <<'PY'
import statistics, sys
idle_path, loaded_path, out, rounds, seconds, connections, picker_calls = sys.argv[1:]
names = {
    "builtin": "built-in strategy (DEFAULT), no picker",
    "gie": "external picker: the Inference Extension's EPP (static-epp, GIE v1.5.0)",
    "ours": "external picker: this gateway's EPP (`--epp-pool`, DEFAULT)",
}
def load(path):
    rows = {}
    for line in open(path):
        target, _round, rps, p50, p99, errors = line.rstrip("\n").split("\t")
        rows.setdefault(target, []).append((float(rps), float(p50), float(p99), int(errors)))
    return {t: tuple(statistics.median(r[i] for r in v) for i in range(3)) + (sum(r[3] for r in v),) for t, v in rows.items()}
idle, loaded = load(idle_path), load(loaded_path)
lines = [
    "# Endpoint-picker latency",
    "",
    f"Produced by `scripts/bench-epp.sh {rounds} {seconds} {connections}`: one gateway (`--threads 1`), one",
    "listener, one HTTPRoute whose three path prefixes reach three v1 InferencePools over the same five",
    "backends (nginx, a fixed 300-byte completion, 127.0.0.2-6). `builtin` has no `endpointPickerRef`;",
    "`gie` and `ours` name a picker Service (`FailClose`). Each request to them is an ext_proc stream:",
    "headers, the 1 KiB body, the picker's answer, then the served report after the response headers.",
    f"Medians of {rounds} interleaved rounds; wrk, one thread. Machine: 2 shared cores, so the client,",
    "the gateway, the picker and the backends compete for them; ratios within the run are what carries over.",
    "",
    "## One connection (no queueing: the latency a request pays)",
    "",
    "| Route | p50 (ms) | p99 (ms) | Added p50 vs built-in (ms) | Added p99 vs built-in (ms) |",
    "|---|---:|---:|---:|---:|",
]
base = idle["builtin"]
for t in ("builtin", "gie", "ours"):
    rps, p50, p99, _ = idle[t]
    added = "" if t == "builtin" else f"{p50 - base[1]:.3f} | {p99 - base[2]:.3f}"
    lines.append(f"| {names[t]} | {p50:.3f} | {p99:.3f} | {added or ' | '} |")
lines += [
    "",
    f"## {connections} connections",
    "",
    "| Route | Requests/s | p50 (ms) | p99 (ms) | Requests/s vs built-in |",
    "|---|---:|---:|---:|---:|",
]
base = loaded["builtin"]
for t in ("builtin", "gie", "ours"):
    rps, p50, p99, _ = loaded[t]
    lines.append(f"| {names[t]} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {rps / base[0]:.2f} |")
errors = sum(v[3] for v in idle.values()) + sum(v[3] for v in loaded.values())
lines += [
    "",
    f"wrk runs with socket errors or non-2xx responses: {errors}.",
    "",
    f"The gateway's picker counters at the end: `{picker_calls.strip()}`",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
