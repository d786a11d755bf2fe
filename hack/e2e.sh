#!/usr/bin/env bash
# End-to-end tier (make e2e, part of make test): starts a real one-node
# cluster (test/cluster) and runs the Anjuna document's Pods in emulated
# enclaves (test/e2e, build tag e2e) on a node that enforces licences (a
# key made per run; `nitropod license` issues the Pods' licences). Needs
# root, `make deps tools emu-kernel build`; the pinned tools and the blob
# set are checked (and built if missing) first, which takes seconds when
# they are up to date.
#
# Environment: E2E_RUN (go test -run regexp), E2E_TIMEOUT (default 30m).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${NITROPOD_OUTPUT:-$PWD/_output}
export NITROPOD_OUTPUT=$OUT
export PATH=$OUT/bin:$OUT/tools/bin:$PATH

hack/build-tools.sh "$OUT/tools/bin" >/dev/null
[[ -f $OUT/blobs/emu/bzImage ]] || hack/emu-kernel.sh "$OUT/blobs/emu"
# Always build (as make build does): go's cache makes it quick when nothing
# changed, and the cluster must never run binaries older than the sources.
mkdir -p "$OUT/bin"
CGO_ENABLED=0 go build -trimpath -o "$OUT/bin/" ./cmd/...

start=$SECONDS
set +e
go test -tags e2e -count=1 -v -timeout "${E2E_TIMEOUT:-30m}" -run "${E2E_RUN:-.}" ./test/e2e/ 2>&1 |
  tee "$OUT/e2e.log" | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|BENCH|harness_test|_test.go:'
rc=${PIPESTATUS[0]}
set -e
echo "e2e: finished in $((SECONDS - start))s (full log: $OUT/e2e.log)"
grep -h 'BENCH' "$OUT/e2e.log" | sed 's/^ *//' || true
# go test passes when -run matches nothing (or every test skips, e.g.
# without root): that is not a passing end-to-end tier.
ran=$(grep -cE '^--- PASS: Test' "$OUT/e2e.log" || true)
if [[ $rc -eq 0 && $ran -eq 0 ]]; then
  echo "e2e: no test passed (E2E_RUN=${E2E_RUN:-.} matched none, or all skipped); failing" >&2
  exit 1
fi
exit "$rc"
