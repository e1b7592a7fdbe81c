#!/usr/bin/env bash
# image.sh — build (once, cached) the kernel and initramfs of the test VM and print the
# directory holding `vmlinuz` and `initrd.gz`.
#
# The host kernel lacks IPVS, dummy and ipip; Debian's kernel package has them as modules.
# The initramfs is busybox plus kmod, the kernel modules the tests need (with their
# dependencies) and the Debian userland the tests call (ip, iptables, ipset, ipvsadm,
# conntrack, nft for kube-proxy's nftables mode in `make bench`, and BIRD as an outside
# BGP router) with the shared libraries they link or dlopen.
#
# Environment (optional):
#   KUBEROUTERD_VM_CACHE   cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/kube-routerd-vm)
#   KUBEROUTERD_VM_KERNEL  Debian kernel package (default: what linux-image-amd64 depends on)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KUBEROUTERD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-routerd-vm}
log() { echo "vm-image: $*" >&2; }

# Host tools the build and the guest userland come from.
host_packages=(busybox-static cpio kmod iproute2 iptables ipset ipvsadm conntrack nftables bird2)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >&2
fi

pkg=${KUBEROUTERD_VM_KERNEL:-$(apt-cache depends linux-image-amd64 2>/dev/null |
  awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')}
[[ -n "$pkg" ]] || { log "cannot resolve the Debian kernel package behind linux-image-amd64"; exit 1; }
kver=${pkg#linux-image-}

# Concurrent runs (several engineers, several tiers) build the cache once, one at a time.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# 1. Kernel package, extracted once per version.
kdir="$cache/kernel-$kver"
if [[ ! -f "$kdir/.done" ]]; then
  log "downloading $pkg"
  rm -rf "$kdir" && mkdir -p "$kdir"
  (cd "$kdir" && apt-get download "$pkg" >&2 2>/dev/null) ||
    (cd "$kdir" && apt-get download "$pkg" >&2)
  dpkg-deb -x "$kdir"/"$pkg"_*.deb "$kdir/root"
  rm -f "$kdir"/"$pkg"_*.deb
  # The package ships no modules.dep; modprobe needs it to resolve dependencies.
  depmod -b "$kdir/root" "$kver"
  touch "$kdir/.done"
fi
kroot="$kdir/root"

# 2. Initramfs, keyed by the kernel, this script, the guest init and the host userland.
key=$( {
  echo "$kver"
  cat "$0" "$here/init"
  dpkg-query -W -f='${Package} ${Version}\n' "${host_packages[@]}" libc6
} | sha256sum | cut -c1-16)
out="$cache/image-$key"
if [[ -f "$out/initrd.gz" && -f "$out/vmlinuz" ]]; then echo "$out"; exit 0; fi

t0=$SECONDS
stage=$(mktemp -d "${TMPDIR:-/tmp}/kube-routerd-vm-image.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib/modules,usr/lib64,etc,proc,sys,dev,run,tmp,root,mnt,var}
# Merged /usr like Debian 12, so the host's paths (binaries, ldd's libraries, symlinks
# between them) resolve the same way in the guest.
for d in bin sbin lib lib64; do ln -s "usr/$d" "$stage/$d"; done
ln -s ../run "$stage/var/run"

# Copies a file with the shared libraries ldd reports, keeping their paths.
copy_with_libs() {
  local f
  cp -P --parents "$@" "$stage"
  for f in "$@"; do
    if [[ -L "$f" ]]; then cp --parents "$(readlink -f "$f")" "$stage"; fi
  done
  # ldd prints "lib => /path (addr)" and, for the loader, "/path (addr)".
  ldd "$@" 2>/dev/null | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' |
    sort -u | xargs cp --parents -L -t "$stage"
}

copy_with_libs /usr/bin/bash /usr/bin/kmod /usr/sbin/ip /usr/sbin/ipset /usr/sbin/ipvsadm /usr/sbin/conntrack \
  /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft
# BIRD plays an outside router; birdcl is its client without readline and terminfo.
copy_with_libs /usr/sbin/bird /usr/sbin/birdcl
for t in modprobe insmod rmmod lsmod modinfo depmod; do ln -s /usr/bin/kmod "$stage/usr/sbin/$t"; done
# iptables front ends: the default variant follows the host's alternatives (nft here).
for fam in iptables ip6tables; do
  for suffix in "" -save -restore; do
    ln -sf xtables-legacy-multi "$stage/usr/sbin/$fam-legacy$suffix"
    ln -sf xtables-nft-multi "$stage/usr/sbin/$fam-nft$suffix"
    ln -sf "$(basename "$(readlink -f "/usr/sbin/$fam$suffix")")" "$stage/usr/sbin/$fam$suffix"
  done
done
# iptables extensions are dlopen'ed, so ldd of the binary does not list them.
copy_with_libs /usr/lib/x86_64-linux-gnu/xtables/*.so
for f in /etc/protocols /etc/services /etc/ethertypes /etc/iproute2 /usr/share/iproute2; do
  [[ -e "$f" ]] && cp -rP --parents "$f" "$stage"
done
# busybox fills in every tool the Debian userland above does not provide. Scripts run
# under bash: busybox sh would run its own applets (ip, modprobe) instead of the real tools.
ln -s bash "$stage/usr/bin/sh"
cp /usr/bin/busybox "$stage/usr/bin/busybox"
for applet in $(busybox --list); do
  have=0
  for d in usr/bin usr/sbin; do [[ -e "$stage/$d/$applet" || -L "$stage/$d/$applet" ]] && have=1; done
  ((have)) || ln -s busybox "$stage/usr/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"

# Kernel modules: everything netfilter, IPVS, ipset, tunnels and bridging need, the virtio
# devices of the VM, and the 9p share, each with its dependency closure.
mods=(
  ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh ip_vs_sh
  ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh ip_vs_ftp
  dummy ipip tunnel4 ip_tunnel ip6_tunnel tunnel6 fou fou6 veth bridge br_netfilter vxlan 8021q sctp crc32c_generic xfrm_user
  virtio_pci virtio_net 9p 9pnet_virtio
)
mdir="$kroot/lib/modules/$kver/kernel"
for d in net/netfilter net/ipv4/netfilter net/ipv6/netfilter net/bridge/netfilter; do
  while read -r ko; do mods+=("$(basename "${ko%.ko*}")"); done < <(find "$mdir/$d" -name '*.ko*')
done
modprobe -d "$kroot" -S "$kver" --show-depends -a "${mods[@]}" |
  awk -v p="$kroot/" '$1=="insmod" {sub(p, "", $2); print $2}' | sort -u |
  (cd "$kroot" && xargs cp --parents -t "$stage")
cp "$kroot/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$stage/lib/modules/$kver/"
depmod -b "$stage" "$kver"
# Loaded at boot: the VM's devices, what the netns helpers' sysctls need (br_netfilter) and
# the families node tests use; everything else autoloads on demand (kernel.modprobe).
# xfrm_user and nfnetlink: vishvananda/netlink handles open NETLINK_XFRM and NETLINK_NETFILTER.
printf '%s\n' virtio_pci virtio_net 9pnet_virtio 9p ip_vs ip_vs_rr nf_conntrack dummy ipip ip6_tunnel \
  veth bridge br_netfilter ip_set sctp xfrm_user nfnetlink >"$stage/etc/vm-modules"

install -m 0755 "$here/init" "$stage/init"

mkdir -p "$out.tmp"
(cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out.tmp/initrd.gz"
cp "$kroot/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
rm -rf "$out" && mv "$out.tmp" "$out"
# Images of older scripts or kernels are never used again (qemu reads them at start only).
find "$cache" -mindepth 1 -maxdepth 1 -name 'image-*' ! -path "$out" -exec rm -rf {} +
find "$cache" -mindepth 1 -maxdepth 1 -name 'kernel-*' ! -path "$kdir" -exec rm -rf {} +
log "built $out ($kver, $(du -h "$out/initrd.gz" | cut -f1) initramfs) in $((SECONDS - t0)) s"
echo "$out"
