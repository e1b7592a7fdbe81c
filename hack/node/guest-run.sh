#!/bin/bash
# guest-run.sh — runs inside the node tier's machine (started by
# kube-routerd-node-test.service from the run share): runs the test binary as root and
# leaves its exit status and duration, and the boot's journal, in the run share. Prints
# an `ok`/`FAIL` package line like `go test`.
run=/mnt/run
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "node: booted after $(uptime_s) s of guest uptime"

export KUBEROUTERD_NODE=1 KUBEROUTERD_TEST_KUBECONFIG=$run/kubeconfig KUBEROUTERD_NODE_KUBECONFIG=$run/node-kubeconfig
# shellcheck source=/dev/null
source "$run/env"
mapfile -t flags <"$run/flags"
pkg=github.com/kube-routerd/kube-routerd/test/node

start=$(uptime_s)
rc=0
(cd "$run" && exec ./node.test -test.v "${flags[@]}") || rc=$?
took=$(awk -v a="$start" -v b="$(uptime_s)" 'BEGIN {printf "%.2f", b - a}')
if ((rc == 0)); then
  printf 'ok  \t%s\t%ss\n' "$pkg" "$took"
else
  printf 'FAIL\t%s\t%ss\n' "$pkg" "$took"
fi
journalctl -b --no-pager -o short-monotonic >"$run/journal.txt" 2>&1
echo "$rc $took" >"$run/status"
echo "node: done"
