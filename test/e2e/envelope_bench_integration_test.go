//go:build integration

package e2e

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// envelopeScale is the fraction of Kubernetes' scalability envelope (5,000 nodes,
// 150,000 pods, 10,000 Services, 100,000 endpoints, 1,000 policies) that
// BenchmarkNodeInTheEnvelope loads: KUBEROUTERD_ENVELOPE_SCALE, default 0.1.
func envelopeScale(b *testing.B) float64 {
	s := os.Getenv("KUBEROUTERD_ENVELOPE_SCALE")
	if s == "" {
		return 0.1
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 1 {
		b.Fatalf("KUBEROUTERD_ENVELOPE_SCALE=%q: want a fraction in (0, 1]", s)
	}
	return f
}

// envelopeSize is the envelope at envelopeScale, with KUBEROUTERD_ENVELOPE_SERVICES,
// when set, as the number of Services at any scale: a restart at 10,000 pods and
// 10,000 Services is one of the goals.
func envelopeSize(b *testing.B) workload.Size {
	size := workload.Envelope.Scale(envelopeScale(b))
	if s := os.Getenv("KUBEROUTERD_ENVELOPE_SERVICES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("KUBEROUTERD_ENVELOPE_SERVICES=%q: want a number of Services", s)
		}
		size.Services = n
	}
	return size
}

// gcHeadroomConfig sets memory.gc_headroom_mib from KUBEROUTERD_ENVELOPE_GC_HEADROOM_MIB,
// to measure the cap's effect (0 is Go's default); unset, the daemon's default holds.
func gcHeadroomConfig(b *testing.B) string {
	s := os.Getenv("KUBEROUTERD_ENVELOPE_GC_HEADROOM_MIB")
	if s == "" {
		return ""
	}
	if n, err := strconv.Atoi(s); err != nil || n < 0 {
		b.Fatalf("KUBEROUTERD_ENVELOPE_GC_HEADROOM_MIB=%q: want a number of MiB", s)
	}
	return "[memory]\ngc_headroom_mib = " + s + "\n"
}

// BenchmarkNodeInTheEnvelope runs the real kube-routerd (network policy, routing
// and pod network; this kernel has no IPVS) for node 0 of a cluster loaded into the
// real API server with realistic objects (internal/testenv/workload), and reports
// what the daemon costs there: start-up to READY, peak and steady RSS, CPU at
// start-up and when idle, a pod-label and a policy change to the kernel, the watch
// events and API requests it receives under a churn of 100 pod changes/s, and
// how a burst (thousands of pod changes, then a namespace of pods deleted at once)
// coalesces into syncs. After the burst a restart must find the kernel exactly as
// a fresh start computes it: no change was lost; its time to READY is reported.
func BenchmarkNodeInTheEnvelope(b *testing.B) {
	size := envelopeSize(b)
	rc, cs := testenv.APIServer(b)
	loadStart := time.Now()
	loadCluster(b, rc, size)
	b.Logf("loaded %s in %s", size, time.Since(loadStart).Round(time.Second))

	node := netns.NewNode(b, netns.NodeOptions{Name: workload.NodeName(0), PodCIDRv4: workload.PodCIDR(0)})
	// pprof on the node's loopback, for the heap profile written after READY.
	d := setupDaemon(b, node, rc, "node_mesh = false\n[debug]\npprof_listen = \"127.0.0.1:6060\"\n"+gcHeadroomConfig(b))
	// The collector's settings an operator may give the unit (GOMEMLIMIT, GOGC).
	d.Env = strings.Fields(os.Getenv("KUBEROUTERD_ENVELOPE_DAEMON_ENV"))
	controlPlane := testenv.ControlPlanePIDs()
	cpuBefore := procsCPU(b, controlPlane)
	b.ResetTimer()
	ready := d.StartReady(10 * time.Minute)
	b.StopTimer()
	startControlPlaneCPU := procsCPU(b, controlPlane) - cpuBefore
	pid := d.PID()
	startCPU := procCPU(b, pid)
	atReady := samples(b, node)
	startRequests := sumOf(atReady, "kube_routerd_api_requests_total", "")
	heapProfile(b, node, "ready", size)
	// After the GC the heap profile asked for (with KUBEROUTERD_BENCH_OUT) or the one
	// at READY: what the caches and the controllers' state hold, without the GC's
	// headroom. It is the figure whose slope is steadiest from run to run.
	liveHeap := samples(b, node)["go_gc_heap_live_bytes"] / (1 << 20)
	readyRSS := procMemMiB(b, pid, "VmRSS")
	// The executable's pages in RSS: mapped from the page cache, not the heap's.
	readyRSSFile := procMemMiB(b, pid, "RssFile")
	startupPeakRSS := procMemMiB(b, pid, "VmHWM")
	idleFrom, idleSyncsFrom := procCPU(b, pid), syncCount(samples(b, node))
	const idleWindow = 20 * time.Second
	idleProfile(b, node, idleWindow, size)
	idle := procCPU(b, pid) - idleFrom
	idleSyncs := syncCount(samples(b, node)) - idleSyncsFrom

	// Where a pod-label or policy change's sync goes: each five changes take about 2 s.
	podLabelProfiled := benchfig.CPUProfile(b, nodeClient(node), cpuProfileURL, 3,
		fmt.Sprintf("daemon-pod-label-cpu-%dpods.pprof", size.Pods), "the pod-label changes")
	podLabel := medianLatency(b, node, 5, func(n int) string {
		relabelPeer(b, cs, size, n)
		return "kube_routerd_netpol_ipset_entries"
	})
	podLabelProfiled()
	policyProfiled := benchfig.CPUProfile(b, nodeClient(node), cpuProfileURL, 3,
		fmt.Sprintf("daemon-policy-cpu-%dpods.pprof", size.Pods), "the policy changes")
	policy := medianLatency(b, node, 5, func(n int) string {
		addPolicyPort(b, cs, size, n)
		return "kube_routerd_netpol_iptables_rules"
	})
	policyProfiled()
	applyFloor := restoreFloor(b, int(sumOf(atReady, "kube_routerd_netpol_iptables_rules", "")))

	churnFrom, churnStart := procCPU(b, pid), time.Now()
	events, requests, syncs := churn(b, cs, node, size)
	// What the syncs and the collector cost under churn, as a share of one core.
	churnCPU := 100 * (procCPU(b, pid) - churnFrom).Seconds() / time.Since(churnStart).Seconds()
	burstSyncs, burstChanges, deleted, burstHWM := burst(b, cs, node, size, pid)

	waitIdle(b, node, pid)
	// What churn and the burst left behind: the live heap after a collection, against
	// the one at READY, and the RSS the runtime still holds.
	heapProfile(b, node, "after-burst", size)
	afterBurstLiveHeap := samples(b, node)["go_gc_heap_live_bytes"] / (1 << 20)
	afterBurstRSS := procMemMiB(b, pid, "VmRSS")
	afterBurstRSSFile := procMemMiB(b, pid, "RssFile")
	before := settledState(b, node, time.Minute, ourFullState)
	// The peak of the daemon's whole life, read last: the burst's deletions can still
	// arrive after it went idle once (at 1.0 a peak 7 MiB above the burst's came then).
	peakRSS := procMemMiB(b, pid, "VmHWM")
	d.Stop()
	// The floor is measured up to the restart goal's size only: at the whole envelope
	// the bare informers' 150,000 whole pods took the API server past 20 GiB of RSS.
	var floor, floorCPU, floorControlPlaneCPU time.Duration
	if size.Pods <= maxFloorPods {
		floor, floorCPU, floorControlPlaneCPU = bareInformersSync(b, rc, controlPlane)
	}
	// The profile's 4 s fit the node client's timeout.
	profiled := benchfig.CPUProfile(b, nodeClient(node), cpuProfileURL, 4,
		fmt.Sprintf("daemon-restart-cpu-%dpods.pprof", size.Pods), "the restart")
	cpuBefore = procsCPU(b, controlPlane)
	restartReady := d.StartReady(10 * time.Minute)
	restartControlPlaneCPU := procsCPU(b, controlPlane) - cpuBefore
	restartCPU := procCPU(b, d.PID())
	profiled()
	waitIdle(b, node, d.PID())
	lost := lineDiff(before, ourFullState(b, node))
	saveDaemonLog(b, d, size)
	if lost != "" {
		b.Logf("a restart after the burst found another kernel state: a change was lost\n%s", lost)
	}

	b.ReportMetric(float64(size.Pods), "pods")
	b.ReportMetric(float64(size.Nodes), "nodes")
	b.ReportMetric(float64(size.Services), "services")
	b.ReportMetric(ready.Seconds(), "ready-s")
	// A restart on the programmed kernel: the informers' lists, reading the kernel
	// back and finding it right.
	b.ReportMetric(restartReady.Seconds(), "restart-ready-s")
	b.ReportMetric(startCPU.Seconds(), "startup-cpu-s")
	b.ReportMetric(restartCPU.Seconds(), "restart-cpu-s")
	if floor > 0 {
		// The client library's floor under a restart, and the restart over it.
		b.ReportMetric(floor.Seconds(), "bare-informers-sync-s")
		b.ReportMetric(floorCPU.Seconds(), "bare-informers-cpu-s")
		b.ReportMetric(floorControlPlaneCPU.Seconds(), "bare-informers-apiserver-cpu-s")
		b.ReportMetric(restartReady.Seconds()/floor.Seconds(), "restart-x-floor")
	}
	// The API server (and etcd) share this machine's cores: the CPU they spent serving
	// the daemon's lists until READY.
	b.ReportMetric(startControlPlaneCPU.Seconds(), "startup-apiserver-cpu-s")
	b.ReportMetric(restartControlPlaneCPU.Seconds(), "restart-apiserver-cpu-s")
	b.ReportMetric(startRequests, "startup-api-requests")
	b.ReportMetric(readyRSS, "ready-rss-MiB")
	b.ReportMetric(readyRSSFile, "ready-rss-file-MiB")
	b.ReportMetric(atReady["go_memstats_heap_inuse_bytes"]/(1<<20), "ready-heap-inuse-MiB")
	b.ReportMetric(liveHeap, "ready-live-heap-MiB")
	b.ReportMetric(atReady["go_gc_gogc_percent"], "ready-gogc-%")
	// What node 0's kernel holds for its own pods' policies.
	b.ReportMetric(sumOf(atReady, "kube_routerd_netpol_iptables_rules", ""), "ready-netpol-rules")
	b.ReportMetric(sumOf(atReady, "kube_routerd_netpol_ipsets", ""), "ready-netpol-sets")
	b.ReportMetric(startupPeakRSS, "ready-peak-rss-MiB")
	b.ReportMetric(peakRSS, "peak-rss-MiB")
	b.ReportMetric(burstHWM, "burst-peak-rss-MiB")
	b.ReportMetric(afterBurstLiveHeap, "after-burst-live-heap-MiB")
	b.ReportMetric(afterBurstRSS, "after-burst-rss-MiB")
	b.ReportMetric(afterBurstRSSFile, "after-burst-rss-file-MiB")
	b.ReportMetric(100*idle.Seconds()/idleWindow.Seconds(), "idle-cpu-%")
	// Syncs of any controller in that window: what the idle CPU went into.
	b.ReportMetric(idleSyncs, "idle-syncs")
	b.ReportMetric(podLabel.total, "pod-label-ms")
	b.ReportMetric(policy.total, "policy-ms")
	// The daemon's own sync time within those (the rest is the API server's).
	b.ReportMetric(podLabel.sync, "pod-label-sync-ms")
	b.ReportMetric(policy.sync, "policy-sync-ms")
	b.ReportMetric(policy.apply, "policy-apply-ms")
	// The same iptables-restore of the node's rules in an empty namespace.
	b.ReportMetric(applyFloor, "policy-apply-floor-ms")
	b.ReportMetric(events, "churn-watch-events/min")
	b.ReportMetric(requests, "churn-api-requests/min")
	b.ReportMetric(syncs, "churn-syncs/min")
	b.ReportMetric(churnCPU, "churn-cpu-%")
	b.ReportMetric(float64(burstChanges), "burst-changes")
	b.ReportMetric(float64(deleted), "burst-deleted-pods")
	b.ReportMetric(float64(burstSyncs), "burst-syncs")
	// Lines our kernel state differs by after a restart (0: no change was lost).
	b.ReportMetric(float64(strings.Count(lost, "\n")), "restart-diff-lines")
}

// cpuProfileURL is the daemon's CPU profile endpoint, on the node's loopback.
const cpuProfileURL = "http://127.0.0.1:6060/debug/pprof/profile"

// heapProfile writes the daemon's heap profile at phase (after a collection) to
// $KUBEROUTERD_BENCH_OUT, if set.
func heapProfile(b *testing.B, node *netns.Node, phase string, size workload.Size) {
	saveProfile(b, nodeClient(node), "/debug/pprof/heap?gc=1", fmt.Sprintf("daemon-heap-%s-%dpods.pprof", phase, size.Pods),
		"heap profile of the daemon, "+phase)
}

// idleProfile waits for window, the idle phase after READY, and writes a CPU profile of
// it to $KUBEROUTERD_BENCH_OUT, if set: what the idle CPU goes into.
func idleProfile(b *testing.B, node *netns.Node, window time.Duration, size workload.Size) {
	if os.Getenv("KUBEROUTERD_BENCH_OUT") == "" {
		time.Sleep(window)
		return
	}
	client := nodeClient(node)
	client.Timeout = window + 10*time.Second
	saveProfile(b, client, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(window.Seconds())),
		fmt.Sprintf("daemon-idle-cpu-%dpods.pprof", size.Pods), "CPU profile of the daemon idle after READY")
}

// saveProfile fetches path from the daemon's pprof endpoint through client and writes
// it to $KUBEROUTERD_BENCH_OUT/name, if that is set.
func saveProfile(b *testing.B, client *http.Client, path, name, what string) {
	dir := os.Getenv("KUBEROUTERD_BENCH_OUT")
	if dir == "" {
		return
	}
	resp, err := client.Get("http://127.0.0.1:6060" + path)
	if err != nil {
		b.Fatalf("%s: %v", what, err)
	}
	defer resp.Body.Close()
	profile, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("%s: %d %v", what, resp.StatusCode, err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, profile, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("%s: %s", what, file)
}

// syncCount is the number of syncs every controller has run.
func syncCount(m map[string]float64) float64 {
	return sumOf(m, "kube_routerd_sync_duration_seconds_count", "")
}

// saveDaemonLog copies the daemon's log (both starts, at debug level: every sync and
// its duration) to $KUBEROUTERD_BENCH_OUT, if set, for reading a figure's causes.
func saveDaemonLog(b *testing.B, d *daemon, size workload.Size) {
	dir := os.Getenv("KUBEROUTERD_BENCH_OUT")
	if dir == "" {
		return
	}
	path := filepath.Join(dir, fmt.Sprintf("daemon-%dpods.log", size.Pods))
	if err := os.WriteFile(path, []byte(d.LogText()), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("log of the daemon: %s", path)
}

// loadCluster creates size's Namespaces, Nodes, Pods (with their status),
// Services, EndpointSlices and NetworkPolicies, many at a time.
func loadCluster(b *testing.B, rc *rest.Config, size workload.Size) {
	fast := rest.CopyConfig(rc)
	fast.QPS, fast.Burst = -1, 0
	fast.ContentType = "application/vnd.kubernetes.protobuf"
	cs := kubernetes.NewForConfigOrDie(fast)
	ctx := context.Background()
	create := metav1.CreateOptions{}
	parallel(b, size.Namespaces, func(i int) error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, size.Namespace(i), create)
		return err
	})
	parallel(b, size.Nodes, func(i int) error {
		n := size.Node(i)
		if _, err := cs.CoreV1().Nodes().Create(ctx, n, create); err != nil {
			return err
		}
		_, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	parallel(b, size.Pods, func(i int) error {
		p := size.Pod(i)
		created, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, p, create)
		if err != nil {
			return err
		}
		created.Status = p.Status
		_, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	parallel(b, size.Services, func(i int) error {
		s := size.Service(i)
		if _, err := cs.CoreV1().Services(s.Namespace).Create(ctx, s, create); err != nil {
			return err
		}
		for _, slice := range size.EndpointSlices(i) {
			if _, err := cs.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, create); err != nil {
				return err
			}
		}
		return nil
	})
	parallel(b, size.Policies, func(i int) error {
		p := size.NetworkPolicy(i)
		_, err := cs.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, create)
		return err
	})
}

// parallel runs fn(0..n-1) on 32 workers and fails b on the first error.
func parallel(b testing.TB, n int, fn func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("object %d: %w", i, err))
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		b.Fatal(err)
	}
}

const netpolSynced = `kube_routerd_last_successful_sync_timestamp_seconds{controller="netpol"}`

// changeLatency is the median of a few changes made one at a time, in ms: from the
// API write to the kernel, and the daemon's part of it (its network policy syncs,
// and the kernel writes within them).
type changeLatency struct{ total, sync, apply float64 }

// medianLatency makes n changes one at a time, each moving the returned gauge of
// the daemon's metrics. A change's latency runs from its API write to the end of
// the network policy sync that moved the gauge (that sync's timestamp). The syncs'
// and their apply phases' times in each change's window tell the daemon's share
// from the API server's write and watch delivery.
func medianLatency(b *testing.B, node *netns.Node, n int, change func(n int) (gauge string)) changeLatency {
	const syncSum, syncCount = "kube_routerd_sync_duration_seconds_sum", "kube_routerd_sync_duration_seconds_count"
	const phaseSum, phaseCount = "kube_routerd_netpol_sync_phase_duration_seconds_sum", "kube_routerd_netpol_sync_phase_duration_seconds_count"
	// perSync is the mean of a duration histogram's observations between two scrapes, in ms.
	perSync := func(before, after map[string]float64, sum, count, filter string) (float64, bool) {
		c := sumOf(after, count, filter) - sumOf(before, count, filter)
		return 1000 * (sumOf(after, sum, filter) - sumOf(before, sum, filter)) / c, c > 0
	}
	var ms, syncs, applies []float64
	for i := range n {
		before := samples(b, node)
		written := time.Now()
		gauge := change(i)
		deadline := time.Now().Add(time.Minute)
		for {
			v := samples(b, node)
			if sumOf(v, gauge, "") != sumOf(before, gauge, "") {
				ms = append(ms, 1000*v[netpolSynced]-float64(written.UnixMicro())/1000)
				if d, ok := perSync(before, v, syncSum, syncCount, `controller="netpol"`); ok {
					syncs = append(syncs, d)
				}
				if d, ok := perSync(before, v, phaseSum, phaseCount, `phase="apply"`); ok {
					applies = append(applies, d)
				}
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("change %d: %s stayed at %v", i, gauge, sumOf(v, gauge, ""))
			}
			time.Sleep(2 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
	}
	return changeLatency{total: median(ms), sync: median(syncs), apply: median(applies)}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// restoreFloor is the kernel's floor under a policy change's apply, in ms: the median
// of five iptables-restore runs through the daemon's own iptables code, each rewriting
// one chain of the given number of rules, in an empty namespace. It rewrites a chain
// in place, as the policy change does: netfilter.MeasureFloor's load into a fresh
// namespace replaces nothing and took about half as long (7-8 ms against 13-22 ms
// for a rewrite, by hand, 2 Dec). On iptables-nft most of it is the restore's exit:
// strace puts it in closing its netlink socket, consistent with nf_tables finishing
// there its deferred freeing of the rules the commit replaced, after an RCU grace
// period.
func restoreFloor(b *testing.B, rules int) float64 {
	ns := netns.NewNS(b, "floor", "iptables-restore floor")
	ipt, err := iptables.NewAt(ipfamily.IPv4, ns.Handle)
	if err != nil {
		b.Fatal(err)
	}
	var ms []float64
	for i := range 5 {
		chain := iptables.Chain{Name: "KUBE-NWPLCY-FLOOR"}
		for r := range max(rules, 1) {
			chain.Rules = append(chain.Rules, fmt.Sprintf("-p tcp -m tcp --dport %d -j ACCEPT", 1000*i+r+1))
		}
		data, err := iptables.Buffer{Table: "filter", Write: []iptables.Chain{chain}}.Bytes()
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := ipt.Restore(data); err != nil {
			b.Fatal(err)
		}
		ms = append(ms, float64(time.Since(start).Microseconds())/1000)
	}
	return median(ms)
}

// peerToRelabel is a backend pod on another node in the namespace of policy 0,
// which selects node 0's pods: turning it frontend adds it to that policy's peer set.
func peerToRelabel(size workload.Size) int {
	for i := size.Namespaces; i < size.Pods; i += size.Namespaces {
		if workload.Tier(i) == "backend" && size.PodNode(i) != 0 {
			return i
		}
	}
	panic("no remote backend pod in the first namespace")
}

// relabelPeer moves the peer pod between backend (even n: to frontend) and back.
func relabelPeer(b testing.TB, cs kubernetes.Interface, size workload.Size, n int) {
	b.Helper()
	i := peerToRelabel(size)
	tier := map[bool]string{true: "frontend", false: "backend"}[n%2 == 0]
	patch := fmt.Sprintf(`{"metadata":{"labels":{"tier":%q}}}`, tier)
	if _, err := cs.CoreV1().Pods(size.PodNamespace(i)).Patch(context.Background(), workload.PodName(i),
		types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		b.Fatal(err)
	}
}

// addPolicyPort gives policy 0 one more ingress port.
func addPolicyPort(b testing.TB, cs kubernetes.Interface, size workload.Size, n int) {
	b.Helper()
	p := size.NetworkPolicy(0)
	ctx := context.Background()
	cur, err := cs.NetworkingV1().NetworkPolicies(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	tcp, port := corev1.ProtocolTCP, intstr.FromInt32(int32(20000+n))
	cur.Spec.Ingress[0].Ports = append(cur.Spec.Ingress[0].Ports, networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &port})
	if _, err := cs.NetworkingV1().NetworkPolicies(p.Namespace).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
}

// churn changes a label of 100 pods a second for churnWindow and returns, per
// minute, the objects the daemon received, the API requests it made and its
// network policy syncs.
func churn(b *testing.B, cs kubernetes.Interface, node *netns.Node, size workload.Size) (events, requests, syncs float64) {
	const churnWindow, perSecond = 30 * time.Second, 100
	before := samples(b, node)
	ctx, cancel := context.WithTimeout(context.Background(), churnWindow)
	defer cancel()
	var wg sync.WaitGroup
	var n atomic.Int64
	// Several writers: one API call may take longer than the interval between
	// changes (at the full envelope, ten writers made two thirds of the changes).
	const writers = 25
	for range writers {
		every(ctx, &wg, perSecond/writers, func(stepCtx context.Context) {
			k := n.Add(1)
			i := int(k*7919) % size.Pods
			patch := fmt.Sprintf(`{"metadata":{"labels":{"version":"v%d"}}}`, k)
			_, _ = cs.CoreV1().Pods(size.PodNamespace(i)).Patch(stepCtx, workload.PodName(i), types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		})
	}
	wg.Wait()
	time.Sleep(2 * time.Second)
	after := samples(b, node)
	perMinute := func(metric, filter string) float64 {
		return (sumOf(after, metric, filter) - sumOf(before, metric, filter)) * float64(time.Minute) / float64(churnWindow)
	}
	b.Logf("churn: %d pod changes in %s", n.Load(), churnWindow)
	return perMinute("kube_routerd_api_objects_received_total", ""), perMinute("kube_routerd_api_requests_total", ""),
		perMinute("kube_routerd_sync_duration_seconds_count", `controller="netpol"`)
}

// The burst namespace's pods are deleted in this many batches, told apart by a label.
const (
	burstBatches    = 10
	burstBatchLabel = "bench-batch"
)

// burst makes burstChanges pod label changes as fast as the API server takes
// them, then creates a namespace of burstPods pods and deletes them all at once,
// and returns the network policy syncs this took, the changes, the pods deleted
// and the daemon's peak RSS after it. It waits until the daemon is idle again.
func burst(b *testing.B, cs kubernetes.Interface, node *netns.Node, size workload.Size, pid int) (syncs, changes, deleted int, peakMiB float64) {
	changes, deleted = min(20000, size.Pods), max(100, size.Pods/30)
	ctx := context.Background()
	ns := "burst"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	// The namespace's pods run on node 0 and elsewhere, and a policy selects them.
	parallel(b, deleted, func(i int) error {
		p := size.Pod(i)
		p.Namespace, p.ResourceVersion = ns, ""
		p.Labels = maps.Clone(p.Labels)
		p.Labels[burstBatchLabel] = strconv.Itoa(i % burstBatches)
		created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status = p.Status
		_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	})
	pol := size.NetworkPolicy(0)
	pol.Namespace = ns
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	waitIdle(b, node, pid)
	before := sumOf(samples(b, node), "kube_routerd_sync_duration_seconds_count", `controller="netpol"`)
	parallel(b, changes, func(n int) error {
		i := (n * 7919) % size.Pods
		patch := fmt.Sprintf(`{"metadata":{"labels":{"tier":%q}}}`, []string{"frontend", "backend", "data"}[(i+n)%3])
		_, err := cs.CoreV1().Pods(size.PodNamespace(i)).Patch(ctx, workload.PodName(i), types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	})
	// All at once, in concurrent batches: one collection of 5,000 pods outlasts the
	// API server's request timeout on this shared host. Even a batch can: at the full
	// envelope the API server reset a batch's stream after 20,000 patches, so a
	// failed batch is asked again (a collection delete deletes what is left).
	zero := int64(0)
	parallel(b, burstBatches, func(batch int) error {
		var err error
		for range 3 {
			err = cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
				metav1.ListOptions{LabelSelector: burstBatchLabel + "=" + strconv.Itoa(batch)})
			if err == nil {
				return nil
			}
			b.Logf("deleting burst batch %d: %v (asking again)", batch, err)
		}
		return err
	})
	waitIdle(b, node, pid)
	return int(sumOf(samples(b, node), "kube_routerd_sync_duration_seconds_count", `controller="netpol"`) - before), changes, deleted,
		procMemMiB(b, pid, "VmHWM")
}

// waitIdle waits until the network policy controller has not synced for five
// seconds and the daemon (pid) used almost no CPU for a second: at half the envelope
// one sync ran for tens of seconds, and the last sync's end alone said idle while
// the next was still computing.
func waitIdle(b testing.TB, node *netns.Node, pid int) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if time.Since(time.UnixMicro(int64(samples(b, node)[netpolSynced]*1e6))) > 5*time.Second {
			from := procCPU(b, pid)
			time.Sleep(time.Second)
			if procCPU(b, pid)-from < 50*time.Millisecond {
				return
			}
			continue
		}
		time.Sleep(500 * time.Millisecond)
	}
	b.Fatal("the network policy controller did not go idle within 5 minutes")
}

// ourFullState is our chains and our sets with their members, without counters.
func ourFullState(b testing.TB, n *netns.Node) string {
	b.Helper()
	var out []string
	for _, l := range strings.Split(n.Run(b, "ipset", "save"), "\n") {
		if strings.Contains(strings.ToLower(l), "kube-router") {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return ourState(b, n) + strings.Join(out, "\n")
}

// procCPU is the user+system CPU time process pid has used.
func procCPU(b testing.TB, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): state is field 3,
	// utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// maxFloorPods bounds the sizes at which bareInformersSync runs (the restart goal is at
// 10,000 pods).
const maxFloorPods = 20000

// bareInformersSync is the client library's floor under a start: plain client-go
// informers for the kinds the daemon watches (no transform, no handler), synced from
// the same API server by this process while the daemon is stopped. It returns the
// time to sync, this process's CPU and the control plane's (pids) meanwhile.
func bareInformersSync(b *testing.B, rc *rest.Config, controlPlane []int) (took, cpu, controlPlaneCPU time.Duration) {
	b.Helper()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := informers.NewSharedInformerFactory(cs, 0)
	// Asking for an informer registers it with the factory.
	f.Core().V1().Pods().Informer()
	f.Core().V1().Nodes().Informer()
	f.Core().V1().Namespaces().Informer()
	f.Core().V1().Services().Informer()
	f.Discovery().V1().EndpointSlices().Informer()
	f.Networking().V1().NetworkPolicies().Informer()
	// This process's own CPU, without its exited children's (the stopped daemon).
	selfCPU := func() time.Duration { total, children := benchfig.CPUTime(); return total - children }
	selfBefore, planeBefore := selfCPU(), procsCPU(b, controlPlane)
	start := time.Now()
	f.Start(ctx.Done())
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			b.Fatalf("bare informer for %v did not sync", typ)
		}
	}
	took = time.Since(start)
	cpu, controlPlaneCPU = selfCPU()-selfBefore, procsCPU(b, controlPlane)-planeBefore
	cancel()
	f.Shutdown()
	return took, cpu, controlPlaneCPU
}

// procsCPU sums procCPU over pids.
func procsCPU(b testing.TB, pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		sum += procCPU(b, pid)
	}
	return sum
}

// procMemMiB reads a memory field (VmRSS, VmHWM, RssFile) of process pid.
func procMemMiB(b testing.TB, pid int, field string) float64 {
	b.Helper()
	mib, err := benchfig.StatusMiB(pid, field)
	if err != nil {
		b.Fatal(err)
	}
	return mib
}
