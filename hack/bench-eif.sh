#!/usr/bin/env bash
# bench-eif.sh [SIZES_MIB…] — build an EIF from a synthetic rootfs (many small
# files and a few large ones) with `nitropod build --rootfs`, and compare the
# wall time with `tar -c | sha384sum` over the same tree in the same run.
# Reports the ratio (target ≤ 1.5) and the builder's peak RSS (target ≤ 64 MiB,
# independent of the rootfs size). Default sizes: 256 and 1024 MiB.
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(256 1024)

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-eif.XXXXXX")
trap 'rm -rf "$work"' EXIT

go build -trimpath -o "$work/nitropod" ./cmd/nitropod

# The blob set: the emulation kernel when it has been made, else a stand-in
# (the kernel is only copied and hashed, so its content does not matter).
blobs=${NITROPOD_BLOBS:-_output/blobs/emu}
if [[ ! -f $blobs/bzImage ]]; then
	blobs=$work/blobs
	mkdir -p "$blobs"
	head -c 8M /dev/urandom >"$blobs/bzImage"
	echo "console=ttyS0 quiet" >"$blobs/cmdline"
fi
head -c 4M /dev/urandom >"$work/init"

# gen DIR MIB: 75 % of the bytes in files of 1–64 KiB spread over 100-file
# directories, 25 % in four large files. Content is random (incompressible).
gen() {
	python3 - "$1" "$2" <<'PY'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
total = mib << 20
rnd = random.Random(42)
blob = os.urandom(64 << 10)
small, n = total * 3 // 4, 0
while small > 0:
    d = os.path.join(root, "usr", "lib", "d%04d" % (n // 100))
    os.makedirs(d, exist_ok=True)
    size = min(small, rnd.randint(1 << 10, 64 << 10))
    with open(os.path.join(d, "f%06d" % n), "wb") as f:
        f.write(os.urandom(16) + blob[: size - 16])
    small -= size
    n += 1
os.makedirs(os.path.join(root, "data"), exist_ok=True)
chunk = os.urandom(1 << 20)
for i in range(4):
    with open(os.path.join(root, "data", "big%d" % i), "wb") as f:
        for _ in range((total // 4) >> 22):
            f.write(chunk)
os.makedirs(os.path.join(root, "bin"), exist_ok=True)
print("files: %d small + 4 large" % n)
PY
}

now() { date +%s.%N; }

printf '%s\n' "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf '%-8s %12s %12s %8s %14s %12s\n' "rootfs" "tar|sha384" "nitropod" "ratio" "peak RSS MiB" "EIF MiB"
for mib in "${SIZES[@]}"; do
	root=$work/rootfs-$mib
	mkdir -p "$root"
	gen "$root" "$mib" >"$work/gen.log"
	# Warm the page cache for both contenders.
	tar -C "$root" -cf - . | sha384sum >/dev/null
	best_ref= best_eif= rss=
	for run in 1 2; do
		t0=$(now)
		tar -C "$root" -cf - . | sha384sum >/dev/null
		t1=$(now)
		SOURCE_DATE_EPOCH=0 /usr/bin/time -f '%M' -o "$work/rss" \
			"$work/nitropod" build --rootfs "$root" --blobs "$blobs" --init "$work/init" \
			--output "$work/out.eif" -- /bin/true >/dev/null
		t2=$(now)
		ref=$(echo "$t1 - $t0" | bc -l)
		eif=$(echo "$t2 - $t1" | bc -l)
		r=$(cat "$work/rss")
		if [[ -z $best_ref ]] || (($(echo "$ref < $best_ref" | bc -l))); then best_ref=$ref; fi
		if [[ -z $best_eif ]] || (($(echo "$eif < $best_eif" | bc -l))); then best_eif=$eif; fi
		if [[ -z $rss ]] || ((r > rss)); then rss=$r; fi
	done
	size=$(($(stat -c %s "$work/out.eif") >> 20))
	printf '%-8s %11.2fs %11.2fs %8.2f %14d %12d\n' "${mib}MiB" "$best_ref" "$best_eif" \
		"$(echo "$best_eif / $best_ref" | bc -l)" "$((rss / 1024))" "$size"
	rm -rf "$root" "$work/out.eif"
done
