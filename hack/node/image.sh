#!/usr/bin/env bash
# image.sh — build (once, cached) the node tier's machine and print the directory holding
# `vmlinuz`, `initrd.img` and `root.img`.
#
# The machine is a Debian 12 (bookworm) node as an operator gets it: a root file system
# made by mmdebstrap from Debian's packages, with systemd as PID 1, Debian's kernel and
# the initramfs its own initramfs-tools built (kernel, modules and initramfs all come
# from the image), ifupdown, containernetworking-plugins (the CNI plugins kubelet runs,
# which pull in iptables) and udev. ipset, ipvsadm and conntrack are not installed: they
# sit in a local apt repository inside the image (/var/local/kube-routerd-deps, the
# image's only apt source), so `apt install ./kube-routerd_*.deb` must resolve the
# package's dependencies itself, offline. The guest files in hack/node/guest go in
# as they are; guest/customize.sh does the rest.
#
# root.img is an ext4 image booted with snapshot=on: every run starts from the same disk.
# It is rebuilt only when this script, the guest files or the candidate versions of the
# Debian packages change. A cold build downloads about 250 MB.
#
# Environment (optional):
#   KUBEROUTERD_NODE_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-routerd-node)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEROUTERD_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-routerd-node}
log() { echo "node-image: $*" >&2; }

host_packages=(mmdebstrap e2fsprogs dpkg-dev)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# What an operator's node has before kube-routerd: systemd, the kernel, networking, and
# the CNI plugins kubelet calls.
packages=(
  systemd systemd-sysv udev dbus linux-image-amd64 initramfs-tools kmod
  ifupdown iproute2 procps containernetworking-plugins
)
# Offered by the local repository only, so installing the .deb must pull them in:
# ipset (Depends), ipvsadm and conntrack (Recommends).
repo_packages=(ipset ipvsadm conntrack)

# The host's apt sources reach the Debian archive (the same ones the VM tier's kernel
# comes from); mmdebstrap reads them as they are.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -s $f ]] && sources+=("$f")
done
((${#sources[@]})) || { log "no apt sources on this host to build the image from"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

key=$( {
  cat "$0" "$here"/guest/*
  apt-cache policy "${packages[@]}" "${repo_packages[@]}" | grep -E '^\S|Candidate:'
  # linux-image-amd64's candidate names the kernel package; its version is in there.
  apt-cache depends linux-image-amd64 | awk '$1=="Depends:" {print $2}'
} | sha256sum | cut -c1-16)
out="$cache/image-$key"
if [[ -f "$out/root.img" ]]; then echo "$out"; exit 0; fi

t0=$SECONDS
stage=$(mktemp -d "${TMPDIR:-/tmp}/kube-routerd-node-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
log "building the Debian root file system with mmdebstrap (a cold build downloads ~250 MB)"
# No fsync and no documentation while building (customize.sh drops these dpkg options
# from the image). The essential hook runs before the kernel is installed, so the
# initramfs its postinst builds holds just what mounting the root disk takes (virtio,
# ext4) instead of every storage driver.
KUBEROUTERD_NODE_REPO_PACKAGES="${repo_packages[*]}" \
  mmdebstrap --mode=root --variant=apt --format=directory \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --dpkgopt=force-unsafe-io --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo MODULES=list >"$1/etc/initramfs-tools/conf.d/kube-routerd-node.conf" && printf "%s\n" virtio_pci virtio_blk ext4 >"$1/etc/initramfs-tools/modules"' \
  --customize-hook="$here/guest/customize.sh \"\$1\" \"$here/guest\"" \
  --skip=cleanup/apt/lists --skip=cleanup/reproducible \
  bookworm "$root" "${sources[@]}" >&2

mkdir -p "$out.tmp"
cp "$root"/boot/vmlinuz-* "$out.tmp/vmlinuz"
cp "$root"/boot/initrd.img-* "$out.tmp/initrd.img"
# Room for what the tests install and log; the image file is sparse.
size_mb=$(($(du -sm "$root" | cut -f1) + 1024))
# mkfs.ext4 says "Creating regular file" on stdout even with -q; stdout is the path.
mkfs.ext4 -q -L krd-node -d "$root" "$out.tmp/root.img" "${size_mb}M" >&2
rm -rf "$out" && mv "$out.tmp" "$out"
# Images of older inputs are never used again (qemu reads them at start only).
find "$cache" -mindepth 1 -maxdepth 1 -name 'image-*' ! -path "$out" -exec rm -rf {} +
log "built $out ($(du -sh --apparent-size "$out/root.img" | cut -f1) root disk) in $((SECONDS - t0)) s"
echo "$out"
