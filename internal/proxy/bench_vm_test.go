//go:build vm

package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/dummy"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// changesPerOp is how many single-Service changes one benchmark op makes: the VM
// benchmarks run one op (-test.benchtime=1x), since each needs its own 10,000 Services.
const changesPerOp = 20

// fullSyncRuns is how many full syncs one BenchmarkKernelFullSync op makes: the VM
// benchmarks run one op (-test.benchtime=1x), and a spread needs several.
const fullSyncRuns = 3

// BenchmarkKernelFullSync measures a first full sync (everything created) of N
// Services x 10 endpoints on the VM kernel's IPVS, dummy interface, ipsets and
// iptables, fullSyncRuns times per op, each in a fresh network namespace. Its figures
// are per full sync (ns/op is their mean), with min-ms, max-ms and load1 (the guest's)
// beside them. After each sync the kernel floor of the same state is measured in
// another fresh namespace (proxyFloor): floor-ms is its mean, x-floor the mean sync
// over it.
func BenchmarkKernelFullSync(b *testing.B) {
	testenv.RequireVM(b)
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			writes := 0
			var syncs, floors []time.Duration
			var load float64
			for b.Loop() {
				for range fullSyncRuns {
					b.StopTimer()
					rec := &recordingDataplane{}
					h, _ := benchHarnessOn(b, rec.wrap(testKernelDataplane(b, netns.NewNS(b, "node", "bench"))), n)
					rec.recordFirewall(h.c)
					runtime.GC()
					load += benchfig.LoadAverage1()
					b.StartTimer()
					start := time.Now()
					h.sync(true)
					syncs = append(syncs, time.Since(start))
					b.StopTimer()
					writes += h.c.writes()
					if got := rec.count(ipvs.OpAddDestination); got < n*10 {
						b.Fatalf("the full sync added %d IPVS destinations in batches, want at least %d", got, n*10)
					}
					floors = append(floors, proxyFloor(b, testKernelDataplane(b, netns.NewNS(b, "node", "floor")), rec))
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(benchfig.Mean(syncs).Nanoseconds()), "ns/op")
			b.ReportMetric(float64(writes)/float64(len(syncs)), "kernel-writes/op")
			benchfig.ReportSpread(b, syncs, floors, load/float64(len(syncs)))
			b.ReportMetric(benchfig.PeakRSSMiB(), "peak-RSS-MiB")
		})
	}
}

// recordingDataplane keeps what a full sync wrote, for the kernel floor: the IPVS
// changes, ledger keys and VIPs of its batches and each family's firewall Ruleset.
type recordingDataplane struct {
	changes   []ipvs.Change
	keys      []ipvs.Key
	vips      []netip.Addr
	firewalls []*recordingNetfilter
}

type recordingIPVS struct {
	ipvs.Interface
	rec *recordingDataplane
}

func (r recordingIPVS) Apply(changes []ipvs.Change) []error {
	r.rec.changes = append(r.rec.changes, changes...)
	return r.Interface.Apply(changes)
}

type recordingLedger struct {
	ipvs.Ledger
	rec *recordingDataplane
}

func (r recordingLedger) AddAll(keys []ipvs.Key) []error {
	r.rec.keys = append(r.rec.keys, keys...)
	return r.Ledger.AddAll(keys)
}

type recordingDummy struct {
	dummy.Interface
	rec *recordingDataplane
}

func (r recordingDummy) AddAddrs(addrs []netip.Addr) []error {
	r.rec.vips = append(r.rec.vips, addrs...)
	return r.Interface.AddAddrs(addrs)
}

// recordingNetfilter keeps the last Ruleset the firewall handed to one family's writer.
type recordingNetfilter struct {
	netfilter.Interface
	last *netfilter.Ruleset
}

func (r *recordingNetfilter) Apply(want *netfilter.Ruleset, full bool) (netfilter.Stats, error) {
	r.last = want
	return r.Interface.Apply(want, full)
}

// wrap returns dp with recorders in front of its IPVS, ledger and dummy interface.
func (r *recordingDataplane) wrap(dp Dataplane) Dataplane {
	dp.IPVS = recordingIPVS{Interface: dp.IPVS, rec: r}
	dp.Ledger = recordingLedger{Ledger: dp.Ledger, rec: r}
	dp.Dummy = recordingDummy{Interface: dp.Dummy, rec: r}
	return dp
}

// recordFirewall puts a recorder in front of each family's netfilter writer of c.
func (r *recordingDataplane) recordFirewall(c *Controller) {
	for _, ff := range c.fw.families {
		nf := &recordingNetfilter{Interface: ff.netfilter}
		ff.netfilter = nf
		r.firewalls = append(r.firewalls, nf)
	}
}

func (r *recordingDataplane) count(op ipvs.Op) int {
	n := 0
	for _, c := range r.changes {
		if c.Op == op {
			n++
		}
	}
	return n
}

// proxyFloor creates what rec recorded in dp, a fresh namespace's dataplane, the
// cheapest way and returns how long the kernel took: the dummy interface with every
// VIP in one batch, the sysctls, the ledger keys in one batch, every IPVS service and
// destination in one batch through the batched IPVS writer, then each family's
// firewall sets and chains as netfilter.MeasureFloor loads them.
func proxyFloor(b *testing.B, dp Dataplane, rec *recordingDataplane) time.Duration {
	b.Helper()
	start := time.Now()
	if err := dp.Dummy.Ensure(); err != nil {
		b.Fatal(err)
	}
	err := errors.Join(dp.Dummy.AddAddrs(rec.vips)...)
	if _, serr := sysctl.Ensure(dp.Sysctls, requiredSysctls); serr != nil {
		err = errors.Join(err, serr)
	}
	err = errors.Join(err, errors.Join(dp.Ledger.AddAll(rec.keys)...), errors.Join(dp.IPVS.Apply(rec.changes)...))
	if err != nil {
		b.Fatalf("kernel floor: %v", err)
	}
	ipvsTook := time.Since(start)
	var loads []netfilter.FloorLoad
	for i, ipt := range dp.IPTables {
		loads = append(loads, netfilter.FloorLoad{IPTables: ipt, Ruleset: rec.firewalls[i].last})
	}
	netfilterTook, err := netfilter.MeasureFloor(dp.IPSets, loads...)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("kernel floor of %d IPVS changes, %d VIPs: %.0f ms VIPs, sysctls, ledger and IPVS; %.0f ms sets and chains",
		len(rec.changes), len(rec.vips), benchfig.MS(ipvsTook), benchfig.MS(netfilterTook))
	return ipvsTook + netfilterTook
}

// BenchmarkKernelSingleServiceChange measures the sync after one EndpointSlice changed
// (one destination comes or goes) with 10,000 Services x 10 endpoints programmed on the
// VM kernel.
func BenchmarkKernelSingleServiceChange(b *testing.B) {
	testenv.RequireVM(b)
	const n = 10000
	h, epSlices := benchHarnessOn(b, testKernelDataplane(b, netns.NewNS(b, "node", "bench")), n)
	h.sync(true)
	// The periodic full resync finding nothing to do: what a change may queue behind.
	began := time.Now()
	h.sync(true)
	idleResync := time.Since(began)
	if w := h.c.writes(); w != 0 {
		b.Fatalf("idle full resync made %d kernel writes", w)
	}
	target := epSlices[n/2]
	i := 0
	for b.Loop() {
		for range changesPerOp {
			h.store(toggledEndpoint(target, i))
			i++
			h.sync(false)
			if h.c.writes() == 0 {
				b.Fatal("the change was not applied")
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N*changesPerOp), "ms/change")
	b.ReportMetric(idleResync.Seconds(), "idle-full-resync-s")
	b.ReportMetric(benchfig.PeakRSSMiB(), "peak-RSS-MiB")
}

// BenchmarkKernelAPIToIPVS measures the end-to-end latency of a change: from an
// EndpointSlice update written to the real API server until the VM kernel's IPVS
// shows the new destination, with 10,000 Services x 10 endpoints in the API server
// and programmed by a running controller.
func BenchmarkKernelAPIToIPVS(b *testing.B) {
	testenv.RequireVM(b)
	const n = 10000
	rc, cs := testenv.APIServer(b)
	// The writers are unthrottled and speak protobuf (JSON costs the emulated CPU
	// dearly); the controller reads through an ordinary client, as the daemon does.
	fast := rest.CopyConfig(rc)
	fast.QPS, fast.Burst = 5000, 5000
	fast.ContentType = "application/vnd.kubernetes.protobuf"
	writer, err := kubernetes.NewForConfig(fast)
	if err != nil {
		b.Fatal(err)
	}
	namespace := testenv.Namespace(b, cs)

	start := time.Now()
	created := testenv.CreateBenchServices(b, writer, namespace, 0, n)
	b.Logf("created %d Services and EndpointSlices in the API server in %.1f s", n, time.Since(start).Seconds())

	node := netns.NewNS(b, "node", "bench")
	dp := testKernelDataplane(b, node)
	cfg := config.Default().ServiceProxy
	start = time.Now()
	ctl := startController(b, cs, "bench-node", cfg, dp)
	testenv.Eventually(b, "the first full sync of every Service", 30*time.Minute, func() bool {
		return ctl.c.Details().(Details).Destinations >= n*10
	})
	firstSync := time.Since(start)

	target := created[n/2]
	key := ipvs.Key{Addr: netip.MustParseAddr(target.Service.Spec.ClusterIP), Proto: ipvs.TCP, Port: 80}
	slice := target.Slice
	var latencies []time.Duration
	i := 0
	for b.Loop() {
		for range changesPerOp {
			i++
			// A new address for the first endpoint: one destination goes, one comes.
			addr := netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})
			slice.Endpoints[0].Addresses = []string{addr.String()}
			// A change within min_sync_interval of the previous sync waits for the rest
			// of it; spaced out, each change is measured on its own.
			time.Sleep(2 * cfg.MinSyncInterval.Duration)
			began := time.Now()
			if slice, err = writer.DiscoveryV1().EndpointSlices(namespace).Update(b.Context(), slice, metav1.UpdateOptions{}); err != nil {
				b.Fatal(err)
			}
			// Polled every millisecond: testenv.Eventually's step would round the figure.
			for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(time.Millisecond) {
				d, _ := dp.IPVS.Destinations(key)
				if slices.ContainsFunc(d, func(d ipvs.Destination) bool { return d.Addr == addr }) {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("destination %s never appeared in %s", addr, key)
				}
			}
			latencies = append(latencies, time.Since(began))
			// When each change was made shows which ones waited for the periodic full resync.
			b.Logf("change %d at %.0f s after the controller started: %v", i, began.Sub(start).Seconds(), latencies[len(latencies)-1])
		}
	}
	slices.Sort(latencies)
	b.ReportMetric(firstSync.Seconds(), "first-sync-s")
	b.ReportMetric(benchfig.MS(latencies[len(latencies)/2]), "p50-ms")
	b.ReportMetric(benchfig.MS(latencies[len(latencies)-1]), "max-ms")
	b.ReportMetric(benchfig.PeakRSSMiB(), "peak-RSS-MiB")
}
