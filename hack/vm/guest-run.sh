#!/bin/bash
# guest-run.sh — runs inside the test VM (started by the VM's init from the run share).
# Runs each test binary of the plan the host wrote, in its package directory (the source
# tree is mounted at the host's path), and leaves its exit status and duration in the run
# share. Prints `ok`/`FAIL` package lines like `go test`.
run=/mnt/run
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "vm: ready after $(uptime_s) s of guest uptime"

export KUBEROUTERD_VM=1
if [[ -f $run/kubeconfig ]]; then export KUBEROUTERD_TEST_KUBECONFIG=$run/kubeconfig; fi
# shellcheck source=/dev/null
if [[ -f $run/env ]]; then source "$run/env"; fi
mapfile -t flags <"$run/flags"
mkdir -p "$run/status"

while IFS=$'\t' read -r name pkg dir; do
  [[ -n $name ]] || continue
  start=$(uptime_s)
  rc=0
  (cd "$dir" && exec "$run/bin/$name" -test.v "${flags[@]}") || rc=$?
  took=$(awk -v a="$start" -v b="$(uptime_s)" 'BEGIN {printf "%.2f", b - a}')
  if ((rc == 0)); then
    printf 'ok  \t%s\t%ss\n' "$pkg" "$took"
  else
    printf 'FAIL\t%s\t%ss\n' "$pkg" "$took"
  fi
  echo "$rc $took" >"$run/status/$name"
done <"$run/plan"
