#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the releases pinned in tools/k8s/go.mod (only the Go
# module proxy is contacted; no binary is downloaded) into target/k8s/<pin>/bin, and prints that
# directory. A second run with the same pins reuses the binaries; after a change of pins Go's build
# cache makes the rebuild cheap. The tests find the binaries through IGW_K8S_BIN (set by `make test`)
# or by running this script themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/tools/k8s"
script="$root/scripts/build-k8s.sh"

if ! command -v go >/dev/null 2>&1; then
  echo "build-k8s: Go is not installed (https://go.dev/doc/install; Go 1.26 or newer)" >&2
  exit 1
fi

cd "$tools"
kubernetes="$(go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd="$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
# The pin: both versions plus a digest of everything that decides what is built.
digest="$(cat go.mod go.sum cmd/etcd/main.go "$script" | sha256sum | cut -c1-12)"
out="$root/target/k8s/kubernetes-$kubernetes-etcd-$etcd-$digest"
if [ -x "$out/bin/kube-apiserver" ] && [ -x "$out/bin/kubectl" ] && [ -x "$out/bin/etcd" ]; then
  echo "$out/bin"
  exit 0
fi

# The version the binaries report (`kubectl version`, the API server's /version), as a release
# build stamps it.
minor="${kubernetes#v1.}"; minor="${minor%%.*}"
flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  flags+=" -X $pkg.gitVersion=$kubernetes -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  flags+=" -X $pkg.gitTreeState=clean"
done
echo "build-k8s: building kube-apiserver, kubectl ($kubernetes) and etcd ($etcd) into $out/bin" >&2
start=$(date +%s)
mkdir -p "$out/bin.tmp"
go build -trimpath -ldflags "-s -w$flags" -o "$out/bin.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./cmd/etcd
rm -rf "$out/bin"
mv "$out/bin.tmp" "$out/bin"
echo "build-k8s: built in $(($(date +%s) - start)) s" >&2
echo "$out/bin"
