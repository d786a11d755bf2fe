#!/usr/bin/env bash
# bench-shim.sh — containerd-shim-nitro-v1 benchmarks against a private
# containerd (Debian's 1.6) in one run:
#   * resident memory of shim + launcher per running enclave container vs
#     containerd-shim-runc-v2 for a plain busybox container (target ≤ 2×);
#   * Create→Start latency on an EIF cache hit, excluding the VM boot
#     (`ctr run -d` wall time: Start returns before the enclave boots;
#     target ≤ 200 ms), next to runc's, and the shim's own Create RPC time.
# Needs root, containerd, runc, QEMU and the emulation blob set
# (make deps emu-kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "bench-shim: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "bench-shim: go test -run '^\$' -bench BenchmarkShim -benchtime 1x ./shim/"
go test -count=1 -run '^$' -bench BenchmarkShim -benchtime 1x ./shim/ | grep -E '^(Benchmark|ok|FAIL|PASS|cpu)'
