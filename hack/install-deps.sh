#!/usr/bin/env bash
# Installs the Debian packages that the build, tests and demo use. Idempotent:
# apt is only asked when something is missing.
set -euo pipefail

packages=(
  containerd runc                 # the real container runtime the shim is tested under
  containernetworking-plugins     # CNI bridge for pod networks
  qemu-system-x86                 # the emulated enclave
  busybox-static                  # test images
  cpio                            # GNU cpio checks our ramdisks
  iproute2 iptables               # network namespaces for nodes and pods
  curl ca-certificates
  xz-utils zstd                   # kernel package extraction
  kmod                            # modinfo for the emulation kernel's modules
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: ok"
