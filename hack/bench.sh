#!/usr/bin/env bash
# bench.sh — the body of `make bench`: speed and memory figures of each controller,
# printed, never asserted. Kernel variants run as root inside throwaway network
# namespaces (integration tag) and need the real API server binaries.
#
# Every full-sync figure starts from an empty dataplane and comes with its spread over
# the runs (min-ms, max-ms; ns/op is the mean), the 1-minute load average while it ran
# (load1: a figure taken on a busy machine is slower) and, on a real kernel, the kernel
# floor measured in the same run: the same end state loaded the cheapest way into a
# fresh namespace (one bare iptables-restore per family, sets and IPVS over batched
# netlink; floor-ms) and x-floor, the full sync over that floor.
set -uo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
status=0
bench() {
  local title=$1
  shift
  echo
  echo "== $title"
  echo "   go test $*"
  go test "$@" 2>&1 | grep -vE '^(goos|goarch|cpu|pkg):' || status=1
}
# Files the benchmarks leave (CPU profiles), outside the source tree's tracked files.
BENCH_OUT=${BENCH_OUT:-bench-out}
mkdir -p "$BENCH_OUT" || exit 1
KUBEROUTERD_BENCH_OUT=$(cd "$BENCH_OUT" && pwd)
export KUBEROUTERD_BENCH_OUT
bash hack/deps.sh
# kube-proxy too: the side-by-side comparison below runs it.
KUBEBUILDER_ASSETS=$(bash hack/kube-bin.sh kube-proxy) || exit 1
export KUBEBUILDER_ASSETS

bench "service proxy: full sync and single change, 1,000 and 10,000 Services x 10 endpoints (fake IPVS)" \
  -run '^$' -bench . -benchtime 3x ./internal/proxy/
echo
echo "== service proxy on the VM kernel's IPVS: full sync of 1,000 and 10,000 Services x 10 endpoints"
echo "   (3 runs each, with its kernel floor: VIPs, ledger, IPVS and firewall created in one batch each),"
echo "   a single-Service change and API write -> IPVS latency with 10,000 Services (real API server)."
echo "   load1 in these lines is the guest's; the host's load average: $(cut -d' ' -f1-3 /proc/loadavg) before the VM run."
echo "   The VM is software-emulated (qemu TCG). Two calibrations run in the same VM: the fake-dataplane"
echo "   full sync above (Go code only) and 100,000 ipset adds over netlink (kernel work), whose native"
echo "   figures this script prints too; divide VM times by their ratio to estimate native ones."
echo "   hack/vm/run-tests.sh -test.run='^\$' -test.bench='Kernel|^BenchmarkFullSync\$' -test.benchtime=1x ./internal/proxy ./internal/dataplane/ipset"
KUBEROUTERD_VM_TIMEOUT=3600 hack/vm/run-tests.sh -test.run='^$' -test.bench='Kernel|^BenchmarkFullSync$' -test.benchtime=1x \
  -test.timeout=55m ./internal/proxy ./internal/dataplane/ipset 2>&1 |
  grep -E '^(Benchmark|    bench_vm_test|ok|FAIL|--- FAIL|vm: .*(passed|failed))' || status=1
echo "   host load average after the VM run: $(cut -d' ' -f1-3 /proc/loadavg)"
bench "calibration, native: 100,000 ipset adds over netlink in a namespace (the same work the VM timed above), and reading 250,000 entries back (B/op: the garbage of one read)" \
  -tags integration -run '^$' -bench 'KernelAddEntries|KernelListAll' -benchtime 3x ./internal/dataplane/ipset/
echo
echo "== service proxy side by side with kube-proxy $("$KUBEBUILDER_ASSETS/kube-proxy" --version 2>/dev/null | cut -d' ' -f2) (the release of the test API server),"
echo "   in one VM run: kube-routerd (bin/kube-routerd, only its service proxy on), kube-proxy in IPVS mode and in"
echo "   nftables mode (defaults but for the node name, cluster CIDR and conntrack sysctls left alone), each its own"
echo "   process in a fresh node namespace, on the same Services in the same API server: 1,000, then 10,000 x 10"
echo "   endpoints. Measured from outside, the same way for each:"
echo "   full-sync-s      process start to the end of the sync after which the kernel held every endpoint (the proxy's"
echo "                    last-sync metric, checked against the kernel); full-sync-cpu-s: CPU of it and its helpers by then"
echo "   change-sync-ms   the sync duration the proxy's own histogram reports for one EndpointSlice change (median of 3)"
echo "   api-to-kernel-*  EndpointSlice update written to the API server until the kernel shows the new endpoint, polled"
echo "                    every 5 ms; kernel-check-ms is one poll (netlink for IPVS, an nft process for nftables)"
echo "   peak-RSS-MiB     VmHWM of the proxy process; max-RSS-with-helpers-MiB: the largest of it and the"
echo "                    iptables-restore, ipset and nft processes it ran"
echo "   The ratio lines are kube-routerd's figure over kube-proxy's (below 1: kube-routerd ahead). kube-proxy's IPVS mode"
echo "   runs at 1,000 Services only: its first sync takes minutes there and grows with the Services. Emulated CPU: compare"
echo "   the ratios, not the absolute times (see the calibrations above)."
echo "   KUBEROUTERD_VM_KUBE_PROXY=\$KUBEBUILDER_ASSETS/kube-proxy hack/vm/run-tests.sh -test.run='^\$' -test.bench='^BenchmarkSideBySide\$' -test.benchtime=1x ./test/proxybench"
KUBEROUTERD_VM_KUBE_PROXY=$KUBEBUILDER_ASSETS/kube-proxy KUBEROUTERD_VM_TIMEOUT=3600 hack/vm/run-tests.sh -test.run='^$' \
  -test.bench='^BenchmarkSideBySide$' -test.benchtime=1x -test.timeout=55m ./test/proxybench 2>&1 |
  grep -E '^(Benchmark|    sidebyside_vm_test|ok|FAIL|--- (FAIL|SKIP)|vm: .*(passed|failed))' || status=1
bench "network policy: full sync of 1,000 policies over 10,000 pods, 2,000 local (in-memory dataplane)" \
  -run '^$' -bench 'ScaleFake/FullSync' -benchtime 10x ./internal/netpol/
bench "network policy: single changes over 2,000 and 10,000 pods (in-memory dataplane)" \
  -run '^$' -bench 'ScaleFake/(PodLabelChange|NewLocalPod|PolicyChange)' -benchtime 40x ./internal/netpol/
profile=$KUBEROUTERD_BENCH_OUT/netpol-fullsync.cpu.pprof
rm -f "$profile"
bench "network policy: full sync at the same scale on the real kernel (iptables-restore + netlink ipset, a fresh namespace per run), with its kernel floor" \
  -tags integration -run '^$' -bench 'ScaleKernel/FullSync' -benchtime 5x -timeout 30m ./internal/netpol/
if [[ -s $profile ]]; then
  echo "   CPU profile of one full sync (this process; iptables-restore is restore-cpu-ms/op): $profile"
  echo "   (go tool pprof -http=: $profile). Top 10 functions:"
  go tool pprof -top -nodecount=10 "$profile" 2>&1 | sed 's/^/   /'
else
  echo "   no CPU profile of the full sync was written"
  status=1
fi
bench "network policy: single changes on the real kernel" \
  -tags integration -run '^$' -bench 'ScaleKernel/(PodLabelChange|NewLocalPod|PolicyChange)' -benchtime 20x -timeout 30m ./internal/netpol/
bench "network policy: single changes with 100 ClusterNetworkPolicies beside the 1,000 policies over 10,000 pods (in-memory dataplane)" \
  -run '^$' -bench 'ScaleFake/ClusterPolicies' -benchtime 40x ./internal/netpol/
bench "network policy: single changes with 100 ClusterNetworkPolicies beside the 1,000 policies over 10,000 pods on the real kernel" \
  -tags integration -run '^$' -bench 'ScaleKernel/ClusterPolicies' -benchtime 20x -timeout 30m ./internal/netpol/
echo
echo "== network policy: pod IP in the API -> enforced, 30 new pods on the real kernel (real API server,"
echo "   min_sync_interval 50ms), each probed from the moment it has its addresses (none of the denied probes may pass)"
echo "   go test -tags integration -run '^TestNewPodsPassNoDeniedPacket\$' -v ./internal/netpol/"
go test -count=1 -tags integration -run '^TestNewPodsPassNoDeniedPacket$' -v ./internal/netpol/ 2>&1 |
  grep -E 'window_integration_test.go:|^(ok|FAIL|--- FAIL)' | sed -E 's/^ *window_integration_test.go:[0-9]+: /   /' || status=1
bench "what the envelope's 150,000 realistic pods hold in the heap as the cache's compact pods, with their share of the interned label maps and port lists (B/pod-held; the informer's map and keys not included)" \
  -tags bench -run '^$' -bench CompactPodsHeld -benchtime 1x ./internal/k8s/
bench "one of the envelope's realistic pods decoded from the API server's protobuf and compacted: whole, as client-go decodes it, and trimmed on the wire to the fields the cache keeps, as the pod informer does (per pod of a start-up's list)" \
  -tags bench -run '^$' -bench DecodePod -benchtime 2s ./internal/k8s/
echo
echo "== one node's daemon in a loaded cluster: fractions of Kubernetes' scalability envelope"
echo "   (5,000 nodes, 150,000 pods, 10,000 Services x 10 endpoints, 1,000 policies; realistic objects),"
echo "   the real kube-routerd (network policy, routing, pod network; no IPVS on this kernel) in a namespace"
echo "   against the real API server: READY, RSS, CPU, single changes to the kernel, a churn of 100 pod"
echo "   changes/s, a burst. KUBEROUTERD_ENVELOPE_SCALES (default \"0.02 0.1\") picks the fractions."
envelope_out=$(mktemp)
for scale in ${KUBEROUTERD_ENVELOPE_SCALES:-0.02 0.1}; do
  echo "   go test -tags integration -run '^\$' -bench NodeInTheEnvelope -benchtime 1x ./test/e2e/ (KUBEROUTERD_ENVELOPE_SCALE=$scale)"
  KUBEROUTERD_ENVELOPE_SCALE=$scale go test -tags integration -run '^$' -bench NodeInTheEnvelope -benchtime 1x -timeout 90m ./test/e2e/ 2>&1 |
    grep -E '^(Benchmark|    envelope_bench|ok|FAIL|--- FAIL)' | tee -a "$envelope_out" || status=1
done
# The cost per object: the slope between the smallest and the largest fraction, and
# the whole envelope extrapolated along it.
awk '/^BenchmarkNodeInTheEnvelope/ {
       for (i = 3; i < NF; i++) v[$(i+1)] = $i
       n++; pods[n] = v["pods"]; rss[n] = v["ready-rss-MiB"]; peak[n] = v["peak-rss-MiB"]; ready[n] = v["ready-s"]
       live[n] = v["ready-live-heap-MiB"]
     }
     function at(y) { return y[n] + (150000 - pods[n]) * (y[n] - y[1]) / d }
     END {
       if (n < 2 || pods[n] == pods[1]) exit
       d = pods[n] - pods[1]
       printf "   per 1,000 pods (with their share of nodes, Services, endpoints, policies): live heap %.2f MiB, RSS %.1f MiB, peak RSS %.1f MiB, READY %.2f s\n",
         1000 * (live[n] - live[1]) / d, 1000 * (rss[n] - rss[1]) / d, 1000 * (peak[n] - peak[1]) / d, 1000 * (ready[n] - ready[1]) / d
       printf "   extrapolated to 150,000 pods: live heap %.0f MiB, RSS %.0f MiB, peak RSS %.0f MiB, READY %.0f s\n",
         at(live), at(rss), at(peak), at(ready)
       print "   (RSS and peak RSS move by 10% from run to run with when the GC runs; the live heap is the steady figure)"
     }' "$envelope_out"
rm -f "$envelope_out"
echo "   a restart at 10,000 pods and 10,000 Services (goal: READY within 2 s), beside the client library's floor:"
echo "   bare client-go informers for the same kinds syncing from the same API server (bare-informers-sync-s)"
echo "   go test -tags integration -run '^\$' -bench NodeInTheEnvelope -benchtime 1x ./test/e2e/ (KUBEROUTERD_ENVELOPE_SCALE=0.0667 KUBEROUTERD_ENVELOPE_SERVICES=10000)"
KUBEROUTERD_ENVELOPE_SCALE=0.0667 KUBEROUTERD_ENVELOPE_SERVICES=10000 go test -tags integration -run '^$' -bench NodeInTheEnvelope -benchtime 1x -timeout 90m ./test/e2e/ 2>&1 |
  grep -E '^(Benchmark|ok|FAIL|--- FAIL)' | tr '\t' '\n' | grep -E 'restart|bare|ready-s|^(ok|FAIL|--- FAIL)' | sed 's/^ */   /' || status=1
bench "load-balancer allocator (real API server): Service created -> address in its status as a watching client sees it (50 one at a time: median, p90, max; then 200 at once), and failover to the first address the next leader gives" \
  -tags integration -run '^$' -bench 'AssignLatency|Failover' -benchtime 1x ./internal/lballoc/
bench "routing: routes from 500 simulated BGP nodes installed in / withdrawn from the kernel (namespace)" \
  -tags bench -run '^$' -bench RoutesFrom500Nodes -benchtime 3x ./internal/routing/
bench "routing: a route reflector client and 5,000 other nodes' pod CIDRs from two BIRD reflectors: start to every route in the kernel (goal < 5 s), all withdrawn / announced again, RSS right after and once the garbage is returned (goal < 150 MiB; the fake API's copy of 5,003 Nodes included), updates sent by the reflectors (namespace)" \
  -tags bench -run '^$' -bench RoutesFrom5000NodesThroughReflectors -benchtime 3x ./internal/routing/
exit $status
