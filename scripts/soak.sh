#!/usr/bin/env bash
# Soak: mixed streaming and non-streaming load through the inference route for a long time, with
# the gateway's resident memory sampled every 10 s. Writes docs/benchmarks/soak.md.
#
#   scripts/soak.sh [SECONDS] [WARMUP_SECONDS]      (default 1800 and 120)
#
# Five vllm-sim servers (--time-scale 20, so a 200-token stream takes about 0.3 s) on
# 127.0.0.2-6:28000, the gateway on the local example's objects (ports 28080/28081), and two wrk
# clients: 16 connections streaming completions with usage, 16 asking short non-streamed questions.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-1800}
WARMUP=${2:-120}
OUT=docs/benchmarks/soak.md
ADMIN=127.0.0.1:28099

./scripts/setup.sh wrk
cargo build --release -p inference-gateway -p loadtest >&2

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for i in 2 3 4 5 6; do
  ./target/release/vllm-sim /models/Qwen-2.5-7B-Instruct --host "127.0.0.$i" --port 28000 \
    --served-model-name /model/qwen --enable-lora --max-loras 2 \
    --lora-modules travel-helper-v1=/m/v1 travel-helper-v2=/m/v2 --time-scale 20 --seed "$i" \
    >"$work/sim-$i.log" 2>&1 &
  pids+=($!)
done
{
  sed -e "s/port: 8080/port: 28080/" -e "s/port: 8081/port: 28081/" manifests/examples/local/inference-gateway.yaml
  echo "---"
  sed -e "s/targetPortNumber: 8000/targetPortNumber: 28000/" manifests/examples/local/inference-pool.yaml
  echo "---"
  cat manifests/examples/local/inference-models.yaml
  echo "---"
  sed -e "s/targetPort: 8000/targetPort: 28000/" manifests/examples/local/vllm-service.yaml
  echo "---"
  cat manifests/examples/local/pods.yaml
} >"$work/config.yaml"
RUST_LOG=warn ./target/release/inference-gateway --config "$work/config.yaml" --admin-addr "$ADMIN" \
  --listen-host 127.0.0.1 >"$work/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
for _ in $(seq 1 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz")" = 200 ] && break
  sleep 0.1
done

cat >"$work/stream.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local model = (n % 3 == 0) and "travel-helper" or "/model/qwen"
  local body = string.format('{"model":"%s","prompt":"Soak request %d: summarise the harvest report.","max_tokens":200,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}', model, n)
  return wrk.format(nil, "/v1/completions", nil, body)
end
EOF
cat >"$work/short.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"/model/qwen","messages":[{"role":"user","content":"One word: ok?"}],"max_completion_tokens":4}'
wrk.path = "/v1/chat/completions"
EOF

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$gateway/status"; }
fds() { ls "/proc/$gateway/fd" | wc -l; }
# Failed inference requests so far (every error code), from the gateway's own counter.
errors() {
  curl -s "http://$ADMIN/metrics" |
    awk '/^inference_model_request_error_total\{/ {n += $NF} END {printf "%d", n}'
}
samples="$work/samples.tsv"
echo -e "seconds\trss_kib\tfds\terrors\tloaded" >"$samples"
wrk -t1 -c16 -d"${DURATION}s" -s "$work/stream.lua" http://127.0.0.1:28081 >"$work/wrk-stream.txt" 2>&1 &
wrk_stream=$!
wrk -t1 -c16 -d"${DURATION}s" -s "$work/short.lua" http://127.0.0.1:28081 >"$work/wrk-short.txt" 2>&1 &
wrk_short=$!
start=$(date +%s)
# `loaded` is 1 while both clients still run: wrk cuts the requests it has in flight when its
# duration ends, and the gateway counts those as aborted; they are reported apart.
while kill -0 "$wrk_stream" 2>/dev/null || kill -0 "$wrk_short" 2>/dev/null; do
  loaded=0
  if kill -0 "$wrk_stream" 2>/dev/null && kill -0 "$wrk_short" 2>/dev/null; then loaded=1; fi
  elapsed=$(( $(date +%s) - start ))
  echo -e "$elapsed\t$(rss_kib)\t$(fds)\t$(errors)\t$loaded" >>"$samples"
  # Every 10 s, and once more a second before the clients' end.
  left=$(( DURATION - elapsed ))
  if (( left > 11 )); then sleep 10; elif (( left > 1 )); then sleep $(( left - 1 )); else sleep 1; fi
done
wait "$wrk_stream" "$wrk_short" || true
sleep 2
echo -e "$(( $(date +%s) - start ))\t$(rss_kib)\t$(fds)\t$(errors)\t0" >>"$samples"
curl -s "http://$ADMIN/metrics" >"$work/metrics.txt"
curl -s "http://$ADMIN/debug/snapshot" >"$work/snapshot.json"

python3 - "$work" "$OUT" "$DURATION" "$WARMUP" <<'PY'
import json, re, sys
work, out, duration, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [l.split("\t") for l in open(f"{work}/samples.tsv").read().split("\n")[1:] if l.strip()]
rows = [(int(t), int(r), int(f), int(e), l == "1") for t, r, f, e, l in rows]
after = [r for r in rows if r[0] >= warmup]
base = after[0][1]
peak = max(r[1] for r in after)
end = rows[-1][1]
def wrk(name):
    text = open(f"{work}/wrk-{name}.txt").read()
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: (.*)", text)
    return requests, rps, int(non2xx.group(1)) if non2xx else 0, socket.group(1) if socket else "none"
snapshot = json.load(open(f"{work}/snapshot.json"))
in_flight = sum(e["in_flight"] for p in snapshot["pools"] for e in p["endpoints"])
metrics = open(f"{work}/metrics.txt").read()
by_code = {}
for l in metrics.splitlines():
    if l.startswith("inference_model_request_error_total{"):
        code = re.search(r'error_code="([^"]*)"', l).group(1)
        by_code[code] = by_code.get(code, 0) + int(float(l.rsplit(" ", 1)[1]))
errors = sum(by_code.values())
def scalar(name):
    return next((int(float(l.split(" ")[1])) for l in metrics.splitlines() if l.startswith(name + " ")), None)
open_connections = scalar("gateway_downstream_connections")
refused = scalar("gateway_downstream_connections_refused_total")
header_timeouts = scalar("gateway_downstream_header_timeouts_total")
loaded_rows = [r for r in rows if r[4]]
last_loaded = loaded_rows[-1] if loaded_rows else rows[0]
codes = ", ".join(f"`{c}` {n}" for c, n in sorted(by_code.items())) or "none"
lines = [
    "# Soak",
    "",
    f"Produced by `scripts/soak.sh {duration} {warmup}`: {duration} s of mixed load through the inference route, on the",
    "2-core development machine shared with the simulators and the clients. Five `vllm-sim` servers at `--time-scale 20`",
    "(a 200-token stream takes about 0.3 s); `wrk` with 16 connections streaming 200-token completions with usage",
    "(a third of them for the weighted `travel-helper` adapters) and 16 connections asking short chat questions.",
    "",
    "| Client | Requests | Requests/s | Non-2xx | Socket errors |",
    "|---|---:|---:|---:|---:|",
]
for name in ["stream", "short"]:
    n, rps, bad, sock = wrk(name)
    lines.append(f"| {name} | {n:,} | {rps:,.1f} | {bad} | {sock} |")
lines += [
    "",
    f"- Gateway resident memory: {base/1024:.1f} MiB after the {warmup} s warm-up, {peak/1024:.1f} MiB at most after it, {end/1024:.1f} MiB at the end:",
    f"  growth after warm-up {100*(peak-base)/base:.1f}% (peak), {100*(end-base)/base:.1f}% (end).",
    f"- Open file descriptors: {rows[0][2]} at the start, {max(r[2] for r in rows)} at most, {rows[-1][2]} at the end.",
    f"- Requests in flight on the pool's endpoints after the load stopped: {in_flight}.",
    f"- Client connections open after the load stopped: {open_connections} (`gateway_downstream_connections`); refused at",
    f"  `--max-connections`: {refused}; closed for want of a request header: {header_timeouts}.",
    f"- Failed requests (`inference_model_request_error_total`) while the load ran: {last_loaded[3]} at {last_loaded[0]} s,",
    f"  the last sample with both clients running. After the clients stopped: {errors} ({codes}), against 32 client",
    "  connections: wrk closes its connections when its duration ends, cutting the request each has in flight, and the",
    "  gateway counts those as `aborted` (the client went away) and releases their in-flight counts, as the line above shows.",
    "",
    "| Seconds | RSS (MiB) | File descriptors | Failed requests so far |",
    "|---:|---:|---:|---:|",
]
step = max(1, len(rows) // 30)
for t, r, f, e, _ in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
    lines.append(f"| {t} | {r/1024:.1f} | {f} | {e} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines[:20]))
PY
