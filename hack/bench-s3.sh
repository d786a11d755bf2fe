#!/usr/bin/env bash
# S3 EIF download throughput: nitropod's downloader (eif/s3 BenchmarkDownload:
# ranged GET + streaming CRC into a file), `nitropod eif pull` (download plus
# full verification: CRC, SHA-384 measurements) and curl, all fetching the
# same 512 MiB EIF from the same versitygw on loopback in the same run.
# Env: BENCH_MIB (default 512), BENCH_RUNS (curl/pull repetitions, default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${NITROPOD_OUTPUT:-$ROOT/_output}
MIB=${BENCH_MIB:-512}
RUNS=${BENCH_RUNS:-3}
ACCESS=nitropodtest   # eif/s3/s3test credentials
SECRET=nitropodtestsecret

find_bin() {
	for d in "$OUT/tools/bin" "$OUT/bin"; do
		[[ -x "$d/$1" ]] && { echo "$d/$1"; return; }
	done
	command -v "$1" || true
}
VGW=$(find_bin versitygw)
[[ -n "$VGW" ]] || { echo "bench-s3: versitygw not found: run make tools" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench-s3: curl not found" >&2; exit 1; }

WORK=$(mktemp -d)
VGW_PID=
cleanup() {
	[[ -n "$VGW_PID" ]] && kill "$VGW_PID" 2>/dev/null && wait "$VGW_PID" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

NITROPOD=$(find_bin nitropod)
if [[ -z "$NITROPOD" ]]; then
	go build -o "$WORK/nitropod" ./cmd/nitropod
	NITROPOD=$WORK/nitropod
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
ENDPOINT=http://127.0.0.1:$PORT
mkdir -p "$WORK/data"
"$VGW" --access $ACCESS --secret $SECRET --port 127.0.0.1:$PORT --quiet posix "$WORK/data" >"$WORK/vgw.log" 2>&1 &
VGW_PID=$!
for _ in $(seq 1 100); do
	curl -s -o /dev/null "$ENDPOINT" && break
	sleep 0.1
done

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); EIF ${MIB} MiB; server $VGW"
echo "== nitropod downloader (go test -bench BenchmarkDownload, creates and pushes s3://bench/eif.eif)"
NITROPOD_S3_BENCH_ENDPOINT=$ENDPOINT NITROPOD_S3_BENCH_MIB=$MIB \
	go test -run '^$' -bench '^BenchmarkDownload$' -benchtime "${RUNS}x" -count 1 ./eif/s3/ | grep -E '^Benchmark|^cpu'

URL=$ENDPOINT/bench/eif.eif
SIZE=$(curl -sS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS:$SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -I "$URL" | awk 'tolower($1)=="content-length:" {print $2+0}')
echo "== curl (same object, same server), $RUNS runs"
for i in $(seq 1 "$RUNS"); do
	curl -sS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS:$SECRET" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
		-o "$WORK/curl.eif" -w "curl run $i: %{size_download} bytes in %{time_total} s = %{speed_download} B/s\n" "$URL" |
		awk '{printf "%s (%.1f MB/s)\n", $0, $(NF-1)/1e6}'
	rm -f "$WORK/curl.eif"
done

echo "== nitropod eif pull (download + CRC + PCR measurement), $RUNS runs"
for i in $(seq 1 "$RUNS"); do
	start=$(date +%s.%N)
	AWS_ACCESS_KEY_ID=$ACCESS AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
		"$NITROPOD" eif pull "s3://bench/eif.eif" "$WORK/pull.eif" --endpoint "$ENDPOINT" >/dev/null
	end=$(date +%s.%N)
	awk -v s="$start" -v e="$end" -v n="$SIZE" -v i="$i" 'BEGIN {printf "pull run %d: %d bytes in %.3f s = %.1f MB/s\n", i, n, e-s, n/(e-s)/1e6}'
	rm -f "$WORK/pull.eif"
done
