#!/usr/bin/env bash
# bench-eif.sh [SIZES_MIB…] — build an EIF from a synthetic rootfs (many small
# files and a few large ones) with `nitropod build --rootfs`, and compare the
# wall time with `tar -c | sha384sum` over the same tree in the same run.
# Reports the wall-time ratio (target ≤ 1.5; best of 3 runs each), the CPU
# time (user+sys) of both, and the builder's peak RSS (target ≤ 64 MiB,
# independent of the rootfs size). Default sizes: 256 and 1024 MiB.
# Everything lives in a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(256 1024)

for tool in /usr/bin/time bc python3 tar sha384sum; do
	command -v "$tool" >/dev/null || { echo "bench-eif: $tool is missing (apt-get install time bc python3)" >&2; exit 1; }
done

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

# run OUT CMD…: run CMD under /usr/bin/time; OUT gets "wall user+sys maxrss_kib".
run() {
	local out=$1
	shift
	/usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >/dev/null
	read -r wall user sys rss <"$work/time"
	echo "$wall $(echo "$user + $sys" | bc -l) $rss" >"$out"
}

printf '%s\n' "nproc: $(nproc); cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %11s %11s %7s %11s %11s %9s %9s %8s\n' "rootfs" "tar|sha384" "nitropod" "ratio" "cpu tar|sha" "cpu nitro" "cpu ratio" "RSS MiB" "EIF MiB"
for mib in "${SIZES[@]}"; do
	root=$work/rootfs-$mib
	mkdir -p "$root"
	gen "$root" "$mib" >"$work/gen.log"
	# Warm the page cache for both contenders.
	tar -C "$root" -cf - . | sha384sum >/dev/null
	best_ref= best_eif= cref= ceif= rss=0
	for _ in 1 2 3; do
		run "$work/r1" bash -c "tar -C '$root' -cf - . | sha384sum"
		SOURCE_DATE_EPOCH=0 run "$work/r2" "$work/nitropod" build --rootfs "$root" --blobs "$blobs" \
			--init "$work/init" --output "$work/out.eif" -- /bin/true
		read -r w1 c1 _ <"$work/r1"
		read -r w2 c2 r2 <"$work/r2"
		if [[ -z $best_ref ]] || (($(echo "$w1 < $best_ref" | bc -l))); then best_ref=$w1 cref=$c1; fi
		if [[ -z $best_eif ]] || (($(echo "$w2 < $best_eif" | bc -l))); then best_eif=$w2 ceif=$c2; fi
		((r2 > rss)) && rss=$r2
	done
	size=$(($(stat -c %s "$work/out.eif") >> 20))
	printf '%-8s %10.2fs %10.2fs %7.2f %10.2fs %10.2fs %9.2f %9d %8d\n' "${mib}MiB" "$best_ref" "$best_eif" \
		"$(echo "$best_eif / $best_ref" | bc -l)" "$cref" "$ceif" "$(echo "$ceif / $cref" | bc -l)" "$((rss / 1024))" "$size"
	rm -rf "$root" "$work/out.eif"
done
