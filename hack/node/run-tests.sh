#!/usr/bin/env bash
# run-tests.sh — the node tier: kube-routerd's packages installed and run the way an
# operator runs them, on a Debian 12 machine with systemd as PID 1 (qemu, TCG).
#
# Usage: hack/node/run-tests.sh [-test.flag[=value] ...]
#   Flags starting with -test. go to the test binary (e.g. -test.run=Node/install).
#
# It builds two versions of the .deb and .rpm (make package with BIN and DIST in the run
# directory, so bin/ and dist/ are left alone), the `node`-tagged test binary of
# test/node, the machine image (image.sh, cached), starts etcd and kube-apiserver on the
# host's loopback (hack/vm/control-plane.sh) and boots the machine once. Its root disk
# is the cached image with snapshot=on: writes go to a throw-away overlay in the run
# directory. After boot, kube-routerd-node-test.service mounts the run directory over
# 9p and runs guest-run.sh, which runs the test binary as root; its output streams back
# over the second serial port, the console goes to console.log and the guest's journal
# to journal.txt in the run directory (shown in part when something fails).
#
# The guest reaches only the API server: qemu user networking with restrict=on and one
# forward, guest 10.0.2.100:6443 -> host 127.0.0.1:<apiserver port>.
#
# Environment (optional):
#   CI=true                    a machine that cannot be set up or booted fails instead of skipping
#   KUBEROUTERD_NODE_TIMEOUT   seconds for the whole machine run (default 1200)
#   KUBEROUTERD_NODE_CPUS      vCPUs (default 2)
#   KUBEROUTERD_NODE_MEMORY    guest memory in MiB (default 2048)
#   KUBEROUTERD_NODE_KEEP_RUN  1 keeps the run directory (packages, logs, journal)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
node_timeout=${KUBEROUTERD_NODE_TIMEOUT:-1200}
node_cpus=${KUBEROUTERD_NODE_CPUS:-2}
node_memory=${KUBEROUTERD_NODE_MEMORY:-2048}
apiserver_guest_addr=10.0.2.100:6443
# The guest's host name, so the Node object's name; and the identity its kubeconfig has.
node_name=node-1
node_user=system:kube-routerd:$node_name
# The package versions: the first install, and the upgrade.
versions=(1.0.0 1.0.1)
# shellcheck source=hack/vm/control-plane.sh
source "$root/hack/vm/control-plane.sh"

log() { echo "node: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

# A missing prerequisite skips the tier locally but fails it under CI.
cannot_run() {
  if [[ ${CI:-} == true ]]; then
    log "FAIL: cannot run the node tier: $*"
    exit 1
  fi
  log "SKIP: cannot run the node tier: $*"
  exit 0
}

test_flags=(-test.timeout=15m)
while (($#)); do
  case "$1" in
  -test.*=* | -test.v | -test.short | -test.failfast) test_flags+=("$1") ;;
  -test.*)
    (($# >= 2)) || { log "flag $1 needs a value"; exit 2; }
    test_flags+=("$1=$2")
    shift
    ;;
  *) log "unknown argument $1 (test binary flags start with -test.)"; exit 2 ;;
  esac
  shift
done

cd "$root"
host_packages=(qemu-system-x86 socat openssl curl)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    cannot_run "apt-get install ${missing[*]} failed"
fi
image_start=$(now)
image=$("$here/image.sh") || cannot_run "building the node image failed"
log "image ready in $(since "$image_start") s: $image"
kube_bin=$("$root/hack/kube-bin.sh") || cannot_run "building kube-apiserver and etcd failed"

run=$(mktemp -d "${TMPDIR:-/tmp}/kube-routerd-node-run.XXXXXX")
qemu_pid="" etcd_pid="" apiserver_pid="" hang_guard_pid=""
cleanup() {
  local rc=$?
  set +e
  for pid in $hang_guard_pid $qemu_pid $apiserver_pid $etcd_pid; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in $hang_guard_pid $qemu_pid $apiserver_pid $etcd_pid; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ ${KUBEROUTERD_NODE_KEEP_RUN:-0} == 1 ]]; then log "kept $run"; else rm -rf "$run"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The packages (both versions, as the release process builds them) and the test binary.
build_start=$(now)
for v in "${versions[@]}"; do
  if ! make --no-print-directory -s package VERSION="$v" BIN="$run/build/$v/kube-routerd" DIST="$run/dist" >"$run/build.log" 2>&1; then
    cat "$run/build.log" >&2
    log "FAIL: make package VERSION=$v failed"
    exit 1
  fi
done
# Static like the packaged binary (the Makefile's flags), so it shares the build cache.
if ! CGO_ENABLED=0 go test -c -vet=off -trimpath -tags node -o "$run/node.test" ./test/node; then
  printf 'FAIL\t%s [build failed]\n' "$(go list -m)/test/node"
  exit 1
fi
log "built the packages and the test binary in $(since "$build_start") s"

# 2. The control plane; the node's kubeconfig is for an identity in system:kube-routerd.
cp_start=$(now)
start_control_plane "$run" "$apiserver_guest_addr" "$kube_bin" "$node_user" ||
  cannot_run "the control plane did not become ready"
log "control plane ready in $(since "$cp_start") s (kube-apiserver 127.0.0.1:$apiserver_port, guest $apiserver_guest_addr)"

# 3. The machine.
printf '%s\n' "${test_flags[@]}" >"$run/flags"
{
  printf 'export KUBEROUTERD_NODE_NAME=%q\n' "$node_name"
  printf 'export KUBEROUTERD_NODE_DEB=%q\n' "/mnt/run/dist/kube-routerd_${versions[0]}-1_amd64.deb"
  printf 'export KUBEROUTERD_NODE_UPGRADE_DEB=%q\n' "/mnt/run/dist/kube-routerd_${versions[1]}-1_amd64.deb"
  if [[ -n ${CI:-} ]]; then printf 'export CI=%q\n' "$CI"; fi
} >"$run/env"
install -m 0755 "$here/guest-run.sh" "$run/guest-run.sh"
mkfifo "$run/output"
boot_start=$(now)
# snapshot=on keeps the root disk's writes in a temporary file under TMPDIR.
TMPDIR=$run timeout -k 10 "$node_timeout" qemu-system-x86_64 -accel tcg -cpu max -smp "$node_cpus" -m "$node_memory" \
  -display none -monitor none -no-reboot \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet" \
  -drive "file=$image/root.img,format=raw,if=virtio,snapshot=on" \
  -serial "file:$run/console.log" -chardev stdio,id=out,signal=off -serial chardev:out \
  -virtfs "local,path=$run,mount_tag=run,security_model=none" \
  -netdev "user,id=net0,restrict=on,guestfwd=tcp:$apiserver_guest_addr-cmd:socat STDIO TCP:127.0.0.1:$apiserver_port" \
  -device virtio-net-pci,netdev=net0 \
  </dev/null >"$run/output" 2>"$run/qemu.err" &
qemu_pid=$!
booted=0
while IFS= read -r line; do
  if [[ $booted == 0 && $line == "node: booted "* ]]; then
    booted=1
    log "booted in $(since "$boot_start") s (${line#node: booted })"
    continue
  fi
  if [[ $line == "node: done" ]]; then
    # The machine powers itself off now; should it hang on the way, the results are
    # in already.
    (sleep 60 && kill "$qemu_pid" 2>/dev/null) &
    hang_guard_pid=$!
    continue
  fi
  printf '%s\n' "$line"
done <"$run/output"
node_rc=0
wait "$qemu_pid" || node_rc=$?
qemu_pid=""
if [[ -n $hang_guard_pid ]]; then
  kill "$hang_guard_pid" 2>/dev/null || true
  wait "$hang_guard_pid" 2>/dev/null || true
  hang_guard_pid=""
fi
log "the machine ran $(since "$boot_start") s, qemu exit status $node_rc"
if ((node_rc == 124)); then log "the machine run exceeded ${node_timeout} s and was killed"; fi
if [[ $booted == 0 ]]; then
  log "the machine did not boot; qemu said:"
  cat "$run/qemu.err" >&2
  log "last console lines:"
  tail -40 "$run/console.log" >&2 || true
  log "FAIL: the node tier did not run"
  exit 1
fi

# 4. The result; without a status the tests did not finish inside the machine.
if [[ -f $run/status ]]; then
  read -r rc took <"$run/status"
  log "test/node ran in $took s, exit status $rc"
else
  rc=1
  printf 'FAIL\t%s [did not finish in the machine]\n' "$(go list -m)/test/node"
fi
if ((rc != 0)); then
  log "last lines of the guest's journal:"
  tail -60 "$run/journal.txt" >&2 2>/dev/null || tail -40 "$run/console.log" >&2 || true
fi
exit "$rc"
