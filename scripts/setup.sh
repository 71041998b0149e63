#!/usr/bin/env bash
# Installs the system packages the build and the tests need, if they are missing.
#   cmake: pingora-core builds zlib-ng with it.
#   g++: zmq-sys compiles libzmq (KV-cache events) from source.
# Extra packages can be named as arguments (the benchmark scripts ask for nginx-light and wrk).
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
for pkg in "$@"; do
  case "$pkg" in
    nginx-light) command -v nginx >/dev/null 2>&1 || need+=(nginx-light) ;;
    *) command -v "$pkg" >/dev/null 2>&1 || need+=("$pkg") ;;
  esac
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
