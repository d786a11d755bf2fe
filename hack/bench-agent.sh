#!/usr/bin/env bash
# bench-agent.sh — agent channel throughput (vs a raw socketpair copy) and the
# time from `nitropod run` to the app's first output line for a cached EIF
# under TCG. Needs `make build emu-kernel` (the Makefile target builds).
# BENCH_COUNT (default 7) is the number of interleaved throughput rounds
# (the medians are compared); FIRSTLINE_RUNS
# (default 5) is the number of enclave boots measured.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${BENCH_COUNT:-7}
runs=${FIRSTLINE_RUNS:-5}

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"

echo "== agent channel throughput over a unix socketpair (1 MiB per op, $count interleaved rounds)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/agent.test" ./enclave/agent/
out=""
for _ in $(seq "$count"); do
	# Alternate the two so that load from elsewhere hits both alike.
	out+=$("$tmp/agent.test" -test.run '^$' -test.bench 'RawSocketpair$' -test.benchtime 2s | grep '^Benchmark')$'\n'
	out+=$("$tmp/agent.test" -test.run '^$' -test.bench 'ChannelSocketpair$' -test.benchtime 2s | grep '^Benchmark')$'\n'
done
echo -n "$out"
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
raw=$(echo "$out" | awk '/^BenchmarkRawSocketpair/ { print $(NF-1) }' | median)
ch=$(echo "$out" | awk '/^BenchmarkChannelSocketpair/ { print $(NF-1) }' | median)
awk -v raw="$raw" -v ch="$ch" 'BEGIN { printf "median raw socketpair: %.0f MB/s   median agent channel: %.0f MB/s   ratio: %.2f (target >= 0.70)\n", raw, ch, ch / raw }'

echo "== nitropod run to first output line, cached busybox EIF, TCG, 1 vCPU, 256 MiB ($runs runs)"
go test -run '^$' -bench 'FirstLine' -benchtime "${runs}x" ./enclave/local/ | grep -E '^Benchmark|^ok|FAIL'
