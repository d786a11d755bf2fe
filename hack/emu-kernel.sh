#!/usr/bin/env bash
# emu-kernel.sh OUTDIR — make the emulation blob set from Debian's kernel package.
#
# The blob set is a directory with:
#   bzImage        the kernel (Debian's vmlinuz is a bzImage)
#   cmdline        the kernel command line, one line
#   NAME.ko        the modules nitropod-init loads (plain, decompressed): virtio,
#                  fuse + cuse, which serve the emulated /dev/nsm, and tun, the
#                  enclave's network interface (enclave/podnet)
#   modules.order  the .ko file names in load order (dependencies first)
#
# The package is pinned (version + sha256 below), downloaded once into
# ~/.cache/nitropod (or $NITROPOD_CACHE; kept across clean clones) and verified
# before use; a second run with an up-to-date OUTDIR does nothing. When Debian
# has replaced the pinned version (its security archive keeps only the newest),
# the kernel linux-image-amd64 now depends on is used instead, with a warning
# (apt has verified it against the archive's signatures); set
# NITROPOD_EMU_KERNEL_STRICT=1 to fail instead.
set -euo pipefail

PKG=${NITROPOD_EMU_KERNEL_PKG:-linux-image-6.1.0-56-amd64}
VERSION=${NITROPOD_EMU_KERNEL_VERSION:-6.1.192-2}
SHA256=${NITROPOD_EMU_KERNEL_SHA256:-a86e2049672f52354c4536a089203b6c82639420424d31c91cf31a181fd4d8f1}
CMDLINE="console=ttyS0 panic=-1 reboot=t tsc_early_khz=2600000 tsc=reliable quiet"
# The modules to ship; their load order comes from their depends= fields.
MODULES=(virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio_console fuse cuse tun)

OUTDIR=${1:?usage: hack/emu-kernel.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${NITROPOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nitropod}
DEB=$CACHE/${PKG}_${VERSION}_amd64.deb
STAMP="$PKG $VERSION $SHA256 $CMDLINE ${MODULES[*]}"

if [[ -f $OUTDIR/.stamp && "$(cat "$OUTDIR/.stamp")" == "$STAMP" && -f $OUTDIR/bzImage ]]; then
	echo "emu-kernel: $OUTDIR is up to date ($PKG $VERSION)"
	exit 0
fi

mkdir -p "$CACHE"
verify() { echo "$SHA256  $1" | sha256sum --check --status; }
if [[ ! -f $DEB ]] || ! verify "$DEB"; then
	echo "emu-kernel: downloading $PKG=$VERSION"
	tmpd=$(mktemp -d "$CACHE/download.XXXXXX")
	chmod 755 "$tmpd" # apt's _apt user writes here
	trap 'rm -rf "$tmpd"' EXIT
	if ! (cd "$tmpd" && apt-get download "$PKG=$VERSION"); then
		dep=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/ *Depends: //p' | head -n1)
		{
			echo "emu-kernel: cannot download the pinned $PKG=$VERSION (run apt-get update; Debian may have replaced it)."
			if [[ -n $dep ]]; then
				echo "emu-kernel: linux-image-amd64 now depends on $dep:"
				apt-cache show "$dep" | grep -E '^(Package|Version|SHA256):' | head -n3
				echo "emu-kernel: update PKG, VERSION and SHA256 at the top of $0 (or set NITROPOD_EMU_KERNEL_PKG/_VERSION/_SHA256)."
			fi
		} >&2
		if [[ ${NITROPOD_EMU_KERNEL_STRICT:-0} == 1 || -z $dep ]] || ! (cd "$tmpd" && apt-get download "$dep"); then
			exit 1
		fi
		PKG=$dep
		SHA256=$(sha256sum "$tmpd"/*.deb | cut -d' ' -f1)
		DEB=$CACHE/$(basename "$tmpd"/*.deb)
		STAMP="$PKG $SHA256 $CMDLINE ${MODULES[*]}"
		echo "emu-kernel: WARNING: using $(basename "$DEB") instead of the pinned $VERSION" >&2
	fi
	f=$(ls "$tmpd"/*.deb)
	if ! verify "$f"; then
		echo "emu-kernel: $f does not match the pinned sha256 $SHA256" >&2
		exit 1
	fi
	mv "$f" "$DEB"
	rm -rf "$tmpd"
	trap - EXIT
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$DEB" "$work/x"

stage=$OUTDIR.tmp
rm -rf "$stage"
mkdir -p "$stage"
cp "$work"/x/boot/vmlinuz-* "$stage/bzImage"
echo "$CMDLINE" >"$stage/cmdline"

kdir=$(echo "$work"/x/lib/modules/*/kernel)
declare -A deps
for m in "${MODULES[@]}"; do
	src=$(find "$kdir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)
	if [[ -z $src ]]; then
		echo "emu-kernel: module $m not found in $PKG" >&2
		exit 1
	fi
	case $src in
	*.xz) xz -dc "$src" >"$stage/$m.ko" ;;
	*.zst) zstd -qdc "$src" >"$stage/$m.ko" ;;
	*) cp "$src" "$stage/$m.ko" ;;
	esac
	deps[$m]=$(tr '\0' '\n' <"$stage/$m.ko" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' ')
	for d in ${deps[$m]}; do
		if [[ " ${MODULES[*]} " != *" $d "* ]]; then
			echo "emu-kernel: $m depends on $d, which is not in the module list" >&2
			exit 1
		fi
	done
done

# modules.order: dependencies first (a topological sort of depends=).
: >"$stage/modules.order"
loaded=" "
for _ in "${MODULES[@]}"; do
	for m in "${MODULES[@]}"; do
		[[ $loaded == *" $m "* ]] && continue
		ready=1
		for d in ${deps[$m]}; do [[ $loaded == *" $d "* ]] || ready=0; done
		if ((ready)); then
			loaded+="$m "
			echo "$m.ko" >>"$stage/modules.order"
		fi
	done
done
if (($(wc -l <"$stage/modules.order") != ${#MODULES[@]})); then
	echo "emu-kernel: circular module dependencies among ${MODULES[*]}" >&2
	exit 1
fi
echo "$STAMP" >"$stage/.stamp"

rm -rf "$OUTDIR"
mv "$stage" "$OUTDIR"
echo "emu-kernel: wrote $OUTDIR ($PKG $VERSION: bzImage, cmdline, ${#MODULES[@]} modules)"
