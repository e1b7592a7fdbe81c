package routing

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

func TestDriftDetectorCountsOnlyWhatSomeoneElseChanged(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	never := func(route.Route) bool { return false }
	k := route.NewFake(netip.MustParsePrefix("10.0.0.0/24"))
	tun := route.Tunnel{Name: "krt-0a000103", Local: netip.MustParseAddr("10.0.0.1"), Remote: netip.MustParseAddr("10.0.1.3")}
	viaGw := route.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")}
	viaTun := route.Route{Dst: netip.MustParsePrefix("10.244.3.0/24"), Device: tun.Name}
	routes, tunnels := []route.Route{viaGw, viaTun}, []route.Tunnel{tun}
	var d driftDetector
	sync := func() int {
		t.Helper()
		n, err := d.count(k, routes, tunnels)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = reconcileKernel(k, routes, tunnels, never, log)
		d.remember(routes, tunnels, err == nil)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	if n := sync(); n != 0 {
		t.Fatalf("first sync counted %d drifted; nothing was ours yet", n)
	}
	if n := sync(); n != 0 {
		t.Fatalf("unchanged kernel counted %d drifted", n)
	}
	// Someone deletes a route and the tunnel (which takes its route along).
	if err := k.DeleteRoute(viaGw); err != nil {
		t.Fatal(err)
	}
	if err := k.DeleteTunnel(tun.Name); err != nil {
		t.Fatal(err)
	}
	if n := sync(); n != 3 {
		t.Fatalf("counted %d drifted; want 3 (two routes, one tunnel)", n)
	}
	want := route.Dump(routes, tunnels)
	if got := k.Dump(); got != want {
		t.Fatalf("not repaired:\n%s\nwant\n%s", got, want)
	}
	// A change we want ourselves (new next hop) is no drift.
	viaGw.Gateway = netip.MustParseAddr("10.0.0.3")
	routes = []route.Route{viaGw, viaTun}
	if n := sync(); n != 0 {
		t.Fatalf("a wanted change counted as %d drifted", n)
	}
}
