#!/usr/bin/env bash
# The local demo: five simulated vLLM pods (vllm-sim on 127.0.0.2-6:8000, the seed's flags) and the
# gateway on its embedded configuration (the seed's YAML plus five Pods). Sends the seed's two
# requests, then keeps running until Ctrl-C. DEMO_EXIT=1 stops after the requests (for scripts).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo build --release -p inference-gateway -p loadtest

pids=()
logs=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for i in 2 3 4 5 6; do
  ./target/release/vllm-sim /models/Qwen-2.5-7B-Instruct --host "127.0.0.$i" --port 8000 \
    --trust-remote-code --served-model-name /model/qwen --gpu-memory-utilization 0.95 \
    --enforce-eager --enable-lora --max-loras 2 --max-cpu-loras 4 \
    --lora-modules travel-helper-v1=/models/Qwen-TravelHelper-Lora travel-helper-v2=/models/Qwen-TravelHelper-Lora-v2 \
    --seed "$i" >"$logs/vllm-sim-$i.log" 2>&1 &
  pids+=($!)
done
./target/release/inference-gateway >"$logs/gateway.log" 2>&1 &
pids+=($!)

wait_ok() { # url, what
  for _ in $(seq 1 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $2 ($1); logs in $logs" >&2
  exit 1
}
for i in 2 3 4 5 6; do wait_ok "http://127.0.0.$i:8000/health" "vllm-sim on 127.0.0.$i"; done
wait_ok "http://127.0.0.1:9090/readyz" "the gateway"

echo "== port 8080, the plain route (round-robin over the Service's pods):"
curl -s -i localhost:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{
  "model": "/model/qwen", "max_completion_tokens": 100, "temperature": 0,
  "messages": [{"role": "user", "content": "Write as if you were a critic: San Francisco"}]}'
echo
echo "== port 8081, the inference route (InferencePool, strategy from the pool annotation):"
curl -s -i localhost:8081/v1/chat/completions -H 'Content-Type: application/json' -d '{
  "model": "/model/qwen", "max_completion_tokens": 100, "temperature": 0,
  "messages": [{"role": "user", "content": "Write as if you were a critic: Los Angeles"}]}'
echo
echo "== port 8081, model travel-helper (rewritten to travel-helper-v1 or -v2 by the InferenceModel):"
curl -s localhost:8081/v1/completions -H 'Content-Type: application/json' \
  -d '{"model": "travel-helper", "prompt": "Plan two days in Hangzhou.", "max_tokens": 20}'
echo
echo
echo "Gateway: 8080 (plain), 8081 (inference), admin 127.0.0.1:9090 (/metrics, /debug/snapshot)."
echo "Simulators: 127.0.0.2-6:8000. Logs: $logs"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "Running; Ctrl-C stops everything."
wait
