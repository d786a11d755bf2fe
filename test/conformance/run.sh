#!/usr/bin/env bash
# Runs TestConformance (make conformance). critest gives every Pod a
# systemd slice as its cgroup parent when the runtime does not report its
# cgroup driver (containerd 1.6 does not), and the nitro shim runs the Pod
# sandbox with runc's systemd driver for such a parent. On a machine whose
# PID 1 is not systemd the suite therefore runs next to a private systemd
# (hack/systemd-sandbox.sh), for both handlers alike.
#
# Usage: test/conformance/run.sh [go test flags...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=$(mktemp -d /tmp/conformance.XXXXXX)
trap 'rm -rf "$bin"' EXIT
go test -tags conformance -c -o "$bin/conformance.test" ./test/conformance
run=(sh -c "cd '$root/test/conformance' && exec '$bin/conformance.test' -test.v -test.count=1 -test.run TestConformance $*")
if [[ -d /run/systemd/system ]]; then
  exec "${run[@]}"
fi
export NITROPOD_SYSTEMD_SANDBOX=/tmp/nitropod-conformance-systemd
hack/systemd-sandbox.sh start
rc=0
hack/systemd-sandbox.sh run env PATH="$PATH" CONFORMANCE_HANDLERS="${CONFORMANCE_HANDLERS:-}" \
  CONFORMANCE_FOCUS="${CONFORMANCE_FOCUS:-}" CONFORMANCE_SKIP="${CONFORMANCE_SKIP:-}" \
  NITROPOD_OUTPUT="${NITROPOD_OUTPUT:-}" "${run[@]}" || rc=$?
hack/systemd-sandbox.sh stop
exit $rc
