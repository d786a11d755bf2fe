#!/bin/sh
# nitropod node installer: runs in a privileged init container with the host's
# root at $HOST and the host's /proc at $HOST_PROC (the Pod has no hostPID).
# Copies the shim, init and CLI, writes the shim config, the licence issuer
# keys and the blob set, adds the nitro runtime to containerd's config and
# restarts containerd only when something changed. Idempotent; exits non-zero
# (and the Pod retries) on error.
set -eu
HOST=${HOST:-/host}
HOST_PROC=${HOST_PROC:-/host-proc}
SRC=${SRC:-/opt/nitropod/bin}
CFG=${CFG:-/config}
changed=0

install_file() { # src dst mode
  if ! cmp -s "$1" "$HOST$2" 2>/dev/null; then
    mkdir -p "$(dirname "$HOST$2")"
    cp "$1" "$HOST$2.tmp" && chmod "$3" "$HOST$2.tmp" && mv -f "$HOST$2.tmp" "$HOST$2"
    echo "installed $2"
    changed=1
  fi
}

for b in containerd-shim-nitro-v1 nitropod-launcher nitropod-fetch nitropod-init nitropod; do
  install_file "$SRC/$b" "/opt/nitropod/bin/$b" 0755
done
# containerd 1.6 ignores runtime_path and looks shims up on its PATH.
if [ "$(readlink "$HOST/usr/local/bin/containerd-shim-nitro-v1" 2>/dev/null)" != /opt/nitropod/bin/containerd-shim-nitro-v1 ]; then
  mkdir -p "$HOST/usr/local/bin"
  ln -sfn /opt/nitropod/bin/containerd-shim-nitro-v1 "$HOST/usr/local/bin/containerd-shim-nitro-v1"
  changed=1
fi
install_file "$CFG/shim.toml" /etc/nitropod/shim.toml 0644
# The trusted licence issuer keys the shim config names (license.keys_file).
if [ -n "${LICENSE_KEYS:-}" ]; then
  if ! grep -q -- '-----BEGIN PUBLIC KEY-----' "$LICENSE_KEYS" 2>/dev/null; then
    echo "$LICENSE_KEYS holds no PEM public key: put the licence issuer's public key under keys.pem" >&2
    exit 1
  fi
  install_file "$LICENSE_KEYS" "${LICENSE_KEYS_DEST:-/etc/nitropod/license-keys.pem}" 0644
fi
# The seccomp profile that keeps AF_VSOCK from ordinary Pods on enclave
# nodes (docs/SECURITY.md), in the kubelet's seccomp root, for Pods to name
# as Localhost nitropod/deny-vsock.json.
if [ -f "$CFG/deny-vsock.json" ]; then
  install_file "$CFG/deny-vsock.json" "${SECCOMP_DIR:-/var/lib/kubelet/seccomp}/nitropod/deny-vsock.json" 0644
fi
if [ -d /opt/nitropod/blobs ] && [ "${INSTALL_BLOBS:-false}" = true ]; then
  for f in /opt/nitropod/blobs/*; do
    install_file "$f" "/var/lib/nitropod/blobs/$(basename "$f")" 0644
  done
fi
# The runtime goes into containerd's main config between markers (see
# containerd-nitro.toml for why not an imported drop-in), in the layout of
# the file's config version: 2 (containerd 1.6, 1.7, and 2.x, which migrates
# it) or 3 (containerd 2.x). A file without a version line is version 1,
# which none of them writes any more: refused, as is anything else.
main=$HOST/etc/containerd/config.toml
mkdir -p "$(dirname "$main")"
[ -f "$main" ] || printf 'version = 2\n' >"$main"
version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*\([0-9][0-9]*\)[[:space:]]*$/\1/p' "$main" | head -n 1)
case $version in
  2) snippet=$CFG/containerd-nitro.toml ;;
  3) snippet=$CFG/containerd-nitro-v3.toml ;;
  *)
    echo "/etc/containerd/config.toml is containerd config version ${version:-1 (no version line)}, which the installer does not edit:" >&2
    echo "migrate it (containerd config migrate) or add the nitro runtime by hand (the lines of containerd-nitro.toml for version 2, containerd-nitro-v3.toml for version 3)" >&2
    exit 1
    ;;
esac
want=$( { echo "# BEGIN nitropod"; cat "$snippet"; echo "# END nitropod"; } )
have=$(sed -n '/^# BEGIN nitropod$/,/^# END nitropod$/p' "$main")
if [ "$want" != "$have" ]; then
  cp "$main" "$main.nitropod-backup"
  { sed '/^# BEGIN nitropod$/,/^# END nitropod$/d' "$main.nitropod-backup"; echo "$want"; } >"$main.tmp"
  mv -f "$main.tmp" "$main"
  echo "updated the nitro runtime in /etc/containerd/config.toml"
  changed=1
fi

if [ "$changed" = 1 ] && [ "${RESTART_CONTAINERD:-true}" = true ]; then
  # Restart through the host's systemd; running containers keep running
  # (their shims are separate processes) and the kubelet reconnects.
  # The host's PID 1 is reached through the host's /proc, so the Pod needs
  # no hostPID.
  echo "restarting containerd"
  ns=$HOST_PROC/1/ns
  nsenter --mount="$ns/mnt" --uts="$ns/uts" --ipc="$ns/ipc" --net="$ns/net" --pid="$ns/pid" -- systemctl restart containerd
  i=0
  until nsenter --mount="$ns/mnt" -- test -S /run/containerd/containerd.sock; do
    i=$((i + 1)); [ "$i" -gt 60 ] && { echo "containerd did not come back" >&2; exit 1; }
    sleep 1
  done
fi
echo "nitropod node installer: done (changed=$changed)"
