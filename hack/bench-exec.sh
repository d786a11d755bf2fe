#!/usr/bin/env bash
# bench-exec.sh — `ctr task exec … true` round trip into a debug enclave
# container vs a runc container, in one run against a private containerd
# (Debian's 1.6), with the time inside the agent channel (TCG) separated
# from the host side. Needs root, containerd, runc, QEMU and the emulation
# blob set (make deps emu-kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "bench-exec: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench-exec: go test -run '^\$' -bench BenchmarkExec -benchtime 1x ./shim/"
go test -count=1 -run '^$' -bench BenchmarkExec -benchtime 1x ./shim/ | grep -E '^(Benchmark|ok|FAIL|PASS|bench-exec|  )'
