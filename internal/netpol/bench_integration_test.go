//go:build integration

package netpol

import (
	"context"
	"log/slog"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// BenchmarkScaleKernel runs the scale benchmark against real iptables and ipsets in
// network namespaces of its own (one per full sync and per kernel floor), with the
// kernel floor of each full sync.
func BenchmarkScaleKernel(b *testing.B) {
	testenv.RequireRoot(b)
	runScaleBenchmarks(b, true, func(b *testing.B) Dataplane {
		ns := tnetns.NewNS(b, "node", "bench")
		dp, err := KernelDataplane(ns.Handle)
		if err != nil {
			b.Fatal(err)
		}
		// Only IPv4: the benchmark pods have no IPv6 addresses.
		dp.IPTables = dp.IPTables[:1]
		b.Cleanup(func() {
			if err := cleanup(context.Background(), dp, slog.Default()); err != nil {
				b.Error(err)
			}
		})
		return dp
	})
}
