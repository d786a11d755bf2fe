#!/usr/bin/env bash
# make demo: from a fresh machine to nginx's welcome page. `make demo` has
# already installed the Debian packages and built the tools, the emulation
# kernel and nitropod; this starts the local one-node cluster (test/cluster),
# installs nitropod from deploy/, applies the Anjuna document's nginx Pod
# verbatim, waits until it is Ready in an emulated enclave and forwards
# 127.0.0.1:${DEMO_PORT:-8080} to it. Ctrl-C stops everything.
#
#   hack/demo.sh [-f POD.yaml] [-port N]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${NITROPOD_OUTPUT:-$PWD/_output}
export NITROPOD_OUTPUT=$OUT
export PATH=$OUT/bin:$OUT/tools/bin:$PATH
if [[ $(id -u) -ne 0 ]]; then
  echo "demo: needs root (network namespace, containerd, kubelet); run: sudo make demo" >&2
  exit 1
fi
go build -o "$OUT/demo" ./test/demo
exec "$OUT/demo" -port "${DEMO_PORT:-8080}" "$@"
