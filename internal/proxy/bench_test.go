package proxy

import (
	"fmt"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
)

// benchHarness loads n Services of 10 endpoints each into a controller on the fake
// dataplane.
func benchHarness(b testing.TB, n int) (*harness, []*discoveryv1.EndpointSlice) {
	kernel := newFakeKernel()
	h, slices := benchHarnessOn(b, kernel.dataplane(), n)
	h.kernel = kernel
	return h, slices
}

// benchHarnessOn loads n Services of 10 endpoints each into a controller on dp.
func benchHarnessOn(b testing.TB, dp Dataplane, n int) (*harness, []*discoveryv1.EndpointSlice) {
	h := newHarnessOn(b, dp)
	slices := make([]*discoveryv1.EndpointSlice, n)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		h.store(namedService(name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)))
		eps := make([]ep, 10)
		for j := range eps {
			// Endpoints on other nodes, as almost all are on a node of a big cluster.
			eps[j] = ep{ip: fmt.Sprintf("10.%d.%d.%d", 100+i/65000, (i/250)%256, j*25+i%25), node: "node-b"}
		}
		slices[i] = sliceFor(name, eps...)
		h.store(k8s.CompactEndpointSlice(slices[i]))
	}
	return h, slices
}

// toggledEndpoint returns slice, as the daemon's cache holds it, with its first
// endpoint ready on odd i and not ready on even i: one destination comes and goes.
func toggledEndpoint(slice *discoveryv1.EndpointSlice, i int) *k8s.EndpointSlice {
	s := slice.DeepCopy()
	s.Endpoints[0].Conditions.Ready = ptrBool(i%2 == 1)
	s.Endpoints[0].Conditions.Terminating = ptrBool(false)
	return k8s.CompactEndpointSlice(s)
}

// BenchmarkFullSync measures a first full sync (everything created) of N Services x
// 10 endpoints against the fake dataplane, with the spread over ops and the load.
func BenchmarkFullSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			var syncs []time.Duration
			var load float64
			for b.Loop() {
				b.StopTimer()
				h, _ := benchHarness(b, n)
				load += benchfig.LoadAverage1()
				b.StartTimer()
				start := time.Now()
				h.sync(true)
				syncs = append(syncs, time.Since(start))
			}
			benchfig.ReportSpread(b, syncs, nil, load/float64(len(syncs)))
			b.ReportMetric(benchfig.PeakRSSMiB(), "peak-RSS-MiB")
		})
	}
}

// BenchmarkSingleServiceChange measures the sync after one EndpointSlice changed
// with N Services programmed: the cost of a change, which must not grow with N.
func BenchmarkSingleServiceChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			h, slices := benchHarness(b, n)
			h.sync(true)
			target := slices[n/2]
			i := 0
			for b.Loop() {
				h.store(toggledEndpoint(target, i))
				i++
				h.sync(false)
			}
			if got := len(h.kernel.ipvs.Writes()); got == 0 {
				b.Fatal("the change was not applied")
			}
			b.ReportMetric(benchfig.PeakRSSMiB(), "peak-RSS-MiB")
		})
	}
}

func ptrBool(v bool) *bool { return &v }
