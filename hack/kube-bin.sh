#!/usr/bin/env bash
# kube-bin.sh — build the real kube-apiserver and etcd that integration tests run
# (through envtest's KUBEBUILDER_ASSETS) from the pinned module in hack/kube-bin, into a
# cache outside the clone. Prints the directory. Costs nothing when the cache is warm.
#
# Usage: kube-bin.sh [kube-proxy]
#   kube-proxy  also build kube-proxy of the same release, which `make bench` runs beside
#               the service proxy (about 1.5 min more on 2 cores once kube-apiserver's
#               packages are in the build cache; the test tiers do not need it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
V=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/kube-bin/go.mod")
[[ -n "$V" ]] || V=$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$here/kube-bin/go.mod")
V=${V#v}
cache=${K8S_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-test-bin}/v$V
wanted=(kube-apiserver etcd)
case "${1:-}" in
"") ;;
kube-proxy) wanted+=(kube-proxy) ;;
*) echo "kube-bin: unknown argument $1 (only kube-proxy)" >&2; exit 2 ;;
esac
missing=()
for b in "${wanted[@]}"; do [[ -x "$cache/$b" ]] || missing+=("$b"); done
if ((${#missing[@]} == 0)); then echo "$cache"; exit 0; fi
mkdir -p "$cache"
minor=${V#1.}; minor=${minor%%.*}
# Keep these flags fixed: any change to -trimpath or -gcflags rebuilds everything (~5 min).
ldf="-s -w -X k8s.io/component-base/version.gitVersion=v$V -X k8s.io/component-base/version.gitMajor=1"
ldf+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
ldf+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
{
  echo "kube-bin: building ${missing[*]} v$V into $cache (cold: ~5 min on 2 cores, kube-proxy ~1.5 min more)"
  export GOWORK=off GOFLAGS=-mod=readonly
  for b in "${missing[@]}"; do
    case $b in
    kube-apiserver) go build -C "$here/kube-bin" -trimpath -ldflags "$ldf" -o "$cache/$b.tmp" k8s.io/kubernetes/cmd/kube-apiserver ;;
    etcd) go build -C "$here/kube-bin" -trimpath -ldflags "-s -w" -o "$cache/$b.tmp" go.etcd.io/etcd/server/v3 ;;
    # Static: it runs inside the test VM, whatever the caller's CGO_ENABLED.
    kube-proxy) CGO_ENABLED=0 go build -C "$here/kube-bin" -trimpath -ldflags "$ldf" -o "$cache/$b.tmp" k8s.io/kubernetes/cmd/kube-proxy ;;
    esac
    mv "$cache/$b.tmp" "$cache/$b"
  done
} >&2
echo "$cache"
