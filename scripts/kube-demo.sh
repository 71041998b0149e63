#!/usr/bin/env bash
# The seed, as written, through kubectl (`make kube-demo`): a real etcd and kube-apiserver built
# from tools/k8s, the CRDs, manifests/deploy/ and manifests/examples/seed/ applied with
# `kubectl apply -f`, five Ready pods for five simulated vLLM servers (127.0.0.2-6:8000), the
# gateway with --source kube as its ServiceAccount, the seed's two requests through ports 8080 and
# 8081, and the statuses the gateway wrote. Runs until Ctrl-C; arguments go to the demo binary:
#
#   scripts/kube-demo.sh                    # stays up; the KUBECONFIG it prints works with kubectl
#   scripts/kube-demo.sh --exit             # stops after the statuses (what CI runs)
#   scripts/kube-demo.sh --time-scale 20    # simulators 20x faster than the A10 profile
#
# Installs what it needs first: cmake (the gateway's build); Go 1.26 or newer must be installed
# (scripts/build-k8s.sh says so when it is not).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
IGW_K8S_BIN="$(./scripts/build-k8s.sh)"
export IGW_K8S_BIN
cargo build --release -p inference-gateway --bin inference-gateway -p testkit --bin kube-demo >&2
exec target/release/kube-demo "$@"
