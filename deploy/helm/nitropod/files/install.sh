#!/bin/sh
# nitropod node installer: runs in a privileged init container with the host's
# root at $HOST. Copies the shim, init and CLI, writes the shim config and the
# blob set, adds the containerd drop-in and restarts containerd only when
# something changed. Idempotent; exits non-zero (and the Pod retries) on error.
set -eu
HOST=${HOST:-/host}
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

for b in containerd-shim-nitro-v1 nitropod-launcher nitropod-init nitropod; do
  install_file "$SRC/$b" "/opt/nitropod/bin/$b" 0755
done
install_file "$CFG/shim.toml" /etc/nitropod/shim.toml 0644
if [ -d /opt/nitropod/blobs ] && [ "${INSTALL_BLOBS:-false}" = true ]; then
  for f in /opt/nitropod/blobs/*; do
    install_file "$f" "/var/lib/nitropod/blobs/$(basename "$f")" 0644
  done
fi
install_file "$CFG/containerd-nitro.toml" /etc/containerd/conf.d/nitropod.toml 0644

# containerd reads drop-ins only if its main config imports them.
main=$HOST/etc/containerd/config.toml
if [ ! -f "$main" ]; then
  printf 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n' >"$main"
  changed=1
elif ! grep -q 'conf.d/\*.toml' "$main"; then
  if grep -q '^imports' "$main"; then
    echo "containerd config $main has an imports line without /etc/containerd/conf.d/*.toml; add it by hand" >&2
    exit 1
  fi
  cp "$main" "$main.nitropod-backup"
  { printf 'imports = ["/etc/containerd/conf.d/*.toml"]\n'; cat "$main.nitropod-backup"; } >"$main.tmp"
  mv -f "$main.tmp" "$main"
  changed=1
fi

if [ "$changed" = 1 ] && [ "${RESTART_CONTAINERD:-true}" = true ]; then
  # Restart through the host's systemd; running containers keep running
  # (their shims are separate processes) and the kubelet reconnects.
  echo "restarting containerd"
  nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd
  i=0
  until nsenter --target 1 --mount -- test -S /run/containerd/containerd.sock; do
    i=$((i + 1)); [ "$i" -gt 60 ] && { echo "containerd did not come back" >&2; exit 1; }
    sleep 1
  done
fi
echo "nitropod node installer: done (changed=$changed)"
