#!/usr/bin/env bash
# bench-agent.sh — agent channel throughput (vs a raw socketpair copy) and the
# time from `nitropod run` to the app's first output line for a cached EIF
# under TCG. Needs `make build emu-kernel` (the Makefile target builds).
# BENCH_COUNT (default 5) repeats each throughput benchmark; FIRSTLINE_RUNS
# (default 5) is the number of enclave boots measured.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${BENCH_COUNT:-5}
runs=${FIRSTLINE_RUNS:-5}

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"

echo "== agent channel throughput over a unix socketpair (1 MiB per op, -count $count)"
out=$(go test -run '^$' -bench 'Socketpair$' -benchtime 2s -count "$count" ./enclave/agent/)
echo "$out" | grep '^Benchmark'
echo "$out" | awk '
	/^BenchmarkRawSocketpair/     { raw += $(NF-1); nr++ }
	/^BenchmarkChannelSocketpair/ { ch += $(NF-1); nc++ }
	END {
		if (nr == 0 || nc == 0) { print "no results"; exit 1 }
		printf "raw socketpair: %.0f MB/s   agent channel: %.0f MB/s   ratio: %.2f (target >= 0.70)\n", raw/nr, ch/nc, (ch/nc)/(raw/nr)
	}'

echo "== nitropod run to first output line, cached busybox EIF, TCG, 1 vCPU, 256 MiB ($runs runs)"
go test -run '^$' -bench 'FirstLine$' -benchtime "${runs}x" ./enclave/local/ | grep -E '^Benchmark|^ok|FAIL'
