#!/usr/bin/env bash
# test.sh — the body of `make test`. Four tiers, each with a timeout:
#   1. unit:        go test ./...  (fakes only; no root, no network)
#   2. integration: go test -tags integration -p 1  (root: network namespaces with real
#                   iptables/ipset/routes/veth/bridge, and a real kube-apiserver + etcd)
#   3. vm:          hack/vm/run-tests.sh  (-tags vm tests inside a qemu VM with Debian's
#                   kernel: IPVS, dummy, ipip)
#   4. node:        hack/node/run-tests.sh  (-tags node: the .deb installed and run by
#                   systemd on a Debian machine in qemu, as an operator runs it)
# It first installs what is missing (hack/deps.sh, hack/kube-bin.sh). The last line of
# output is always `N passed, N failed, N skipped` (top-level tests; a package that
# fails without a failing test, e.g. a build error, counts as one failure). The exit
# status is non-zero if anything failed. Under CI=true a skipped test in the
# integration or VM tier counts as a failure: CI must not pass by skipping.
#
# Environment (optional):
#   KUBEROUTERD_TEST_TIERS   tiers to run, default "unit integration vm node"
#   KUBEROUTERD_TEST_LOGS    directory for the full logs (default: a new dir under /tmp)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export GOTOOLCHAIN=local
tiers=${KUBEROUTERD_TEST_TIERS:-unit integration vm node}
logs=${KUBEROUTERD_TEST_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/kube-routerd-test.XXXXXX")}
mkdir -p "$logs"
ci=false
[[ ${CI:-} == true ]] && ci=true

total_pass=0 total_fail=0 total_skip=0
table=()
say() { echo "test: $*" >&2; }
now() { date +%s; }

# record TIER PASS FAIL SKIP SECONDS [NOTE]: adds a tier's counts to the totals.
record() {
  local tier=$1 pass=$2 fail=$3 skip=$4 secs=$5 note=${6:-}
  if [[ $ci == true && $tier != unit && $skip -gt 0 ]]; then
    note="${note:+$note; }$skip skipped under CI=true count as failed"
    fail=$((fail + skip))
  fi
  total_pass=$((total_pass + pass)) total_fail=$((total_fail + fail)) total_skip=$((total_skip + skip))
  table+=("$(printf '%-12s %4d passed %4d failed %4d skipped %5ds  %s' "$tier" "$pass" "$fail" "$skip" "$secs" "$note")")
}

# summarize_json COUNTS: reads `go test -json` on stdin, prints package results, the
# output of failed tests and the reason of skipped ones, and writes "pass fail skip" to COUNTS.
summarize_json() {
  awk -v counts="$1" '
    function str(name,   v) {
      if (!match($0, "\"" name "\":\"([^\"\\\\]|\\\\.)*\"")) return ""
      v = substr($0, RSTART + length(name) + 4, RLENGTH - length(name) - 5)
      gsub(/\\n/, "\n", v); gsub(/\\t/, "\t", v); gsub(/\\"/, "\"", v)
      gsub(/\\u003c/, "<", v); gsub(/\\u003e/, ">", v); gsub(/\\u0026/, "\\&", v); gsub(/\\\\/, "\\", v)
      return v
    }
    function elapsed() { return match($0, /"Elapsed":[0-9.]+/) ? substr($0, RSTART + 10, RLENGTH - 10) : "" }
    {
      action = str("Action"); pkg = str("Package"); test = str("Test")
      if (action == "build-output") { printf "%s", str("Output"); next }
      top = test; sub(/\/.*/, "", top)
      key = pkg " " top
      if (action == "output") { buf[key] = buf[key] str("Output"); next }
      if (test != "" && test == top) {
        if (action == "pass") { pass++; delete buf[key] }
        else if (action == "fail") { fail++; failedin[pkg] = 1; printf "--- FAIL %s %s\n%s", pkg, test, buf[key]; delete buf[key] }
        else if (action == "skip") {
          skip++; reason = buf[key]; n = split(reason, lines, "\n"); reason = ""
          for (i = 1; i <= n; i++) if (lines[i] !~ /^(=== |--- )/ && lines[i] != "") reason = reason lines[i] " "
          gsub(/ +/, " ", reason); printf "--- SKIP %s %s:%s\n", pkg, test, reason; delete buf[key]
        }
      } else if (test == "") {
        if (action == "pass") printf "ok   %s %.2fs\n", pkg, elapsed()
        else if (action == "fail") {
          printf "FAIL %s %.2fs\n", pkg, elapsed()
          if (!failedin[pkg]) { fail++; printf "%s", buf[key] }
        }
      }
    }
    END { print pass + 0, fail + 0, skip + 0 > counts }'
}

# summarize_verbose COUNTS: the same for `go test -v`-style output (the VM runners').
summarize_verbose() {
  awk -v counts="$1" '
    { print; fflush() }
    /^--- PASS: / { pass++ }
    /^--- FAIL: / { fail++; since++ }
    /^--- SKIP: / { skip++ }
    /SKIP: cannot run the (VM|node) tier/ { skip++ }
    /^ok  / { since = 0 }
    /^FAIL\t/ { if (!since) fail++; since = 0 }
    END { print pass + 0, fail + 0, skip + 0 > counts }'
}

# run_go_tier TIER TIMEOUT [go test args...]
run_go_tier() {
  local tier=$1 timeout=$2 start rc=0
  shift 2
  start=$(now)
  say "tier $tier: go test $* (log: $logs/$tier.json)"
  go test -json -timeout "$timeout" "$@" 2>&1 | tee "$logs/$tier.json" | summarize_json "$logs/$tier.counts"
  rc=${PIPESTATUS[0]}
  read -r p f s <"$logs/$tier.counts"
  if ((rc != 0 && f == 0)); then f=1; fi # go test failed without reporting a failed test
  record "$tier" "$p" "$f" "$s" $(($(now) - start))
}

# Packages with test files under a build tag.
tagged_packages() {
  grep -rlE --include='*_test.go' "^//go:build .*\\b$1\\b" --exclude-dir=.git --exclude-dir=hack . |
    xargs -r -n1 dirname | sort -u
}

start=$(now)
if ! bash hack/deps.sh; then
  record deps 0 1 0 $(($(now) - start)) "hack/deps.sh failed"
fi
if [[ $tiers == *integration* || $tiers == *vm* || $tiers == *node* ]]; then
  start=$(now)
  if assets=$(bash hack/kube-bin.sh); then
    export KUBEBUILDER_ASSETS=$assets
    say "KUBEBUILDER_ASSETS=$assets ($(($(now) - start)) s)"
  elif [[ $ci == true ]]; then
    record kube-bin 0 1 0 $(($(now) - start)) "hack/kube-bin.sh failed"
  else
    say "hack/kube-bin.sh failed: tests that need a control plane will skip"
  fi
fi

for tier in $tiers; do
  case $tier in
  unit)
    run_go_tier unit 10m ./...
    ;;
  integration)
    if ((EUID != 0)); then say "integration tier: not root, tests that need root will skip (fail under CI=true)"; fi
    mapfile -t pkgs < <(tagged_packages integration)
    if ((${#pkgs[@]})); then
      # -p 1: packages share the host's netfilter modules and CPU; one control plane at a time.
      # -count=1: go test cannot see the kernel or API server these tests use, so a
      # cached result would prove nothing.
      run_go_tier integration 20m -count=1 -tags integration -p 1 "${pkgs[@]}"
    fi
    ;;
  vm)
    start=$(now)
    if [[ -f hack/vm/run-tests.sh ]]; then
      # test/demo's VM scene runs the daemon `make build` leaves in bin/ (the guest has no Go).
      make --no-print-directory build >&2 || say "make build failed: the demo's VM scene will skip"
      say "tier vm: hack/vm/run-tests.sh (log: $logs/vm.log)"
      bash hack/vm/run-tests.sh 2>&1 | tee "$logs/vm.log" | summarize_verbose "$logs/vm.counts"
      rc=${PIPESTATUS[0]}
      read -r p f s <"$logs/vm.counts"
      if ((rc != 0 && f == 0)); then f=1; fi
      record vm "$p" "$f" "$s" $(($(now) - start))
    else
      record vm 0 0 1 0 "hack/vm/run-tests.sh is missing"
    fi
    ;;
  node)
    start=$(now)
    say "tier node: hack/node/run-tests.sh (log: $logs/node.log)"
    bash hack/node/run-tests.sh 2>&1 | tee "$logs/node.log" | summarize_verbose "$logs/node.counts"
    rc=${PIPESTATUS[0]}
    read -r p f s <"$logs/node.counts"
    if ((rc != 0 && f == 0)); then f=1; fi
    record node "$p" "$f" "$s" $(($(now) - start))
    ;;
  *)
    say "unknown tier $tier"
    record "$tier" 0 1 0 0 "unknown tier"
    ;;
  esac
done

echo
printf '%s\n' "${table[@]}"
echo "logs: $logs"
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
((total_fail == 0))
