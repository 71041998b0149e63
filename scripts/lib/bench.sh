# Shared by the proxy benchmarks (bench-overhead.sh, bench-epp.sh); sourced, not run.
#
# bench_start: a scratch directory in $work, removed (and every pid in $pids stopped with SIGINT)
# when the script exits; the benchmark request in $body_file (a 1 KiB OpenAI completions body) and
# the wrk script that posts it in $work/post.lua; the fixed backend reply in $reply.
# bench_backend_conf DIR PORT: an nginx configuration in DIR/nginx.conf answering $reply on
# 127.0.0.2-6:PORT, like five pods.
# to_ms VALUE: a wrk latency (512.00us, 1.20ms, 1.01s) in milliseconds.

bench_start() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
  body_file="$work/body.json"
  python3 - "$body_file" <<'PY'
import json, sys
prompt = ("Summarise the following travel notes for a weekend in Hangzhou. " * 20)[:900]
json.dump({"model": "/model/qwen", "prompt": prompt, "max_tokens": 128, "temperature": 0}, open(sys.argv[1], "w"))
PY
  cat > "$work/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$body_file", "r")
wrk.body = f:read("*a")
f:close()
EOF
  reply='{"id":"cmpl-bench","object":"text_completion","created":1,"model":"/model/qwen","choices":[{"index":0,"text":" West Lake at dawn, Longjing tea in the hills, and an evening on the Grand Canal.","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":210,"total_tokens":338,"completion_tokens":128}}'
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

bench_backend_conf() { # DIR PORT
  local dir=$1 port=$2 listen="" i
  for i in 2 3 4 5 6; do
    listen+="    listen 127.0.0.$i:$port reuseport;"$'\n'
  done
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  server {
$listen
    default_type application/json;
    location / { return 200 '$reply'; }
  }
}
EOF
}

to_ms() {
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
