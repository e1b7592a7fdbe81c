#!/bin/sh
# customize.sh ROOT GUEST_DIR — mmdebstrap's customize hook for the node tier's image
# (see ../image.sh): the local apt repository that holds the package's dependencies, and
# what turns the root file system into a bootable node that runs the tests.
set -eu
root=$1 guest=$2

# The local repository: what the image lacks of the listed packages (and their
# dependencies), downloaded against the image's own package state.
repo=/var/local/kube-routerd-deps
mkdir -p "$root$repo/partial"
# shellcheck disable=SC2086 # a list of package names
APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-get install --download-only -y -qq \
  -o Dir::Cache::Archives="$root$repo/" $KUBEROUTERD_NODE_REPO_PACKAGES
rm -rf "$root$repo/partial" "$root$repo/lock"
(cd "$root$repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null)
# The node is offline: the local repository is its only apt source.
rm -f "$root"/etc/apt/sources.list.d/* "$root"/var/lib/apt/lists/*_*
echo "deb [trusted=yes] file:$repo ./" >"$root/etc/apt/sources.list"
chroot "$root" apt-get update -qq

echo node-1 >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tnode-1\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# A fixed machine id: with none, systemd treats every boot as the first and asks
# systemd-firstboot questions on the console.
echo 4b7e1d2c9a0f4e8b8c6d5a3f2e1b0c9d >"$root/etc/machine-id"
echo 'LABEL=krd-node / ext4 defaults 0 0' >"$root/etc/fstab"
install -m 0644 "$guest/interfaces" "$root/etc/network/interfaces"

install -m 0755 "$guest/kube-routerd-node-test" "$root/usr/local/sbin/kube-routerd-node-test"
install -m 0644 "$guest/kube-routerd-node-test.service" "$root/etc/systemd/system/"
ln -sf /etc/systemd/system/kube-routerd-node-test.service \
  "$root/etc/systemd/system/multi-user.target.wants/kube-routerd-node-test.service"
# Timers that would run apt or disk jobs in the middle of a test.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# mmdebstrap's build-time settings (no docs, no recommends) are not the operator's.
rm -f "$root/etc/dpkg/dpkg.cfg.d/99mmdebstrap" "$root/etc/apt/apt.conf.d/99mmdebstrap"
