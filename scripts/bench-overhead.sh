#!/usr/bin/env bash
# Proxy overhead: requests/s and added latency through the gateway's plain route (8080-style) and
# inference route (8081-style), against going direct to the backend and against nginx proxying
# the same backend. Everything runs in one go on this machine, interleaved round by round, and the
# result is written to docs/benchmarks/overhead.md.
#
#   scripts/bench-overhead.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Backend: nginx answering every request with a fixed 300-byte JSON completion from five loopback
# addresses (127.0.0.2-6:18000), like five pods. Client: wrk, one thread, a 1 KiB OpenAI
# completions body. Proxies get one worker each (gateway --threads 1, nginx worker_processes 1),
# so the comparison is per core.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-10}
CONNECTIONS=${3:-32}
BACKEND_PORT=18000
NGINX_PORT=18090
GW_HTTP=18080
GW_LLM=18081
BARE=18085
ADMIN=127.0.0.1:18099
OUT=docs/benchmarks/overhead.md

./scripts/setup.sh nginx-light wrk
cargo build --release -p inference-gateway --bin inference-gateway --example bare_proxy >&2

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
bench_start

upstream=""
for i in 2 3 4 5 6; do
  upstream+="    server 127.0.0.$i:$BACKEND_PORT;"$'\n'
done
bench_backend_conf "$work/backend" "$BACKEND_PORT"
mkdir -p "$work/proxy"
cat > "$work/proxy/nginx.conf" <<EOF
worker_processes 1;
pid $work/proxy/nginx.pid;
error_log $work/proxy/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  upstream pods {
$upstream
    keepalive 256;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -c "$work/backend/nginx.conf" -g 'daemon off;' & pids+=($!)
nginx -c "$work/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)

mkdir -p "$work/gw"
{
  sed -e "s/port: 8080/port: $GW_HTTP/" -e "s/port: 8081/port: $GW_LLM/" manifests/examples/local/inference-gateway.yaml
  echo "---"
  sed -e "s/targetPortNumber: 8000/targetPortNumber: $BACKEND_PORT/" manifests/examples/local/inference-pool.yaml
  echo "---"
  sed -e "s/targetPort: 8000/targetPort: $BACKEND_PORT/" manifests/examples/local/vllm-service.yaml
  echo "---"
  cat manifests/examples/local/pods.yaml
} > "$work/gw/config.yaml"
RUST_LOG=warn ./target/release/inference-gateway --config "$work/gw/config.yaml" --threads 1 \
  --admin-addr "$ADMIN" --listen-host 127.0.0.1 >"$work/gw.log" 2>&1 & pids+=($!)
RUST_LOG=warn ./target/release/examples/bare_proxy "127.0.0.1:$BARE" 127.0.0.2:$BACKEND_PORT 127.0.0.3:$BACKEND_PORT \
  127.0.0.4:$BACKEND_PORT 127.0.0.5:$BACKEND_PORT 127.0.0.6:$BACKEND_PORT >"$work/bare.log" 2>&1 & pids+=($!)

wait_port() {
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://$1/"; then return 0; fi
    sleep 0.1
  done
  echo "nothing answers on $1" >&2; exit 1
}
wait_port "127.0.0.2:$BACKEND_PORT"
wait_port "127.0.0.1:$NGINX_PORT"
wait_port "127.0.0.1:$GW_HTTP"
wait_port "127.0.0.1:$GW_LLM"
wait_port "127.0.0.1:$BARE"

# Each target must answer the benchmark request with 200 before it is measured.
for target in "127.0.0.2:$BACKEND_PORT" "127.0.0.1:$NGINX_PORT" "127.0.0.1:$BARE" "127.0.0.1:$GW_HTTP" "127.0.0.1:$GW_LLM"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$body_file" "http://$target/v1/completions")
  [ "$code" = 200 ] || { echo "$target answered $code" >&2; exit 1; }
done

names=(direct nginx pingora-bare gateway-plain gateway-inference)
targets=("127.0.0.2:$BACKEND_PORT" "127.0.0.1:$NGINX_PORT" "127.0.0.1:$BARE" "127.0.0.1:$GW_HTTP" "127.0.0.1:$GW_LLM")
results="$work/results.tsv"
: > "$results"
for i in "${!targets[@]}"; do # warm-up: connection pools, caches
  wrk -t1 -c"$CONNECTIONS" -d2s -s "$work/post.lua" "http://${targets[$i]}/v1/completions" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!targets[@]}"; do
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$work/post.lua" "http://${targets[$i]}/v1/completions")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    echo -e "${names[$i]}\t$round\t$rps\t$p50\t$p99\t$errors" | tee -a "$results" >&2
  done
done


# Unloaded latency: one connection, so no proxy is anywhere near saturation; what a request pays for
# going through the proxy when the machine is not the bottleneck.
idle_results="$work/idle.tsv"
: > "$idle_results"
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!targets[@]}"; do
    out=$(wrk -t1 -c1 -d5s --latency -s "$work/post.lua" "http://${targets[$i]}/v1/completions")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    echo -e "${names[$i]}\t$round\t$p50\t$p99" | tee -a "$idle_results" >&2
  done
done

# Instructions per request under callgrind: a count of user-space instructions, repeatable whatever
# else the machine is doing (kernel time is not included). Each proxy runs alone under valgrind;
# counters are zeroed after a warm-up and dumped after a fixed load. The gateway's metrics scraper
# is slowed to once an hour here so its background work is not charged to requests.
kill -INT "${pids[@]:1}" 2>/dev/null || true   # the proxies (SIGINT: Pingora exits at once); the backend stays
sleep 1
cg_results="$work/callgrind.tsv"
: > "$cg_results"
callgrind_run() { # name url command...
  local name=$1 url=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$name" "$@" >"$work/cg.$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    if curl -s -o /dev/null -H 'Content-Type: application/json' --data-binary @"$body_file" "$url"; then break; fi
    sleep 0.1
  done
  wrk -t1 -c8 -d3s -s "$work/post.lua" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  local requests
  requests=$(wrk -t1 -c8 -d10s -s "$work/post.lua" "$url" | awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null
  local total
  total=$(awk '/^totals:/ {print $2}' "$work/cg.$name.1")
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo -e "$name\t$requests\t$total" | tee -a "$cg_results" >&2
}
callgrind_run nginx "http://127.0.0.1:$NGINX_PORT/v1/completions" \
  nginx -c "$work/proxy/nginx.conf" -g 'daemon off; master_process off;'
callgrind_run pingora-bare "http://127.0.0.1:$BARE/v1/completions" \
  ./target/release/examples/bare_proxy "127.0.0.1:$BARE" 127.0.0.2:$BACKEND_PORT 127.0.0.3:$BACKEND_PORT \
  127.0.0.4:$BACKEND_PORT 127.0.0.5:$BACKEND_PORT 127.0.0.6:$BACKEND_PORT
# RUST_LOG=warn as in the timed runs: no access log, like nginx's `access_log off`.
export RUST_LOG=warn
callgrind_run gateway-plain "http://127.0.0.1:$GW_HTTP/v1/completions" \
  ./target/release/inference-gateway --config "$work/gw/config.yaml" --threads 1 --admin-addr "$ADMIN" \
  --listen-host 127.0.0.1 --scrape-interval 1h
callgrind_run gateway-inference "http://127.0.0.1:$GW_LLM/v1/completions" \
  ./target/release/inference-gateway --config "$work/gw/config.yaml" --threads 1 --admin-addr "$ADMIN" \
  --listen-host 127.0.0.1 --scrape-interval 1h

python3 - "$results" "$OUT" "$cg_results" "$idle_results" "$ROUNDS" "$SECONDS_PER_RUN" "$CONNECTIONS" "$work" <<'PY'
import os, platform, statistics, subprocess, sys
results, out, cg_results, idle_results, rounds, seconds, conns, work = sys.argv[1:9]
sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))
import callgrind_breakdown
rows = {}
errors = {}
for line in open(results):
    name, rnd, rps, p50, p99, err = (line.rstrip("\n").split("\t") + [""])[:6]
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99)))
    if err.strip():
        errors.setdefault(name, []).append(err.strip())
med = {n: tuple(statistics.median(v[i] for v in vals) for i in range(3)) for n, vals in rows.items()}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
wrk_version = (wrk.stdout + wrk.stderr).splitlines()[0]
nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
direct, ngx = med["direct"], med["nginx"]
labels = {"direct": "direct to the backend", "nginx": "nginx proxy (1 worker)",
          "pingora-bare": "bare Pingora proxy (no gateway logic, 1 thread)",
          "gateway-plain": "gateway, plain route (Service, round-robin)",
          "gateway-inference": "gateway, inference route (InferencePool, body parsed)"}
lines = [
    "# Proxy overhead",
    "",
    "Produced by `scripts/bench-overhead.sh " + " ".join([rounds, seconds, conns]) + "` (`make bench-overhead`).",
    "",
    f"- Machine: {cores} cores ({cpu}), shared with the client and the backend; numbers are medians of {rounds} interleaved rounds of {seconds} s.",
    f"- Client: {wrk_version}, 1 thread, {conns} connections, keep-alive, a 1 KiB OpenAI completions body (`POST /v1/completions`).",
    f"- Backend: {nginx}, 1 worker, a fixed 300-byte JSON completion from five loopback addresses (127.0.0.2-6).",
    "- Proxies: nginx with `proxy_pass` to an upstream of the five addresses (keepalive 256), 1 worker, `access_log off`; the gateway with `--threads 1`, `RUST_LOG=warn` (no access log),",
    "  the local example configuration (plain route: Service round-robin; inference route: InferencePool with the seed's InferenceModel, strategy DEFAULT).",
    "",
    "| Target | Requests/s | p50 (ms) | p99 (ms) | Added p50 (ms) | Added p99 (ms) | Requests/s vs nginx |",
    "|---|---:|---:|---:|---:|---:|---:|",
]
for name in ["direct", "nginx", "pingora-bare", "gateway-plain", "gateway-inference"]:
    rps, p50, p99 = med[name]
    added50 = "" if name == "direct" else f"{p50 - direct[1]:.3f}"
    added99 = "" if name == "direct" else f"{p99 - direct[2]:.3f}"
    ratio = "" if name == "direct" else f"{rps / ngx[0]:.2f}"
    lines.append(f"| {labels[name]} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {added50} | {added99} | {ratio} |")
lines.append("")
if errors:
    lines.append("Errors reported by wrk: " + "; ".join(f"{k}: {' / '.join(v)}" for k, v in errors.items()))
else:
    lines.append("wrk reported no socket errors and no non-2xx responses in any run.")
lines.append("")
lines.append("## Latency on one connection")
lines.append("")
lines.append(f"`wrk -t1 -c1 -d5s`, medians of {rounds} rounds: no proxy is near saturation, so this is what a request pays for the extra hop.")
lines.append("")
lines.append("| Target | p50 (ms) | p99 (ms) | Added p50 (ms) | Added p99 (ms) |")
lines.append("|---|---:|---:|---:|---:|")
idle = {}
for line in open(idle_results):
    name, rnd, p50, p99 = line.split()
    idle.setdefault(name, []).append((float(p50), float(p99)))
idle = {n: (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)) for n, vals in idle.items()}
for name in ["direct", "nginx", "pingora-bare", "gateway-plain", "gateway-inference"]:
    p50, p99 = idle[name]
    a50 = "" if name == "direct" else f"{p50 - idle['direct'][0]:.3f}"
    a99 = "" if name == "direct" else f"{p99 - idle['direct'][1]:.3f}"
    lines.append(f"| {labels[name]} | {p50:.3f} | {p99:.3f} | {a50} | {a99} |")
lines.append("")
lines.append("## Instructions per request (callgrind)")
lines.append("")
lines.append("User-space instructions per proxied request, counted by `valgrind --tool=callgrind` on each proxy running alone")
lines.append("(counters zeroed after a 3 s warm-up, then 10 s of `wrk -t1 -c8`; the gateway's scraper slowed to hourly).")
lines.append("Repeatable whatever else the machine does; kernel time (syscalls) is not counted.")
lines.append("")
lines.append("| Proxy | Requests counted | Instructions per request | vs nginx |")
lines.append("|---|---:|---:|---:|")
cg = {}
for line in open(cg_results):
    name, requests, total = line.split()
    cg[name] = int(total) / int(requests)
for name in ["nginx", "pingora-bare", "gateway-plain", "gateway-inference"]:
    if name in cg:
        requests = next(l.split()[1] for l in open(cg_results) if l.startswith(name + "\t"))
        lines.append(f"| {labels[name]} | {int(requests):,} | {cg[name]:,.0f} | {cg[name] / cg['nginx']:.2f} |")
if "pingora-bare" in cg and "gateway-plain" in cg:
    own = cg["gateway-plain"] - cg["pingora-bare"]
    body = cg["gateway-inference"] - cg["gateway-plain"]
    lines.append("")
    lines.append(
        f"Of the plain route's {cg['gateway-plain']:,.0f} instructions per request, {cg['pingora-bare']:,.0f} are Pingora's own "
        f"HTTP/1 proxy path (the bare proxy) and {own:,.0f} ({100 * own / cg['gateway-plain']:.0f}%) the gateway's routing, "
        f"metrics and response bookkeeping (status, sizes, token usage). The inference route adds {body:,.0f} for reading, parsing and forwarding the body "
        f"and asking the strategy."
        + (" Most of the distance to nginx is Pingora's own per-request cost, not the gateway's logic."
           if cg["pingora-bare"] > 2 * cg["nginx"] and own < 0.25 * cg["gateway-plain"] else "")
    )
profiles = [n for n in ["nginx", "pingora-bare", "gateway-plain", "gateway-inference"]
            if n in cg and os.path.exists(f"{work}/cg.{n}.1")]
if "pingora-bare" in profiles:
    requests_of = {l.split()[0]: int(l.split()[1]) for l in open(cg_results)}
    split = {n: dict(callgrind_breakdown.breakdown(f"{work}/cg.{n}.1", requests_of[n])) for n in profiles}
    lines.append("")
    lines.append("### Where the instructions go")
    lines.append("")
    lines.append("Exclusive instructions per request by where the code lives (`scripts/callgrind_breakdown.py` on the same profiles;")
    lines.append("nginx is C, so its cost falls under the allocator, copies and everything else).")
    lines.append("")
    lines.append("| Code | " + " | ".join(labels[n] for n in profiles) + " |")
    lines.append("|---|" + "---:|" * len(profiles))
    for group in split["pingora-bare"]:
        lines.append(f"| {group} | " + " | ".join(f"{split[n][group]:,.0f}" for n in profiles) + " |")
    lines.append("| total | " + " | ".join(f"{sum(split[n].values()):,.0f}" for n in profiles) + " |")
    copies = callgrind_breakdown.GROUPS[0][1]
    top = callgrind_breakdown.top_callers(f"{work}/cg.pingora-bare.1", copies, 1)
    if top:
        caller, spent = top[0]
        lines.append("")
        lines.append(
            f"In the bare Pingora proxy, {spent / requests_of['pingora-bare']:,.0f} of the "
            f"{split['pingora-bare'][callgrind_breakdown.GROUPS[0][0]]:,.0f} instructions per request spent copying memory "
            f"are called from `{caller}`."
        )
lines.append("")
lines.append("Every round, per target:")
lines.append("")
lines.append("| Target | Round | Requests/s | p50 (ms) | p99 (ms) |")
lines.append("|---|---:|---:|---:|---:|")
for line in open(results):
    name, rnd, rps, p50, p99 = line.split("\t")[:5]
    lines.append(f"| {name} | {rnd} | {float(rps):,.0f} | {p50} | {p99} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines[:16]))
PY
