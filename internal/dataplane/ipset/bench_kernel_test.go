//go:build integration || vm

package ipset

import (
	"fmt"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// BenchmarkKernelAddEntries adds 100,000 entries to a hash:ip,port set over netlink.
// It is the same kernel work natively (integration tag) and in the test VM (vm tag),
// so the ratio of the two figures is what software emulation costs netlink-heavy
// kernel work, which IPVS-heavy benchmarks can only be measured under.
func BenchmarkKernelAddEntries(b *testing.B) {
	ns := tnetns.NewNS(b, "ipset", "bench").Handle
	s, err := NewAt(ns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.Close)
	set := Set{Name: "KUBE-ROUTER-BENCH", Type: HashIPPort, Family: ipfamily.IPv4}
	entries := make([]string, 100_000)
	for i := range entries {
		entries[i] = fmt.Sprintf("10.%d.%d.%d,tcp:%d", i>>16, i>>8&0xff, i&0xff, 80+i%3)
	}
	for b.Loop() {
		b.StopTimer()
		if err := s.Destroy(set.Name); err != nil {
			b.Fatal(err)
		}
		if err := s.Create(set); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for _, err := range s.AddEntries(set.Name, entries) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(entries)*b.N)/b.Elapsed().Seconds(), "entries/s")
}
