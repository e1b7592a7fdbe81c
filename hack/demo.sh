#!/usr/bin/env bash
# demo.sh — the body of `make demo`: kube-routerd at work on a small simulated cluster,
# told step by step: a real control plane (kube-apiserver + etcd from hack/kube-bin.sh),
# nodes and pods as network namespaces, one kube-routerd per node started from its own
# config.toml, then routing over BGP, network policy, an outside BIRD router, the
# teardown, and the service proxy.
#
# The host kernel has no IPVS, so the service proxy scene runs in the test VM (qemu,
# Debian's kernel; hack/vm/run-tests.sh); everything else runs in network namespaces on
# the host. The scenes are the tests of test/demo, which `make test` also runs.
#
# The last scene is the installed package on a Debian machine with systemd as PID 1
# (the node tier, hack/node/run-tests.sh, which `make test` runs as its own tier): apt
# install, systemctl enable --now, pods from the CNI plugins, the watchdog, a config
# change, an upgrade, remove and purge, told step by step.
#
# Usage: hack/demo.sh [--smoke]
#   --smoke (or DEMO_SMOKE=1)  run every scene but print only whether each passed; the
#                              story goes to the test log and is shown when a scene fails.
# Environment (optional):
#   DEMO_SCENES   any of "host vm node" (the default: all three)
# Needs root (network namespaces). Takes about 20 s on the host and 2-3 minutes in the
# VM once kube-bin and the VM image are cached.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export GOTOOLCHAIN=local CGO_ENABLED=${CGO_ENABLED:-0} GOFLAGS=${GOFLAGS:--trimpath}
smoke=${DEMO_SMOKE:-0}
[[ ${1:-} == --smoke ]] && smoke=1
scenes=${DEMO_SCENES:-host vm node}

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
if ((EUID != 0)); then
  echo "demo: needs root (it creates network namespaces)" >&2
  exit 1
fi

say "kube-routerd demo: preparing (packages, kube-apiserver + etcd, the daemon)"
bash hack/deps.sh >&2
assets=$(bash hack/kube-bin.sh)
[[ -x bin/kube-routerd ]] || make --no-print-directory build >&2
work=$(mktemp -d "${TMPDIR:-/tmp}/kube-routerd-demo-run.XXXXXX")
trap 'rm -rf "$work"' EXIT

# What the demo must leave as it found it. Other programs may run tests meanwhile, so
# only leftovers that can be the demo's count: the host namespace's links, routes and
# kube-router rules and sets, test namespaces whose creator has exited, and processes
# started with the demo's files.
host_state() {
  ip -o link show | sed 's/ state [A-Z]* / /'
  ip route show table all
  iptables-save 2>/dev/null | grep -i kube-router || true
  ipset list -n 2>/dev/null | grep -i kube-router || true
  for ns in $(ip netns list | awk '/^krt-[0-9]+-/ {print $1}'); do
    pid=${ns#krt-}
    kill -0 "${pid%%-*}" 2>/dev/null || echo "leftover network namespace $ns"
  done
  pgrep -a -f 'kube-routerd-demo-' | grep -v pgrep || true
}
host_state >"$work/before"

status=0
if [[ $scenes == *host* ]]; then
  go test -c -tags integration -o "$work/demo.test" ./test/demo
  if ((smoke)); then
    flags=(-test.v)
    unset KUBEROUTERD_DEMO
  else
    flags=()
    export KUBEROUTERD_DEMO=1
    say "Scenes 1-5 run in network namespaces on this host; scene 6 (service proxy) needs IPVS and runs in a VM."
  fi
  # The test binary runs in its package directory, like go test runs it.
  (cd test/demo && KUBEBUILDER_ASSETS=$assets KUBEROUTERD_BIN=$root/bin/kube-routerd \
    "$work/demo.test" -test.run '^TestDemoPolicyRoutingAndBIRD$' -test.timeout 10m "${flags[@]}") |
    if ((smoke)); then grep --line-buffered -E '^(--- |ok|PASS|FAIL)' || true; else grep --line-buffered -vE '^(PASS|ok)$' || true; fi
  status=${PIPESTATUS[0]}
fi

if [[ $scenes == *vm* ]] && ((status == 0)); then
  ((smoke)) || say "Booting the VM for scene 6 (qemu without KVM: allow a minute or two)"
  # run-tests.sh reports progress on stderr, the guest's test output on stdout: one
  # stream keeps them in order.
  bash hack/vm/run-tests.sh -test.run='^TestDemoServiceProxyInVM$' ./test/demo 2>&1 |
    if ((smoke)); then grep --line-buffered -E '^(--- |ok|FAIL|vm: .*(fail|FAIL|SKIP))' || true; else grep --line-buffered -vE '^(=== RUN|--- PASS|PASS$|ok  )' || true; fi
  status=${PIPESTATUS[0]}
fi

if [[ $scenes == *node* ]] && ((status == 0)); then
  ((smoke)) || say "Scene 7: the package on a Debian node with systemd as PID 1 — apt install, systemctl enable --now, pods made by the CNI plugins, the watchdog, a config change, an upgrade, remove and purge (qemu without KVM: allow several minutes)"
  bash hack/node/run-tests.sh -test.run='^TestPackagedNode$' -test.v 2>&1 |
    if ((smoke)); then grep --line-buffered -E '^(--- |ok|FAIL|node: .*(fail|FAIL|SKIP))' || true; else grep --line-buffered -vE '^(=== RUN|=== PAUSE|=== CONT|PASS$|ok  )' || true; fi
  status=${PIPESTATUS[0]}
fi

host_state >"$work/after"
if ! diff -u "$work/before" "$work/after" >"$work/diff"; then
  say "The host is not as it was before the demo:"
  cat "$work/diff"
  status=1
elif ((!smoke)); then
  say "Done. The host's links, routes, rules and sets are as before; no namespace or process of the demo is left."
fi
if ((status != 0)); then echo "demo: FAILED" >&2; fi
exit "$status"
