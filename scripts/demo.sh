#!/usr/bin/env bash
# The local demo (`make demo`): five simulated vLLM pods on 127.0.0.2-6:8000 and the gateway on
# its embedded configuration (manifests/examples/local/), the seed's two requests, the curl
# commands to try; runs until Ctrl-C.
#
#   scripts/demo.sh             # the interactive demo
#   scripts/demo.sh --compare   # the seed's benchmark through port 8080 and port 8081 (DEFAULT),
#                               # fresh processes per route; prints the table, writes target/demo/
#
# Installs what it needs first: cmake (the gateway's build) and fonts-dejavu-core (the plots'
# font), then builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  echo "installing: fonts-dejavu-core" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null
fi
cargo build --release -p inference-gateway -p loadtest >&2
exec target/release/demo "$@"
