#!/usr/bin/env bash
# run-tests.sh — run the `vm`-tagged Go tests inside a qemu VM that boots Debian's kernel,
# which has what the host kernel lacks (IPVS, dummy, ipip).
#
# Usage: hack/vm/run-tests.sh [-test.flag[=value] ...] [package ...]
#   Packages default to every package with a `//go:build ... vm` test file. Flags starting
#   with -test. go to every test binary (e.g. -test.run=Smoke, -test.count 2).
#
# It builds the test binaries (go test -c -tags vm), starts etcd and kube-apiserver on
# the host's loopback, boots the VM once (qemu TCG, no KVM) with the source tree and a run
# directory shared over 9p, runs each binary with -test.v in its package directory and
# streams the output. Output has go test's `--- PASS`/`--- FAIL` and `ok`/`FAIL` lines.
# The exit status is non-zero if any package failed or the VM did not finish.
#
# The guest reaches only the API server: qemu user networking with restrict=on and one
# forward, guest 10.0.2.100:6443 -> host 127.0.0.1:<apiserver port>. Inside the guest,
# KUBEROUTERD_TEST_KUBECONFIG points at a kubeconfig for it and KUBEROUTERD_VM=1.
#
# Environment (optional):
#   CI=true                  a VM that cannot be set up or booted fails instead of skipping
#   KUBEROUTERD_VM_TIMEOUT   seconds for the whole VM run (default 1800)
#   KUBEROUTERD_VM_CPUS      vCPUs (default 2)
#   KUBEROUTERD_VM_MEMORY    guest memory in MiB (default 2048)
#   KUBEROUTERD_VM_KEEP_RUN  1 keeps the run directory (binaries, console log) for debugging
#   KUBEROUTERD_VM_KUBE_PROXY  a kube-proxy binary to ship to the guest (`hack/kube-bin.sh
#                            kube-proxy` builds one); tests find it at $KUBEROUTERD_KUBE_PROXY
#   KUBEROUTERD_BENCH_OUT    a host directory: benchmarks in the guest see their own
#                            $KUBEROUTERD_BENCH_OUT, and what they leave there (profiles) is
#                            copied here after the run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
vm_timeout=${KUBEROUTERD_VM_TIMEOUT:-1800}
vm_cpus=${KUBEROUTERD_VM_CPUS:-2}
vm_memory=${KUBEROUTERD_VM_MEMORY:-2048}
apiserver_guest_addr=10.0.2.100:6443
# shellcheck source=hack/vm/control-plane.sh
source "$here/control-plane.sh"

log() { echo "vm: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

# A missing prerequisite skips the tier locally but fails it under CI.
cannot_run() {
  if [[ ${CI:-} == true ]]; then
    log "FAIL: cannot run the VM tier: $*"
    exit 1
  fi
  log "SKIP: cannot run the VM tier: $*"
  exit 0
}

test_flags=(-test.timeout=15m)
packages=()
while (($#)); do
  case "$1" in
  -test.*=* | -test.v | -test.short | -test.failfast) test_flags+=("$1") ;;
  -test.*)
    (($# >= 2)) || { log "flag $1 needs a value"; exit 2; }
    test_flags+=("$1=$2")
    shift
    ;;
  -*) log "unknown flag $1 (test binary flags start with -test.)"; exit 2 ;;
  *) packages+=("$1") ;;
  esac
  shift
done

cd "$root"
if ((${#packages[@]} == 0)); then
  mapfile -t dirs < <(grep -rlE --include='*_test.go' '^//go:build .*\bvm\b' \
    --exclude-dir=.git --exclude-dir=hack . | xargs -r -n1 dirname | sort -u)
  if ((${#dirs[@]} == 0)); then log "no packages with vm-tagged tests"; exit 0; fi
  packages=("${dirs[@]}")
fi

host_packages=(qemu-system-x86 socat)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >&2 || cannot_run "apt-get install ${missing[*]} failed"
fi
image=$("$here/image.sh") || cannot_run "building the VM image failed"
kube_bin=$("$root/hack/kube-bin.sh") || cannot_run "building kube-apiserver and etcd failed"

run=$(mktemp -d "${TMPDIR:-/tmp}/kube-routerd-vm-run.XXXXXX")
qemu_pid="" etcd_pid="" apiserver_pid=""
cleanup() {
  local rc=$?
  set +e
  for pid in $qemu_pid $apiserver_pid $etcd_pid; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in $qemu_pid $apiserver_pid $etcd_pid; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ ${KUBEROUTERD_VM_KEEP_RUN:-0} == 1 ]]; then log "kept $run"; else rm -rf "$run"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$run/bin" "$run/status"

# 1. Static test binaries, one per package.
failed=0
: >"$run/plan"
build_start=$(now)
while IFS=$'\t' read -r pkg dir; do
  name=${pkg#"$(go list -m)"/}
  name=${name//\//_}.test
  # The guest has the host's glibc, so the binaries build like every other tier's and
  # share their build cache; vet ran in the unit tier.
  if ! go test -c -vet=off -tags vm -o "$run/bin/$name" "$pkg"; then
    printf 'FAIL\t%s [build failed]\n' "$pkg"
    failed=1
    continue
  fi
  # A package without vm tests builds no binary.
  [[ -x "$run/bin/$name" ]] && printf '%s\t%s\t%s\n' "$name" "$pkg" "$dir" >>"$run/plan"
done < <(go list -tags vm -f '{{.ImportPath}}{{"\t"}}{{.Dir}}' "${packages[@]}")
log "built $(wc -l <"$run/plan") test binaries in $(since "$build_start") s"
if [[ ! -s "$run/plan" ]]; then exit "$failed"; fi

# 2. etcd and kube-apiserver on the host's loopback, for tests that need a real API server.
cp_start=$(now)
start_control_plane "$run" "$apiserver_guest_addr" "$kube_bin" || cannot_run "the control plane did not become ready"
log "control plane ready in $(since "$cp_start") s (kube-apiserver 127.0.0.1:$apiserver_port, guest $apiserver_guest_addr)"

# 3. The VM: test output on the second serial port (streamed here), kernel console to a file.
printf '%s\n' "${test_flags[@]}" >"$run/flags"
if [[ -n ${CI:-} ]]; then printf 'export CI=%q\n' "$CI" >>"$run/env"; fi
if [[ -n ${KUBEROUTERD_VM_KUBE_PROXY:-} ]]; then
  cp "$KUBEROUTERD_VM_KUBE_PROXY" "$run/bin/kube-proxy"
  echo "export KUBEROUTERD_KUBE_PROXY=/mnt/run/bin/kube-proxy" >>"$run/env"
fi
# Modules whose files (not embedded in Go) tests read: the guest has no module cache.
vm_modules=(sigs.k8s.io/network-policy-api)
for m in "${vm_modules[@]}"; do
  mkdir -p "$run/modules/$m"
  cp -r --no-preserve=mode "$(go list -m -f '{{.Dir}}' "$m")/config" "$run/modules/$m/"
done
echo "export KUBEROUTERD_MODULES=/mnt/run/modules" >>"$run/env"
if [[ -n ${KUBEROUTERD_BENCH_OUT:-} ]]; then
  mkdir -p "$run/bench-out"
  echo "export KUBEROUTERD_BENCH_OUT=/mnt/run/bench-out" >>"$run/env"
fi
install -m 0755 "$here/guest-run.sh" "$run/guest-run.sh"
mkfifo "$run/output"
boot_start=$(now)
timeout -k 10 "$vm_timeout" qemu-system-x86_64 -accel tcg -cpu max -smp "$vm_cpus" -m "$vm_memory" \
  -display none -monitor none -no-reboot \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet kr.src=$root" \
  -serial "file:$run/console.log" -chardev stdio,id=out,signal=off -serial chardev:out \
  -virtfs "local,path=$run,mount_tag=run,security_model=none" \
  -virtfs "local,path=$root,mount_tag=src,security_model=none,readonly=on" \
  -netdev "user,id=net0,restrict=on,guestfwd=tcp:$apiserver_guest_addr-cmd:socat STDIO TCP:127.0.0.1:$apiserver_port" \
  -device virtio-net-pci,netdev=net0 \
  </dev/null >"$run/output" 2>"$run/qemu.err" &
qemu_pid=$!
booted=0
while IFS= read -r line; do
  if [[ $booted == 0 && $line == "vm: ready after "* ]]; then
    booted=1
    log "booted in $(since "$boot_start") s (${line#vm: ready after })"
    continue
  fi
  printf '%s\n' "$line"
done <"$run/output"
vm_rc=0
wait "$qemu_pid" || vm_rc=$?
qemu_pid=""
log "VM ran $(since "$boot_start") s, qemu exit status $vm_rc"
if [[ -n ${KUBEROUTERD_BENCH_OUT:-} ]] && compgen -G "$run/bench-out/*" >/dev/null; then
  mkdir -p "$KUBEROUTERD_BENCH_OUT" && cp -r "$run/bench-out/." "$KUBEROUTERD_BENCH_OUT/"
  log "copied the guest's bench output to $KUBEROUTERD_BENCH_OUT"
fi
if ((vm_rc == 124)); then log "the VM run exceeded ${vm_timeout} s and was killed"; fi
if [[ $booted == 0 ]]; then
  log "the VM did not boot; qemu said:"
  cat "$run/qemu.err" >&2
  log "last console lines:"
  tail -30 "$run/console.log" >&2 || true
  log "FAIL: the VM tier did not run"
  exit 1
fi

# 4. Per-package results; a binary without a status did not finish inside the VM.
passed=0 not_passed=0
while IFS=$'\t' read -r name pkg _; do
  if [[ -f "$run/status/$name" ]]; then
    read -r rc took <"$run/status/$name"
    if ((rc == 0)); then
      passed=$((passed + 1))
      log "$pkg passed in $took s"
    else
      failed=1 not_passed=$((not_passed + 1))
      log "$pkg failed (exit $rc) in $took s"
    fi
  else
    failed=1 not_passed=$((not_passed + 1))
    printf 'FAIL\t%s [did not finish in the VM]\n' "$pkg"
  fi
done <"$run/plan"
if ((failed)); then
  tail -30 "$run/console.log" >&2 || true
fi
log "packages in the VM: $passed passed, $not_passed failed (build failures are listed above)"
exit "$failed"
