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
	s := inNewNS(b, tnetns.NewNS(b, "ipset", "bench"))
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

// BenchmarkKernelListAll reads back 250,000 entries in 500 hash:ip sets, the network
// policy sets of a node at Kubernetes' whole envelope (150,000 pods, 1,000 policies),
// as every full resync does for each IP family. B/op is what one read allocates: its
// garbage comes at once, on top of the live heap, and sets the daemon's peak RSS.
func BenchmarkKernelListAll(b *testing.B) {
	s := inNewNS(b, tnetns.NewNS(b, "ipset", "bench"))
	const sets, perSet = 500, 500
	for i := range sets {
		name := fmt.Sprintf("KUBE-ROUTER-BENCH-%d", i)
		if err := s.Create(Set{Name: name, Type: HashIP, Family: ipfamily.IPv4}); err != nil {
			b.Fatal(err)
		}
		entries := make([]string, perSet)
		for j := range entries {
			n := i*perSet + j
			entries[j] = fmt.Sprintf("10.%d.%d.%d", n>>16, n>>8&0xff, n&0xff)
		}
		for _, err := range s.AddEntries(name, entries) {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, bc := range []struct {
		name string
		keep func(Set) bool
		want int
	}{
		{"all", nil, sets * perSet},
		{"other-family", func(s Set) bool { return s.Family == ipfamily.IPv6 }, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				all, err := s.ListAll(bc.keep)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for _, set := range all {
					n += len(set.Entries)
				}
				if n != bc.want {
					b.Fatalf("listed %d entries, want %d", n, bc.want)
				}
			}
		})
	}
}

// inNewNS returns an Interface for ns, closed when tb ends.
func inNewNS(tb testing.TB, ns *tnetns.NS) *Netlink {
	tb.Helper()
	s, err := NewAt(ns.Handle)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}
