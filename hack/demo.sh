#!/usr/bin/env bash
# make demo: from a fresh machine to a local cluster where you try your own
# workloads in emulated Nitro Enclaves. `make demo` has already installed the
# Debian packages and built the tools, the emulation kernel and nitropod;
# this runs test/demo: the e2e tier's complete one-node cluster (with
# kube-controller-manager, and nitropod's webhook and device plugin installed
# from the chart), applies a YAML file (default: the Anjuna document's nginx
# Pod; any number of documents), shows each enclave Pod's progress until all
# are Ready, forwards 127.0.0.1:${DEMO_PORT:-8080} to a Pod or Service port
# and prints the kubeconfig (_output/demo/kubeconfig) for other shells.
# Ctrl-C stops everything.
#
#   hack/demo.sh [-f FILE.yaml] [-forward service/NAME:PORT|pod/NAME:PORT] [-port N]
#   make demo FILE=FILE.yaml
set -euo pipefail
# -f FILE is relative to the caller's directory.
args=()
while (($#)); do
  case $1 in
  -f | --f) args+=("$1" "$(realpath -m -- "${2:?-f needs a file}")"); shift 2 ;;
  -f=* | --f=*) args+=("-f" "$(realpath -m -- "${1#*=}")"); shift ;;
  *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]}"
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
