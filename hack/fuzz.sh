#!/usr/bin/env bash
# fuzz.sh [FUZZTIME] — run every Go fuzz target in the repository for
# FUZZTIME each (default 60s), one at a time (the machines have 2 cores).
# Targets are found with `go test -list '^Fuzz'`; findings are written by Go
# to the package's testdata/fuzz/<Target>/ and make this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${1:-60s}
failed=()
count=0
for pkg in $(go list ./...); do
	targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
	for t in $targets; do
		count=$((count + 1))
		echo "fuzz: $pkg $t for $FUZZTIME"
		if ! go test -run '^$' -fuzz "^${t}\$" -fuzztime "$FUZZTIME" "$pkg"; then
			failed+=("$pkg $t")
		fi
	done
done
echo "fuzz: ran $count targets"
if ((${#failed[@]})); then
	printf 'fuzz: FAILED %s\n' "${failed[@]}" >&2
	exit 1
fi
