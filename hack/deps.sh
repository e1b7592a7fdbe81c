#!/usr/bin/env bash
# deps.sh — install the Debian packages the test tiers need on the host. Idempotent: it
# runs apt only when something is missing. The VM tier's own packages (qemu, the kernel,
# busybox) are installed by hack/vm/run-tests.sh and hack/vm/image.sh.
set -euo pipefail

# package:command pairs; a package counts as present when its command is on PATH (or,
# for an absolute path, is there), so the check also holds where a tool came from
# somewhere other than apt.
needed=(
  iproute2:ip            # netlink-driven namespaces are inspected and entered with it
  util-linux:nsenter     # netns.NS.Command runs commands inside test namespaces
  iptables:iptables      # network policy chains, and the iptables smoke test
  ipset:ipset            # network policy sets
  conntrack:conntrack    # flushing stale UDP flows
  iputils-ping:ping      # debugging probes by hand
  socat:socat            # the VM runner's API server forward
  bird2:bird             # a real BGP peer for the routing controller's tests
  openssl:openssl        # certificates for the external control plane of the VM tier
  curl:curl              # control-plane readiness probes
  systemd:systemd-analyze  # the packaging test verifies the unit file
  rpm:rpm                # the packaging test reads the .rpm's files, config flags and scriptlets
  dpkg-dev:dpkg-scanpackages  # the node tier's local apt repository for the .deb's dependencies
  containernetworking-plugins:/usr/lib/cni/bridge  # pods made by the standard CNI plugins, as kubelet makes them
)

missing=()
for pair in "${needed[@]}"; do
  pkg=${pair%%:*} cmd=${pair#*:}
  if [[ $cmd == /* ]]; then
    [[ -x $cmd ]] || missing+=("$pkg")
  else
    PATH=$PATH:/usr/sbin:/sbin command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "deps: all present" >&2
  exit 0
fi

sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo -n)
fi
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
  # A stale package index is the usual cause; refresh it once and retry.
  "${sudo[@]}" apt-get update -qq >&2
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
