#!/usr/bin/env bash
# Builds static-epp and fake-envoy (tools/epp: the Gateway API Inference Extension's ext_proc server
# over a fixed endpoint list, and a fake Envoy ext_proc client) from the modules pinned in
# tools/epp/go.mod (only the Go module proxy is contacted; no binary is downloaded) into
# target/epp-tools/<gie version>-<digest>/bin, and prints that directory as its last line. A second
# run with the same pins and sources reuses the binaries. The interop tests find them through
# EPP_TOOLS_BIN or by running this script themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/tools/epp"
script="$root/scripts/build-epp-tools.sh"

if ! command -v go >/dev/null 2>&1; then
  echo "build-epp-tools: Go is not installed (https://go.dev/doc/install; Go 1.26 or newer)" >&2
  exit 1
fi

cd "$tools"
gie="$(go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api-inference-extension)"
# The pin: GIE's version plus a digest of everything that decides what is built (file names
# included, so a renamed or added source changes it).
digest="$( { cat go.mod go.sum "$script"; find . -name '*.go' -print | LC_ALL=C sort | while read -r f; do
  echo "$f"; cat "$f"; done; } | sha256sum | cut -c1-12)"
out="$root/target/epp-tools/$gie-$digest"
if [ -x "$out/bin/static-epp" ] && [ -x "$out/bin/fake-envoy" ]; then
  echo "$out/bin"
  exit 0
fi

echo "build-epp-tools: building static-epp and fake-envoy (gateway-api-inference-extension $gie) into $out/bin" >&2
start=$(date +%s)
rm -rf "$out/bin.tmp"
mkdir -p "$out/bin.tmp"
go build -trimpath -ldflags "-s -w" -o "$out/bin.tmp/" ./cmd/static-epp ./cmd/fake-envoy
rm -rf "$out/bin"
mv "$out/bin.tmp" "$out/bin"
echo "build-epp-tools: built in $(($(date +%s) - start)) s" >&2
echo "$out/bin"
