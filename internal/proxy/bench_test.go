package proxy

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
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
		h.store(slices[i])
	}
	return h, slices
}

// toggledEndpoint returns slice with its first endpoint ready on odd i and not ready
// on even i: one destination comes and goes.
func toggledEndpoint(slice *discoveryv1.EndpointSlice, i int) *discoveryv1.EndpointSlice {
	s := slice.DeepCopy()
	s.Endpoints[0].Conditions.Ready = ptrBool(i%2 == 1)
	s.Endpoints[0].Conditions.Terminating = ptrBool(false)
	return s
}

// peakRSS reports the process's peak resident set size in MiB (VmHWM).
func peakRSS(b *testing.B) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.Atoi(f[1])
			b.ReportMetric(float64(kb)/1024, "peak-RSS-MiB")
		}
	}
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
				load += loadAverage1()
				b.StartTimer()
				start := time.Now()
				h.sync(true)
				syncs = append(syncs, time.Since(start))
			}
			reportSpread(b, syncs, nil, load/float64(len(syncs)))
			peakRSS(b)
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
			peakRSS(b)
		})
	}
}

func ptrBool(v bool) *bool { return &v }

// reportSpread reports min-ms and max-ms of full syncs, load1 (loadAverage1, mean of
// a sample before each sync) and, when floors were measured,
// floor-ms (their mean) and x-floor (mean sync over mean floor).
func reportSpread(b *testing.B, syncs, floors []time.Duration, load1 float64) {
	b.ReportMetric(ms(slices.Min(syncs)), "min-ms")
	b.ReportMetric(ms(slices.Max(syncs)), "max-ms")
	b.ReportMetric(load1, "load1")
	if len(floors) > 0 {
		floor := mean(floors)
		b.ReportMetric(ms(floor), "floor-ms")
		b.ReportMetric(float64(mean(syncs))/float64(floor), "x-floor")
	}
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// loadAverage1 is the machine's 1-minute load average (/proc/loadavg; in the VM the
// guest's, which does not see the host's other work): how busy it was besides the
// benchmark, printed beside its figures.
func loadAverage1() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
