#!/usr/bin/env bash
# Builds the pinned test tools into OUTDIR from the Go module proxy, using the
# separate module test/tools (its go.mod pins every version): etcd,
# kube-apiserver, kube-scheduler, kube-controller-manager, kubelet, kubectl, registry, versitygw,
# crictl, critest, helm, containerd 1.7 and 2.2. A binary whose stamp (package, module version, Go version)
# matches is not rebuilt, so a second run takes seconds.
#
# Usage: hack/build-tools.sh OUTDIR [TOOL...]   (default: every tool, in the
# order the tests need them: etcd and kube-apiserver first)
set -euo pipefail

out=${1:?usage: build-tools.sh OUTDIR [TOOL...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
mod=$root/test/tools
mkdir -p "$out" "$out/.stamps"
out=$(cd "$out" && pwd)

# name package module
tools=(
  "etcd github.com/nitropod/nitropod/test/tools/cmd/etcd go.etcd.io/etcd/server/v3"
  "kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes"
  "kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes"
  "kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes"
  "kubelet k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes"
  "kubectl k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes"
  "registry github.com/distribution/distribution/v3/cmd/registry github.com/distribution/distribution/v3"
  "versitygw github.com/versity/versitygw/cmd/versitygw github.com/versity/versitygw"
  # crictl, critest and helm are built in their own module (go install PKG@VERSION):
  # their pinned releases do not compile against Kubernetes 1.37's libraries.
  "crictl sigs.k8s.io/cri-tools/cmd/crictl@v1.34.0 sigs.k8s.io/cri-tools"
  "critest sigs.k8s.io/cri-tools/cmd/critest@v1.34.0 sigs.k8s.io/cri-tools"
  "helm helm.sh/helm/v3/cmd/helm@v3.19.0 helm.sh/helm/v3"
  # containerd 1.7 and 2.x next to Debian's 1.6 (the versions of EKS's node
  # images): the installer's config editing is tested against each one's
  # own default config. Built inside their module (their go.mod has exclude
  # directives, which go install refuses), CGO off: no btrfs snapshotter.
  "containerd-1.7 github.com/containerd/containerd/cmd/containerd@v1.7.35 github.com/containerd/containerd"
  "containerd-2.2 github.com/containerd/containerd/v2/cmd/containerd@v2.2.9 github.com/containerd/containerd/v2"
)

want=("$@")
selected() {
  ((${#want[@]} == 0)) && return 0
  local w
  for w in "${want[@]}"; do [[ $w == "$1" ]] && return 0; done
  return 1
}

cd "$mod"
export GOFLAGS=-mod=mod CGO_ENABLED=0
gover=$(go env GOVERSION)
for t in "${tools[@]}"; do
  read -r name pkg module <<<"$t"
  selected "$name" || continue
  if [[ $pkg == *@* ]]; then
    version=${pkg#*@}
  else
    version=$(go list -m -f '{{.Version}}' "$module")
  fi
  stamp="$pkg@$version $gover"
  if [[ -x $out/$name && -f $out/.stamps/$name && $(<"$out/.stamps/$name") == "$stamp" ]]; then
    echo "build-tools: $name $version (up to date)"
    continue
  fi
  ldflags="-s -w"
  case $module in
    k8s.io/kubernetes)
      v=${version#v}
      ldflags+=" -X k8s.io/component-base/version.gitVersion=$version"
      ldflags+=" -X k8s.io/component-base/version.gitMajor=${v%%.*}"
      minor=${v#*.}
      ldflags+=" -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
      ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
      ;;
    helm.sh/helm/v3)
      ldflags+=" -X helm.sh/helm/v3/internal/version.version=$version"
      ;;
    sigs.k8s.io/cri-tools)
      ldflags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=$version"
      ;;
    github.com/containerd/containerd*)
      ldflags+=" -X $module/version.Version=$version"
      ;;
  esac
  echo "build-tools: building $name $version"
  start=$SECONDS
  rm -f "$out/.stamps/$name"
  if [[ $name == critest || $name == containerd-* ]]; then
    # critest is a test binary (cmd/critest holds only _test.go files),
    # containerd's go.mod has exclude directives: build either inside its
    # own module at the pinned version.
    moddir=$(cd / && GOFLAGS= go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    rel=./${pkg%@*}
    rel=${rel/.\/$module/.}
    if [[ $name == critest ]]; then
      (cd "$moddir" && GOFLAGS=-mod=mod go test -c -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$rel")
    else
      (cd "$moddir" && GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$rel")
    fi
    mv "$out/$name.tmp" "$out/$name"
  elif [[ $pkg == *@* ]]; then
    gobin=$(mktemp -d)
    (cd / && GOFLAGS= GOBIN=$gobin go install -trimpath -ldflags "$ldflags" "$pkg")
    mv "$gobin/$name" "$out/$name"
    rm -rf "$gobin"
  else
    go build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg"
    mv "$out/$name.tmp" "$out/$name"
  fi
  printf '%s' "$stamp" >"$out/.stamps/$name"
  echo "build-tools: $name built in $((SECONDS - start))s"
done
echo "build-tools: ok ($out)"
