#!/usr/bin/env bash
# bench-net.sh — the enclave network's host side alone (enclave/podnet): the
# launcher's gVisor stack with a non-VM enclave end (a real TUN device in a
# network namespace, joined over the agent channel on a socketpair), against
# a direct socket copy in the same run. Needs root (network namespaces).
# BENCH_COUNT (default 5) is the number of interleaved throughput rounds
# (medians are compared).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${BENCH_COUNT:-5}

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/podnet.test" ./enclave/podnet/

echo "== throughput, 1 MiB per op, $count interleaved rounds"
out=""
for _ in $(seq "$count"); do
	for b in DirectCopy EgressCopy IngressCopy; do
		out+=$("$tmp/podnet.test" -test.run '^$' -test.bench "^Benchmark$b\$" -test.benchtime 2s | grep '^Benchmark')$'\n'
	done
done
echo -n "$out"
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
direct=$(echo "$out" | awk '/^BenchmarkDirectCopy/ { print $(NF-1) }' | median)
egress=$(echo "$out" | awk '/^BenchmarkEgressCopy/ { print $(NF-1) }' | median)
ingress=$(echo "$out" | awk '/^BenchmarkIngressCopy/ { print $(NF-1) }' | median)
awk -v d="$direct" -v e="$egress" -v i="$ingress" 'BEGIN { printf "median direct: %.0f MB/s   egress: %.0f MB/s (%.2fx)   ingress: %.0f MB/s (%.2fx)   (target >= 0.50x)\n", d, e, e / d, i, i / d }'

echo "== egress connect latency through the stack (one at a time)"
"$tmp/podnet.test" -test.run '^$' -test.bench '^BenchmarkConnect$' -test.benchtime 3000x | grep '^Benchmark'
echo "   (target p99 <= 2 ms)"

echo "== host side's RSS in its own process, 100 connections open (target <= 32 MiB)"
"$tmp/podnet.test" -test.run '^$' -test.bench '^BenchmarkHostRSS$' | grep '^Benchmark'
