#!/usr/bin/env bash
# kube-bin.sh — build the real kube-apiserver and etcd that integration tests run
# (through envtest's KUBEBUILDER_ASSETS) from the pinned module in hack/kube-bin, into a
# cache outside the clone. Prints the directory. Costs nothing when the cache is warm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
V=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/kube-bin/go.mod")
[[ -n "$V" ]] || V=$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$here/kube-bin/go.mod")
V=${V#v}
cache=${K8S_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/k8s-test-bin}/v$V
if [[ -x "$cache/kube-apiserver" && -x "$cache/etcd" ]]; then echo "$cache"; exit 0; fi
mkdir -p "$cache"
minor=${V#1.}; minor=${minor%%.*}
# Keep these flags fixed: any change to -trimpath or -gcflags rebuilds everything (~5 min).
ldf="-s -w -X k8s.io/component-base/version.gitVersion=v$V -X k8s.io/component-base/version.gitMajor=1"
ldf+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
ldf+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
{
  echo "kube-bin: building kube-apiserver v$V and etcd into $cache (cold: ~5 min on 2 cores)"
  export GOWORK=off GOFLAGS=-mod=readonly
  go build -C "$here/kube-bin" -trimpath -ldflags "$ldf" -o "$cache/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  go build -C "$here/kube-bin" -trimpath -ldflags "-s -w" -o "$cache/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$cache/kube-apiserver.tmp" "$cache/kube-apiserver"
  mv "$cache/etcd.tmp" "$cache/etcd"
} >&2
echo "$cache"
