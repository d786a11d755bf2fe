#!/bin/sh
# systemd-sandbox.sh: a systemd to test the systemd cgroup driver against on
# a machine whose PID 1 is not systemd (the CI machine).
#
#   hack/systemd-sandbox.sh start [--unified]
#                                        boot systemd in new PID, mount and
#                                        cgroup namespaces (root only); with
#                                        --unified it sees only the cgroup v2
#                                        hierarchy, as on a cgroup v2 host
#   hack/systemd-sandbox.sh run CMD...   run CMD inside, next to that systemd
#   hack/systemd-sandbox.sh stop         kill it and remove its cgroups
#
# systemd runs as PID 1 of its own PID namespace, with a private /run (its
# D-Bus socket /run/systemd/private lives there) and a cgroup namespace
# rooted at /nitropod-systemd-sandbox in every hierarchy of this machine, so
# the scopes and slices it makes stay below that cgroup. It starts one
# empty target and nothing else. /tmp and the rest of the file system are
# shared with the machine (private mount propagation: nothing mounted
# inside shows outside). On a cgroup v1 machine the controllers are bound
# to v1, so the --unified sandbox's v2 hierarchy has none: cgroup creation,
# placement, cgroup.kill and systemd's scopes are real there, limits are not.
# NITROPOD_SYSTEMD_SANDBOX names the state directory (and, by its last
# element, the sandbox cgroup), so that two sandboxes can run at once.
set -eu

STATE=${NITROPOD_SYSTEMD_SANDBOX:-/tmp/nitropod-systemd-sandbox}
CG=$(basename "$STATE")
ROOT=/sys/fs/cgroup

die() { echo "systemd-sandbox: $*" >&2; exit 1; }

# The PID of the sandbox's systemd as this machine sees it.
sandbox_pid() {
  [ -s "$STATE/pid" ] || return 1
  pid=$(cat "$STATE/pid")
  [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = systemd ] || return 1
  echo "$pid"
}

case "${1:-}" in
start)
  unified=false
  [ "${2:-}" = --unified ] && unified=true
  [ "$(id -u)" = 0 ] || die "needs root"
  if sandbox_pid >/dev/null; then die "already running (pid $(sandbox_pid))"; fi
  command -v systemd >/dev/null || [ -x /lib/systemd/systemd ] || die "no systemd installed"
  SYSTEMD=/lib/systemd/systemd
  [ -x "$SYSTEMD" ] || SYSTEMD=$(command -v systemd)
  mkdir -p "$STATE"
  rm -f "$STATE/pid"
  # Inside: private /run with a single empty target, a fresh cgroupfs
  # (mounted in the cgroup namespace, so rooted at the sandbox cgroup),
  # then systemd as PID 1.
  cat >"$STATE/inner.sh" <<EOF
#!/bin/sh
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
printf '[Unit]\nDescription=nitropod systemd sandbox\nDefaultDependencies=no\n' >/run/systemd/system/nitropod-sandbox.target
EOF
  if $unified; then
    v2=
    for d in "$ROOT" "$ROOT"/*; do
      [ "$(stat -f -c %T "$d" 2>/dev/null)" = cgroup2fs ] && v2=$d && break
    done
    [ -n "$v2" ] || die "no cgroup v2 hierarchy mounted under $ROOT"
    echo "mount -t cgroup2 none $ROOT" >>"$STATE/inner.sh"
  else
    echo "mount -t tmpfs -o mode=755 tmpfs $ROOT" >>"$STATE/inner.sh"
  fi
  # One line per v1 hierarchy of this machine, and the v2 one.
  $unified || for d in "$ROOT"/*; do
    [ -d "$d" ] && [ ! -L "$d" ] || continue
    name=$(basename "$d")
    case "$(stat -f -c %T "$d")" in
    cgroupfs)
      # The hierarchy's controllers (or name=) from its super options.
      opts=$(awk -v m="$d" '$5 == m { for (i = 6; i < NF; i++) if ($i == "-") break
        if ($(i + 1) != "cgroup") next
        n = split($NF, o, ","); s = ""
        for (j = 1; j <= n; j++) if (o[j] != "rw" && o[j] != "ro") s = s (s ? "," : "") o[j]
        print s; exit }' /proc/self/mountinfo)
      [ -n "$opts" ] || continue
      case "$opts" in name=*) opts="none,$opts" ;; esac
      echo "mkdir -p $ROOT/$name && mount -t cgroup -o $opts cgroup $ROOT/$name" >>"$STATE/inner.sh"
      ;;
    cgroup2fs)
      echo "mkdir -p $ROOT/$name && mount -t cgroup2 none $ROOT/$name" >>"$STATE/inner.sh"
      ;;
    esac
  done
  echo "exec env container=nitropod-sandbox $SYSTEMD --unit=nitropod-sandbox.target --log-target=kmsg --log-level=notice" >>"$STATE/inner.sh"
  chmod 755 "$STATE/inner.sh"
  # The sandbox cgroup in every hierarchy (cpuset needs cpus and mems).
  for d in "$ROOT"/*; do
    [ -d "$d" ] && [ ! -L "$d" ] || continue
    mkdir -p "$d/$CG"
  done
  if [ -f "$ROOT/cpuset/cpuset.cpus" ]; then
    cat "$ROOT/cpuset/cpuset.cpus" >"$ROOT/cpuset/$CG/cpuset.cpus"
    cat "$ROOT/cpuset/cpuset.mems" >"$ROOT/cpuset/$CG/cpuset.mems"
  fi
  # A child moves itself into the sandbox cgroup, then unshares.
  setsid sh -c '
    for d in '"$ROOT"'/*; do
      [ -f "$d/'"$CG"'/cgroup.procs" ] && echo $$ >"$d/'"$CG"'/cgroup.procs"
    done
    exec unshare --pid --fork --mount --cgroup --mount-proc '"$STATE"'/inner.sh
  ' >"$STATE/log" 2>&1 </dev/null &
  # Wait (up to 30 s) for systemd to answer on its private socket.
  for _ in $(seq 60); do
    for p in $(pgrep -x systemd 2>/dev/null); do
      if [ "$(cat /proc/"$p"/cgroup 2>/dev/null | grep -c "/$CG")" -gt 0 ] &&
        nsenter -t "$p" -a systemctl is-system-running >/dev/null 2>&1; then
        echo "$p" >"$STATE/pid"
        echo "systemd sandbox running (pid $p)"
        exit 0
      fi
    done
    sleep 0.5
  done
  cat "$STATE/log" >&2
  die "systemd did not come up"
  ;;
run)
  shift
  pid=$(sandbox_pid) || die "not running; start it first"
  # Into the sandbox's root cgroup first, so that CMD sees itself in "/"
  # of the sandbox's cgroup namespace like the sandbox's own processes.
  for d in "$ROOT"/*; do
    [ -f "$d/$CG/cgroup.procs" ] && [ ! -L "$d" ] && echo $$ >"$d/$CG/cgroup.procs"
  done
  exec nsenter -t "$pid" -a --wd="$PWD" -- "$@"
  ;;
stop)
  if pid=$(sandbox_pid); then
    kill -KILL "$pid"
    for _ in $(seq 50); do [ -d /proc/"$pid" ] || break; sleep 0.1; done
  fi
  rm -f "$STATE/pid"
  # Remove the sandbox's cgroups, deepest first (a cgroup of exited
  # processes can take a moment to empty).
  for _ in $(seq 20); do
    left=0
    for d in "$ROOT"/*; do
      [ -d "$d/$CG" ] && [ ! -L "$d" ] || continue
      find "$d/$CG" -depth -type d -exec rmdir {} + 2>/dev/null || left=1
    done
    [ "$left" = 0 ] && break
    sleep 0.25
  done
  for d in "$ROOT"/*; do
    [ -d "$d/$CG" ] && [ ! -L "$d" ] && die "cgroup $d/$CG is left"
  done
  echo "systemd sandbox stopped"
  ;;
*)
  echo "usage: $0 start | run CMD... | stop" >&2
  exit 2
  ;;
esac
