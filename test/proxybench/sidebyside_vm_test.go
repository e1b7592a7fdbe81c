//go:build vm

package proxybench

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	// changesPerRun is how many single-endpoint changes each contender gets at each
	// scale: kube-proxy's IPVS mode rewrites everything on each sync, which at 1,000
	// Services costs 20 s in the emulated VM.
	changesPerRun = 3
	// syncTimeout bounds a first full sync in the emulated VM.
	syncTimeout = 20 * time.Minute
	// pollEvery is the pause between two checks of the kernel or the metrics.
	pollEvery = 5 * time.Millisecond
)

// figures is what one run of one contender measured.
type figures struct {
	// fullSync runs from the process's start to the end of the sync after which the
	// kernel held every endpoint (the time the contender's last-sync gauge reports);
	// fullSyncCPU is the CPU time it and its helpers had used when that was seen.
	fullSync, fullSyncCPU time.Duration
	// changeSync is the mean sync duration the contender reported for the syncs one
	// change caused (its own sync-duration histogram), the median over the changes.
	changeSync time.Duration
	// latencies run from an EndpointSlice update written to the API server until the
	// kernel shows the new endpoint, sorted.
	latencies []time.Duration
	// check is the mean time one kernel check took while polling for a change.
	check time.Duration
	// peakRSS is the process's VmHWM in MiB after everything; treeRSS the largest
	// resident set of it and the helpers it ran (iptables-restore, ipset, nft).
	peakRSS, treeRSS float64
}

// BenchmarkSideBySide measures kube-routerd's service proxy, kube-proxy in IPVS mode
// and kube-proxy in nftables mode on the same Services in the same API server, each
// its real binary in a fresh node namespace of the VM: a full sync of 1,000 and of
// 10,000 Services x 10 endpoints, then single-endpoint changes (the sync each reports
// for it, and API write to kernel). Each sub-benchmark is one run of one contender;
// after each scale a line per kube-proxy mode gives kube-routerd's figures over its
// (below 1: kube-routerd ahead).
func BenchmarkSideBySide(b *testing.B) {
	testenv.RequireVM(b)
	contenders := []contender{kubeRouterd(b), kubeProxy(b, "ipvs"), kubeProxy(b, "nftables")}
	scales := []int{1000, 10000}
	if testing.Short() {
		scales = []int{100, 1000}
	}
	rc, cs := testenv.APIServer(b)
	// The writer is unthrottled and speaks protobuf (JSON costs the emulated CPU dearly).
	fast := rest.CopyConfig(rc)
	fast.QPS, fast.Burst = 5000, 5000
	fast.ContentType = "application/vnd.kubernetes.protobuf"
	writer, err := kubernetes.NewForConfig(fast)
	if err != nil {
		b.Fatal(err)
	}
	w := &workload{rc: rc, cs: cs, writer: writer, namespace: testenv.Namespace(b, cs)}
	for _, n := range scales {
		start := time.Now()
		w.services = append(w.services, testenv.CreateBenchServices(b, writer, w.namespace, len(w.services), n-len(w.services))...)
		b.Logf("%d Services x 10 endpoints in the API server (%.0f s to create)", n, time.Since(start).Seconds())
		got := map[string]figures{}
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			for _, c := range contenders {
				b.Run("proxy="+c.name, func(b *testing.B) {
					if c.maxServices != 0 && n > c.maxServices {
						b.Skipf("%s runs up to %d Services in the emulated VM", c.name, c.maxServices)
					}
					var f figures
					for b.Loop() {
						f = w.run(b, c, changesPerRun)
					}
					f.report(b)
					got[c.name] = f
				})
			}
		})
		for _, c := range contenders[1:] {
			if theirs, ok := got[c.name]; ok {
				b.Log(ratios(n, c.name, got[contenders[0].name], theirs))
			}
		}
	}
}

// workload is the benchmark's Services and the clients that reach them.
type workload struct {
	rc        *rest.Config
	cs        kubernetes.Interface
	writer    kubernetes.Interface
	namespace string
	services  []testenv.BenchService
	// changed counts the changes made so far, so every change brings a new address.
	changed int
}

// run starts c on a fresh node, waits for its full sync, makes changes single-endpoint
// changes and stops it.
func (w *workload) run(b *testing.B, c contender, changes int) figures {
	b.Helper()
	n := len(w.services)
	node := netns.NewNode(b, netns.NodeOptions{Client: w.cs})
	dir := b.TempDir()
	argv := c.command(b, node, node.ForwardAPIServer(b, w.rc, dir), dir)
	kernel := c.kernel(b, node, w.namespace)
	metrics := metricsClient(node)
	p := startProcess(b, node, c.name, filepath.Join(dir, c.name+".log"), argv)
	profiled := func() {}
	if c.profileURL != "" {
		profiled = benchfig.CPUProfile(b, metrics, c.profileURL, startupProfileSeconds,
			fmt.Sprintf("%s-startup-cpu-%dservices.pprof", c.name, n), c.name+"'s start")
	}

	var f figures
	seen, got := 0.0, 0
	for deadline := p.started.Add(syncTimeout); ; time.Sleep(50 * pollEvery) {
		if !p.running() {
			b.Fatalf("%s exited before its first full sync", c.name)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not program %d Services x 10 endpoints within %s (last sync reported at %.3f, %d endpoints in the kernel then)",
				c.name, n, syncTimeout, seen, got)
		}
		if c.readyURL != "" && !ready(metrics, c.readyURL) {
			continue
		}
		text, err := scrape(metrics, c.metricsURL)
		last := metricSum(text, c.lastSync, c.labels...)
		if err != nil || last == 0 || last == seen {
			continue
		}
		seen = last
		got, err = kernel.endpoints()
		if err != nil {
			b.Fatal(err)
		}
		if got >= n*10 {
			sec, frac := math.Modf(last)
			f.fullSync = time.Unix(int64(sec), int64(frac*1e9)).Sub(p.started)
			if f.fullSyncCPU, err = p.cpu(); err != nil {
				b.Fatal(err)
			}
			break
		}
	}

	profiled()

	var syncs []time.Duration
	var checks int
	var checking time.Duration
	for range changes {
		took, lat, n, spent := w.change(b, c, kernel, metrics)
		syncs, f.latencies = append(syncs, took), append(f.latencies, lat)
		checks, checking = checks+n, checking+spent
	}
	if len(syncs) > 0 {
		slices.Sort(syncs)
		slices.Sort(f.latencies)
		f.changeSync = syncs[len(syncs)/2]
		f.check = checking / time.Duration(checks)
	}

	hwm, err := p.status("VmHWM")
	if err != nil {
		b.Fatal(err)
	}
	f.peakRSS = float64(hwm) / 1024
	f.treeRSS = float64(p.stop(b)) / 1024
	return f
}

// startupProfileSeconds is how much of a start the profile covers: the start-up and
// initial lists, and the first sync at 1,000 Services in the emulated VM.
const startupProfileSeconds = 30

// change gives the first endpoint of the middle Service a new address and returns the
// sync duration c reported for it, the time from the API write until the kernel
// showed the new endpoint, and how many kernel checks that took and how long they ran.
func (w *workload) change(b *testing.B, c contender, kernel kernelView, metrics *http.Client) (sync, latency time.Duration, checks int, checking time.Duration) {
	b.Helper()
	target := &w.services[len(w.services)/2]
	w.changed++
	addr := netip.AddrFrom4([4]byte{10, 250, byte(w.changed >> 8), byte(w.changed)})
	slice := target.Slice.DeepCopy()
	slice.Endpoints[0].Addresses = []string{addr.String()}
	// A change within the minimum sync interval of the previous sync waits for the
	// rest of it; spaced out, each change is measured on its own.
	time.Sleep(2 * c.minSync)
	text, err := scrape(metrics, c.metricsURL)
	if err != nil {
		b.Fatal(err)
	}
	sumBefore, countBefore := syncTotals(c, text)

	began := time.Now()
	if target.Slice, err = w.writer.DiscoveryV1().EndpointSlices(w.namespace).Update(b.Context(), slice, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
	for deadline := began.Add(5 * time.Minute); ; time.Sleep(pollEvery) {
		t := time.Now()
		ok, err := kernel.hasEndpoint(target.Service, addr)
		checks, checking = checks+1, checking+time.Since(t)
		if err != nil {
			b.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: endpoint %s of %s never reached the kernel", c.name, addr, target.Service.Name)
		}
	}
	latency = time.Since(began)

	// The histogram is updated once the sync returns, which may be after the kernel
	// showed the change.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * pollEvery) {
		if text, err = scrape(metrics, c.metricsURL); err != nil {
			b.Fatal(err)
		}
		sum, count := syncTotals(c, text)
		if count > countBefore {
			sync = time.Duration((sum - sumBefore) / (count - countBefore) * float64(time.Second))
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s reported no sync after the change", c.name)
		}
	}
	b.Logf("%s: change %d: API write to kernel %v, sync %v", c.name, w.changed, latency.Round(time.Millisecond), sync.Round(time.Millisecond))
	return sync, latency, checks, checking
}

// syncTotals reads the sum and count of c's sync-duration histogram.
func syncTotals(c contender, text string) (sum, count float64) {
	return metricSum(text, c.syncs+"_sum", c.labels...), metricSum(text, c.syncs+"_count", c.labels...)
}

func (f figures) report(b *testing.B) {
	b.ReportMetric(float64(f.fullSync.Nanoseconds()), "ns/op")
	b.ReportMetric(f.fullSync.Seconds(), "full-sync-s")
	b.ReportMetric(f.fullSyncCPU.Seconds(), "full-sync-cpu-s")
	if len(f.latencies) > 0 {
		b.ReportMetric(benchfig.MS(f.changeSync), "change-sync-ms")
		b.ReportMetric(benchfig.MS(f.latencies[len(f.latencies)/2]), "api-to-kernel-p50-ms")
		b.ReportMetric(benchfig.MS(f.latencies[len(f.latencies)-1]), "api-to-kernel-max-ms")
		b.ReportMetric(benchfig.MS(f.check), "kernel-check-ms")
	}
	b.ReportMetric(f.peakRSS, "peak-RSS-MiB")
	b.ReportMetric(f.treeRSS, "max-RSS-with-helpers-MiB")
}

// ratios is one line of kube-routerd's figures over another contender's.
func ratios(n int, theirName string, ours, theirs figures) string {
	var parts []string
	add := func(what string, a, b float64) {
		if b > 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f", what, a/b))
		}
	}
	add("full-sync", ours.fullSync.Seconds(), theirs.fullSync.Seconds())
	add("full-sync-cpu", ours.fullSyncCPU.Seconds(), theirs.fullSyncCPU.Seconds())
	if len(ours.latencies) > 0 && len(theirs.latencies) > 0 {
		add("change-sync", ours.changeSync.Seconds(), theirs.changeSync.Seconds())
		add("api-to-kernel-p50", ours.latencies[len(ours.latencies)/2].Seconds(), theirs.latencies[len(theirs.latencies)/2].Seconds())
		add("api-to-kernel-max", ours.latencies[len(ours.latencies)-1].Seconds(), theirs.latencies[len(theirs.latencies)-1].Seconds())
	}
	add("peak-RSS", ours.peakRSS, theirs.peakRSS)
	add("max-RSS-with-helpers", ours.treeRSS, theirs.treeRSS)
	return fmt.Sprintf("ratio services=%d kube-routerd/%s (below 1: kube-routerd ahead): %s", n, theirName, strings.Join(parts, ", "))
}
