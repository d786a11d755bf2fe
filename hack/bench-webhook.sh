#!/usr/bin/env bash
# bench-webhook.sh — latency, throughput and RSS of nitropod-webhook over TLS
# on loopback at a fixed offered load, next to a null handler on the same TLS
# stack (webhook.Run) in the same run; plus the handler's CPU cost per review.
#
# Knobs (environment): NITROPOD_BENCH_RATE (req/s, default 500),
# NITROPOD_BENCH_ROUNDS (default 10), NITROPOD_BENCH_ROUND_SECONDS (default 1).
# Results are written up by hand in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "bench-webhook: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
go test -count=1 -run '^$' -bench '^BenchmarkServeHTTP$' -benchmem -benchtime 5000x ./webhook
go test -count=1 -run '^$' -bench '^BenchmarkWebhookLoad$' -benchtime 1x -timeout 10m ./webhook
